//! GitHub's secret scanning partner program: the matches GitHub sends, the feedback we may
//! answer with, and (in [`keys`]) the check that a request really came from GitHub.
//!
//! As GitHub documents it ("Secret scanning partner program", docs.github.com): GitHub
//! `POST`s a JSON array of matches, each `{"token", "type", "url", "source"}`, signed
//! with ECDSA P-256 over the raw body (headers `Github-Public-Key-Identifier` and
//! `Github-Public-Key-Signature`). The answer may carry feedback: a JSON array of
//! `{"token_hash", "token_type", "label"}`, the hash being SHA-256 of the token and the
//! label `true_positive` or `false_positive`.

mod keys;

use std::fmt;

use serde::{
    Deserialize, Serialize,
    de::{self, SeqAccess, Visitor},
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use keys::{
    FETCH_TIMEOUT, GithubKeys, KEY_ID_HEADER, KEYS_URL, MAX_KEYS_SIZE, REFETCH_INTERVAL,
    SIGNATURE_HEADER, SignatureError,
};

/// The most matches one request may carry: as many as one leak report takes.
pub const MAX_MATCHES: usize = crate::domain::leak::MAX_SECRETS;

/// One secret GitHub found. Its `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Match {
    token: String,
    token_type: String,
    url: String,
    source: String,
}

impl Match {
    /// Returns the text GitHub matched, as found: maybe one of our secrets, maybe not.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Returns the name of the pattern that matched (`type`), as GitHub sent it.
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// Returns the public URL where the token was found; empty when GitHub gave none.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns where on GitHub the token was found (`content`, `commit`, `issue_comment`,
    /// `npm`, …) as sent; empty when GitHub gave none (its older payloads had no `source`).
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Match")
            .field(
                "token",
                &format_args!("<redacted, {} bytes>", self.token.len()),
            )
            .field("token_type", &self.token_type)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

/// Parses the body of GitHub's request: a JSON array of at most [`MAX_MATCHES`] objects,
/// each with a non-empty string `token` and `type`, and optional string `url` and `source`;
/// other fields are ignored, as GitHub adds fields over time. The error says what is wrong
/// and where, and never quotes the body.
pub fn parse_matches(body: &[u8]) -> Result<Vec<Match>, String> {
    // serde_json's type errors quote the string they found, which could be a secret; with
    // the top level known to be an array and each entry taken as a `Value`, its only errors
    // left are syntax errors (fixed texts) and our own.
    if body.trim_ascii_start().first() != Some(&b'[') {
        return Err("the body must be a JSON array of matches".into());
    }
    let Bounded(entries) = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            format!("the body holds more than {MAX_MATCHES} matches")
        } else {
            format!("the body is not valid JSON: {e}")
        }
    })?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| parse_match(i, entry))
        .collect()
}

fn parse_match(i: usize, entry: Value) -> Result<Match, String> {
    let Value::Object(mut fields) = entry else {
        return Err(format!("matches[{i}] must be a JSON object"));
    };
    let mut field = |name: &str, required: bool| {
        take_string(&mut fields, name, required)
            .map_err(|problem| format!("matches[{i}].{name} {problem}"))
    };
    Ok(Match {
        token: field("token", true)?,
        token_type: field("type", true)?,
        url: field("url", false)?,
        source: field("source", false)?,
    })
}

/// Takes the string field `name`; an optional one may be missing or null (then empty).
fn take_string(
    fields: &mut Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<String, &'static str> {
    match fields.remove(name) {
        Some(Value::String(text)) if required && text.is_empty() => Err("must not be empty"),
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) if !required => Ok(String::new()),
        None => Err("is missing"),
        Some(_) => Err("must be a string"),
    }
}

/// The top-level array, read one entry at a time so that counting stops at the limit.
struct Bounded(Vec<Value>);

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(BoundedVisitor)
    }
}

struct BoundedVisitor;

impl<'de> Visitor<'de> for BoundedVisitor {
    type Value = Bounded;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of at most {MAX_MATCHES} matches")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bounded, A::Error> {
        let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_MATCHES));
        while let Some(entry) = seq.next_element::<Value>()? {
            if entries.len() == MAX_MATCHES {
                return Err(de::Error::custom("too many matches"));
            }
            entries.push(entry);
        }
        Ok(Bounded(entries))
    }
}

/// One element of the feedback array, in GitHub's hashed form.
#[derive(Serialize)]
struct Feedback<'a> {
    token_hash: String,
    token_type: &'a str,
    label: &'static str,
}

/// Returns the feedback body for `matches`, in order: one `{"token_hash", "token_type",
/// "label"}` each, the hash lowercase hex SHA-256 of the token (never the token itself),
/// `token_type` as GitHub sent it, and `true_positive` where `is_ours(index)`, else
/// `false_positive`.
pub fn feedback(matches: &[Match], is_ours: impl Fn(usize) -> bool) -> Vec<u8> {
    let labels: Vec<Feedback<'_>> = matches
        .iter()
        .enumerate()
        .map(|(i, found)| Feedback {
            token_hash: sha256_hex(&found.token),
            token_type: &found.token_type,
            label: if is_ours(i) {
                "true_positive"
            } else {
                "false_positive"
            },
        })
        .collect();
    // Strings and a Vec always serialize; the fallback only keeps this free of panics.
    serde_json::to_vec(&labels).unwrap_or_else(|_| b"[]".to_vec())
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "ta_4kQz9wSecretThatMustNotLeak";

    #[test]
    fn githubs_documented_payload_parses() {
        let body = br#"[
          {
            "token":"NMIfyYncKcRALEXAMPLE",
            "type":"mycompany_api_token",
            "url":"https://github.com/octocat/Hello-World/blob/12345600b9cbe38a219f39a9941c9319b600c002/foo/bar.txt",
            "source":"content"
          }
        ]"#;
        let matches = parse_matches(body).unwrap();
        assert_eq!(matches.len(), 1);
        assert_eq!(matches[0].token(), "NMIfyYncKcRALEXAMPLE");
        assert_eq!(matches[0].token_type(), "mycompany_api_token");
        assert!(matches[0].url().ends_with("/foo/bar.txt"));
        assert_eq!(matches[0].source(), "content");
    }

    #[test]
    fn url_and_source_may_be_missing_or_null_and_other_fields_are_ignored() {
        let body = br#"[{"token":"a","type":"t"},{"token":"b","type":"t","url":null,"source":null,"new_field":[1]}]"#;
        let matches = parse_matches(body).unwrap();
        assert_eq!(matches.len(), 2);
        assert!(
            matches
                .iter()
                .all(|m| m.url().is_empty() && m.source().is_empty())
        );
        assert!(parse_matches(b" []").unwrap().is_empty());
    }

    #[test]
    fn errors_name_what_is_wrong_and_never_quote_a_token() {
        let cases: &[(String, &str)] = &[
            (format!(r#""{SECRET}""#), "must be a JSON array"),
            (format!(r#"{{"token":"{SECRET}"}}"#), "must be a JSON array"),
            (
                format!(r#"["{SECRET}"]"#),
                "matches[0] must be a JSON object",
            ),
            (
                format!(r#"[{{"type":"{SECRET}"}}]"#),
                "matches[0].token is missing",
            ),
            (
                format!(r#"[{{"token":["{SECRET}"],"type":"t"}}]"#),
                "matches[0].token must be a string",
            ),
            (
                format!(r#"[{{"token":"{SECRET}"}}]"#),
                "matches[0].type is missing",
            ),
            (
                r#"[{"token":"","type":"t"}]"#.into(),
                "matches[0].token must not be empty",
            ),
            (
                format!(
                    r#"[{{"token":"x","type":"t"}},{{"token":"{SECRET}","type":"t","url":7}}]"#
                ),
                "matches[1].url must be a string",
            ),
            (
                format!(r#"[{{"token":"{SECRET}","type":"t"}}"#),
                "not valid JSON",
            ),
            (
                format!(r#"[{{"token":"{SECRET}","type":"t"}}] x"#),
                "not valid JSON",
            ),
            (
                format!(r#"[{{"token":"{SECRET}\q","type":"t"}}]"#),
                "not valid JSON",
            ),
        ];
        for (body, expected) in cases {
            let error = parse_matches(body.as_bytes()).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
            assert!(!error.contains("Secret"), "{body}: {error}");
        }
    }

    #[test]
    fn more_than_the_limit_of_matches_is_refused() {
        let entry = r#"{"token":"a","type":"t"}"#;
        let body = |n: usize| format!("[{}]", vec![entry; n].join(","));
        assert_eq!(
            parse_matches(body(MAX_MATCHES).as_bytes()).unwrap().len(),
            MAX_MATCHES
        );
        let error = parse_matches(body(MAX_MATCHES + 1).as_bytes()).unwrap_err();
        assert_eq!(
            error,
            format!("the body holds more than {MAX_MATCHES} matches")
        );
    }

    #[test]
    fn debug_shows_the_length_never_the_token() {
        let body = format!(r#"[{{"token":"{SECRET}","type":"ta_token"}}]"#);
        let printed = format!("{:?}", parse_matches(body.as_bytes()).unwrap());
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(
            printed.contains(&format!("<redacted, {} bytes>", SECRET.len())),
            "{printed}"
        );
        assert!(printed.contains("ta_token"), "{printed}");
    }

    #[test]
    fn feedback_labels_each_match_by_the_hash_of_its_token() {
        let body =
            br#"[{"token":"some_token","type":"some_type"},{"token":"other","type":"ta_token"}]"#;
        let matches = parse_matches(body).unwrap();
        let answer: Value = serde_json::from_slice(&feedback(&matches, |i| i == 0)).unwrap();
        assert_eq!(
            answer,
            serde_json::json!([
                {
                    // sha256sum of the ten bytes some_token
                    "token_hash": "9a45520a1213f15016d2d768b5fb3d904492a44ee274b44d4de8803e00fb536a",
                    "token_type": "some_type",
                    "label": "true_positive",
                },
                {
                    "token_hash": sha256_hex("other"),
                    "token_type": "ta_token",
                    "label": "false_positive",
                },
            ])
        );
        assert_eq!(feedback(&[], |_| true), b"[]");
    }
}
