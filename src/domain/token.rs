//! The token record and the rules for each field a client may set.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    permission::Permission,
    restrictions::{Cidr, HostPattern},
    secret::{SecretHash, TokenSecret},
};

/// Limits on what a client may put in a token; exceeding one is `InvalidArgument`.
pub mod limits {
    /// Characters in a name.
    pub const NAME_LEN: usize = 128;
    /// Characters in an owner.
    pub const OWNER_LEN: usize = 128;
    /// Characters in a type.
    pub const TYPE_LEN: usize = 64;
    /// Characters in a description.
    pub const DESCRIPTION_LEN: usize = 1024;
    /// Permissions on one token.
    pub const PERMISSIONS: usize = 64;
    /// Entries in allowed_cidrs.
    pub const CIDRS: usize = 32;
    /// Entries in allowed_hosts.
    pub const HOSTS: usize = 32;
    /// Bindings on one token, or in one Verify request.
    pub const BINDINGS: usize = 32;
    /// Characters in a binding key.
    pub const BINDING_KEY_LEN: usize = 64;
    /// Characters in a binding value.
    pub const BINDING_VALUE_LEN: usize = 256;
    /// Bytes of metadata, encoded as JSON.
    pub const METADATA_BYTES: usize = 8 * 1024;
    /// Nesting depth of metadata.
    pub const METADATA_DEPTH: usize = 8;
    /// Permissions required in one Verify request.
    pub const REQUIRED_PERMISSIONS: usize = 64;
    /// Bytes in a presented token or host, past which it is rejected unread.
    pub const PRESENTED_LEN: usize = 512;
    /// The most requests a rate limit may allow per interval.
    pub const RATE_REQUESTS: u32 = 1_000_000;
    /// The most uses `max_uses` may allow.
    pub const MAX_USES: i64 = 1_000_000_000_000;
    /// The longest grace period of a rotation: 30 days.
    pub const GRACE_SECONDS: i64 = 30 * 24 * 3600;
}

/// Returns the current time at the microsecond precision both stores keep, so that what
/// a call returns equals what a later read returns.
pub fn now() -> DateTime<Utc> {
    use std::time::{SystemTime, UNIX_EPOCH};
    // Whole microseconds from the clock directly: a third of the instructions of
    // `Utc::now().trunc_subsecs(6)`, on every Verify.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| {
            DateTime::from_timestamp(
                i64::try_from(since.as_secs()).ok()?,
                since.subsec_micros() * 1_000,
            )
        })
        .unwrap_or_else(|| {
            use chrono::SubsecRound;
            Utc::now().trunc_subsecs(6)
        })
}

/// The type of tokens created without one.
pub const DEFAULT_TYPE: &str = "personal";

/// A bearer token as stored: everything but its secret, of which only the hash is kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// UUIDv7, so ids sort by creation time.
    pub id: Uuid,
    /// Unique among the tokens of the same owner.
    pub name: String,
    /// Who the token belongs to.
    pub owner: String,
    /// The kind of token, e.g. `personal`.
    pub token_type: String,
    /// Free text for people.
    pub description: String,
    /// What the token may do.
    pub permissions: Vec<Permission>,
    /// Whether only `read` actions are satisfied.
    pub read_only: bool,
    /// Client networks the token may be used from; empty is anywhere.
    pub allowed_cidrs: Vec<Cidr>,
    /// Hosts the token may be used at; empty is any.
    pub allowed_hosts: Vec<HostPattern>,
    /// Resources the token is tied to.
    pub bindings: BTreeMap<String, String>,
    /// Free-form data.
    pub metadata: Map<String, Value>,
    /// Disabled tokens are kept but fail verification.
    pub enabled: bool,
    /// When it was created.
    pub create_time: DateTime<Utc>,
    /// When it was last changed.
    pub update_time: DateTime<Utc>,
    /// When it was last verified successfully.
    pub last_used_time: Option<DateTime<Utc>>,
    /// The client address of the last successful verification.
    pub last_used_ip: Option<String>,
    /// How many successful verifications.
    pub use_count: i64,
    /// When it stops being valid.
    pub expire_time: Option<DateTime<Utc>>,
    /// The token that created this one; none for bootstrap tokens.
    pub created_by: Option<Uuid>,
    /// The secret's prefix and first characters.
    pub display_hint: String,
    /// The SHA-256 of the secret: the store's and the cache's key. Not a secret itself,
    /// and never returned by the API.
    pub secret_hash: SecretHash,
    /// Bumped on every change, for optimistic concurrency.
    pub revision: i64,
    /// After a rotation with a grace period, the previous secret's hash, which verifies
    /// until `previous_hash_expire_time`.
    pub previous_hash: Option<SecretHash>,
    /// When the previous secret stops verifying.
    pub previous_hash_expire_time: Option<DateTime<Utc>>,
    /// At most this many successful verifications in total.
    pub max_uses: Option<i64>,
    /// Successful verifications counted against `max_uses`, exactly.
    pub uses: i64,
    /// At most this many successful verifications per interval, per replica.
    pub rate_limit: Option<RateLimit>,
    /// When the current secret was reported leaked. Until a rotation replaces that
    /// secret (and clears this), the token cannot be enabled: the secret would work again.
    pub secret_reported_time: Option<DateTime<Utc>>,
}

/// A request rate: `requests` per `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// 1 to [`limits::RATE_REQUESTS`].
    pub requests: u32,
    /// 1 second to a day, in whole milliseconds.
    pub interval: std::time::Duration,
}

impl RateLimit {
    /// Checks a rate limit's parts.
    pub fn new(requests: i64, interval: std::time::Duration) -> Result<Self, String> {
        if !(1..=limits::RATE_REQUESTS as i64).contains(&requests) {
            return Err(format!("requests must be 1 to {}", limits::RATE_REQUESTS));
        }
        if interval < std::time::Duration::from_secs(1)
            || interval > std::time::Duration::from_secs(86_400)
            || !interval.subsec_nanos().is_multiple_of(1_000_000)
        {
            return Err("interval must be 1s to 1 day, in whole milliseconds".into());
        }
        Ok(Self {
            requests: requests as u32,
            interval,
        })
    }
}

impl Token {
    /// Starts a new token for `owner` with the given secret: enabled, no permissions, no
    /// restrictions, the default type, an empty name for the caller to set.
    pub fn new(
        owner: String,
        secret: &TokenSecret,
        created_by: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Self {
        Token {
            id: Uuid::now_v7(),
            name: String::new(),
            owner,
            token_type: DEFAULT_TYPE.to_owned(),
            description: String::new(),
            permissions: Vec::new(),
            read_only: false,
            allowed_cidrs: Vec::new(),
            allowed_hosts: Vec::new(),
            bindings: BTreeMap::new(),
            metadata: Map::new(),
            enabled: true,
            create_time: now,
            update_time: now,
            last_used_time: None,
            last_used_ip: None,
            use_count: 0,
            expire_time: None,
            created_by,
            display_hint: secret.display_hint(),
            secret_hash: secret.hash(),
            revision: 1,
            previous_hash: None,
            previous_hash_expire_time: None,
            max_uses: None,
            uses: 0,
            rate_limit: None,
            secret_reported_time: None,
        }
    }

    /// Returns whether the token holds `*:*`, which lets it manage every owner's tokens.
    pub fn is_admin(&self) -> bool {
        self.permissions.contains(&Permission::all())
    }

    /// Returns whether the token has expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expire_time.is_some_and(|at| at <= now)
    }
}

/// Checks a token name: 1 to 128 characters, no control characters, no leading or
/// trailing whitespace.
pub fn parse_name(value: &str) -> Result<String, String> {
    check_text(value, limits::NAME_LEN, true)?;
    if value.trim() != value {
        return Err("must not start or end with whitespace".into());
    }
    Ok(value.to_owned())
}

/// Checks an owner: 1 to 128 letters, digits and `.-_@:`.
pub fn parse_owner(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= limits::OWNER_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@:".contains(&b));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "must be 1 to {} letters, digits or . _ - @ :",
            limits::OWNER_LEN
        ))
    }
}

/// Checks a token type: 1 to 64 lowercase letters, digits, `-` and `_`, starting with a letter.
pub fn parse_type(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= limits::TYPE_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "must be 1 to {} lowercase letters, digits, - or _, starting with a letter",
            limits::TYPE_LEN
        ))
    }
}

/// Checks a description: at most 1024 characters, no control characters but newlines and tabs.
pub fn parse_description(value: &str) -> Result<String, String> {
    check_text(value, limits::DESCRIPTION_LEN, false)?;
    Ok(value.to_owned())
}

/// Checks a binding key (letters, digits, `.`, `-`, `_`, at most 64) and value (printable,
/// at most 256 characters).
pub fn check_binding(key: &str, value: &str) -> Result<(), String> {
    let key_ok = !key.is_empty()
        && key.len() <= limits::BINDING_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !key_ok {
        return Err(format!(
            "key {:?} must be 1 to {} letters, digits, . - or _",
            key.chars().take(80).collect::<String>(),
            limits::BINDING_KEY_LEN
        ));
    }
    check_text(value, limits::BINDING_VALUE_LEN, true).map_err(|e| format!("value of {key}: {e}"))
}

/// Checks metadata against the size and depth limits.
pub fn check_metadata(metadata: &Map<String, Value>) -> Result<(), String> {
    fn depth(value: &Value) -> usize {
        match value {
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let levels = 1 + metadata.values().map(depth).max().unwrap_or(0);
    if levels > limits::METADATA_DEPTH {
        return Err(format!(
            "nests {levels} levels deep, more than {}",
            limits::METADATA_DEPTH
        ));
    }
    let size = serde_json::to_vec(metadata)
        .map(|json| json.len())
        .unwrap_or(usize::MAX);
    if size > limits::METADATA_BYTES {
        return Err(format!(
            "is {size} bytes as JSON, more than {}",
            limits::METADATA_BYTES
        ));
    }
    Ok(())
}

/// Checks a list's length against its limit.
pub fn check_count(len: usize, max: usize) -> Result<(), String> {
    if len > max {
        Err(format!("has {len} entries, more than {max}"))
    } else {
        Ok(())
    }
}

fn check_text(value: &str, max_chars: usize, required: bool) -> Result<(), String> {
    if required && value.is_empty() {
        return Err("is required".into());
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(format!("is {chars} characters, more than {max_chars}"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && (required || (c != '\n' && c != '\t')))
    {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn now_is_the_clock_in_whole_microseconds() {
        let before = Utc::now();
        let at = now();
        let after = Utc::now();
        assert_eq!(at.timestamp_subsec_nanos() % 1_000, 0);
        assert!(
            before - chrono::Duration::microseconds(1) <= at && at <= after,
            "{at}"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(parse_name("ci deploy key").is_ok());
        assert!(parse_name("ключ").is_ok());
        assert!(parse_name("").is_err());
        assert!(parse_name(" padded").is_err());
        assert!(parse_name("tab\there").is_err());
        assert!(parse_name(&"n".repeat(128)).is_ok());
        assert!(parse_name(&"n".repeat(129)).is_err());
    }

    #[test]
    fn owners_and_types_are_checked() {
        assert!(parse_owner("team-a@example.com").is_ok());
        assert!(parse_owner("svc:billing").is_ok());
        assert!(parse_owner("").is_err());
        assert!(parse_owner("has space").is_err());
        assert!(parse_type("personal").is_ok());
        assert!(parse_type("Personal").is_err());
        assert!(parse_type("9x").is_err());
    }

    #[test]
    fn descriptions_allow_newlines_but_not_other_controls() {
        assert!(parse_description("").is_ok());
        assert!(parse_description("line one\nline two\tend").is_ok());
        assert!(parse_description("bell\u{7}").is_err());
        assert!(parse_description(&"d".repeat(1025)).is_err());
    }

    #[test]
    fn bindings_are_checked() {
        assert!(check_binding("reportId", "r-17").is_ok());
        assert!(check_binding("", "x").is_err());
        assert!(check_binding("report id", "x").is_err());
        assert!(check_binding("reportId", "").is_err());
        assert!(check_binding("reportId", &"v".repeat(257)).is_err());
    }

    #[test]
    fn metadata_limits_depth_and_size() {
        let ok = json!({"team": "blue", "tags": ["a", "b"], "n": 1.5});
        assert!(check_metadata(ok.as_object().unwrap()).is_ok());
        let mut deep = json!("leaf");
        for _ in 0..8 {
            deep = json!({ "k": deep });
        }
        assert!(
            check_metadata(deep.as_object().unwrap()).is_ok(),
            "8 levels are allowed"
        );
        deep = json!({ "k": deep });
        let err = check_metadata(deep.as_object().unwrap()).unwrap_err();
        assert!(err.contains("deep"), "{err}");
        let big = json!({ "blob": "x".repeat(9000) });
        assert!(
            check_metadata(big.as_object().unwrap())
                .unwrap_err()
                .contains("bytes")
        );
    }
}
