//! Token types and their templates: what a token of a type must or may carry, what it gets
//! by default, how long it may live and whether it may be writable.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{
    fields::{present, template_fields},
    permission::{Permission, allows as allows_permission},
    token::{Token, check_binding, parse_type},
};

/// The longest max_lifetime: 100 years.
const MAX_LIFETIME_SECONDS: i64 = 100 * 366 * 24 * 3600;

/// A registered token type.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenType {
    /// As tokens name it.
    pub id: String,
    /// For people.
    pub display_name: String,
    /// For people.
    pub description: String,
    /// What its tokens must or may carry.
    pub template: Template,
    /// Built-in types cannot be deleted.
    pub builtin: bool,
    /// When it was created.
    pub create_time: DateTime<Utc>,
    /// When it was last changed.
    pub update_time: DateTime<Utc>,
    /// Bumped on every change.
    pub revision: i64,
}

/// What a token of a type must or may carry. Stored as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Template {
    /// Fields a token must set (from [`template_fields`]).
    pub required_fields: Vec<String>,
    /// If not empty, the only optional fields a token may set.
    pub allowed_fields: Vec<String>,
    /// Binding keys a token must be bound on.
    pub required_bindings: Vec<String>,
    /// Permissions a new token gets when it names none.
    pub default_permissions: Vec<String>,
    /// The longest lifetime, in seconds.
    pub max_lifetime_seconds: Option<i64>,
    /// Whether tokens may be writable; if false they are all read-only.
    pub writable: bool,
}

/// A template violation: the token field at fault and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    /// e.g. `expire_time`.
    pub field: String,
    /// For people.
    pub message: String,
}

fn violation(field: &str, message: String) -> Violation {
    Violation {
        field: field.to_owned(),
        message,
    }
}

impl Template {
    /// Checks a template as given by an administrator.
    pub fn validate(&self) -> Result<(), Violation> {
        for (name, list) in [
            ("required_fields", &self.required_fields),
            ("allowed_fields", &self.allowed_fields),
        ] {
            if let Some(bad) = list
                .iter()
                .find(|f| !template_fields().any(|t| t == f.as_str()))
            {
                return Err(violation(
                    name,
                    format!(
                        "{bad:?} is not one of {}",
                        template_fields().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        for key in &self.required_bindings {
            check_binding(key, "x").map_err(|e| violation("required_bindings", e))?;
        }
        for permission in &self.default_permissions {
            Permission::parse(permission).map_err(|e| violation("default_permissions", e))?;
        }
        if let Some(seconds) = self.max_lifetime_seconds
            && !(1..=MAX_LIFETIME_SECONDS).contains(&seconds)
        {
            return Err(violation(
                "max_lifetime",
                "must be positive and at most 100 years".into(),
            ));
        }
        Ok(())
    }

    /// Returns how this template lets tokens be something `before` did not, if it does:
    /// writable where it was not, longer-lived, without a required field or binding, with
    /// more optional fields, or with default permissions `before`'s do not cover.
    pub fn loosens(&self, before: &Template) -> Option<String> {
        if self.writable && !before.writable {
            return Some("writable: tokens would no longer be read-only".into());
        }
        if let Some(limit) = before.max_lifetime_seconds
            && self
                .max_lifetime_seconds
                .is_none_or(|seconds| seconds > limit)
        {
            return Some(format!(
                "max_lifetime: tokens would live longer than {limit} s"
            ));
        }
        if let Some(field) = before
            .required_fields
            .iter()
            .find(|f| !self.required_fields.contains(f))
        {
            return Some(format!(
                "required_fields: {field} would no longer be required"
            ));
        }
        if let Some(key) = before
            .required_bindings
            .iter()
            .find(|k| !self.required_bindings.contains(k))
        {
            return Some(format!(
                "required_bindings: {key} would no longer be required"
            ));
        }
        // Which optional fields a token may set: those listed (required ones included), or
        // all of them when none are listed.
        let allows = |t: &Template, field: &str| {
            t.allowed_fields.is_empty()
                || t.allowed_fields
                    .iter()
                    .chain(&t.required_fields)
                    .any(|f| f == field)
        };
        if let Some(field) = template_fields().find(|f| allows(self, f) && !allows(before, f)) {
            return Some(format!("allowed_fields: {field} would be allowed"));
        }
        let parse = |list: &[String]| -> Vec<Permission> {
            list.iter()
                .filter_map(|p| Permission::parse(p).ok())
                .collect()
        };
        let held = parse(&before.default_permissions);
        if let Some(p) = parse(&self.default_permissions)
            .iter()
            .find(|p| !allows_permission(&held, p))
        {
            return Some(format!(
                "default_permissions: {p} would be given by default"
            ));
        }
        None
    }

    /// Fills a new token's defaults: permissions when it names none, the maximum lifetime
    /// when it has no expiry, read-only when the type may not write.
    pub fn fill_defaults(&self, token: &mut Token, now: DateTime<Utc>) {
        if token.permissions.is_empty() {
            token.permissions = self
                .default_permissions
                .iter()
                .filter_map(|p| Permission::parse(p).ok())
                .collect();
        }
        if token.expire_time.is_none()
            && let Some(seconds) = self.max_lifetime_seconds
        {
            token.expire_time = Some(now + Duration::seconds(seconds));
        }
        if !self.writable {
            token.read_only = true;
        }
    }

    /// Whether a token's permissions are exactly the template's default ones.
    fn gives_only_defaults(&self, token: &Token) -> bool {
        let defaults: Vec<Permission> = self
            .default_permissions
            .iter()
            .filter_map(|p| Permission::parse(p).ok())
            .collect();
        !defaults.is_empty()
            && token.permissions.len() == defaults.len()
            && token.permissions.iter().all(|p| defaults.contains(p))
    }

    /// Checks a token (new or updated) against the template.
    pub fn check(&self, type_id: &str, token: &Token) -> Result<(), Violation> {
        for field in &self.required_fields {
            if !present(token, field) {
                return Err(violation(
                    field,
                    format!("is required for tokens of type {type_id}"),
                ));
            }
        }
        if !self.allowed_fields.is_empty()
            && let Some(field) = template_fields().find(|f| {
                // What the template fills itself is allowed: its default permissions (not
                // others in their place), and an expiry within its lifetime (checked below).
                let filled = (*f == "permissions" && self.gives_only_defaults(token))
                    || (*f == "expire_time" && self.max_lifetime_seconds.is_some());
                present(token, f)
                    && !filled
                    && !self.allowed_fields.iter().any(|a| a == f)
                    && !self.required_fields.iter().any(|r| r == f)
            })
        {
            return Err(violation(
                field,
                format!("is not allowed for tokens of type {type_id}"),
            ));
        }
        for key in &self.required_bindings {
            if !token.bindings.contains_key(key) {
                return Err(violation(
                    "bindings",
                    format!("tokens of type {type_id} must be bound on {key}"),
                ));
            }
        }
        if let Some(seconds) = self.max_lifetime_seconds {
            let latest = token.create_time + Duration::seconds(seconds);
            match token.expire_time {
                None => {
                    return Err(violation(
                        "expire_time",
                        format!("tokens of type {type_id} must expire"),
                    ));
                }
                Some(at) if at > latest => {
                    return Err(violation(
                        "expire_time",
                        format!(
                            "tokens of type {type_id} live at most {seconds} s from creation (until {})",
                            latest.to_rfc3339()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if !self.writable && !token.read_only {
            return Err(violation(
                "read_only",
                format!("tokens of type {type_id} must be read-only"),
            ));
        }
        Ok(())
    }
}

/// The types every store has.
pub fn builtin_types(now: DateTime<Utc>) -> Vec<TokenType> {
    let make = |id: &str, display_name: &str, description: &str, template: Template| TokenType {
        id: id.to_owned(),
        display_name: display_name.to_owned(),
        description: description.to_owned(),
        template,
        builtin: true,
        create_time: now,
        update_time: now,
        revision: 1,
    };
    vec![
        make(
            "personal",
            "Personal Access Token",
            "General purpose API token",
            Template {
                writable: true,
                ..Template::default()
            },
        ),
        make(
            "assistant",
            "Assistant Token",
            "Token for assistant API access: bound to one assistant (binding assistantId), read-only, at most 90 days",
            Template {
                required_bindings: vec!["assistantId".into()],
                default_permissions: vec!["assistants:read".into()],
                max_lifetime_seconds: Some(90 * 24 * 3600),
                writable: false,
                ..Template::default()
            },
        ),
    ]
}

/// Checks a type id (the same rule as a token's type).
pub fn parse_type_id(value: &str) -> Result<String, String> {
    parse_type(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::verify::tests::token;

    fn assistant() -> Template {
        builtin_types(Utc::now()).remove(1).template
    }

    #[test]
    fn the_builtin_templates_are_valid() {
        for t in builtin_types(Utc::now()) {
            t.template.validate().unwrap();
        }
    }

    #[test]
    fn defaults_fill_and_the_template_holds() {
        let template = assistant();
        let mut t = token(&[]);
        t.bindings.insert("assistantId".into(), "a-1".into());
        let created = t.create_time;
        template.fill_defaults(&mut t, created);
        assert_eq!(
            t.permissions,
            vec![Permission::parse("assistants:read").unwrap()]
        );
        assert!(t.read_only);
        assert!(t.expire_time.is_some());
        template.check("assistant", &t).unwrap();
    }

    #[test]
    fn violations_name_the_field() {
        let template = assistant();
        let mut t = token(&["x:read"]);
        let created = t.create_time;
        template.fill_defaults(&mut t, created);
        assert_eq!(
            template.check("assistant", &t).unwrap_err().field,
            "bindings"
        );
        t.bindings.insert("assistantId".into(), "a-1".into());
        t.expire_time = Some(t.create_time + Duration::days(91));
        assert_eq!(
            template.check("assistant", &t).unwrap_err().field,
            "expire_time"
        );
        t.expire_time = Some(t.create_time + Duration::days(1));
        t.read_only = false;
        assert_eq!(
            template.check("assistant", &t).unwrap_err().field,
            "read_only"
        );

        let strict = Template {
            required_fields: vec!["description".into()],
            allowed_fields: vec!["permissions".into()],
            writable: true,
            ..Template::default()
        };
        let mut t = token(&["x:read"]);
        assert_eq!(strict.check("s", &t).unwrap_err().field, "description");
        t.description = "why".into();
        strict.check("s", &t).unwrap();
        t.allowed_hosts = vec![crate::domain::restrictions::HostPattern::parse("a.b").unwrap()];
        assert_eq!(strict.check("s", &t).unwrap_err().field, "allowed_hosts");
    }

    #[test]
    fn allowed_fields_bind_permissions_other_than_the_defaults() {
        let template = Template {
            allowed_fields: vec!["bindings".into()],
            default_permissions: vec!["reports:read".into()],
            writable: true,
            ..Template::default()
        };
        let mut t = token(&[]);
        let created = t.create_time;
        template.fill_defaults(&mut t, created);
        template.check("report", &t).unwrap();
        let mut other = token(&["domains:write"]);
        template.fill_defaults(&mut other, created);
        assert_eq!(
            template.check("report", &other).unwrap_err().field,
            "permissions"
        );
    }

    #[test]
    fn loosening_is_told_apart_from_tightening() {
        let assistant = assistant();
        assert_eq!(
            assistant.loosens(&assistant),
            None,
            "unchanged is not looser"
        );
        let writable = Template {
            writable: true,
            ..assistant.clone()
        };
        assert!(
            writable
                .loosens(&assistant)
                .unwrap()
                .starts_with("writable")
        );
        let longer = Template {
            max_lifetime_seconds: None,
            ..assistant.clone()
        };
        assert!(
            longer
                .loosens(&assistant)
                .unwrap()
                .starts_with("max_lifetime")
        );
        let unbound = Template {
            required_bindings: vec![],
            ..assistant.clone()
        };
        assert!(
            unbound
                .loosens(&assistant)
                .unwrap()
                .starts_with("required_bindings")
        );
        let broader = Template {
            default_permissions: vec!["*:*".into()],
            ..assistant.clone()
        };
        assert!(
            broader
                .loosens(&assistant)
                .unwrap()
                .starts_with("default_permissions")
        );
        let narrow = Template {
            allowed_fields: vec!["description".into()],
            ..assistant.clone()
        };
        assert_eq!(
            narrow.loosens(&assistant),
            None,
            "fewer optional fields is tighter"
        );
        assert!(
            assistant
                .loosens(&narrow)
                .unwrap()
                .starts_with("allowed_fields")
        );
        let shorter = Template {
            max_lifetime_seconds: Some(3600),
            required_fields: vec!["description".into()],
            ..assistant.clone()
        };
        assert_eq!(shorter.loosens(&assistant), None);
        assert!(assistant.loosens(&shorter).is_some());
    }

    #[test]
    fn bad_templates_are_refused() {
        let bad = Template {
            required_fields: vec!["secret".into()],
            ..Template::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "required_fields");
        let bad = Template {
            default_permissions: vec!["Nope".into()],
            ..Template::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "default_permissions");
        let bad = Template {
            max_lifetime_seconds: Some(0),
            ..Template::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "max_lifetime");
    }
}
