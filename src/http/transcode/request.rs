//! A request message from an HTTP request, by its rule: the JSON body where the rule puts
//! it, then the path's variables, then the query's parameters, read together by the
//! message's descriptor in the protojson mapping (lowerCamelCase or proto names, RFC 3339
//! timestamps, `"3600s"` durations, a FieldMask as `"a,b"`, unknown fields refused).
//! Every refusal names the field and quotes none of the values: a body may hold secrets.

use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::{Map, Value};

use super::{
    query::{self, Put},
    rules::{BodyRule, Rule, field_path},
};
use crate::error::Error;

/// Builds the request message of `rule` from the bound path variables, the query string
/// and the body.
pub fn build(
    rule: &Rule,
    bound: Vec<(String, String)>,
    query_string: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, Error> {
    let input = rule.rpc.input();
    let mut root = Map::new();
    let has_body = body.iter().any(|b| !b.is_ascii_whitespace());
    match (&rule.body, has_body) {
        (_, false) => {}
        (BodyRule::None, true) => {
            return Err(Error::invalid(
                "body",
                "this route takes no body; give the fields as query parameters",
            ));
        }
        (BodyRule::All, true) => match parse_json(body)? {
            Value::Object(object) => root = object,
            _ => return Err(Error::invalid("body", "expected a JSON object")),
        },
        (BodyRule::Field(field), true) => {
            root.insert(field.json_name().to_owned(), parse_json(body)?);
        }
    }
    for (path, text) in bound {
        let fields = field_path(&input, &path).map_err(|e| Error::invalid(&path, e))?;
        let leaf = fields
            .last()
            .ok_or_else(|| Error::invalid(&path, "no such field"))?;
        let value = query::value_of(leaf, &text).map_err(|e| Error::invalid(&path, e))?;
        query::put(&mut root, &fields, Put::Set { overwrite: true }, value)
            .map_err(|e| Error::invalid(&path, e))?;
    }
    if let Some(text) = query_string.filter(|q| !q.is_empty()) {
        for (name, value) in query::parse(text) {
            let shown = query::echo(&name);
            let refuse = |why: &str| Error::invalid(format!("query parameter {shown}"), why);
            if matches!(rule.body, BodyRule::All) {
                return Err(refuse("not taken here: the JSON body carries the request"));
            }
            let (fields, how) = query::resolve(&input, &name).map_err(|e| refuse(&e))?;
            let top = &fields[0];
            if matches!(&rule.body, BodyRule::Field(f) if f == top) {
                return Err(refuse("given in the body"));
            }
            if rule
                .template
                .variables()
                .any(|v| v.split('.').next() == Some(top.name()))
            {
                return Err(refuse("given in the path"));
            }
            let leaf = &fields[fields.len() - 1];
            let value = query::value_of(leaf, &value).map_err(|e| refuse(&e))?;
            query::put(&mut root, &fields, how, value).map_err(|e| refuse(&e))?;
        }
    }
    decode(&input, Value::Object(root))
}

fn parse_json(body: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(body).map_err(|error| {
        Error::invalid(
            "body",
            format!(
                "not valid JSON (line {}, column {})",
                error.line(),
                error.column()
            ),
        )
    })
}

/// Reads the JSON into the message, naming the wrong field on a refusal.
fn decode(input: &prost_reflect::MessageDescriptor, json: Value) -> Result<DynamicMessage, Error> {
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(json, &mut track);
    match DynamicMessage::deserialize_with_options(input.clone(), deserializer, &options) {
        Ok(message) => Ok(message),
        Err(error) => {
            let path = shown_path(&track.path());
            let field = if path.is_empty() {
                "body".to_owned()
            } else {
                format!("body.{path}")
            };
            Err(Error::invalid(field, described(&error.to_string())))
        }
    }
}

/// A serde path as `token.permissions[0]`, with keys that are not plain names hidden.
fn shown_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(if query::plain(key) { key } else { "…" });
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// What was wrong, from a deserializer's message, in fixed words: a message quotes the
/// input (a value, an unknown key), and a value may be a secret, so none of it is passed
/// on. Only what the deserializer expected (type names, the schema's field and enum
/// names) is kept, and only when it is plain text.
fn described(message: &str) -> String {
    let expected = message
        .rsplit_once(", expected ")
        .map(|(_, e)| e.trim_end_matches(|c: char| c == '.' || c.is_whitespace()))
        .filter(|e| {
            // Type and field names: short words, nothing the length of a secret.
            e.len() <= 200
                && e.chars()
                    .all(|c| c.is_ascii_alphanumeric() || " ,_-.`()".contains(c))
                && e.split(|c: char| !c.is_ascii_alphanumeric())
                    .all(|w| w.len() < 24)
        });
    let what = if message.starts_with("invalid type") {
        "wrong type"
    } else if message.starts_with("unknown field") || message.starts_with("unrecognized field") {
        "unknown field"
    } else if message.starts_with("duplicate field") {
        "field given twice"
    } else if message.contains("recursion limit") {
        "nested too deeply"
    } else if message.starts_with("missing field") {
        "missing field"
    } else {
        "invalid value"
    };
    match expected {
        Some(expected) if what != "unknown field" => format!("{what}, expected {expected}"),
        _ => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_quote_nothing_of_the_input() {
        let secret = "ta_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM";
        for message in [
            format!("invalid type: string \"\\\"{secret}\\\"\", expected a list"),
            format!("unrecognized field name 'x'{secret}'"),
            format!("unknown field `{secret}`, expected one of `token`, `ttl`"),
            format!("invalid value: {secret}"),
            format!("invalid value: x, expected {secret}"),
            secret.to_owned(),
        ] {
            let shown = described(&message);
            assert!(!shown.contains("ta_0123"), "{message} -> {shown}");
        }
        assert_eq!(
            described("invalid type: string \"x\", expected a list"),
            "wrong type, expected a list"
        );
        assert_eq!(
            described("unknown field `x`, expected `a`"),
            "unknown field"
        );
        assert_eq!(described("recursion limit exceeded"), "nested too deeply");
    }
}
