//! Translation between the protobuf messages and the domain, with every client-set field
//! parsed (and its limits checked) here, at the edge.

use std::collections::{BTreeMap, HashMap};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SubsecRound, Utc};
use prost_types::{Struct, Timestamp, value::Kind};
use serde_json::{Map, Number, Value};
use uuid::Uuid;

use crate::{
    domain::{
        fields,
        permission::Permission,
        restrictions::{Cidr, HostPattern},
        token::{self, DEFAULT_TYPE, Token, limits},
    },
    error::Error,
    pb::v1 as pb,
};

/// Returns the fields a client may set on create and change with UpdateToken, from the
/// domain's field table, as a list for messages.
pub fn settable_list() -> String {
    fields::settable().collect::<Vec<_>>().join(", ")
}

/// Parses one settable field of `source` (named `path`, reported as `token.<path>`) and
/// sets it on `target`. Handles every field the field table marks settable (a test holds
/// the two together).
pub fn apply_field(
    target: &mut Token,
    source: &pb::Token,
    path: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let field = format!("token.{path}");
    match path {
        "name" => {
            target.name = token::parse_name(&source.name).map_err(|m| Error::invalid(&field, m))?
        }
        "type" => {
            target.token_type = if source.r#type.is_empty() {
                DEFAULT_TYPE.to_owned()
            } else {
                token::parse_type(&source.r#type).map_err(|m| Error::invalid(&field, m))?
            }
        }
        "description" => {
            target.description = token::parse_description(&source.description)
                .map_err(|m| Error::invalid(&field, m))?
        }
        "permissions" => {
            target.permissions =
                parse_permissions(&source.permissions, &field, limits::PERMISSIONS)?
        }
        "read_only" => target.read_only = source.read_only,
        "allowed_cidrs" => {
            target.allowed_cidrs =
                parse_list(&source.allowed_cidrs, &field, limits::CIDRS, Cidr::parse)?
        }
        "allowed_hosts" => {
            target.allowed_hosts = parse_list(
                &source.allowed_hosts,
                &field,
                limits::HOSTS,
                HostPattern::parse,
            )?
        }
        "bindings" => target.bindings = parse_bindings(&source.bindings, &field)?,
        "metadata" => {
            let metadata = match &source.metadata {
                Some(metadata) => struct_to_json(metadata, &field)?,
                None => Map::new(),
            };
            token::check_metadata(&metadata).map_err(|m| Error::invalid(&field, m))?;
            target.metadata = metadata;
        }
        "expire_time" => {
            target.expire_time = match &source.expire_time {
                None => None,
                Some(at) => {
                    // Stores keep microseconds; so does every time we hand back.
                    let at = timestamp_to_chrono(at, &field)?.trunc_subsecs(6);
                    if at <= now {
                        return Err(Error::invalid(&field, "must be in the future"));
                    }
                    Some(at)
                }
            }
        }
        "max_uses" => {
            target.max_uses = match source.max_uses {
                0 => None,
                n if (1..=limits::MAX_USES).contains(&n) => Some(n),
                _ => {
                    return Err(Error::invalid(
                        &field,
                        format!("must be 0 (no limit) to {}", limits::MAX_USES),
                    ));
                }
            }
        }
        "rate_limit" => {
            target.rate_limit = match &source.rate_limit {
                None => None,
                Some(limit) => Some(parse_rate_limit(limit, &field)?),
            }
        }
        other => {
            return Err(Error::invalid(
                "update_mask",
                format!(
                    "{:?} is not a field that can be set; settable: {}",
                    other.chars().take(64).collect::<String>(),
                    settable_list()
                ),
            ));
        }
    }
    Ok(())
}

/// Parses a positive duration of whole seconds, at most 100 years.
pub fn struct_free_duration(value: &prost_types::Duration, field: &str) -> Result<i64, Error> {
    if value.seconds <= 0 || value.nanos != 0 || value.seconds > 100 * 366 * 24 * 3600 {
        return Err(Error::invalid(
            field,
            "must be a positive whole number of seconds, at most 100 years",
        ));
    }
    Ok(value.seconds)
}

/// Parses a rate limit.
pub fn parse_rate_limit(limit: &pb::RateLimit, field: &str) -> Result<token::RateLimit, Error> {
    let interval = limit
        .interval
        .as_ref()
        .ok_or_else(|| Error::invalid(format!("{field}.interval"), "is required"))?;
    if interval.seconds < 0 || interval.nanos < 0 || interval.seconds > 86_400 {
        return Err(Error::invalid(
            format!("{field}.interval"),
            "must be 1s to 1 day",
        ));
    }
    let interval = std::time::Duration::new(interval.seconds as u64, interval.nanos as u32);
    token::RateLimit::new(limit.requests, interval).map_err(|m| Error::invalid(field, m))
}

/// Parses a list of permissions, dropping duplicates (keeping the first of each). Lists
/// are short (at most 64), so a linear check beats hashing.
pub fn parse_permissions(
    values: &[String],
    field: &str,
    max: usize,
) -> Result<Vec<Permission>, Error> {
    token::check_count(values.len(), max).map_err(|m| Error::invalid(field, m))?;
    let mut parsed: Vec<Permission> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let permission =
            Permission::parse(value).map_err(|m| Error::invalid(format!("{field}[{i}]"), m))?;
        if !parsed.contains(&permission) {
            parsed.push(permission);
        }
    }
    Ok(parsed)
}

fn parse_list<T>(
    values: &[String],
    field: &str,
    max: usize,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Error> {
    token::check_count(values.len(), max).map_err(|m| Error::invalid(field, m))?;
    values
        .iter()
        .enumerate()
        .map(|(i, value)| parse(value).map_err(|m| Error::invalid(format!("{field}[{i}]"), m)))
        .collect()
}

/// Parses a bindings map, in a request or on a token.
pub fn parse_bindings(
    values: &HashMap<String, String>,
    field: &str,
) -> Result<BTreeMap<String, String>, Error> {
    token::check_count(values.len(), limits::BINDINGS).map_err(|m| Error::invalid(field, m))?;
    values
        .iter()
        .map(|(key, value)| {
            token::check_binding(key, value)
                .map(|()| (key.clone(), value.clone()))
                .map_err(|m| Error::invalid(field, m))
        })
        .collect()
}

/// Parses a token id.
pub fn parse_id(value: &str, field: &str) -> Result<Uuid, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::try_parse(value).map_err(|_| Error::invalid(field, "must be a UUID"))
}

/// The page size when a request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The largest page size accepted.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Parses a request's `page_size`: 0 is the default, 1 to [`MAX_PAGE_SIZE`] as given.
pub fn parse_page_size(value: i32) -> Result<u32, Error> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 || n as u32 > MAX_PAGE_SIZE => Err(Error::invalid(
            "page_size",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n as u32),
    }
}

/// Encodes the id a page ends at as an opaque page token.
pub fn encode_page_token(last: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(last.as_bytes())
}

/// Decodes a page token made by [`encode_page_token`].
pub fn decode_page_token(value: &str) -> Result<Option<Uuid>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid("page_token", "is not a page token returned by ListTokens");
    let bytes = URL_SAFE_NO_PAD.decode(value).map_err(|_| invalid())?;
    Uuid::from_slice(&bytes).map(Some).map_err(|_| invalid())
}

/// Converts a protobuf timestamp, rejecting out-of-range values.
pub fn timestamp_to_chrono(value: &Timestamp, field: &str) -> Result<DateTime<Utc>, Error> {
    let nanos = u32::try_from(value.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000);
    nanos
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
        .ok_or_else(|| Error::invalid(field, "is not a valid timestamp"))
}

/// Converts a time to a protobuf timestamp.
pub fn chrono_to_timestamp(value: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: value.timestamp(),
        nanos: value.timestamp_subsec_nanos() as i32,
    }
}

/// Converts a protobuf Struct to JSON, refusing nesting past the metadata limit (checked
/// while converting, so hostile depth costs nothing) and non-finite numbers.
pub fn struct_to_json(value: &Struct, field: &str) -> Result<Map<String, Value>, Error> {
    fn convert(value: &prost_types::Value, depth: usize, field: &str) -> Result<Value, Error> {
        if depth > limits::METADATA_DEPTH {
            return Err(Error::invalid(
                field,
                format!("nests more than {} levels deep", limits::METADATA_DEPTH),
            ));
        }
        Ok(match &value.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::BoolValue(b)) => Value::Bool(*b),
            Some(Kind::StringValue(s)) => Value::String(s.clone()),
            Some(Kind::NumberValue(n)) => Value::Number(
                Number::from_f64(*n)
                    .ok_or_else(|| Error::invalid(field, "numbers must be finite"))?,
            ),
            Some(Kind::ListValue(list)) => Value::Array(
                list.values
                    .iter()
                    .map(|v| convert(v, depth + 1, field))
                    .collect::<Result<_, _>>()?,
            ),
            Some(Kind::StructValue(s)) => Value::Object(object(s, depth + 1, field)?),
        })
    }
    fn object(value: &Struct, depth: usize, field: &str) -> Result<Map<String, Value>, Error> {
        value
            .fields
            .iter()
            .map(|(k, v)| Ok((k.clone(), convert(v, depth, field)?)))
            .collect()
    }
    object(value, 1, field)
}

/// Converts JSON back to a protobuf Struct.
pub fn json_to_struct(value: &Map<String, Value>) -> Struct {
    fn convert(value: &Value) -> prost_types::Value {
        let kind = match value {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(convert).collect(),
            }),
            Value::Object(map) => Kind::StructValue(json_to_struct(map)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    Struct {
        fields: value.iter().map(|(k, v)| (k.clone(), convert(v))).collect(),
    }
}

/// Converts a stored token to its protobuf form. There is no secret to leave out: the
/// domain token never has one.
pub fn token_to_pb(token: &Token) -> pb::Token {
    pb::Token {
        id: token.id.to_string(),
        name: token.name.clone(),
        owner: token.owner.clone(),
        r#type: token.token_type.clone(),
        description: token.description.clone(),
        permissions: token.permissions.iter().map(ToString::to_string).collect(),
        read_only: token.read_only,
        allowed_cidrs: token
            .allowed_cidrs
            .iter()
            .map(ToString::to_string)
            .collect(),
        allowed_hosts: token
            .allowed_hosts
            .iter()
            .map(ToString::to_string)
            .collect(),
        bindings: token
            .bindings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metadata: Some(json_to_struct(&token.metadata)),
        enabled: token.enabled,
        create_time: Some(chrono_to_timestamp(token.create_time)),
        update_time: Some(chrono_to_timestamp(token.update_time)),
        last_used_time: token.last_used_time.map(chrono_to_timestamp),
        expire_time: token.expire_time.map(chrono_to_timestamp),
        created_by: token
            .created_by
            .map(|id| id.to_string())
            .unwrap_or_default(),
        display_hint: token.display_hint.clone(),
        use_count: token.use_count,
        last_used_ip: token.last_used_ip.clone().unwrap_or_default(),
        max_uses: token.max_uses.unwrap_or(0),
        uses: token.uses,
        rate_limit: token.rate_limit.map(|limit| pb::RateLimit {
            requests: i64::from(limit.requests),
            interval: Some(prost_types::Duration {
                seconds: limit.interval.as_secs() as i64,
                nanos: limit.interval.subsec_nanos() as i32,
            }),
        }),
        previous_secret_expire_time: token
            .previous_hash
            .and(token.previous_hash_expire_time)
            .map(chrono_to_timestamp),
        secret_reported_time: token.secret_reported_time.map(chrono_to_timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_settable_field_of_the_table_is_parsed_and_nothing_else() {
        let now = Utc::now();
        let source = pb::Token {
            name: "n".into(),
            ..Default::default()
        };
        let mut target = crate::domain::verify::tests::token(&[]);
        for name in fields::settable() {
            apply_field(&mut target, &source, name, now)
                .unwrap_or_else(|e| panic!("{name} is settable but not parsed: {e}"));
        }
        for field in fields::FIELDS {
            if field.change != fields::Change::Settable {
                let err = apply_field(&mut target, &source, field.name, now).unwrap_err();
                assert!(
                    err.to_string().starts_with("update_mask:"),
                    "{}",
                    field.name
                );
            }
        }
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(decode_page_token(&encode_page_token(id)).unwrap(), Some(id));
        assert_eq!(decode_page_token("").unwrap(), None);
        assert!(decode_page_token("not a token!").is_err());
        assert!(decode_page_token("AAAA").is_err());
    }

    #[test]
    fn metadata_round_trips() {
        let json = serde_json::json!({"a": 1.5, "b": [true, null, "x"], "c": {"d": "e"}});
        let map = json.as_object().unwrap();
        assert_eq!(&struct_to_json(&json_to_struct(map), "m").unwrap(), map);
    }

    #[test]
    fn hostile_nesting_is_refused_while_converting() {
        let mut value = prost_types::Value {
            kind: Some(Kind::StringValue("leaf".into())),
        };
        for _ in 0..50 {
            value = prost_types::Value {
                kind: Some(Kind::ListValue(prost_types::ListValue {
                    values: vec![value],
                })),
            };
        }
        let s = Struct {
            fields: [("k".to_owned(), value)].into(),
        };
        let err = struct_to_json(&s, "token.metadata")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("token.metadata:"), "{err}");
    }

    #[test]
    fn bad_timestamps_are_invalid() {
        assert!(
            timestamp_to_chrono(
                &Timestamp {
                    seconds: 0,
                    nanos: -1
                },
                "t"
            )
            .is_err()
        );
        assert!(
            timestamp_to_chrono(
                &Timestamp {
                    seconds: i64::MAX,
                    nanos: 0
                },
                "t"
            )
            .is_err()
        );
        assert!(
            timestamp_to_chrono(
                &Timestamp {
                    seconds: 1,
                    nanos: 5
                },
                "t"
            )
            .is_ok()
        );
    }

    #[test]
    fn list_errors_name_the_index() {
        let err = parse_permissions(&["a:read".into(), "Bad".into()], "token.permissions", 64)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("token.permissions[1]:"),
            "{err}"
        );
        let err =
            parse_permissions(&vec!["a:read".to_owned(); 65], "token.permissions", 64).unwrap_err();
        assert!(err.to_string().contains("more than 64"), "{err}");
    }
}
