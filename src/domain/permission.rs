//! Permissions: `resource:action`, lowercase, `*` as a wildcard for either side.
//!
//! The seed systems' actions are `read`, `write`, `create` and `delete`; other lowercase
//! actions are accepted so that services can name their own.

use std::fmt;

use compact_str::CompactString;

const MAX_SEGMENT_LEN: usize = 64;

/// The action that read-only tokens are limited to.
pub const READ: &str = "read";

/// One side of a permission: a name, or `*` for any.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Segment {
    Any,
    /// Inline up to 24 bytes (most names; 12 on 32-bit targets), so that parsing the
    /// permissions of a Verify or Check allocates no string per such name.
    Name(CompactString),
}

impl Segment {
    fn parse(value: &str) -> Option<Self> {
        if value == "*" {
            return Some(Self::Any);
        }
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_SEGMENT_LEN
            && bytes[0].is_ascii_lowercase()
            && bytes.iter().all(|&b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
            });
        valid.then(|| Self::Name(CompactString::new(value)))
    }

    /// Returns whether this side grants everything `other` names.
    fn covers(&self, other: &Segment) -> bool {
        match (self, other) {
            (Segment::Any, _) => true,
            (Segment::Name(_), Segment::Any) => false,
            (Segment::Name(a), Segment::Name(b)) => a == b,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Segment::Any => "*",
            Segment::Name(name) => name,
        }
    }
}

/// A parsed `resource:action` permission.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    resource: Segment,
    action: Segment,
}

impl Permission {
    /// Parses `resource:action`; each side is `*` or a lowercase name of letters, digits,
    /// `-`, `_` and `.`, starting with a letter, at most 64 characters.
    pub fn parse(value: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "{:?} is not a permission: expected resource:action in lowercase, e.g. domains:read, with * as a wildcard",
                truncate(value)
            )
        };
        let (resource, action) = value.split_once(':').ok_or_else(invalid)?;
        Ok(Self {
            resource: Segment::parse(resource).ok_or_else(invalid)?,
            action: Segment::parse(action).ok_or_else(invalid)?,
        })
    }

    /// Builds `resource:action` from its two sides, each checked as [`Permission::parse`]
    /// checks it; `None` if either is not valid. (No `resource:action` text is made.)
    pub fn from_sides(resource: &str, action: &str) -> Option<Self> {
        Some(Self {
            resource: Segment::parse(resource)?,
            action: Segment::parse(action)?,
        })
    }

    /// The permission that grants everything: `*:*`.
    pub fn all() -> Self {
        Self {
            resource: Segment::Any,
            action: Segment::Any,
        }
    }

    /// Builds `resource:action` from parts known to be valid.
    pub fn new(resource: &str, action: &str) -> Self {
        Self::parse(&format!("{resource}:{action}")).expect("a valid permission")
    }

    /// Returns whether holding this permission grants everything `other` grants.
    pub fn covers(&self, other: &Permission) -> bool {
        self.resource.covers(&other.resource) && self.action.covers(&other.action)
    }

    /// Returns whether a held permission, given as its text (`resource:action`, already
    /// validated), grants this one. The same rule as [`Permission::covers`], without
    /// parsing the held side into a value.
    /// The text may come as bytes (from an encoded token), unchecked as UTF-8: only equal
    /// bytes match a name, and a name is valid UTF-8.
    pub fn is_covered_by_text(&self, held: impl AsRef<[u8]>) -> bool {
        fn side(held: &[u8], required: &Segment) -> bool {
            held == b"*" || matches!(required, Segment::Name(name) if name.as_bytes() == held)
        }
        let held = held.as_ref();
        held.iter().position(|&b| b == b':').is_some_and(|colon| {
            side(&held[..colon], &self.resource) && side(&held[colon + 1..], &self.action)
        })
    }

    /// Returns whether the action is exactly `read`, the only one a read-only token satisfies.
    pub fn is_read(&self) -> bool {
        matches!(&self.action, Segment::Name(action) if action == READ)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource.as_str(), self.action.as_str())
    }
}

/// Returns whether any of `held` covers `required`.
pub fn allows(held: &[Permission], required: &Permission) -> bool {
    held.iter().any(|p| p.covers(required))
}

/// Shortens user input quoted back in an error message.
fn truncate(value: &str) -> String {
    value.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(value: &str) -> Permission {
        Permission::parse(value).unwrap()
    }

    #[test]
    fn parses_and_prints_back() {
        for value in [
            "domains:read",
            "sub-users:write",
            "*:read",
            "domains:*",
            "*:*",
            "a.b_c:x1",
        ] {
            assert_eq!(p(value).to_string(), value);
        }
    }

    #[test]
    fn rejects_bad_grammar() {
        for bad in [
            "",
            ":",
            "domains",
            "domains:",
            ":read",
            "Domains:read",
            "domains:Read",
            "domains:read:x",
            "dom ains:read",
            "**:read",
            "1domains:read",
            "domains:*read",
            " domains:read",
            &format!("{}:read", "a".repeat(65)),
        ] {
            assert!(Permission::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcards_cover_either_side() {
        assert!(p("*:*").covers(&p("domains:read")));
        assert!(p("*:*").covers(&p("*:*")));
        assert!(p("domains:*").covers(&p("domains:delete")));
        assert!(p("domains:*").covers(&p("domains:*")));
        assert!(p("*:read").covers(&p("backends:read")));
        assert!(p("domains:read").covers(&p("domains:read")));
        assert!(!p("domains:read").covers(&p("domains:write")));
        assert!(!p("domains:read").covers(&p("backends:read")));
        assert!(!p("domains:*").covers(&p("*:*")));
        assert!(!p("domains:read").covers(&p("domains:*")));
        assert!(!p("*:read").covers(&p("*:*")));
        assert!(!p("*:read").covers(&p("domains:write")));
    }

    #[test]
    fn text_coverage_agrees_with_parsed_coverage() {
        let all = [
            "*:*",
            "domains:*",
            "*:read",
            "domains:read",
            "domains:write",
            "backends:read",
            "*:write",
        ];
        for held in all {
            for required in all {
                assert_eq!(
                    p(required).is_covered_by_text(held),
                    p(held).covers(&p(required)),
                    "{held} covers {required}"
                );
            }
        }
    }

    #[test]
    fn allows_checks_every_held_permission() {
        let held = [p("domains:read"), p("backends:*")];
        assert!(allows(&held, &p("backends:delete")));
        assert!(allows(&held, &p("domains:read")));
        assert!(!allows(&held, &p("domains:write")));
        assert!(!allows(&[], &p("domains:read")));
    }

    #[test]
    fn only_the_read_action_is_read() {
        assert!(p("domains:read").is_read());
        assert!(p("*:read").is_read());
        assert!(!p("domains:*").is_read());
        assert!(!p("domains:write").is_read());
    }

    #[test]
    fn error_names_the_input_and_the_grammar() {
        let err = Permission::parse("Domains").unwrap_err();
        assert!(
            err.contains("\"Domains\"") && err.contains("resource:action"),
            "{err}"
        );
    }
}
