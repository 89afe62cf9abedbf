//! The SQL behind [`TokenStore`], written once and compiled for both Postgres and SQLite.
//!
//! Both take `$N` placeholders and `RETURNING`; types map as UUID/BLOB, TIMESTAMPTZ/TEXT and
//! JSONB/TEXT through sqlx, so one generic implementation serves both backends.
//!
//! By concern: this file holds the store, what differs between the backends, and the
//! [`TokenStore`] impl, each of whose methods calls the inherent method of the same name
//! in the file of its concern (inherent methods take precedence over the trait's):
//! [`tokens`] (create, read, list, change, revoke), [`types`] (the token-type registry),
//! [`audit`] (the audit trail), [`usage`] (usage counts), [`feed`] (the Postgres change
//! feed); [`rows`] maps rows to domain types and [`query`] builds filtered queries; the
//! dispatch runs each operation through [`retry`], which makes dropped connections fail
//! nothing that could succeed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_core::future::BoxFuture;
use sqlx::{
    Database, Pool, Postgres, Sqlite, Transaction,
    migrate::{MigrateError, Migrator},
    pool::PoolConnection,
};
use uuid::Uuid;

use super::{
    Actor, AuditQuery, ChangeFeed, Changed, Decide, LeakAudit, Leaked, ListQuery, PoolStats,
    RevokeDecision, RevokeQuery, Revoked, Scope, StoreError, TokenStore, TypeDeletion, TypeWrite,
    UsageRecord,
};
use crate::{
    domain::{audit::AuditEvent, secret::SecretHash, token::Token, token_type::TokenType},
    metrics::histogram::{ACQUIRE_BOUNDS, Histogram},
};

/// Emits an impl block for [`SqlStore<DB>`] (inherent, or of the trait named before the
/// braces) under the sqlx bounds that both backends meet, so that they are written once
/// however many files implement a concern. (rustfmt does not reach into a macro's body:
/// keep those bodies as rustfmt would format them at that depth, i.e. `max_width = 96`.)
macro_rules! impl_sql_store {
    ($(#[$attr:meta])* impl $($trait_:ident for)? { $($body:tt)* }) => {
        $(#[$attr])*
        impl<DB> $($trait_ for)? $crate::store::sql::SqlStore<DB>
        where
            DB: $crate::store::sql::Backend,
            for<'c> &'c mut DB::Connection: ::sqlx::Executor<'c, Database = DB>,
            for<'q> DB::Arguments<'q>: ::sqlx::IntoArguments<'q, DB>,
            for<'r> $crate::store::sql::rows::TokenRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::AuditRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::TypeRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::RevokeCandidate: ::sqlx::FromRow<'r, DB::Row>,
            for<'q> ::uuid::Uuid:
                ::sqlx::Encode<'q, DB> + ::sqlx::Decode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> String: ::sqlx::Encode<'q, DB> + ::sqlx::Decode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> &'q str: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Vec<u8>: ::sqlx::Encode<'q, DB> + ::sqlx::Decode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> &'q [u8]: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<&'q [u8]>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> bool: ::sqlx::Encode<'q, DB> + ::sqlx::Decode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> i64: ::sqlx::Encode<'q, DB> + ::sqlx::Decode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<i64>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> ::chrono::DateTime<::chrono::Utc>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> ::sqlx::types::Json<::serde_json::Value>:
                ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<::chrono::DateTime<::chrono::Utc>>:
                ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<::uuid::Uuid>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<&'q str>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            usize: ::sqlx::ColumnIndex<DB::Row>,
        {
            $($body)*
        }
    };
}

mod audit;
mod feed;
mod find_many;
mod leaks;
mod query;
mod retry;
mod rows;
mod tokens;
mod types;
mod usage;

pub use find_many::FIND_MANY_MAX;
pub use retry::LostConnections;
use retry::commit;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// What differs between the backends: their name and their migrations.
pub trait Backend: Database + find_many::FindMany {
    /// `postgres` or `sqlite`.
    const BACKEND_NAME: &'static str;

    /// Appended to a `SELECT … ORDER BY id` to lock the rows it reads, in that order, where
    /// the backend locks rows (Postgres); SQLite locks the whole database on write.
    const LOCK_ROWS: &'static str;

    /// Appended to a `SELECT` to share-lock the rows it reads (Postgres): they cannot be
    /// changed or deleted until the transaction ends.
    const SHARE_ROWS: &'static str;

    /// Begins a transaction that may write. SQLite's plain `BEGIN` is deferred: it takes the
    /// write lock only at the first write, and that upgrade fails at once (SQLITE_BUSY, which
    /// no busy timeout can wait out) when another connection wrote since the transaction's
    /// first read. `BEGIN IMMEDIATE` takes the lock at the start, so writers queue instead.
    const BEGIN_WRITE: &'static str;

    /// Applies this backend's migrations.
    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), MigrateError>>;

    /// A condition that the token's binding on the key in parameter `key` equals the value
    /// in parameter `value`.
    fn binding_clause(key: usize, value: usize) -> String;

    /// Listens for changes made by any replica, where the backend can tell, checking the
    /// feed's connection every `heartbeat`.
    fn subscribe(
        pool: &Pool<Self>,
        heartbeat: Duration,
    ) -> BoxFuture<'_, Result<Option<Box<dyn ChangeFeed>>, StoreError>>;
}

impl Backend for Postgres {
    const BACKEND_NAME: &'static str = "postgres";
    const LOCK_ROWS: &'static str = " FOR UPDATE";
    const SHARE_ROWS: &'static str = " FOR SHARE";
    const BEGIN_WRITE: &'static str = "BEGIN";

    fn binding_clause(key: usize, value: usize) -> String {
        format!("bindings ->> ${key} = ${value}")
    }

    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(POSTGRES_MIGRATIONS.run(pool))
    }

    fn subscribe(
        pool: &Pool<Self>,
        heartbeat: Duration,
    ) -> BoxFuture<'_, Result<Option<Box<dyn ChangeFeed>>, StoreError>> {
        Box::pin(feed::subscribe(pool, heartbeat))
    }
}

impl Backend for Sqlite {
    const BACKEND_NAME: &'static str = "sqlite";
    const LOCK_ROWS: &'static str = "";
    const SHARE_ROWS: &'static str = "";
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    fn binding_clause(key: usize, value: usize) -> String {
        // Binding keys are letters, digits and `._-`, so they quote safely in a JSON path.
        format!("json_extract(bindings, '$.\"' || ${key} || '\"') = ${value}")
    }

    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(SQLITE_MIGRATIONS.run(pool))
    }

    fn subscribe(
        _pool: &Pool<Self>,
        _heartbeat: Duration,
    ) -> BoxFuture<'_, Result<Option<Box<dyn ChangeFeed>>, StoreError>> {
        // One process owns a SQLite file: every change is made, and evicted, here.
        Box::pin(async { Ok(None) })
    }
}

/// A token store over a sqlx pool of either backend.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    acquire_times: Histogram,
    feed_heartbeat: Duration,
    /// Shared with the pool's `before_acquire`, which tests connections idle since a loss.
    lost: Arc<LostConnections>,
}

impl<DB: Database> SqlStore<DB> {
    /// Wraps a connected pool; its change feeds check their connection every
    /// `feed_heartbeat`, and lost connections are noted in `lost`.
    pub fn new(pool: Pool<DB>, feed_heartbeat: Duration, lost: Arc<LostConnections>) -> Self {
        Self {
            pool,
            acquire_times: Histogram::new(ACQUIRE_BOUNDS),
            feed_heartbeat,
            lost,
        }
    }

    /// Takes a connection from the pool, timing the wait (pings included) for the metrics.
    async fn acquire(&self) -> Result<PoolConnection<DB>, StoreError> {
        let start = Instant::now();
        let connection = self.pool.acquire().await;
        self.acquire_times.observe(start.elapsed());
        Ok(connection?)
    }
}

impl<DB: Backend> SqlStore<DB> {
    /// Begins a transaction that may write ([`Backend::BEGIN_WRITE`]).
    async fn begin_write(&self) -> Result<Transaction<'static, DB>, StoreError> {
        Ok(self.pool.begin_with(DB::BEGIN_WRITE).await?)
    }
}

/// Turns unique violations on (owner, name) and on a type's id into their errors.
fn map_write_error(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
    {
        if db.constraint() == Some("tokens_owner_name_key")
            || db.message().contains("tokens.owner, tokens.name")
        {
            return StoreError::NameTaken;
        }
        if db.constraint() == Some("token_types_pkey") || db.message().contains("token_types.id") {
            return StoreError::TypeTaken;
        }
    }
    StoreError::Unavailable(error)
}

impl_sql_store! {
    #[async_trait]
    impl TokenStore for {
        fn backend(&self) -> &'static str {
            DB::BACKEND_NAME
        }

        async fn ping(&self) -> Result<(), StoreError> {
            self.retried(|| async {
                sqlx::query("SELECT 1")
                    .execute(&mut *self.acquire().await?)
                    .await?;
                Ok(())
            })
            .await
        }

        async fn migrate(&self) -> Result<(), StoreError> {
            DB::migrate(&self.pool).await?;
            Ok(())
        }

        async fn insert(
            &self,
            token: &Token,
            type_revision: i64,
            actor: Actor,
            delegated_uses: i64,
            audit: &AuditEvent,
        ) -> Result<Changed, StoreError> {
            self.retried(|| self.insert(token, type_revision, actor, delegated_uses, audit))
                .await
        }

        async fn insert_admin(
            &self,
            token: &Token,
            only_first: bool,
            audit: &AuditEvent,
        ) -> Result<bool, StoreError> {
            self.retried(|| self.insert_admin(token, only_first, audit)).await
        }

        async fn get(&self, id: Uuid, scope: Scope<'_>) -> Result<Option<Token>, StoreError> {
            self.retried(|| self.get(id, scope)).await
        }

        async fn find_by_hash(
            &self,
            hash: &SecretHash,
            now: DateTime<Utc>,
        ) -> Result<Option<Token>, StoreError> {
            self.retried(|| self.find_by_hash(hash, now)).await
        }

        async fn find_many(
            &self,
            hashes: &[SecretHash],
            now: DateTime<Utc>,
        ) -> Result<Vec<Token>, StoreError> {
            self.retried(|| self.find_many(hashes, now)).await
        }

        async fn lookup(&self, hash: &SecretHash) -> Result<Option<Token>, StoreError> {
            self.retried(|| self.lookup(hash)).await
        }

        async fn lookup_many(&self, hashes: &[SecretHash]) -> Result<Vec<Token>, StoreError> {
            self.retried(|| self.lookup_many(hashes)).await
        }

        async fn end_leaked(
            &self,
            hash: &SecretHash,
            now: DateTime<Utc>,
            audit: LeakAudit<'_>,
        ) -> Result<Option<Leaked>, StoreError> {
            self.retried(|| self.end_leaked(hash, now, audit)).await
        }

        async fn list(&self, query: &ListQuery<'_>) -> Result<Vec<Token>, StoreError> {
            self.retried(|| self.list(query)).await
        }

        async fn count(&self, query: &ListQuery<'_>) -> Result<i64, StoreError> {
            self.retried(|| self.count(query)).await
        }

        async fn change(
            &self,
            id: Uuid,
            actor: Actor,
            decide: Decide<'_>,
        ) -> Result<Changed, StoreError> {
            self.retried(|| self.change(id, actor, decide)).await
        }

        async fn revoke(
            &self,
            query: &RevokeQuery<'_>,
            actor: Actor,
            decide: RevokeDecision<'_>,
            now: DateTime<Utc>,
            audit: &AuditEvent,
        ) -> Result<Revoked, StoreError> {
            self.retried(|| self.revoke(query, actor, decide, now, audit))
                .await
        }

        async fn consume_use(&self, id: Uuid) -> Result<Option<i64>, StoreError> {
            self.noted(self.consume_use(id).await)
        }

        async fn record_usage(&self, usage: &[UsageRecord]) -> Result<(), StoreError> {
            self.retried(|| self.record_usage(usage)).await
        }

        async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
            self.retried(|| self.record_audit(event)).await
        }

        async fn list_audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditEvent>, StoreError> {
            self.retried(|| self.list_audit(query)).await
        }

        async fn seed_types(&self, types: &[TokenType]) -> Result<(), StoreError> {
            self.retried(|| self.seed_types(types)).await
        }

        async fn list_types(&self) -> Result<Vec<TokenType>, StoreError> {
            self.retried(|| self.list_types()).await
        }

        async fn get_type(&self, id: &str) -> Result<Option<TokenType>, StoreError> {
            self.retried(|| self.get_type(id)).await
        }

        async fn insert_type(
            &self,
            token_type: &TokenType,
            actor: Actor,
            audit: &AuditEvent,
        ) -> Result<TypeWrite<()>, StoreError> {
            self.retried(|| self.insert_type(token_type, actor, audit)).await
        }

        async fn update_type(
            &self,
            token_type: &TokenType,
            actor: Actor,
            audit: &AuditEvent,
        ) -> Result<TypeWrite<Option<TokenType>>, StoreError> {
            self.retried(|| self.update_type(token_type, actor, audit)).await
        }

        async fn delete_type(
            &self,
            id: &str,
            actor: Actor,
            audit: &AuditEvent,
        ) -> Result<TypeWrite<TypeDeletion>, StoreError> {
            self.retried(|| self.delete_type(id, actor, audit)).await
        }

        async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
            DB::subscribe(&self.pool, self.feed_heartbeat).await
        }

        async fn close(&self) {
            self.pool.close().await;
        }

        fn pool_stats(&self) -> PoolStats {
            PoolStats {
                size: self.pool.size(),
                idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
                max: self.pool.options().get_max_connections(),
            }
        }

        fn acquire_times(&self) -> &Histogram {
            &self.acquire_times
        }
    }
}
