//! Tokens: create, read, list, change, rotate, delete and bulk-revoke, each change with its
//! audit event in the same transaction.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Executor;
use uuid::Uuid;

use super::{
    commit, map_write_error,
    query::{Arg, Filter, bind_args, scoped, token_filter},
    rows::{COLUMNS, RevokeCandidate, TokenRow, json, rate_columns, strings},
};
use crate::{
    domain::{audit::AuditEvent, secret::SecretHash, token::Token},
    store::{
        Actor, Change, Changed, Decide, ListQuery, RevokeDecision, RevokeOutcome, RevokeQuery,
        Revoked, Scope, StoreError,
    },
};

/// The most tokens disabled by one statement of a bulk revocation.
const REVOKE_CHUNK: usize = 500;
/// The most times a bulk revocation reads its matching rows before it gives up (each
/// read after the first finds only tokens made while the one before waited for a lock).
const REVOKE_PASSES: usize = 16;
/// The most token ids a bulk revocation's audit event lists.
const AUDITED_IDS: usize = 1000;

/// Why [`gate`](super::SqlStore::gate) stops a write.
pub(super) enum Gate {
    /// The caller's token was disabled, deleted or changed since it authenticated.
    CallerChanged,
    /// A usage-limited caller has fewer uses left than the write costs.
    OutOfUses,
}

impl From<Gate> for Changed {
    fn from(gate: Gate) -> Self {
        match gate {
            Gate::CallerChanged => Changed::CallerChanged,
            Gate::OutOfUses => Changed::OutOfUses,
        }
    }
}

impl<T> From<Gate> for crate::store::TypeWrite<T> {
    fn from(gate: Gate) -> Self {
        match gate {
            Gate::CallerChanged => Self::CallerChanged,
            Gate::OutOfUses => Self::OutOfUses,
        }
    }
}

impl_sql_store! {
    impl {
        pub(super) async fn insert(
            &self,
            token: &Token,
            type_revision: i64,
            actor: Actor,
            delegated_uses: i64,
            audit: &AuditEvent,
        ) -> Result<Changed, StoreError> {
            let mut tx = self.begin_write().await?;
            if let Some(refused) = Self::gate(&mut tx, actor, 1 + delegated_uses).await? {
                return Ok(refused.into());
            }
            // The type's row is share-locked, so that it cannot be deleted (DeleteType
            // locks it for update first) or its template changed before this token, which
            // uses it, is committed; and it must be the revision the policy judged by.
            match Self::share_type(&mut *tx, &token.token_type).await? {
                None => return Ok(Changed::TypeGone),
                Some(now) if now != type_revision => return Ok(Changed::TypeChanged),
                Some(_) => {}
            }
            Self::insert_token(&mut *tx, token).await?;
            Self::insert_audit(&mut *tx, audit, &token.owner).await?;
            commit(tx).await?;
            Ok(Changed::Done {
                before: Box::new(token.clone()),
                after: Some(Box::new(token.clone())),
            })
        }

        pub(super) async fn insert_admin(
            &self,
            token: &Token,
            only_first: bool,
            audit: &AuditEvent,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            let claimed: Option<String> = sqlx::query_scalar(
                "INSERT INTO system_state (key, value, update_time) VALUES ('bootstrap', $1, $2) \
             ON CONFLICT (key) DO NOTHING RETURNING key",
            )
            .bind(token.id.to_string())
            .bind(token.create_time)
            .fetch_optional(&mut *tx)
            .await?;
            if claimed.is_none() && only_first {
                return Ok(false);
            }
            Self::insert_token(&mut *tx, token).await?;
            Self::insert_audit(&mut *tx, audit, &token.owner).await?;
            commit(tx).await?;
            Ok(true)
        }

        pub(super) async fn get(
            &self,
            id: Uuid,
            scope: Scope<'_>,
        ) -> Result<Option<Token>, StoreError> {
            let sql = scoped(
                &format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"),
                scope,
                2,
            );
            let mut statement = sqlx::query_as::<DB, TokenRow>(&sql).bind(id);
            if let Scope::Owner(owner) = scope {
                statement = statement.bind(owner);
            }
            let row = statement
                .fetch_optional(&mut *self.acquire().await?)
                .await?;
            row.map(Token::try_from).transpose()
        }

        pub(super) async fn find_by_hash(
            &self,
            hash: &SecretHash,
            now: DateTime<Utc>,
        ) -> Result<Option<Token>, StoreError> {
            let row: Option<TokenRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM tokens WHERE secret_hash = $1 \
             UNION ALL SELECT {COLUMNS} FROM tokens \
             WHERE previous_secret_hash = $1 AND previous_hash_expire_time > $2"
            ))
            .bind(&hash.as_bytes()[..])
            .bind(now)
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
            row.map(Token::try_from).transpose()
        }

        pub(super) async fn list(&self, query: &ListQuery<'_>) -> Result<Vec<Token>, StoreError> {
            let mut filter = token_filter::<DB>(query);
            if let Some(after) = query.after {
                filter.and("id > ?", Arg::Uuid(after));
            }
            let limit = filter.next();
            let sql = format!(
                "SELECT {COLUMNS} FROM tokens WHERE TRUE{} ORDER BY id LIMIT ${limit}",
                filter.sql
            );
            let statement = bind_args!(sqlx::query_as::<DB, TokenRow>(&sql), &filter.args);
            let rows = statement
                .bind(i64::from(query.limit))
                .fetch_all(&mut *self.acquire().await?)
                .await?;
            rows.into_iter().map(Token::try_from).collect()
        }

        pub(super) async fn count(&self, query: &ListQuery<'_>) -> Result<i64, StoreError> {
            let filter = token_filter::<DB>(query);
            let sql = format!("SELECT COUNT(*) FROM tokens WHERE TRUE{}", filter.sql);
            let statement = bind_args!(sqlx::query_scalar::<DB, i64>(&sql), &filter.args);
            Ok(statement.fetch_one(&self.pool).await?)
        }

        pub(super) async fn change(
            &self,
            id: Uuid,
            actor: Actor,
            decide: Decide<'_>,
        ) -> Result<Changed, StoreError> {
            let mut tx = self.begin_write().await?;
            // The token and its caller, locked in id order (the order every writer locks
            // rows in, so that none can deadlock another): nothing changes either of them
            // between the decision and the write, and a caller disabled or changed since it
            // authenticated is seen here.
            let rows = Self::lock_rows(&mut *tx, &[id, actor.id]).await?;
            let Some(caller) = rows.iter().find(|t| t.id == actor.id) else {
                return Ok(Changed::CallerChanged);
            };
            if !Self::still(caller, actor) {
                return Ok(Changed::CallerChanged);
            }
            let Some(before) = rows.iter().find(|t| t.id == id) else {
                return Ok(Changed::NotFound);
            };
            let decided = match decide(before) {
                Ok(decided) => decided,
                Err(refusal) => return Ok(Changed::Refused(refusal)),
            };
            // The templates judged by are share-locked, so that they cannot change (nor,
            // for a new type, be deleted) before this write commits, and must be the ones
            // the decision read.
            let mut templates = decided.templates.clone();
            templates.sort();
            for (kind, revision) in &templates {
                match Self::share_type(&mut *tx, kind).await? {
                    None => return Ok(Changed::TypeGone),
                    Some(now) if now != *revision => return Ok(Changed::TypeChanged),
                    Some(_) => {}
                }
            }
            if !Self::spend(&mut *tx, caller, 1 + decided.delegated_uses).await? {
                return Ok(Changed::OutOfUses);
            }
            let written = match &decided.change {
                Change::Keep => {
                    commit(tx).await?;
                    return Ok(Changed::Done {
                        before: Box::new(before.clone()),
                        after: Some(Box::new(before.clone())),
                    });
                }
                Change::Update(after) => Self::write_fields(&mut *tx, after).await?,
                Change::SetEnabled(enabled) => {
                    let sql = format!(
                        "UPDATE tokens SET enabled = $1, update_time = $2, \
                         revision = revision + 1 WHERE id = $3 RETURNING {COLUMNS}"
                    );
                    sqlx::query_as::<DB, TokenRow>(&sql)
                        .bind(*enabled)
                        .bind(decided.audit.time)
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?
                }
                Change::Rotate(rotation) => {
                    // With a grace period the current secret becomes the previous one
                    // (replacing any earlier previous secret); without, no previous
                    // secret works any more. The new secret was never reported, so the
                    // token may be enabled again (a disabled token rotates only without
                    // grace: the reported secret is forgotten, not kept as the previous).
                    let sql = format!(
                        "UPDATE tokens SET \
                         previous_secret_hash = CASE WHEN $1 THEN secret_hash ELSE NULL END, \
                         previous_hash_expire_time = $2, secret_hash = $3, display_hint = $4, \
                         secret_reported_time = NULL, update_time = $5, \
                         revision = revision + 1 WHERE id = $6 RETURNING {COLUMNS}"
                    );
                    sqlx::query_as::<DB, TokenRow>(&sql)
                        .bind(rotation.previous_until.is_some())
                        .bind(rotation.previous_until)
                        .bind(&rotation.hash.as_bytes()[..])
                        .bind(rotation.display_hint.as_str())
                        .bind(rotation.now)
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?
                }
                Change::Delete => {
                    sqlx::query_as::<DB, TokenRow>(&format!(
                        "DELETE FROM tokens WHERE id = $1 RETURNING {COLUMNS}"
                    ))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
                }
            };
            let written = Token::try_from(written)?;
            Self::insert_audit(&mut *tx, &decided.audit, &written.owner).await?;
            commit(tx).await?;
            let deleted = matches!(decided.change, Change::Delete);
            Ok(Changed::Done {
                before: Box::new(before.clone()),
                after: (!deleted).then(|| Box::new(written)),
            })
        }

        pub(super) async fn revoke(
            &self,
            query: &RevokeQuery<'_>,
            actor: Actor,
            decide: RevokeDecision<'_>,
            now: DateTime<Utc>,
            audit: &AuditEvent,
        ) -> Result<Revoked, StoreError> {
            let mut filter = Filter::default();
            let mut tree = "";
            if let Some(root) = query.descendants_of {
                // Every token the root created, and those they created, all the way down;
                // deleted tokens' lineage counts too, so a deleted child's children are
                // reached.
                filter.args.push(Arg::Uuid(root));
                tree = "WITH RECURSIVE lineage(id, created_by) AS \
                        (SELECT id, created_by FROM tokens \
                        UNION ALL SELECT id, created_by FROM deleted_tokens), \
                        tree(id) AS (SELECT id FROM lineage WHERE created_by = $1 \
                        UNION SELECT l.id FROM lineage l JOIN tree ON l.created_by = tree.id) ";
                filter.and_plain("id IN (SELECT id FROM tree)");
            }
            if let Some(owner) = query.owner {
                filter.and("owner = ?", Arg::Str(owner));
            }
            if let Some(kind) = query.token_type {
                filter.and("token_type = ?", Arg::Str(kind));
            }
            filter.args.push(Arg::Uuid(actor.id));
            let caller_param = filter.args.len();
            // The matching rows and the caller's, locked in id order (the order usage
            // flushes write in, so that neither can deadlock the other): nothing changes
            // them between the decisions and the writes. Rows a later read finds (below)
            // are locked after higher ids already held; the rare deadlock that allows is
            // rolled back by Postgres and retried by `retried` (`is_conflict`).
            let matched = format!("(enabled = TRUE{})", filter.sql);
            let sql = format!(
                "{tree}SELECT {COLUMNS}, {matched} AS matched FROM tokens \
                 WHERE {matched} OR id = ${caller_param} ORDER BY id{}",
                DB::LOCK_ROWS
            );
            let mut tx = self.begin_write().await?;
            let mut revoked = Revoked::default();
            let mut caller = None;
            let mut chosen = Vec::new();
            let mut seen = HashSet::new();
            // Postgres reads the rows as of the statement's start, then waits for the
            // locks of rows in use: a token of the lineage that was making a child when
            // this read began is locked only after that child is committed, unseen. So
            // the read runs again (a fresh snapshot; the rows already locked are ours)
            // until it finds no row it has not seen: nothing matching can be made after
            // that, as every maker that matches is locked by now. SQLite's IMMEDIATE
            // transaction excludes other writers, so there the second read finds nothing.
            for pass in 0.. {
                if pass == REVOKE_PASSES {
                    return Err(StoreError::Contended(
                        "tokens matching the revocation were made faster than it could lock \
                         them; nothing was revoked, try again",
                    ));
                }
                let rows = bind_args!(sqlx::query_as::<DB, RevokeCandidate>(&sql), &filter.args)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut new = false;
                for candidate in rows {
                    let token = Token::try_from(candidate.row)?;
                    if !seen.insert(token.id) {
                        continue;
                    }
                    new = true;
                    if candidate.matched {
                        if decide(&token) {
                            chosen.push(token.id);
                        } else {
                            revoked.skipped += 1;
                        }
                    }
                    if token.id == actor.id {
                        caller = Some(token);
                    }
                }
                if !new {
                    break;
                }
            }
            let Some(caller) = caller.filter(|c| Self::still(c, actor)) else {
                revoked.outcome = RevokeOutcome::CallerChanged;
                return Ok(revoked);
            };
            if !Self::spend(&mut *tx, &caller, 1).await? {
                revoked.outcome = RevokeOutcome::OutOfUses;
                return Ok(revoked);
            }
            for chunk in chosen.chunks(REVOKE_CHUNK) {
                let ids: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
                let sql = format!(
                    "UPDATE tokens SET enabled = $1, update_time = $2, revision = revision + 1 \
                     WHERE id IN ({}) RETURNING {COLUMNS}",
                    ids.join(", ")
                );
                let mut statement = sqlx::query_as::<DB, TokenRow>(&sql).bind(false).bind(now);
                for id in chunk {
                    statement = statement.bind(*id);
                }
                for row in statement.fetch_all(&mut *tx).await? {
                    revoked.tokens.push(Token::try_from(row)?);
                }
            }
            let mut audit = audit.clone();
            audit
                .changes
                .insert("revoked_count".into(), Value::from(revoked.tokens.len()));
            audit
                .changes
                .insert("skipped_count".into(), Value::from(revoked.skipped));
            // Which tokens, for forensics (`target` names the revocation, not each token).
            let ids: Vec<Value> = revoked
                .tokens
                .iter()
                .take(AUDITED_IDS)
                .map(|t| Value::from(t.id.to_string()))
                .collect();
            audit.changes.insert("revoked_ids".into(), Value::from(ids));
            if revoked.tokens.len() > AUDITED_IDS {
                audit
                    .changes
                    .insert("revoked_ids_truncated".into(), Value::from(true));
            }
            Self::insert_audit(&mut *tx, &audit, &audit.target_owner.clone()).await?;
            commit(tx).await?;
            Ok(revoked)
        }

        /// Reads and locks (for update, where the backend locks rows) the tokens with
        /// these ids, in id order.
        pub(super) async fn lock_rows<'e, E>(executor: E, ids: &[Uuid]) -> Result<Vec<Token>, StoreError>
        where
            E: Executor<'e, Database = DB>,
        {
            let params: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {COLUMNS} FROM tokens WHERE id IN ({}) ORDER BY id{}",
                params.join(", "),
                DB::LOCK_ROWS
            );
            let mut statement = sqlx::query_as::<DB, TokenRow>(&sql);
            for id in ids {
                statement = statement.bind(*id);
            }
            statement
                .fetch_all(executor)
                .await?
                .into_iter()
                .map(Token::try_from)
                .collect()
        }

        /// The caller check of a write that acts on no existing token (a creation, a
        /// type write): locks the caller's row first (before any type row, the order
        /// every writer takes), checks it is still as it authenticated and spends `uses`
        /// of its budget. `Some` when the write must not go on; returning drops the
        /// transaction, which rolls back what was spent.
        pub(super) async fn gate(
            tx: &mut sqlx::Transaction<'static, DB>,
            actor: Actor,
            uses: i64,
        ) -> Result<Option<Gate>, StoreError> {
            let caller = Self::lock_rows(&mut **tx, &[actor.id]).await?;
            let Some(caller) = caller.first().filter(|c| Self::still(c, actor)) else {
                return Ok(Some(Gate::CallerChanged));
            };
            if !Self::spend(&mut **tx, caller, uses).await? {
                return Ok(Some(Gate::OutOfUses));
            }
            Ok(None)
        }

        /// Share-locks a token type's row (where the backend locks rows) and returns its
        /// revision; `None` when it is gone.
        async fn share_type<'e, E>(executor: E, id: &str) -> Result<Option<i64>, StoreError>
        where
            E: Executor<'e, Database = DB>,
        {
            Ok(sqlx::query_scalar(&format!(
                "SELECT revision FROM token_types WHERE id = $1{}",
                DB::SHARE_ROWS
            ))
            .bind(id)
            .fetch_optional(executor)
            .await?)
        }

        /// Whether the caller's token is still as it was when the call authenticated.
        pub(super) fn still(caller: &Token, actor: Actor) -> bool {
            caller.revision == actor.revision && caller.enabled
        }

        /// Spends `uses` of a usage-limited caller's budget; false when it has fewer left.
        /// Callers without `max_uses` spend nothing here.
        pub(super) async fn spend<'e, E>(executor: E, caller: &Token, uses: i64) -> Result<bool, StoreError>
        where
            E: Executor<'e, Database = DB>,
        {
            if caller.max_uses.is_none() {
                return Ok(true);
            }
            let spent: Option<i64> = sqlx::query_scalar(
                "UPDATE tokens SET uses = uses + $1 WHERE id = $2 AND uses + $1 <= max_uses \
                 RETURNING uses",
            )
            .bind(uses)
            .bind(caller.id)
            .fetch_optional(executor)
            .await?;
            Ok(spent.is_some())
        }

        /// Writes a token's settable fields.
        async fn write_fields<'e, E>(executor: E, token: &Token) -> Result<TokenRow, StoreError>
        where
            E: Executor<'e, Database = DB>,
        {
            let sql = format!(
                "UPDATE tokens SET name = $1, token_type = $2, description = $3, \
                 permissions = $4, read_only = $5, allowed_cidrs = $6, allowed_hosts = $7, \
                 bindings = $8, metadata = $9, expire_time = $10, update_time = $11, \
                 max_uses = $12, rate_limit_requests = $13, rate_limit_interval_ms = $14, \
                 revision = revision + 1 WHERE id = $15 RETURNING {COLUMNS}"
            );
            let (requests, interval) = rate_columns(token);
            sqlx::query_as::<DB, TokenRow>(&sql)
                .bind(&token.name)
                .bind(&token.token_type)
                .bind(&token.description)
                .bind(strings(&token.permissions))
                .bind(token.read_only)
                .bind(strings(&token.allowed_cidrs))
                .bind(strings(&token.allowed_hosts))
                .bind(json(&token.bindings))
                .bind(json(&token.metadata))
                .bind(token.expire_time)
                .bind(token.update_time)
                .bind(token.max_uses)
                .bind(requests)
                .bind(interval)
                .bind(token.id)
                .fetch_one(executor)
                .await
                .map_err(map_write_error)
        }

        async fn insert_token<'e, E>(executor: E, token: &Token) -> Result<(), StoreError>
        where
            E: Executor<'e, Database = DB>,
        {
            let (requests, interval) = rate_columns(token);
            sqlx::query(
            "INSERT INTO tokens (id, secret_hash, display_hint, name, owner, token_type, description, \
             permissions, read_only, allowed_cidrs, allowed_hosts, bindings, metadata, enabled, \
             create_time, update_time, last_used_time, last_used_ip, use_count, expire_time, created_by, revision, \
             max_uses, uses, rate_limit_requests, rate_limit_interval_ms, secret_reported_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, NULL, NULL, 0, $17, $18, $19, \
             $20, 0, $21, $22, $23)",
        )
        .bind(token.id)
        .bind(token.secret_hash.as_bytes().to_vec())
        .bind(token.display_hint.clone())
        .bind(token.name.clone())
        .bind(token.owner.clone())
        .bind(token.token_type.clone())
        .bind(token.description.clone())
        .bind(strings(&token.permissions))
        .bind(token.read_only)
        .bind(strings(&token.allowed_cidrs))
        .bind(strings(&token.allowed_hosts))
        .bind(json(&token.bindings))
        .bind(json(&token.metadata))
        .bind(token.enabled)
        .bind(token.create_time)
        .bind(token.update_time)
        .bind(token.expire_time)
        .bind(token.created_by)
        .bind(token.revision)
        .bind(token.max_uses)
        .bind(requests)
        .bind(interval)
        .bind(token.secret_reported_time)
        .execute(executor)
        .await
        .map_err(map_write_error)?;
            Ok(())
        }
    }
}
