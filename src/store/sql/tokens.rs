//! Tokens: create, read, list, change, rotate, delete and bulk-revoke, each change with its
//! audit event in the same transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Executor;
use uuid::Uuid;

use super::{
    commit, map_write_error,
    query::{Arg, bind_args, scoped, token_filter},
    rows::{COLUMNS, TokenRow, json, rate_columns, strings},
};
use crate::{
    domain::{audit::AuditEvent, secret::SecretHash, token::Token},
    store::{ListQuery, RevokeFilter, Rotation, Scope, StoreError, UpdateOutcome},
};

impl_sql_store! {
    impl {
        pub(super) async fn insert(
            &self,
            token: &Token,
            audit: &AuditEvent,
        ) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            Self::insert_token(&mut *tx, token).await?;
            Self::insert_audit(&mut *tx, audit, &token.owner).await?;
            commit(tx).await?;
            Ok(())
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

        pub(super) async fn update(
            &self,
            token: &Token,
            scope: Scope<'_>,
            audit: &AuditEvent,
        ) -> Result<UpdateOutcome, StoreError> {
            let sql = scoped(
                "UPDATE tokens SET name = $1, token_type = $2, description = $3, permissions = $4, \
             read_only = $5, allowed_cidrs = $6, allowed_hosts = $7, bindings = $8, metadata = $9, \
             expire_time = $10, update_time = $11, max_uses = $12, rate_limit_requests = $13, \
             rate_limit_interval_ms = $14, revision = revision + 1 \
             WHERE id = $15 AND revision = $16",
                scope,
                17,
            );
            let returning = format!("{sql} RETURNING {COLUMNS}");
            let (requests, interval) = rate_columns(token);
            let mut statement = sqlx::query_as::<DB, TokenRow>(&returning)
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
                .bind(token.revision);
            if let Scope::Owner(owner) = scope {
                statement = statement.bind(owner);
            }
            let mut tx = self.begin_write().await?;
            let row = statement
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_write_error)?;
            match row {
                Some(row) => {
                    let token = Token::try_from(row)?;
                    Self::insert_audit(&mut *tx, audit, &token.owner).await?;
                    commit(tx).await?;
                    Ok(UpdateOutcome::Updated(Box::new(token)))
                }
                None => {
                    drop(tx);
                    match self.get(token.id, scope).await? {
                        Some(_) => Ok(UpdateOutcome::Conflict),
                        None => Ok(UpdateOutcome::NotFound),
                    }
                }
            }
        }

        pub(super) async fn set_enabled(
            &self,
            id: Uuid,
            enabled: bool,
            now: DateTime<Utc>,
            scope: Scope<'_>,
            audit: &AuditEvent,
        ) -> Result<Option<Token>, StoreError> {
            let sql = scoped(
                "UPDATE tokens SET enabled = $1, update_time = $2, revision = revision + 1 WHERE id = $3",
                scope,
                4,
            );
            let returning = format!("{sql} RETURNING {COLUMNS}");
            let mut statement = sqlx::query_as::<DB, TokenRow>(&returning)
                .bind(enabled)
                .bind(now)
                .bind(id);
            if let Scope::Owner(owner) = scope {
                statement = statement.bind(owner);
            }
            self.write_one(statement, audit).await
        }

        pub(super) async fn delete(
            &self,
            id: Uuid,
            scope: Scope<'_>,
            audit: &AuditEvent,
        ) -> Result<Option<Token>, StoreError> {
            let sql = scoped("DELETE FROM tokens WHERE id = $1", scope, 2);
            let returning = format!("{sql} RETURNING {COLUMNS}");
            let mut statement = sqlx::query_as::<DB, TokenRow>(&returning).bind(id);
            if let Scope::Owner(owner) = scope {
                statement = statement.bind(owner);
            }
            self.write_one(statement, audit).await
        }

        pub(super) async fn rotate(
            &self,
            id: Uuid,
            rotation: &Rotation,
            scope: Scope<'_>,
            audit: &AuditEvent,
        ) -> Result<Option<Token>, StoreError> {
            // With a grace period the current secret becomes the previous one (replacing any
            // earlier previous secret); without, no previous secret works any more.
            let sql = scoped(
                "UPDATE tokens SET \
             previous_secret_hash = CASE WHEN $1 THEN secret_hash ELSE NULL END, \
             previous_hash_expire_time = $2, secret_hash = $3, display_hint = $4, \
             update_time = $5, revision = revision + 1 WHERE id = $6",
                scope,
                7,
            );
            let returning = format!("{sql} RETURNING {COLUMNS}");
            let mut statement = sqlx::query_as::<DB, TokenRow>(&returning)
                .bind(rotation.previous_until.is_some())
                .bind(rotation.previous_until)
                .bind(&rotation.hash.as_bytes()[..])
                .bind(rotation.display_hint.as_str())
                .bind(rotation.now)
                .bind(id);
            if let Scope::Owner(owner) = scope {
                statement = statement.bind(owner);
            }
            self.write_one(statement, audit).await
        }

        pub(super) async fn revoke(
            &self,
            filter: RevokeFilter<'_>,
            now: DateTime<Utc>,
            scope: Scope<'_>,
            audit: &AuditEvent,
        ) -> Result<Vec<Token>, StoreError> {
            let (column, value) = match filter {
                RevokeFilter::Owner(owner) => ("owner", owner),
                RevokeFilter::Type(kind) => ("token_type", kind),
            };
            // The rows are locked in id order first, the order usage flushes write in, so that a
            // bulk revocation and another replica's flush cannot deadlock.
            let matching = scoped(
                &format!("SELECT id FROM tokens WHERE enabled = $3 AND {column} = $4"),
                scope,
                5,
            );
            let returning = format!(
                "UPDATE tokens SET enabled = $1, update_time = $2, revision = revision + 1 \
             WHERE id IN ({matching} ORDER BY id{lock}) RETURNING {COLUMNS}",
                lock = DB::LOCK_ROWS
            );
            let mut statement = sqlx::query_as::<DB, TokenRow>(&returning)
                .bind(false)
                .bind(now)
                .bind(true)
                .bind(value);
            if let Scope::Owner(owner) = scope {
                statement = statement.bind(owner);
            }
            let mut tx = self.begin_write().await?;
            let rows = statement.fetch_all(&mut *tx).await?;
            let tokens = rows
                .into_iter()
                .map(Token::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            let mut audit = audit.clone();
            audit
                .changes
                .insert("revoked_count".into(), Value::from(tokens.len()));
            Self::insert_audit(&mut *tx, &audit, &audit.target_owner.clone()).await?;
            commit(tx).await?;
            Ok(tokens)
        }

        /// Runs a statement that changes (at most) one token and, if it did, records its audit
        /// event in the same transaction.
        async fn write_one<'q>(
            &self,
            statement: sqlx::query::QueryAs<'q, DB, TokenRow, DB::Arguments<'q>>,
            audit: &AuditEvent,
        ) -> Result<Option<Token>, StoreError> {
            let mut tx = self.begin_write().await?;
            let Some(row) = statement.fetch_optional(&mut *tx).await? else {
                return Ok(None);
            };
            let token = Token::try_from(row)?;
            Self::insert_audit(&mut *tx, audit, &token.owner).await?;
            commit(tx).await?;
            Ok(Some(token))
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
             max_uses, uses, rate_limit_requests, rate_limit_interval_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, NULL, NULL, 0, $17, $18, $19, \
             $20, 0, $21, $22)",
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
        .execute(executor)
        .await
        .map_err(map_write_error)?;
            Ok(())
        }
    }
}
