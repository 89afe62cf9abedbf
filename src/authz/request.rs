//! What an HTTP request to authorize says of itself: its headers, the credential it
//! carries, and the client it came from.

use std::net::IpAddr;

use ipnet::IpNet;

use super::settings::CheckSettings;
use crate::domain::restrictions::{client_address, parse_ip};

/// A request's headers as Envoy sends them (the `headers` map, or `header_map` when Envoy
/// is configured to send raw headers). Names are matched case-insensitively. Kept as the
/// bytes of the request: only the values read are checked to be UTF-8 (a Check reads
/// three or four of Envoy's dozen headers), and a value that is not reads as empty.
pub struct Headers<'a>(Vec<(&'a [u8], &'a [u8])>);

impl<'a> Headers<'a> {
    /// Wraps a request's header names and values.
    pub fn new(pairs: Vec<(&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect(),
        )
    }

    /// Wraps a request's header names and values, as bytes not yet known to be text.
    pub fn from_bytes(pairs: Vec<(&'a [u8], &'a [u8])>) -> Self {
        Self(pairs)
    }

    /// Returns the value of a header; repeated headers come joined with `,` by Envoy.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| std::str::from_utf8(value).unwrap_or_default())
    }
}

/// A presented credential and the header it came in. Its Debug form names the header
/// only: what was presented may be a secret.
#[derive(PartialEq, Eq)]
pub struct Credential<'a> {
    /// The header's name, lowercase, so that it can be removed before the upstream.
    pub header: &'a str,
    /// What was presented (not yet known to be a secret of ours).
    pub presented: &'a str,
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.header)
            .field("presented", &"<redacted>")
            .finish()
    }
}

/// Finds the credential: `Authorization: Bearer <secret>` (scheme in any case), else the
/// configured API-key header. Another `Authorization` scheme is left alone for the upstream.
pub fn credential<'a>(
    headers: &Headers<'a>,
    settings: &'a CheckSettings,
) -> Option<Credential<'a>> {
    if let Some(value) = headers.get("authorization") {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(Credential {
                header: "authorization",
                presented: rest.trim(),
            });
        }
    }
    let header = settings.api_key_header.as_deref()?;
    headers.get(header).map(|value| Credential {
        header,
        presented: value.trim(),
    })
}

/// Works out the client's address: the peer Envoy saw, or, when that peer is a trusted
/// proxy, the rightmost `x-forwarded-for` entry that is not itself a trusted proxy.
/// `None` when it cannot be told (tokens limited to networks then fail closed).
pub fn client_ip(
    source: Option<&str>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    client_address(parse_ip(source?)?, forwarded_for, trusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credentials_debug_form_hides_what_was_presented() {
        let shown = format!(
            "{:?}",
            Credential {
                header: "authorization",
                presented: "ta_secret_value"
            }
        );
        assert!(!shown.contains("ta_secret_value"), "{shown}");
        assert!(shown.contains("authorization"), "{shown}");
    }

    #[test]
    fn header_names_match_in_any_case_and_a_value_not_utf8_reads_as_empty() {
        let headers = Headers::from_bytes(vec![
            (b"X-Api-Key", b"ta_y"),
            (b"x-bad", b"\xff\xfe"),
            (b"\xff", b"ta_z"),
        ]);
        assert_eq!(headers.get("x-api-key"), Some("ta_y"));
        assert_eq!(headers.get("X-BAD"), Some(""));
        assert_eq!(headers.get(""), None);
        assert_eq!(headers.get("x-missing"), None);
    }

    #[test]
    fn the_credential_is_a_bearer_token_or_the_api_key_header() {
        let settings = CheckSettings::default();
        let find = |pairs: &[(&str, &str)]| {
            credential(&Headers::new(pairs.to_vec()), &settings)
                .map(|c| (c.header.to_owned(), c.presented.to_owned()))
        };
        assert_eq!(
            find(&[("authorization", "Bearer ta_x")]),
            Some(("authorization".into(), "ta_x".into()))
        );
        assert_eq!(
            find(&[("Authorization", "bEaReR   ta_x ")]),
            Some(("authorization".into(), "ta_x".into())),
            "scheme and header name in any case"
        );
        assert_eq!(
            find(&[("authorization", "Bearer")]),
            Some(("authorization".into(), "".into()))
        );
        assert_eq!(
            find(&[("authorization", "Basic dXNlcg=="), ("X-Api-Key", "ta_y")]),
            Some(("x-api-key".into(), "ta_y".into())),
            "another scheme is not ours; the api key is"
        );
        assert_eq!(find(&[("authorization", "Basic dXNlcg==")]), None);
        assert_eq!(find(&[]), None);

        assert_eq!(
            find(&[("X-API-KEY", "ta_z")]),
            Some(("x-api-key".into(), "ta_z".into()))
        );
        let no_key = CheckSettings {
            api_key_header: None,
            ..CheckSettings::default()
        };
        let headers = Headers::new(vec![("x-api-key", "ta_y")]);
        assert_eq!(credential(&headers, &no_key), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            client_ip(Some("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(Some("10.0.0.2"), Some("1.2.3.4"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(
                Some("10.0.0.2"),
                Some("6.6.6.6, 1.2.3.4, 10.0.0.7"),
                &trusted
            ),
            ip("1.2.3.4"),
            "the rightmost untrusted hop, not the client-written leftmost"
        );
        assert_eq!(
            client_ip(Some("10.0.0.2"), Some("10.0.0.9"), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(client_ip(Some("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(Some("10.0.0.2"), Some("garbage"), &trusted), None);
        assert_eq!(
            client_ip(Some("::1"), Some("[2001:db8::1]:443"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(Some("::ffff:192.0.2.1"), None, &[]),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_ip(Some("10.0.0.2"), Some("1.2.3.4"), &[]),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(None, Some("1.2.3.4"), &trusted), None);
        assert_eq!(client_ip(Some("/tmp/socket"), None, &trusted), None);
    }
}
