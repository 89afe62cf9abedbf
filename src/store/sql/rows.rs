//! Rows as the database returns them, their column lists, and their conversions to and
//! from the domain's types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{FromRow, types::Json};
use uuid::Uuid;

use crate::{
    domain::{
        audit::AuditEvent,
        permission::Permission,
        restrictions::{Cidr, HostPattern},
        secret::SecretHash,
        token::{RateLimit, Token},
        token_type::{Template, TokenType},
    },
    store::StoreError,
};

/// The columns of `tokens`, in [`TokenRow`]'s order.
pub(super) const COLUMNS: &str = "id, secret_hash, display_hint, name, owner, token_type, description, permissions, read_only, \
     allowed_cidrs, allowed_hosts, bindings, metadata, enabled, create_time, update_time, \
     last_used_time, last_used_ip, use_count, expire_time, created_by, revision, \
     previous_secret_hash, previous_hash_expire_time, max_uses, uses, rate_limit_requests, rate_limit_interval_ms, \
     secret_reported_time";

// The row types are `pub` (in this private module) because they appear in the bounds of
// the store's impls, which are public.

/// A row of `tokens` as the database returns it.
#[derive(FromRow)]
pub struct TokenRow {
    id: Uuid,
    secret_hash: Vec<u8>,
    display_hint: String,
    name: String,
    owner: String,
    token_type: String,
    description: String,
    permissions: Json<Vec<String>>,
    read_only: bool,
    allowed_cidrs: Json<Vec<String>>,
    allowed_hosts: Json<Vec<String>>,
    bindings: Json<BTreeMap<String, String>>,
    metadata: Json<Map<String, Value>>,
    enabled: bool,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    last_used_time: Option<DateTime<Utc>>,
    last_used_ip: Option<String>,
    use_count: i64,
    expire_time: Option<DateTime<Utc>>,
    created_by: Option<Uuid>,
    revision: i64,
    previous_secret_hash: Option<Vec<u8>>,
    previous_hash_expire_time: Option<DateTime<Utc>>,
    max_uses: Option<i64>,
    uses: i64,
    rate_limit_requests: Option<i64>,
    rate_limit_interval_ms: Option<i64>,
    secret_reported_time: Option<DateTime<Utc>>,
}

/// A row a bulk revocation locked, and whether it matches the revocation (else it is the
/// caller's own row, locked to be checked).
#[derive(FromRow)]
pub struct RevokeCandidate {
    /// The token.
    #[sqlx(flatten)]
    pub row: TokenRow,
    /// Whether the revocation's filter matches it.
    pub matched: bool,
}

fn hash_of(bytes: &[u8]) -> Option<SecretHash> {
    bytes.try_into().ok().map(SecretHash)
}

impl TryFrom<TokenRow> for Token {
    type Error = StoreError;

    fn try_from(row: TokenRow) -> Result<Self, StoreError> {
        let id = row.id;
        let corrupt = |reason: String| StoreError::Corrupt { id, reason };
        let rate_limit = match (row.rate_limit_requests, row.rate_limit_interval_ms) {
            (Some(requests), Some(ms)) => Some(
                RateLimit::new(requests, std::time::Duration::from_millis(ms.max(0) as u64))
                    .map_err(corrupt)?,
            ),
            _ => None,
        };
        Ok(Token {
            id,
            name: row.name,
            owner: row.owner,
            token_type: row.token_type,
            description: row.description,
            permissions: row
                .permissions
                .0
                .iter()
                .map(|p| Permission::parse(p))
                .collect::<Result<_, _>>()
                .map_err(corrupt)?,
            read_only: row.read_only,
            allowed_cidrs: row
                .allowed_cidrs
                .0
                .iter()
                .map(|c| Cidr::parse(c))
                .collect::<Result<_, _>>()
                .map_err(corrupt)?,
            allowed_hosts: row
                .allowed_hosts
                .0
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect::<Result<_, _>>()
                .map_err(corrupt)?,
            bindings: row.bindings.0,
            metadata: row.metadata.0,
            enabled: row.enabled,
            create_time: row.create_time,
            update_time: row.update_time,
            last_used_time: row.last_used_time,
            last_used_ip: row.last_used_ip,
            use_count: row.use_count,
            expire_time: row.expire_time,
            created_by: row.created_by,
            display_hint: row.display_hint,
            secret_hash: hash_of(&row.secret_hash)
                .ok_or_else(|| corrupt("secret_hash is not 32 bytes".into()))?,
            revision: row.revision,
            previous_hash: match row.previous_secret_hash {
                Some(bytes) => Some(
                    hash_of(&bytes)
                        .ok_or_else(|| corrupt("previous_secret_hash is not 32 bytes".into()))?,
                ),
                None => None,
            },
            previous_hash_expire_time: row.previous_hash_expire_time,
            max_uses: row.max_uses,
            uses: row.uses,
            rate_limit,
            secret_reported_time: row.secret_reported_time,
        })
    }
}

/// The rate-limit columns of a token: requests, and the interval in milliseconds.
pub(super) fn rate_columns(token: &Token) -> (Option<i64>, Option<i64>) {
    match token.rate_limit {
        Some(limit) => (
            Some(i64::from(limit.requests)),
            Some(limit.interval.as_millis() as i64),
        ),
        None => (None, None),
    }
}

/// The columns of `audit_events`, in [`AuditRow`]'s order.
pub(super) const AUDIT_COLUMNS: &str =
    "id, time, actor_id, actor_owner, action, target, target_owner, changes, client_ip, detail";

/// A row of `audit_events`.
#[derive(FromRow)]
pub struct AuditRow {
    id: Uuid,
    time: DateTime<Utc>,
    actor_id: Option<Uuid>,
    actor_owner: String,
    action: String,
    target: String,
    target_owner: String,
    changes: Json<Map<String, Value>>,
    client_ip: String,
    detail: String,
}

impl From<AuditRow> for AuditEvent {
    fn from(row: AuditRow) -> Self {
        AuditEvent {
            id: row.id,
            time: row.time,
            actor_id: row.actor_id,
            actor_owner: row.actor_owner,
            action: row.action,
            target: row.target,
            target_owner: row.target_owner,
            changes: row.changes.0,
            client_ip: row.client_ip,
            detail: row.detail,
        }
    }
}

/// The columns of `token_types`, in [`TypeRow`]'s order.
pub(super) const TYPE_COLUMNS: &str =
    "id, display_name, description, template, builtin, create_time, update_time, revision";

/// A row of `token_types`.
#[derive(FromRow)]
pub struct TypeRow {
    id: String,
    display_name: String,
    description: String,
    template: Json<Template>,
    builtin: bool,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    revision: i64,
}

impl From<TypeRow> for TokenType {
    fn from(row: TypeRow) -> Self {
        TokenType {
            id: row.id,
            display_name: row.display_name,
            description: row.description,
            template: row.template.0,
            builtin: row.builtin,
            create_time: row.create_time,
            update_time: row.update_time,
            revision: row.revision,
        }
    }
}

/// A list of strings (permissions, networks, hosts) as a JSON array column.
pub(super) fn strings<T: ToString>(items: &[T]) -> Json<Value> {
    Json(Value::from(
        items.iter().map(ToString::to_string).collect::<Vec<_>>(),
    ))
}

/// A value as a JSON column.
pub(super) fn json<T: serde::Serialize>(value: &T) -> Json<Value> {
    Json(serde_json::to_value(value).expect("maps of strings and JSON values serialize"))
}
