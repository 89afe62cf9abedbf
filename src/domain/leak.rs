//! Leaked secrets: what a report of one does to its token, and what a report may carry.
//!
//! A report needs no credential (holding the secret is the proof), so it can only ever take
//! power away: the token whose current secret leaked is disabled (kept for forensics) and
//! remembers the report (`secret_reported_time`), so that it cannot be enabled until a
//! rotation replaces that secret; a previous secret still in its rotation's grace period has
//! its grace ended. Nothing else about the token changes.

use chrono::{DateTime, Utc};

use super::{audit::AuditEvent, secret::SecretHash, token::Token};

/// The most secrets one report carries.
pub const MAX_SECRETS: usize = 1000;
/// The longest `source` of a report.
pub const SOURCE_LEN: usize = 64;
/// The longest `url` of a report.
pub const URL_LEN: usize = 2048;
/// The source of a report that names none.
pub const DEFAULT_SOURCE: &str = "report";
/// When a previous secret reported leaked stopped working, as stored: the Unix epoch, not
/// the report's time, so that no replica refuses it any later than another, however far
/// behind its clock (the report's own time is in its audit event).
pub const GRACE_ENDED: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// The source of GitHub's secret scanning reports, and only of those.
pub const GITHUB: &str = "github";

/// Which of a token's secrets a presented one is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Its current secret.
    Current,
    /// The secret its last rotation replaced (in the grace period or past it).
    Previous,
}

impl Which {
    /// Which of `token`'s secrets has `hash`, if either.
    pub fn of(token: &Token, hash: &SecretHash) -> Option<Self> {
        if token.secret_hash == *hash {
            Some(Self::Current)
        } else if token.previous_hash.as_ref() == Some(hash) {
            Some(Self::Previous)
        } else {
            None
        }
    }

    /// `current` or `previous`, as the audit trail names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Previous => "previous",
        }
    }
}

/// What a leak report does to the token one of whose secrets it presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Its current secret leaked and it is enabled: disable it, and remember the report.
    Disable,
    /// Its current secret leaked and it is disabled already (by an administrator, a bulk
    /// revocation), but the token does not yet know the secret leaked: remember the report,
    /// so that enabling it cannot bring the secret back.
    MarkReported,
    /// Its previous secret leaked and still works: end the grace period now.
    EndGrace,
    /// The leaked secret already works no more and can come back only through a rotation
    /// (the token is disabled and remembers the report, or the grace period is over):
    /// nothing to write, but the report is still audited.
    AlreadyRevoked,
}

/// Decides what a report of the secret with `hash` does to `token`, as `token` is now.
/// `None` when the secret is neither of the token's.
pub fn effect(token: &Token, hash: &SecretHash, now: DateTime<Utc>) -> Option<(Which, Effect)> {
    let which = Which::of(token, hash)?;
    let effect = match which {
        Which::Current if token.enabled => Effect::Disable,
        // Disabled, so it does not work now; but an administrator could enable it again.
        Which::Current if token.secret_reported_time.is_none() => Effect::MarkReported,
        // Ended even on a disabled token: re-enabling it must not revive the leaked secret.
        Which::Previous if token.previous_hash_expire_time.is_some_and(|end| end > now) => {
            Effect::EndGrace
        }
        _ => Effect::AlreadyRevoked,
    };
    Some((which, effect))
}

/// Where a report came from, as given and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Who found the secrets, e.g. `github`, `scan`.
    pub source: String,
    /// Where they were found.
    pub url: String,
}

impl Report {
    /// Checks the source and URL of a report made through the API; the error names what
    /// is wrong with which. `github` is kept for GitHub's signed reports, so that no one
    /// else's report reads as GitHub's in the audit trail.
    pub fn parse(source: &str, url: &str) -> Result<Self, (&'static str, String)> {
        let source = if source.is_empty() {
            DEFAULT_SOURCE.to_owned()
        } else {
            parse_source(source).map_err(|m| ("source", m))?
        };
        if source == GITHUB {
            return Err((
                "source",
                format!("{GITHUB:?} is kept for GitHub's signed reports (POST /v1/leaks/github)"),
            ));
        }
        check_url(url).map_err(|m| ("url", m))?;
        Ok(Self {
            source,
            url: url.to_owned(),
        })
    }

    /// A report from GitHub's secret scanning, its signature checked; a URL we would not
    /// accept from the API is dropped rather than refusing GitHub's report.
    pub fn github(url: &str) -> Self {
        Self {
            source: GITHUB.to_owned(),
            url: if check_url(url).is_ok() {
                url.to_owned()
            } else {
                String::new()
            },
        }
    }

    /// The audit event of this report on `token`: what was done, and why.
    pub fn audit(
        &self,
        token: &Token,
        which: Which,
        effect: Effect,
        client_ip: &str,
        now: DateTime<Utc>,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(
            "leak_reported",
            AuditEvent::token_target(token.id),
            None,
            now,
        )
        .change("secret", which.name())
        .change("source", self.source.as_str());
        if !self.url.is_empty() {
            event = event.change("url", self.url.as_str());
        }
        event = match effect {
            Effect::Disable => event
                .change("enabled", false)
                .change("secret_reported_time", now.to_rfc3339()),
            Effect::MarkReported => event.change("secret_reported_time", now.to_rfc3339()),
            Effect::EndGrace => {
                event.change("previous_secret_expire_time", GRACE_ENDED.to_rfc3339())
            }
            Effect::AlreadyRevoked => event,
        };
        event.client_ip = client_ip.to_owned();
        event.detail = match effect {
            Effect::Disable => "leaked secret reported; token disabled until it is rotated".into(),
            Effect::MarkReported => {
                "leaked secret reported; the token was disabled already, and now cannot be \
                 enabled until it is rotated"
                    .into()
            }
            Effect::EndGrace => "leaked previous secret reported; its grace period ended".into(),
            Effect::AlreadyRevoked => "leaked secret reported; it already worked no more".into(),
        };
        event
    }
}

fn check_url(url: &str) -> Result<(), String> {
    if url.chars().count() > URL_LEN {
        return Err(format!("must be at most {URL_LEN} characters"));
    }
    if url.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Checks a report's source: 1 to 64 lowercase letters, digits, `.`, `-` and `_`.
fn parse_source(value: &str) -> Result<String, String> {
    let valid = value.len() <= SOURCE_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "must be 1 to {SOURCE_LEN} lowercase letters, digits or . _ -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::secret::{TokenPrefix, TokenSecret};

    fn token() -> (Token, TokenSecret) {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        let now = crate::domain::token::now();
        (Token::new("team".into(), &secret, None, now), secret)
    }

    #[test]
    fn a_current_secret_disables_an_enabled_token_and_nothing_more() {
        let (mut token, secret) = token();
        let now = crate::domain::token::now();
        assert_eq!(
            effect(&token, &secret.hash(), now),
            Some((Which::Current, Effect::Disable))
        );
        token.enabled = false;
        token.secret_reported_time = Some(now);
        assert_eq!(
            effect(&token, &secret.hash(), now),
            Some((Which::Current, Effect::AlreadyRevoked))
        );
    }

    #[test]
    fn a_current_secret_of_a_token_disabled_before_is_remembered() {
        let (mut token, secret) = token();
        let now = crate::domain::token::now();
        token.enabled = false;
        assert_eq!(
            effect(&token, &secret.hash(), now),
            Some((Which::Current, Effect::MarkReported)),
            "disabled by an administrator, it could be enabled again with the leaked secret"
        );
        let event = Report::parse("", "").unwrap().audit(
            &token,
            Which::Current,
            Effect::MarkReported,
            "",
            now,
        );
        assert_eq!(
            event.changes.get("secret_reported_time"),
            Some(&serde_json::Value::from(now.to_rfc3339()))
        );
    }

    #[test]
    fn a_previous_secret_ends_its_grace_even_on_a_disabled_token() {
        let (mut token, _) = token();
        let old = TokenSecret::generate(&TokenPrefix::default());
        let now = crate::domain::token::now();
        token.previous_hash = Some(old.hash());
        token.previous_hash_expire_time = Some(now + Duration::hours(1));
        token.enabled = false;
        assert_eq!(
            effect(&token, &old.hash(), now),
            Some((Which::Previous, Effect::EndGrace))
        );
        token.previous_hash_expire_time = Some(now - Duration::seconds(1));
        assert_eq!(
            effect(&token, &old.hash(), now),
            Some((Which::Previous, Effect::AlreadyRevoked)),
            "a previous secret's report marks nothing: enabling the token cannot revive it"
        );
        let other = TokenSecret::generate(&TokenPrefix::default());
        assert_eq!(effect(&token, &other.hash(), now), None);
    }

    #[test]
    fn a_report_names_what_is_wrong_with_its_source_or_url() {
        assert_eq!(Report::parse("", "").unwrap().source, DEFAULT_SOURCE);
        assert_eq!(Report::parse("Git Hub", "").unwrap_err().0, "source");
        assert_eq!(Report::parse(&"a".repeat(65), "").unwrap_err().0, "source");
        assert_eq!(Report::parse("scan", "a\nb").unwrap_err().0, "url");
        assert_eq!(
            Report::parse("scan", &"u".repeat(URL_LEN + 1))
                .unwrap_err()
                .0,
            "url"
        );
        assert!(Report::parse("support-desk", "https://github.com/o/r/blob/main/x").is_ok());
        assert_eq!(Report::parse("github", "").unwrap_err().0, "source");
        assert_eq!(Report::github("a\nb").url, "");
        assert_eq!(Report::github("https://x").source, GITHUB);
    }
}
