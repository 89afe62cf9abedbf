//! How Check and forward auth read requests and answer them: the settings both front
//! ends share.

use ipnet::IpNet;

use super::{requirement::segments, rules::Rules};

/// How Check reads requests and what it tells the upstream.
#[derive(Clone, Debug)]
pub struct CheckSettings {
    /// A header that may carry the secret instead of `Authorization: Bearer` (lowercase).
    pub api_key_header: Option<String>,
    /// A path prefix skipped before the default mapping takes the resource, as segments.
    pub path_prefix: Vec<String>,
    /// Method and path rules, tried in order before the default mapping.
    pub rules: Rules,
    /// Proxies whose `x-forwarded-for` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Names of the headers that tell the upstream whose token it was.
    pub identity_headers: IdentityHeaders,
    /// Whether the credential header goes on to the upstream (by default it is removed).
    pub forward_credential: bool,
    /// The realm in `WWW-Authenticate` challenges.
    pub realm: String,
}

impl Default for CheckSettings {
    fn default() -> Self {
        Self {
            api_key_header: Some("x-api-key".into()),
            path_prefix: Vec::new(),
            rules: Rules::default(),
            trusted_proxies: Vec::new(),
            identity_headers: IdentityHeaders::default(),
            forward_credential: false,
            realm: "token-authority".into(),
        }
    }
}

/// Names of the identity headers set on allowed requests (lowercase).
#[derive(Clone, Debug)]
pub struct IdentityHeaders {
    /// The token's id.
    pub id: String,
    /// The token's owner.
    pub owner: String,
    /// The token's name.
    pub name: String,
    /// The token's type.
    pub kind: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            id: "x-token-id".into(),
            owner: "x-token-owner".into(),
            name: "x-token-name".into(),
            kind: "x-token-type".into(),
        }
    }
}

/// Checks a header name given in configuration and returns it in lowercase.
pub fn header_name(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(format!("{value:?} is not an HTTP header name"))
    }
}

/// Parses a path prefix such as `/api/v1` into its segments.
pub fn path_prefix(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if value.is_empty() || value == "/" {
        return Ok(Vec::new());
    }
    if !value.starts_with('/') || value.contains(['?', '#', '*', '{']) {
        return Err(format!("{value:?} is not a path prefix such as /api/v1"));
    }
    Ok(segments(value)
        .map_err(|e| format!("{value:?}: {e}"))?
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_checked_and_lowercased() {
        assert_eq!(header_name("X-Token-Id").unwrap(), "x-token-id");
        assert!(header_name("").is_err());
        assert!(header_name("x token").is_err());
        assert!(header_name("x:y").is_err());
    }
}
