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
    AuditQuery, CHANGE_CHANNEL, ChangeFeed, ListQuery, PoolStats, RevokeDecision, RevokeQuery,
    Revoked, Rotation, Scope, StoreError, TokenStore, TypeDeletion, UpdateOutcome, UsageRecord,
};
use crate::{
    domain::{
        audit::AuditEvent,
        permission::Permission,
        restrictions::{Cidr, HostPattern},
        secret::SecretHash,
        token::{RateLimit, Token},
        token_type::{Template, TokenType},
    },
    metrics::histogram::{ACQUIRE_BOUNDS, Histogram},
};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// What differs between the backends: their name and their migrations.
pub trait Backend: Database {
    /// `postgres` or `sqlite`.
    const BACKEND_NAME: &'static str;

    /// Appended to a `SELECT … ORDER BY id` to lock the rows it reads, in that order, where
    /// the backend locks rows (Postgres); SQLite locks the whole database on write.
    const LOCK_ROWS: &'static str;

    /// Applies this backend's migrations.
    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), MigrateError>>;

    /// A condition that the token's binding on the key in parameter `key` equals the value
    /// in parameter `value`.
    fn binding_clause(key: usize, value: usize) -> String;

    /// Listens for changes made by any replica, where the backend can tell.
    fn subscribe(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Option<Box<dyn ChangeFeed>>, StoreError>>;
}

impl Backend for Postgres {
    const BACKEND_NAME: &'static str = "postgres";
    const LOCK_ROWS: &'static str = " FOR UPDATE";

    fn binding_clause(key: usize, value: usize) -> String {
        format!("bindings ->> ${key} = ${value}")
    }

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
    const LOCK_ROWS: &'static str = "";

    fn binding_clause(key: usize, value: usize) -> String {
        // Binding keys are letters, digits and `._-`, so they quote safely in a JSON path.
        format!("json_extract(bindings, '$.\"' || ${key} || '\"') = ${value}")
    }

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

/// The most tokens disabled by one statement of a bulk revocation.
const REVOKE_CHUNK: usize = 500;

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
     last_used_time, last_used_ip, use_count, expire_time, created_by, revision, \
     previous_secret_hash, previous_hash_expire_time, max_uses, uses, rate_limit_requests, rate_limit_interval_ms";

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
    previous_secret_hash: Option<Vec<u8>>,
    previous_hash_expire_time: Option<DateTime<Utc>>,
    max_uses: Option<i64>,
    uses: i64,
    rate_limit_requests: Option<i64>,
    rate_limit_interval_ms: Option<i64>,
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
        })
    }
}

/// A row of `audit_events`.
#[derive(FromRow)]
struct AuditRow {
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

const AUDIT_COLUMNS: &str =
    "id, time, actor_id, actor_owner, action, target, target_owner, changes, client_ip, detail";

/// A row of `token_types`.
#[derive(FromRow)]
struct TypeRow {
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

const TYPE_COLUMNS: &str =
    "id, display_name, description, template, builtin, create_time, update_time, revision";

fn strings<T: ToString>(items: &[T]) -> Json<Value> {
    Json(Value::from(
        items.iter().map(ToString::to_string).collect::<Vec<_>>(),
    ))
}

fn json<T: serde::Serialize>(value: &T) -> Json<Value> {
    Json(serde_json::to_value(value).expect("maps of strings and JSON values serialize"))
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

fn scoped(sql: &str, scope: Scope<'_>, owner_param: usize) -> String {
    match scope {
        Scope::All => sql.to_owned(),
        Scope::Owner(_) => format!("{sql} AND owner = ${owner_param}"),
    }
}

/// A bind parameter of a query built at run time.
enum Arg<'a> {
    Str(&'a str),
    Text(String),
    Uuid(Uuid),
    Bool(bool),
    Time(DateTime<Utc>),
}

/// A WHERE clause built from optional filters, with its parameters in order.
#[derive(Default)]
struct Filter<'a> {
    sql: String,
    args: Vec<Arg<'a>>,
}

impl<'a> Filter<'a> {
    /// Adds `AND <condition>`, where `?` in the condition is the next parameter.
    fn and(&mut self, condition: &str, arg: Arg<'a>) {
        self.args.push(arg);
        let n = self.args.len();
        self.sql.push_str(" AND ");
        self.sql.push_str(&condition.replace('?', &format!("${n}")));
    }

    /// Adds a condition that takes no parameter.
    fn and_plain(&mut self, condition: &str) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
    }

    /// The number the next parameter will get.
    fn next(&self) -> usize {
        self.args.len() + 1
    }
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn token_filter<'a, DB: Backend>(query: &'a ListQuery<'a>) -> Filter<'a> {
    let mut filter = Filter::default();
    if let Some(owner) = query.scope.owner() {
        filter.and("owner = ?", Arg::Str(owner));
    }
    if let Some(kind) = query.token_type {
        filter.and("token_type = ?", Arg::Str(kind));
    }
    if let Some(enabled) = query.enabled {
        filter.and("enabled = ?", Arg::Bool(enabled));
    }
    if let Some(creator) = query.created_by {
        filter.and("created_by = ?", Arg::Uuid(creator));
    }
    if let Some(prefix) = query.name_prefix {
        filter.and("name LIKE ? ESCAPE '\\'", Arg::Text(like_prefix(prefix)));
    }
    match query.expired {
        Some(true) => filter.and(
            "expire_time IS NOT NULL AND expire_time <= ?",
            Arg::Time(query.now),
        ),
        Some(false) => filter.and(
            "(expire_time IS NULL OR expire_time > ?)",
            Arg::Time(query.now),
        ),
        None => {}
    }
    for (key, value) in &query.bindings {
        let (k, v) = (filter.next(), filter.next() + 1);
        filter.and_plain(&DB::binding_clause(k, v));
        filter.args.push(Arg::Str(key));
        filter.args.push(Arg::Str(value));
    }
    filter
}

macro_rules! bind_args {
    ($statement:expr, $args:expr) => {{
        let mut statement = $statement;
        for arg in $args {
            statement = match arg {
                Arg::Str(v) => statement.bind(*v),
                Arg::Text(v) => statement.bind(v.as_str()),
                Arg::Uuid(v) => statement.bind(*v),
                Arg::Bool(v) => statement.bind(*v),
                Arg::Time(v) => statement.bind(*v),
            };
        }
        statement
    }};
}

#[async_trait]
impl<DB> TokenStore for SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
    for<'r> AuditRow: FromRow<'r, DB::Row>,
    for<'r> TypeRow: FromRow<'r, DB::Row>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q [u8]>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
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

    async fn insert(&self, token: &Token, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_token(&mut *tx, token).await?;
        insert_audit(&mut *tx, audit, &token.owner).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_admin(
        &self,
        token: &Token,
        only_first: bool,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        insert_audit(&mut *tx, audit, &token.owner).await?;
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

    async fn find_by_hash(
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

    async fn list(&self, query: &ListQuery<'_>) -> Result<Vec<Token>, StoreError> {
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

    async fn count(&self, query: &ListQuery<'_>) -> Result<i64, StoreError> {
        let filter = token_filter::<DB>(query);
        let sql = format!("SELECT COUNT(*) FROM tokens WHERE TRUE{}", filter.sql);
        let statement = bind_args!(sqlx::query_scalar::<DB, i64>(&sql), &filter.args);
        Ok(statement.fetch_one(&self.pool).await?)
    }

    async fn update(&self, token: &Token, audit: &AuditEvent) -> Result<UpdateOutcome, StoreError> {
        let returning = format!(
            "UPDATE tokens SET name = $1, token_type = $2, description = $3, permissions = $4, \
             read_only = $5, allowed_cidrs = $6, allowed_hosts = $7, bindings = $8, metadata = $9, \
             expire_time = $10, update_time = $11, max_uses = $12, rate_limit_requests = $13, \
             rate_limit_interval_ms = $14, revision = revision + 1 \
             WHERE id = $15 AND revision = $16 RETURNING {COLUMNS}"
        );
        let (requests, interval) = rate_columns(token);
        let statement = sqlx::query_as::<DB, TokenRow>(&returning)
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
        write_one(&self.pool, token.id, statement, audit).await
    }

    async fn set_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        now: DateTime<Utc>,
        revision: i64,
        audit: &AuditEvent,
    ) -> Result<UpdateOutcome, StoreError> {
        let returning = format!(
            "UPDATE tokens SET enabled = $1, update_time = $2, revision = revision + 1 \
             WHERE id = $3 AND revision = $4 RETURNING {COLUMNS}"
        );
        let statement = sqlx::query_as::<DB, TokenRow>(&returning)
            .bind(enabled)
            .bind(now)
            .bind(id)
            .bind(revision);
        write_one(&self.pool, id, statement, audit).await
    }

    async fn delete(
        &self,
        id: Uuid,
        revision: i64,
        audit: &AuditEvent,
    ) -> Result<UpdateOutcome, StoreError> {
        let returning =
            format!("DELETE FROM tokens WHERE id = $1 AND revision = $2 RETURNING {COLUMNS}");
        let statement = sqlx::query_as::<DB, TokenRow>(&returning)
            .bind(id)
            .bind(revision);
        write_one(&self.pool, id, statement, audit).await
    }

    async fn rotate(
        &self,
        id: Uuid,
        rotation: &Rotation,
        revision: i64,
        audit: &AuditEvent,
    ) -> Result<UpdateOutcome, StoreError> {
        // With a grace period the current secret becomes the previous one (replacing any
        // earlier previous secret); without, no previous secret works any more.
        let returning = format!(
            "UPDATE tokens SET \
             previous_secret_hash = CASE WHEN $1 THEN secret_hash ELSE NULL END, \
             previous_hash_expire_time = $2, secret_hash = $3, display_hint = $4, \
             update_time = $5, revision = revision + 1 WHERE id = $6 AND revision = $7 \
             RETURNING {COLUMNS}"
        );
        let statement = sqlx::query_as::<DB, TokenRow>(&returning)
            .bind(rotation.previous_until.is_some())
            .bind(rotation.previous_until)
            .bind(&rotation.hash.as_bytes()[..])
            .bind(rotation.display_hint.as_str())
            .bind(rotation.now)
            .bind(id)
            .bind(revision);
        write_one(&self.pool, id, statement, audit).await
    }

    async fn revoke(
        &self,
        query: &RevokeQuery<'_>,
        decide: RevokeDecision<'_>,
        now: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<Revoked, StoreError> {
        let mut filter = Filter::default();
        let mut tree = "";
        if let Some(root) = query.descendants_of {
            // Every token the root created, and those they created, all the way down.
            filter.args.push(Arg::Uuid(root));
            // Deleted tokens' lineage counts too: a deleted child's children are reached.
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
        // The rows are locked in id order, the order usage flushes write in, so that a
        // bulk revocation and another replica's flush cannot deadlock; nothing else can
        // change them between the decision and the write.
        let sql = format!(
            "{tree}SELECT {COLUMNS} FROM tokens WHERE enabled = TRUE{} ORDER BY id{}",
            filter.sql,
            DB::LOCK_ROWS
        );
        let mut tx = self.pool.begin().await?;
        let rows = bind_args!(sqlx::query_as::<DB, TokenRow>(&sql), &filter.args)
            .fetch_all(&mut *tx)
            .await?;
        let mut revoked = Revoked::default();
        let mut chosen = Vec::new();
        for row in rows {
            let token = Token::try_from(row)?;
            if decide(&token) {
                chosen.push(token.id);
            } else {
                revoked.skipped += 1;
            }
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
        insert_audit(&mut *tx, &audit, &audit.target_owner.clone()).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn consume_use(&self, id: Uuid) -> Result<Option<i64>, StoreError> {
        // One statement: the check and the increment are atomic however many replicas ask.
        Ok(sqlx::query_scalar(
            "UPDATE tokens SET uses = uses + 1 \
             WHERE id = $1 AND max_uses IS NOT NULL AND uses < max_uses RETURNING uses",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
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

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        insert_audit(&self.pool, event, &event.target_owner).await
    }

    async fn list_audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditEvent>, StoreError> {
        let mut filter = Filter::default();
        if let Some(owner) = query.owner {
            filter.and("target_owner = ?", Arg::Str(owner));
        }
        if let Some(before) = query.before {
            filter.and("id < ?", Arg::Uuid(before));
        }
        if let Some(target) = query.target {
            filter.and("target = ?", Arg::Str(target));
        }
        if let Some(actor) = query.actor_id {
            filter.and("actor_id = ?", Arg::Uuid(actor));
        }
        if let Some(action) = query.action {
            filter.and("action = ?", Arg::Str(action));
        }
        if let Some(start) = query.start_time {
            filter.and("time >= ?", Arg::Time(start));
        }
        if let Some(end) = query.end_time {
            filter.and("time < ?", Arg::Time(end));
        }
        let limit = filter.next();
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE TRUE{} ORDER BY id DESC LIMIT ${limit}",
            filter.sql
        );
        let statement = bind_args!(sqlx::query_as::<DB, AuditRow>(&sql), &filter.args);
        let rows = statement
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(AuditEvent::from).collect())
    }

    async fn seed_types(&self, types: &[TokenType]) -> Result<(), StoreError> {
        for token_type in types {
            insert_type_row(&self.pool, token_type, " ON CONFLICT (id) DO NOTHING").await?;
        }
        Ok(())
    }

    async fn list_types(&self) -> Result<Vec<TokenType>, StoreError> {
        let rows: Vec<TypeRow> = sqlx::query_as(&format!(
            "SELECT {TYPE_COLUMNS} FROM token_types ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(TokenType::from).collect())
    }

    async fn get_type(&self, id: &str) -> Result<Option<TokenType>, StoreError> {
        let row: Option<TypeRow> = sqlx::query_as(&format!(
            "SELECT {TYPE_COLUMNS} FROM token_types WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(TokenType::from))
    }

    async fn insert_type(
        &self,
        token_type: &TokenType,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_type_row(&mut *tx, token_type, "").await?;
        insert_audit(&mut *tx, audit, "").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_type(
        &self,
        token_type: &TokenType,
        audit: &AuditEvent,
    ) -> Result<Option<TokenType>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<TypeRow> = sqlx::query_as(&format!(
            "UPDATE token_types SET display_name = $1, description = $2, template = $3, \
             update_time = $4, revision = revision + 1 WHERE id = $5 AND revision = $6 \
             RETURNING {TYPE_COLUMNS}"
        ))
        .bind(token_type.display_name.as_str())
        .bind(token_type.description.as_str())
        .bind(json(&token_type.template))
        .bind(token_type.update_time)
        .bind(token_type.id.as_str())
        .bind(token_type.revision)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_some() {
            insert_audit(&mut *tx, audit, "").await?;
            tx.commit().await?;
        }
        Ok(row.map(TokenType::from))
    }

    async fn delete_type(&self, id: &str, audit: &AuditEvent) -> Result<TypeDeletion, StoreError> {
        let mut tx = self.pool.begin().await?;
        let builtin: Option<bool> =
            sqlx::query_scalar("SELECT builtin FROM token_types WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        match builtin {
            None => return Ok(TypeDeletion::NotFound),
            Some(true) => return Ok(TypeDeletion::Builtin),
            Some(false) => {}
        }
        // Deleting only when no token has the type, in one statement, so that a token
        // created meanwhile cannot be left with a type that no longer exists.
        let deleted: Option<String> = sqlx::query_scalar(
            "DELETE FROM token_types WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM tokens WHERE token_type = $1) RETURNING id",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if deleted.is_none() {
            let in_use: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE token_type = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            return Ok(TypeDeletion::InUse(in_use));
        }
        insert_audit(&mut *tx, audit, "").await?;
        tx.commit().await?;
        Ok(TypeDeletion::Deleted)
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

fn rate_columns(token: &Token) -> (Option<i64>, Option<i64>) {
    match token.rate_limit {
        Some(limit) => (
            Some(i64::from(limit.requests)),
            Some(limit.interval.as_millis() as i64),
        ),
        None => (None, None),
    }
}

/// Runs a conditional statement that changes (at most) one token and, if it did, records
/// its audit event in the same transaction. When it changed nothing, tells a token that
/// is gone from one whose revision moved on.
async fn write_one<'q, DB>(
    pool: &Pool<DB>,
    id: Uuid,
    statement: sqlx::query::QueryAs<'q, DB, TokenRow, DB::Arguments<'q>>,
    audit: &AuditEvent,
) -> Result<UpdateOutcome, StoreError>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'r> TokenRow: FromRow<'r, DB::Row>,
    for<'a> Uuid: Encode<'a, DB> + Type<DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
    for<'a> DateTime<Utc>: Encode<'a, DB> + Type<DB>,
    for<'a> Json<Value>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<Uuid>: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Decode<'a, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut tx = pool.begin().await?;
    let row = statement
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_write_error)?;
    let Some(row) = row else {
        let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        return Ok(if exists > 0 {
            UpdateOutcome::Conflict
        } else {
            UpdateOutcome::NotFound
        });
    };
    let token = Token::try_from(row)?;
    insert_audit(&mut *tx, audit, &token.owner).await?;
    tx.commit().await?;
    Ok(UpdateOutcome::Updated(Box::new(token)))
}

/// Inserts a token type; `suffix` may add an ON CONFLICT clause.
async fn insert_type_row<'e, DB, E>(
    executor: E,
    token_type: &TokenType,
    suffix: &str,
) -> Result<(), StoreError>
where
    DB: Database,
    E: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(&format!(
        "INSERT INTO token_types ({TYPE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8){suffix}"
    ))
    .bind(token_type.id.as_str())
    .bind(token_type.display_name.as_str())
    .bind(token_type.description.as_str())
    .bind(json(&token_type.template))
    .bind(token_type.builtin)
    .bind(token_type.create_time)
    .bind(token_type.update_time)
    .bind(token_type.revision)
    .execute(executor)
    .await
    .map_err(map_write_error)?;
    Ok(())
}

async fn insert_audit<'e, DB, E>(
    executor: E,
    event: &AuditEvent,
    target_owner: &str,
) -> Result<(), StoreError>
where
    DB: Database,
    E: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Uuid: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Uuid>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(&format!(
        "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(event.id)
    .bind(event.time)
    .bind(event.actor_id)
    .bind(event.actor_owner.clone())
    .bind(event.action.clone())
    .bind(event.target.clone())
    .bind(target_owner.to_owned())
    .bind(Json(Value::Object(event.changes.clone())))
    .bind(event.client_ip.clone())
    .bind(event.detail.clone())
    .execute(executor)
    .await?;
    Ok(())
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
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Uuid>: Encode<'q, DB> + Type<DB>,
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

#[cfg(test)]
mod tests {
    use super::like_prefix;

    #[test]
    fn name_prefixes_match_literally() {
        assert_eq!(like_prefix("ci_50%"), "ci\\_50\\%%");
        assert_eq!(like_prefix("a\\b"), "a\\\\b%");
    }
}
