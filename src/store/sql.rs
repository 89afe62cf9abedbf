//! The SQL behind [`TokenStore`], written once and compiled for both Postgres and SQLite.
//!
//! Both take `$N` placeholders and `RETURNING`; types map as UUID/BLOB, TIMESTAMPTZ/TEXT and
//! JSONB/TEXT through sqlx, so one generic implementation serves both backends.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_core::future::BoxFuture;
use serde_json::{Map, Value};
use sqlx::{
    Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Postgres, Sqlite, Type,
    migrate::{MigrateError, Migrator},
    pool::PoolConnection,
    postgres::{PgListener, PgPoolOptions},
    types::Json,
};
use uuid::Uuid;

use super::{
    CHANGE_CHANNEL, ChangeFeed, ListQuery, PoolStats, Scope, StoreError, TokenStore, UpdateOutcome,
    UsageRecord,
};
use crate::{
    domain::{
        permission::Permission,
        restrictions::{Cidr, HostPattern},
        secret::SecretHash,
        token::Token,
    },
    metrics::histogram::{ACQUIRE_BOUNDS, Histogram},
};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// What differs between the backends: their name and their migrations.
pub trait Backend: Database {
    /// `postgres` or `sqlite`.
    const BACKEND_NAME: &'static str;

    /// Applies this backend's migrations.
    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), MigrateError>>;

    /// Listens for changes made by any replica, where the backend can tell.
    fn subscribe(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Option<Box<dyn ChangeFeed>>, StoreError>>;
}

impl Backend for Postgres {
    const BACKEND_NAME: &'static str = "postgres";

    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(POSTGRES_MIGRATIONS.run(pool))
    }

    fn subscribe(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Option<Box<dyn ChangeFeed>>, StoreError>> {
        Box::pin(async move {
            // A connection of its own, not one of the request pool's: the feed is only as
            // good as the connection it listens on, and it must not take a request's place.
            // Named, so operators (and the tests) can find it in pg_stat_activity.
            let options = pool
                .connect_options()
                .as_ref()
                .clone()
                .application_name("token-authority-listener");
            let own_pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            let mut listener = PgListener::connect_with(&own_pool).await?;
            listener.listen(CHANGE_CHANNEL).await?;
            Ok(Some(Box::new(PgChangeFeed {
                listener,
                _pool: own_pool,
            }) as Box<dyn ChangeFeed>))
        })
    }
}

/// How long the change feed may be silent before its connection is checked.
const FEED_HEARTBEAT: Duration = Duration::from_secs(1);

/// Postgres LISTEN on [`CHANGE_CHANNEL`], with a heartbeat so that a silently dead
/// connection is noticed within about two seconds, not at the next TCP timeout.
struct PgChangeFeed {
    listener: PgListener,
    /// The listener's own one-connection pool, closed with the feed.
    _pool: Pool<Postgres>,
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> Result<SecretHash, StoreError> {
        loop {
            // try_recv reads whole messages only, so a timeout cannot cut one in half.
            match tokio::time::timeout(FEED_HEARTBEAT, self.listener.try_recv()).await {
                Ok(Ok(Some(notification))) => match parse_hash(notification.payload()) {
                    Some(hash) => return Ok(hash),
                    None => tracing::warn!(
                        payload = notification.payload(),
                        "ignoring a malformed change notification"
                    ),
                },
                Ok(Ok(None)) => return Err(StoreError::FeedLost),
                Ok(Err(error)) => return Err(error.into()),
                Err(_silent) => {
                    let ping = sqlx::query("SELECT 1").execute(&mut self.listener);
                    match tokio::time::timeout(FEED_HEARTBEAT, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(error.into()),
                        Err(_) => return Err(StoreError::FeedLost),
                    }
                }
            }
        }
    }
}

fn parse_hash(hex: &str) -> Option<SecretHash> {
    if hex.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(SecretHash(bytes))
}

impl Backend for Sqlite {
    const BACKEND_NAME: &'static str = "sqlite";

    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(SQLITE_MIGRATIONS.run(pool))
    }

    fn subscribe(
        _pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Option<Box<dyn ChangeFeed>>, StoreError>> {
        // One process owns a SQLite file: every change is made, and evicted, here.
        Box::pin(async { Ok(None) })
    }
}

/// A token store over a sqlx pool of either backend.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    acquire_times: Histogram,
}

impl<DB: Database> SqlStore<DB> {
    /// Wraps a connected pool.
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            acquire_times: Histogram::new(ACQUIRE_BOUNDS),
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

const COLUMNS: &str = "id, secret_hash, display_hint, name, owner, token_type, description, permissions, read_only, \
     allowed_cidrs, allowed_hosts, bindings, metadata, enabled, create_time, update_time, \
     last_used_time, last_used_ip, use_count, expire_time, created_by, revision";

/// A row of `tokens` as the database returns it.
#[derive(FromRow)]
struct TokenRow {
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
}

impl TryFrom<TokenRow> for Token {
    type Error = StoreError;

    fn try_from(row: TokenRow) -> Result<Self, StoreError> {
        let id = row.id;
        let corrupt = |reason: String| StoreError::Corrupt { id, reason };
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
            secret_hash: SecretHash(
                row.secret_hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("secret_hash is not 32 bytes".into()))?,
            ),
            revision: row.revision,
        })
    }
}

fn strings<T: ToString>(items: &[T]) -> Json<Value> {
    Json(Value::from(
        items.iter().map(ToString::to_string).collect::<Vec<_>>(),
    ))
}

fn json<T: serde::Serialize>(value: &T) -> Json<Value> {
    Json(serde_json::to_value(value).expect("maps of strings and JSON values serialize"))
}

/// Turns a unique violation on (owner, name) into [`StoreError::NameTaken`].
fn map_write_error(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        let on_name = db.constraint() == Some("tokens_owner_name_key")
            || db.message().contains("tokens.owner, tokens.name");
        if db.is_unique_violation() && on_name {
            return StoreError::NameTaken;
        }
    }
    StoreError::Unavailable(error)
}

fn scoped(sql: &str, scope: Scope<'_>, owner_param: usize) -> String {
    match scope {
        Scope::All => sql.to_owned(),
        Scope::Owner(_) => format!("{sql} AND owner = ${owner_param}"),
    }
}

#[async_trait]
impl<DB> TokenStore for SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Uuid>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    fn backend(&self) -> &'static str {
        DB::BACKEND_NAME
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.acquire().await?)
            .await?;
        Ok(())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        DB::migrate(&self.pool).await?;
        Ok(())
    }

    async fn insert(&self, token: &Token) -> Result<(), StoreError> {
        insert_token(&mut *self.acquire().await?, token).await
    }

    async fn insert_admin(&self, token: &Token, only_first: bool) -> Result<bool, StoreError> {
        let mut connection = self.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
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
        insert_token(&mut *tx, token).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get(&self, id: Uuid, scope: Scope<'_>) -> Result<Option<Token>, StoreError> {
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

    async fn find_by_hash(&self, hash: &SecretHash) -> Result<Option<Token>, StoreError> {
        let row: Option<TokenRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tokens WHERE secret_hash = $1"
        ))
        .bind(&hash.as_bytes()[..])
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        row.map(Token::try_from).transpose()
    }

    async fn list(&self, query: &ListQuery<'_>) -> Result<Vec<Token>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM tokens WHERE TRUE");
        let mut next = 1;
        if query.scope.owner().is_some() {
            sql.push_str(&format!(" AND owner = ${next}"));
            next += 1;
        }
        if query.after.is_some() {
            sql.push_str(&format!(" AND id > ${next}"));
            next += 1;
        }
        sql.push_str(&format!(" ORDER BY id LIMIT ${next}"));
        let mut statement = sqlx::query_as::<DB, TokenRow>(&sql);
        if let Some(owner) = query.scope.owner() {
            statement = statement.bind(owner);
        }
        if let Some(after) = query.after {
            statement = statement.bind(after);
        }
        let rows = statement
            .bind(i64::from(query.limit))
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        rows.into_iter().map(Token::try_from).collect()
    }

    async fn update(&self, token: &Token, scope: Scope<'_>) -> Result<UpdateOutcome, StoreError> {
        let sql = scoped(
            "UPDATE tokens SET name = $1, token_type = $2, description = $3, permissions = $4, \
             read_only = $5, allowed_cidrs = $6, allowed_hosts = $7, bindings = $8, metadata = $9, \
             expire_time = $10, update_time = $11, revision = revision + 1 \
             WHERE id = $12 AND revision = $13",
            scope,
            14,
        );
        let returning = format!("{sql} RETURNING {COLUMNS}");
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
            .bind(token.id)
            .bind(token.revision);
        if let Scope::Owner(owner) = scope {
            statement = statement.bind(owner);
        }
        let row = statement
            .fetch_optional(&mut *self.acquire().await?)
            .await
            .map_err(map_write_error)?;
        match row {
            Some(row) => Ok(UpdateOutcome::Updated(Box::new(row.try_into()?))),
            None => match self.get(token.id, scope).await? {
                Some(_) => Ok(UpdateOutcome::Conflict),
                None => Ok(UpdateOutcome::NotFound),
            },
        }
    }

    async fn set_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        now: DateTime<Utc>,
        scope: Scope<'_>,
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
        let row = statement
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
        row.map(Token::try_from).transpose()
    }

    async fn delete(&self, id: Uuid, scope: Scope<'_>) -> Result<Option<Token>, StoreError> {
        let sql = scoped("DELETE FROM tokens WHERE id = $1", scope, 2);
        let returning = format!("{sql} RETURNING {COLUMNS}");
        let mut statement = sqlx::query_as::<DB, TokenRow>(&returning).bind(id);
        if let Scope::Owner(owner) = scope {
            statement = statement.bind(owner);
        }
        let row = statement
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
        row.map(Token::try_from).transpose()
    }

    async fn record_usage(&self, usage: &[UsageRecord]) -> Result<(), StoreError> {
        let mut connection = self.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
        for record in usage {
            // Another replica may have written a later use already; keep the later one.
            sqlx::query(
                "UPDATE tokens SET use_count = use_count + $1, \
                 last_used_ip = CASE WHEN last_used_time IS NULL OR last_used_time <= $2 THEN $3 ELSE last_used_ip END, \
                 last_used_time = CASE WHEN last_used_time IS NULL OR last_used_time <= $2 THEN $2 ELSE last_used_time END \
                 WHERE id = $4",
            )
            .bind(record.count)
            .bind(record.last_used_time)
            .bind(record.last_used_ip.as_deref())
            .bind(record.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        DB::subscribe(&self.pool).await
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

async fn insert_token<'e, DB, E>(executor: E, token: &Token) -> Result<(), StoreError>
where
    DB: Database,
    E: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Uuid: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Uuid>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO tokens (id, secret_hash, display_hint, name, owner, token_type, description, \
         permissions, read_only, allowed_cidrs, allowed_hosts, bindings, metadata, enabled, \
         create_time, update_time, last_used_time, last_used_ip, use_count, expire_time, created_by, revision) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, NULL, NULL, 0, $17, $18, $19)",
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
    .execute(executor)
    .await
    .map_err(map_write_error)?;
    Ok(())
}
