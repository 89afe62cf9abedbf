//! A token as the Verify cache keeps it: its protobuf encoding (what Verify answers with,
//! so a cache hit encodes nothing) plus the few fields every check reads. The list fields
//! the rules need (permissions, networks, hosts, bindings) are read from the encoding in
//! place, without allocating. About 400 bytes per token instead of ~2 KB as a `Token`.

use std::net::IpAddr;

use once_cell::race::OnceBox;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use prost::Message;
use uuid::Uuid;

use crate::{
    domain::{
        permission::Permission,
        restrictions::{Cidr, host_pattern_matches, normalize_host},
        token::{RateLimit, Token},
        verify::Subject,
    },
    grpc::convert::token_to_pb,
};

// Field numbers of tokenauthority.v1.Token (proto/tokenauthority/v1/token.proto).
const NAME: u32 = 2;
const OWNER: u32 = 3;
const TYPE: u32 = 4;
const PERMISSIONS: u32 = 6;
const ALLOWED_CIDRS: u32 = 8;
const ALLOWED_HOSTS: u32 = 9;
const BINDINGS: u32 = 10;
// Fields of a map entry.
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;

/// A cached token: the encoded `tokenauthority.v1.Token` and what the checks need first.
#[derive(Debug)]
pub struct EncodedToken {
    /// The token's id, for usage bookkeeping.
    pub id: Uuid,
    enabled: bool,
    read_only: bool,
    expire_time: Option<DateTime<Utc>>,
    restricts_networks: bool,
    restricts_hosts: bool,
    has_bindings: bool,
    usage_limited: bool,
    /// The rate limit as (requests, interval in ms); (0, 0) for none. Packed: every byte
    /// here is paid once per cached token.
    rate: (u32, u32),
    encoded: Bytes,
    /// Where in `encoded` the permissions are (from the first one's key to the last one's
    /// end), so that judging one scans only them.
    permissions: (u32, u32),
    /// The ext_authz answer allowing this token, encoded by the first Check that needs it.
    allowed_check: OnceBox<AllowedCheck>,
    /// The forward-auth answer's identity header values, made by the first that needs them.
    identity_values: OnceBox<[http::HeaderValue; 4]>,
}

/// An allowed ext_authz Check answer for one token, encoded once (see `grpc::ext_authz`).
#[derive(Debug)]
pub struct AllowedCheck {
    /// The encoded OkHttpResponse when the secret came as `Authorization: Bearer`.
    pub by_bearer: Bytes,
    /// The encoded OkHttpResponse when it came in the API-key header.
    pub by_api_key: Bytes,
    /// The encoded `dynamic_metadata` Struct.
    pub metadata: Bytes,
}

impl EncodedToken {
    /// Encodes a token once, for every later Verify that finds it in the cache.
    pub fn new(token: &Token) -> Self {
        let encoded = Bytes::from(token_to_pb(token).encode_to_vec());
        Self {
            permissions: span_of(&encoded, PERMISSIONS),
            id: token.id,
            enabled: token.enabled,
            read_only: token.read_only,
            expire_time: token.expire_time,
            restricts_networks: !token.allowed_cidrs.is_empty(),
            restricts_hosts: !token.allowed_hosts.is_empty(),
            has_bindings: !token.bindings.is_empty(),
            usage_limited: token.max_uses.is_some(),
            rate: token.rate_limit.map_or((0, 0), |limit| {
                (limit.requests, limit.interval.as_millis() as u32)
            }),
            encoded,
            allowed_check: OnceBox::new(),
            identity_values: OnceBox::new(),
        }
    }

    /// Returns the forward-auth identity header values (id, owner, name, type), made on
    /// first use. A value that cannot be a header value is sent empty.
    pub fn identity_values(&self) -> &[http::HeaderValue; 4] {
        self.identity_values.get_or_init(|| {
            let value = |text: &str| {
                http::HeaderValue::from_bytes(text.as_bytes())
                    .unwrap_or(http::HeaderValue::from_static(""))
            };
            Box::new([
                value(&self.id.to_string()),
                value(self.owner()),
                value(self.name()),
                value(self.token_type()),
            ])
        })
    }

    /// Returns the allowed Check answer for this token, building it on first use.
    pub fn allowed_check(&self, build: impl FnOnce(&Self) -> AllowedCheck) -> &AllowedCheck {
        self.allowed_check.get_or_init(|| Box::new(build(self)))
    }

    /// Returns the encoded `tokenauthority.v1.Token`.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// Returns the token's name.
    pub fn name(&self) -> &str {
        self.strings(NAME).next().unwrap_or_default()
    }

    /// Returns the token's owner.
    pub fn owner(&self) -> &str {
        self.strings(OWNER).next().unwrap_or_default()
    }

    /// Returns the token's type.
    pub fn token_type(&self) -> &str {
        self.strings(TYPE).next().unwrap_or_default()
    }

    /// Returns the token's permissions, as stored (`resource:action`).
    pub fn permissions(&self) -> impl Iterator<Item = &str> {
        self.permission_bytes()
            .filter_map(|bytes| std::str::from_utf8(bytes).ok())
    }

    /// The encoded permissions, as bytes.
    fn permission_bytes(&self) -> impl Iterator<Item = &[u8]> {
        let (start, end) = self.permissions;
        let end = (end as usize).min(self.encoded.len());
        let within = self.encoded.get(start as usize..end).unwrap_or_default();
        Fields::new(within).filter_map(|(number, value)| match value {
            Value::Bytes(bytes) if number == PERMISSIONS => Some(bytes),
            _ => None,
        })
    }

    /// Returns the values of a repeated string field, as bytes.
    fn strings(&self, field: u32) -> impl Iterator<Item = &str> {
        Fields::new(&self.encoded).filter_map(move |(number, value)| match value {
            Value::Bytes(bytes) if number == field => std::str::from_utf8(bytes).ok(),
            _ => None,
        })
    }
}

impl Subject for EncodedToken {
    fn id(&self) -> Uuid {
        self.id
    }

    fn usage_limited(&self) -> bool {
        self.usage_limited
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        let (requests, interval_ms) = self.rate;
        (requests > 0).then(|| RateLimit {
            requests,
            interval: std::time::Duration::from_millis(u64::from(interval_ms)),
        })
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn expire_time(&self) -> Option<DateTime<Utc>> {
        self.expire_time
    }

    fn restricts_networks(&self) -> bool {
        self.restricts_networks
    }

    fn network_allows(&self, ip: IpAddr) -> bool {
        self.strings(ALLOWED_CIDRS)
            .any(|cidr| Cidr::parse(cidr).is_ok_and(|cidr| cidr.contains(ip)))
    }

    fn restricts_hosts(&self) -> bool {
        self.restricts_hosts
    }

    fn host_allows(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.strings(ALLOWED_HOSTS)
            .any(|pattern| host_pattern_matches(pattern, &host))
    }

    fn has_bindings(&self) -> bool {
        self.has_bindings
    }

    fn binding(&self, key: &str) -> Option<&str> {
        if !self.has_bindings {
            return None;
        }
        Fields::new(&self.encoded)
            .filter_map(|(number, value)| match value {
                Value::Bytes(entry) if number == BINDINGS => Some(entry),
                _ => None,
            })
            .find_map(|entry| {
                let (mut found_key, mut found_value) = (None, None);
                for (number, value) in Fields::new(entry) {
                    if let Value::Bytes(bytes) = value {
                        match number {
                            MAP_KEY => found_key = std::str::from_utf8(bytes).ok(),
                            MAP_VALUE => found_value = std::str::from_utf8(bytes).ok(),
                            _ => {}
                        }
                    }
                }
                (found_key == Some(key)).then(|| found_value.unwrap_or(""))
            })
    }

    fn allows(&self, required: &Permission) -> bool {
        self.permission_bytes()
            .any(|held| required.is_covered_by_text(held))
    }
}

/// Where the fields numbered `number` are in an encoded message: from the first one's key
/// to the end of the last one, (0, 0) when there is none. Every field in between is whole,
/// so the span decodes on its own.
fn span_of(encoded: &[u8], number: u32) -> (u32, u32) {
    let mut fields = Fields::new(encoded);
    let (mut first, mut last) = (None, 0);
    loop {
        let start = encoded.len() - fields.buf.len();
        let Some((found, _)) = fields.next() else {
            break;
        };
        if found == number {
            first.get_or_insert(start);
            last = encoded.len() - fields.buf.len();
        }
    }
    match (first, u32::try_from(last)) {
        (Some(first), Ok(last)) => (first as u32, last),
        // Past 4 GiB (never: a token is a few KiB): the whole message, clamped when read.
        (Some(_), Err(_)) => (0, u32::MAX),
        (None, _) => (0, 0),
    }
}

/// One field's value in the protobuf wire format.
enum Value<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of an encoded message, in order. Stops at the first malformed byte (the
/// input is our own encoding, so that does not happen).
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self.buf.split_first()?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    fn skip(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.buf.len() {
            self.buf = &[];
            return None;
        }
        let (taken, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(taken)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u32, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).ok()?;
        let value = match key & 7 {
            0 => self.varint().map(|_| Value::Varint)?,
            1 => self.skip(8).map(|_| Value::Fixed)?,
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                Value::Bytes(self.skip(len)?)
            }
            5 => self.skip(4).map(|_| Value::Fixed)?,
            _ => {
                self.buf = &[];
                return None;
            }
        };
        Some((number, value))
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::{
        restrictions::HostPattern,
        verify::{Usage, evaluate, tests::token},
    };

    /// A token with every restriction, and uses that hit every rule.
    fn restricted() -> Token {
        let mut t = token(&["domains:*", "*:read", "backends:write"]);
        t.allowed_cidrs = vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("2001:db8::/32").unwrap(),
        ];
        t.allowed_hosts = vec![
            HostPattern::parse("api.example.com").unwrap(),
            HostPattern::parse("*.corp.example.com").unwrap(),
        ];
        t.bindings.insert("reportId".into(), "r-17".into());
        t.bindings.insert("datasourceId".into(), "d-2".into());
        t.metadata = serde_json::json!({"team": "blue", "nested": {"k": [1, 2]}})
            .as_object()
            .unwrap()
            .clone();
        t.description = "a description long enough to need a two-byte length varint: ".repeat(3);
        t
    }

    fn uses() -> Vec<Usage<'static>> {
        let ips = [
            None,
            Some("10.1.2.3"),
            Some("192.168.0.1"),
            Some("2001:db8::1"),
            Some("::ffff:10.0.0.1"),
        ];
        let hosts = [
            None,
            Some("api.example.com"),
            Some("x.corp.example.com:443"),
            Some("evil.com"),
        ];
        let bindings = [
            vec![],
            vec![("reportId", "r-17")],
            vec![("reportId", "r-18")],
            vec![("datasourceId", "d-2"), ("other", "x")],
        ];
        let required = [
            vec![],
            vec!["domains:delete"],
            vec!["reports:read"],
            vec!["reports:write"],
            vec!["backends:write", "x:read"],
            vec!["*:*"],
        ];
        let mut uses = Vec::new();
        for ip in ips {
            for host in hosts {
                for binding in &bindings {
                    for permissions in &required {
                        uses.push(Usage {
                            required: permissions
                                .iter()
                                .map(|p| Permission::parse(p).unwrap())
                                .collect(),
                            client_ip: ip.map(|ip| ip.parse().unwrap()),
                            host: host.map(|h| h.to_owned().into()),
                            bindings: binding
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                            unsatisfiable: None,
                            bound_key_required: false,
                        });
                    }
                }
            }
        }
        uses
    }

    #[test]
    fn the_encoded_form_is_judged_exactly_like_the_token() {
        let now = Utc::now();
        let mut variants = vec![restricted(), token(&["a:read"]), token(&[])];
        let mut read_only = restricted();
        read_only.read_only = true;
        variants.push(read_only);
        let mut expired = restricted();
        expired.expire_time = Some(now - Duration::seconds(1));
        variants.push(expired);
        let mut disabled = token(&["*:*"]);
        disabled.enabled = false;
        variants.push(disabled);
        for t in &variants {
            let encoded = EncodedToken::new(t);
            for usage in uses() {
                assert_eq!(
                    evaluate(&encoded, &usage, now),
                    evaluate(t, &usage, now),
                    "{usage:?}"
                );
            }
        }
    }

    #[test]
    fn the_encoding_decodes_to_the_token() {
        let t = restricted();
        let encoded = EncodedToken::new(&t);
        let decoded = crate::pb::v1::Token::decode(encoded.encoded().clone()).unwrap();
        assert_eq!(decoded, token_to_pb(&t));
        assert_eq!(encoded.binding("reportId"), Some("r-17"));
        assert_eq!(encoded.binding("nope"), None);
        assert_eq!(encoded.rate_limit(), None);
        assert!(!encoded.usage_limited());
        let mut limited = t.clone();
        limited.max_uses = Some(5);
        limited.rate_limit = Some(
            crate::domain::token::RateLimit::new(7, std::time::Duration::from_millis(86_400_000))
                .unwrap(),
        );
        let packed = EncodedToken::new(&limited);
        assert_eq!(packed.rate_limit(), limited.rate_limit);
        assert!(packed.usage_limited());
        assert_eq!(encoded.name(), t.name);
        assert_eq!(encoded.owner(), t.owner);
        assert_eq!(encoded.token_type(), t.token_type);
        assert_eq!(EncodedToken::new(&token(&[])).permissions().count(), 0);
        let (start, end) = encoded.permissions;
        assert!(0 < start && start < end && (end as usize) < encoded.encoded().len());
        assert_eq!(
            encoded.permissions().collect::<Vec<_>>(),
            t.permissions
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        );
    }
}
