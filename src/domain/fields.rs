//! The one table of token fields. Each field of [`Token`] is classified here once: whether
//! a client sets it, whether templates may require or allow it, which kind of power it
//! bounds, and how the audit trail records it. Every list that must name every field (the
//! update mask, the template fields, the audited values) derives from this table, and a
//! test fails to compile when a `Token` field is missing from it.

use serde_json::{Map, Value};

use super::{power::Power, token::Token};

/// How a field comes to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Set by CreateToken and UpdateToken (named in the update mask).
    Settable,
    /// Changed only by its own action: SetTokenEnabled, RotateToken, a leak report.
    Action,
    /// Kept by verification: use counts, last use.
    Usage,
    /// Set once, at creation, by the service (id, owner, creator).
    Fixed,
    /// Kept by the store: times and revisions.
    Bookkeeping,
}

/// One field of [`Token`].
pub struct Field {
    /// The member of [`Token`].
    pub member: &'static str,
    /// Its name in the API: token.proto, update masks, templates, audit events.
    pub name: &'static str,
    /// How it comes to change.
    pub change: Change,
    /// The kind of power it bounds, if any.
    pub power: Option<Power>,
    /// Whether a template may require or allow it: how to tell that a token sets it.
    pub template: Option<fn(&Token) -> bool>,
    /// Its value as the audit trail records it; `None` for fields never recorded (the
    /// secret's hashes above all).
    pub audit: Option<fn(&Token) -> Value>,
}

fn strings<T: ToString>(items: &[T]) -> Value {
    Value::from(items.iter().map(ToString::to_string).collect::<Vec<_>>())
}

fn time(at: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    at.map_or(Value::Null, |t| Value::from(t.to_rfc3339()))
}

/// Every field of [`Token`], in declaration order.
pub const FIELDS: &[Field] = &[
    Field {
        member: "id",
        name: "id",
        change: Change::Fixed,
        power: None,
        template: None,
        audit: None,
    },
    Field {
        member: "name",
        name: "name",
        change: Change::Settable,
        power: None,
        template: None,
        audit: Some(|t| Value::from(t.name.clone())),
    },
    Field {
        member: "owner",
        name: "owner",
        change: Change::Fixed,
        power: None,
        template: None,
        audit: Some(|t| Value::from(t.owner.clone())),
    },
    Field {
        member: "token_type",
        name: "type",
        change: Change::Settable,
        power: Some(Power::Template),
        template: None,
        audit: Some(|t| Value::from(t.token_type.clone())),
    },
    Field {
        member: "description",
        name: "description",
        change: Change::Settable,
        power: None,
        template: Some(|t| !t.description.is_empty()),
        audit: Some(|t| Value::from(t.description.clone())),
    },
    Field {
        member: "permissions",
        name: "permissions",
        change: Change::Settable,
        power: Some(Power::Permissions),
        template: Some(|t| !t.permissions.is_empty()),
        audit: Some(|t| strings(&t.permissions)),
    },
    Field {
        member: "read_only",
        name: "read_only",
        change: Change::Settable,
        power: Some(Power::ReadOnly),
        template: None,
        audit: Some(|t| Value::from(t.read_only)),
    },
    Field {
        member: "allowed_cidrs",
        name: "allowed_cidrs",
        change: Change::Settable,
        power: Some(Power::Networks),
        template: Some(|t| !t.allowed_cidrs.is_empty()),
        audit: Some(|t| strings(&t.allowed_cidrs)),
    },
    Field {
        member: "allowed_hosts",
        name: "allowed_hosts",
        change: Change::Settable,
        power: Some(Power::Hosts),
        template: Some(|t| !t.allowed_hosts.is_empty()),
        audit: Some(|t| strings(&t.allowed_hosts)),
    },
    Field {
        member: "bindings",
        name: "bindings",
        change: Change::Settable,
        power: Some(Power::Bindings),
        template: Some(|t| !t.bindings.is_empty()),
        audit: Some(|t| {
            Value::Object(
                t.bindings
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                    .collect::<Map<_, _>>(),
            )
        }),
    },
    Field {
        member: "metadata",
        name: "metadata",
        change: Change::Settable,
        power: None,
        template: Some(|t| !t.metadata.is_empty()),
        audit: Some(|t| Value::Object(t.metadata.clone())),
    },
    Field {
        member: "enabled",
        name: "enabled",
        change: Change::Action,
        power: None,
        template: None,
        audit: Some(|t| Value::from(t.enabled)),
    },
    Field {
        member: "create_time",
        name: "create_time",
        change: Change::Bookkeeping,
        power: None,
        template: None,
        audit: None,
    },
    Field {
        member: "update_time",
        name: "update_time",
        change: Change::Bookkeeping,
        power: None,
        template: None,
        audit: None,
    },
    Field {
        member: "last_used_time",
        name: "last_used_time",
        change: Change::Usage,
        power: None,
        template: None,
        audit: None,
    },
    Field {
        member: "last_used_ip",
        name: "last_used_ip",
        change: Change::Usage,
        power: None,
        template: None,
        audit: None,
    },
    Field {
        member: "use_count",
        name: "use_count",
        change: Change::Usage,
        power: None,
        template: None,
        audit: None,
    },
    Field {
        member: "expire_time",
        name: "expire_time",
        change: Change::Settable,
        power: Some(Power::Expiry),
        template: Some(|t| t.expire_time.is_some()),
        audit: Some(|t| time(t.expire_time)),
    },
    Field {
        member: "created_by",
        name: "created_by",
        change: Change::Fixed,
        power: None,
        template: None,
        audit: Some(|t| t.created_by.map_or(Value::Null, |id| id.to_string().into())),
    },
    Field {
        member: "display_hint",
        name: "display_hint",
        change: Change::Action,
        power: None,
        template: None,
        audit: Some(|t| Value::from(t.display_hint.clone())),
    },
    Field {
        member: "secret_hash",
        name: "secret_hash",
        change: Change::Action,
        power: None,
        template: None,
        audit: None,
    },
    Field {
        member: "revision",
        name: "revision",
        change: Change::Bookkeeping,
        power: None,
        template: None,
        audit: None,
    },
    Field {
        member: "previous_hash",
        name: "previous_secret_hash",
        change: Change::Action,
        power: None,
        template: None,
        audit: None,
    },
    Field {
        member: "previous_hash_expire_time",
        name: "previous_secret_expire_time",
        change: Change::Action,
        power: None,
        template: None,
        audit: Some(|t| time(t.previous_hash.and(t.previous_hash_expire_time))),
    },
    Field {
        member: "max_uses",
        name: "max_uses",
        change: Change::Settable,
        power: Some(Power::Uses),
        template: Some(|t| t.max_uses.is_some()),
        audit: Some(|t| t.max_uses.map_or(Value::Null, Value::from)),
    },
    Field {
        member: "uses",
        name: "uses",
        change: Change::Usage,
        power: Some(Power::Uses),
        template: None,
        audit: None,
    },
    Field {
        member: "rate_limit",
        name: "rate_limit",
        change: Change::Settable,
        power: Some(Power::RateLimit),
        template: Some(|t| t.rate_limit.is_some()),
        audit: Some(|t| {
            t.rate_limit.map_or(Value::Null, |r| {
                serde_json::json!({"requests": r.requests, "interval_ms": r.interval.as_millis() as u64})
            })
        }),
    },
    Field {
        member: "secret_reported_time",
        name: "secret_reported_time",
        change: Change::Action,
        power: None,
        template: None,
        audit: Some(|t| time(t.secret_reported_time)),
    },
];

/// Returns the field the API calls `name`.
pub fn by_name(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// Returns the names of the fields CreateToken takes and UpdateToken's mask may name.
pub fn settable() -> impl Iterator<Item = &'static str> {
    FIELDS
        .iter()
        .filter(|f| f.change == Change::Settable)
        .map(|f| f.name)
}

/// Returns the names of the fields a template may require or allow.
pub fn template_fields() -> impl Iterator<Item = &'static str> {
    FIELDS
        .iter()
        .filter(|f| f.template.is_some())
        .map(|f| f.name)
}

/// Returns whether a token sets a template field; false for fields templates do not name.
pub fn present(token: &Token, name: &str) -> bool {
    by_name(name)
        .and_then(|f| f.template)
        .is_some_and(|set| set(token))
}

/// The recorded values of the named fields, for the `changes` of an audit event. Fields
/// that are never recorded (the secret's hashes) are left out whatever is asked.
pub fn audited(token: &Token, names: &[&str]) -> Map<String, Value> {
    names
        .iter()
        .filter_map(|name| {
            let record = by_name(name)?.audit?;
            Some(((*name).to_owned(), record(token)))
        })
        .collect()
}

/// Lists the members of [`Token`]. The destructuring has no `..`, so adding a member to
/// `Token` fails to compile until it is named here, and the test below then fails until
/// it is classified in [`FIELDS`].
#[cfg(test)]
fn token_members(token: &Token) -> Vec<&'static str> {
    macro_rules! members {
        ($($member:ident),* $(,)?) => {{
            let Token { $($member: _),* } = token;
            vec![$(stringify!($member)),*]
        }};
    }
    members!(
        id,
        name,
        owner,
        token_type,
        description,
        permissions,
        read_only,
        allowed_cidrs,
        allowed_hosts,
        bindings,
        metadata,
        enabled,
        create_time,
        update_time,
        last_used_time,
        last_used_ip,
        use_count,
        expire_time,
        created_by,
        display_hint,
        secret_hash,
        revision,
        previous_hash,
        previous_hash_expire_time,
        max_uses,
        uses,
        rate_limit,
        secret_reported_time,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::verify::tests::token;

    #[test]
    fn every_token_member_is_classified_exactly_once() {
        let members = token_members(&token(&[]));
        let classified: Vec<&str> = FIELDS.iter().map(|f| f.member).collect();
        assert_eq!(
            members, classified,
            "every Token member, in order, has one row in FIELDS"
        );
        let mut names: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FIELDS.len(), "API names are unique");
    }

    #[test]
    fn every_kind_of_power_is_bounded_by_a_field() {
        for power in Power::ALL {
            assert!(
                FIELDS.iter().any(|f| f.power == Some(power)),
                "{power:?} is named by no field"
            );
        }
    }

    #[test]
    fn settable_power_fields_are_audited_and_secrets_never_are() {
        for field in FIELDS {
            if field.change == Change::Settable {
                assert!(
                    field.audit.is_some(),
                    "{} is settable but not audited",
                    field.name
                );
            }
        }
        let t = token(&["a:read"]);
        let changes = audited(&t, &["secret_hash", "previous_secret_hash", "name"]);
        assert_eq!(changes.keys().collect::<Vec<_>>(), ["name"]);
    }

    #[test]
    fn template_fields_are_settable() {
        for name in template_fields() {
            assert_eq!(by_name(name).unwrap().change, Change::Settable, "{name}");
        }
        assert_eq!(
            template_fields().collect::<Vec<_>>(),
            [
                "description",
                "permissions",
                "allowed_cidrs",
                "allowed_hosts",
                "bindings",
                "metadata",
                "expire_time",
                "max_uses",
                "rate_limit"
            ]
        );
    }
}
