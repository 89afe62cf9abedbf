//! The audit trail's events: who did what to which token, when, from where.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::token::Token;

/// One audited action, written in the same transaction as the change it records.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// UUIDv7, so ids sort by time.
    pub id: Uuid,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The acting token; none for failed authentications and the bootstrap.
    pub actor_id: Option<Uuid>,
    /// The acting token's owner (empty when unknown).
    pub actor_owner: String,
    /// What was done, e.g. `create`, `rotate`, `authentication_failed`.
    pub action: String,
    /// What it was done to: `token/<id>`, `owner/<owner>`, `type/<id>`, `management`.
    pub target: String,
    /// The owner of the tokens acted on; filled in by the store for single tokens.
    pub target_owner: String,
    /// The fields changed, with their new values. Never a secret.
    pub changes: Map<String, Value>,
    /// The caller's address, when known.
    pub client_ip: String,
    /// A short note for people.
    pub detail: String,
}

impl AuditEvent {
    /// Starts an event for `action` on `target` by `actor` (none when unauthenticated).
    pub fn new(action: &str, target: String, actor: Option<&Token>, now: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            time: now,
            actor_id: actor.map(|t| t.id),
            actor_owner: actor.map(|t| t.owner.clone()).unwrap_or_default(),
            action: action.to_owned(),
            target,
            target_owner: String::new(),
            changes: Map::new(),
            client_ip: String::new(),
            detail: String::new(),
        }
    }

    /// The target name of a token.
    pub fn token_target(id: Uuid) -> String {
        format!("token/{id}")
    }

    /// Records a changed field and its new value.
    pub fn change(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.changes.insert(field.to_owned(), value.into());
        self
    }
}
