//! Where tokens live: one trait, implemented over Postgres (production) and SQLite (the
//! embedded default) by the same SQL.

mod sql;

use std::{collections::BTreeMap, path::Path, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use uuid::Uuid;

pub use sql::{FIND_MANY_MAX, LostConnections, SqlStore};

use crate::{
    domain::{
        audit::AuditEvent, leak, policy::Refusal, secret::SecretHash, token::Token,
        token_type::TokenType,
    },
    metrics::histogram::Histogram,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another token of the same owner already has the name.
    #[error("name already taken for this owner")]
    NameTaken,
    /// A token type with the id exists already.
    #[error("a token type with this id exists already")]
    TypeTaken,
    /// The database could not be reached or failed.
    #[error("store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    /// The connection was lost while committing: the change may or may not have been made.
    #[error("store connection lost at commit, the change may or may not have been made: {0}")]
    CommitUnknown(sqlx::Error),
    /// Other writers kept changing what the operation reads faster than it could lock it;
    /// nothing was changed, and trying again is safe.
    #[error("{0}")]
    Contended(&'static str),
    /// Not a store failure: the client spent its budget of lookups of unknown secrets
    /// (see `verify::budget`); the lookup was not made.
    #[error("too many lookups of unknown tokens from this client address; try again later")]
    OverBudget,
    /// The change feed's connection was lost.
    #[error("change feed connection lost")]
    FeedLost,
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored row does not parse back into a token.
    #[error("stored token {id} is corrupt: {reason}")]
    Corrupt {
        /// The token's id.
        id: Uuid,
        /// What did not parse.
        reason: String,
    },
}

/// The caller of a management write. The write's transaction locks the caller's row and
/// checks it is still this revision and enabled, so that a call from a token disabled,
/// rotated or changed since it authenticated changes nothing; and it spends the caller's
/// uses there, atomically with the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The caller's token.
    pub id: Uuid,
    /// Its revision when the call authenticated.
    pub revision: i64,
}

/// What a management call does to the one token it acts on.
#[derive(Clone, Debug)]
pub enum Change {
    /// Nothing needs writing (e.g. enabling an enabled token): no write, no audit event.
    Keep,
    /// Write the token's settable fields.
    Update(Box<Token>),
    /// Enable or disable it.
    SetEnabled(bool),
    /// Give it a new secret.
    Rotate(Rotation),
    /// Delete it.
    Delete,
}

/// A decision on one token, made on the token as the write's transaction has it locked.
#[derive(Clone, Debug)]
pub struct Decided {
    /// What to write.
    pub change: Change,
    /// The audit event of the change, written in its transaction.
    pub audit: AuditEvent,
    /// Uses the caller hands to the token beyond the one the call itself spends: a
    /// usage-limited caller pays from its own budget for every use it gives away.
    pub delegated_uses: i64,
    /// The token types (id and revision) whose templates the decision judged by. The
    /// write share-locks their rows and is refused ([`Changed::TypeChanged`]) when one
    /// changed after it was read, so no template tightened meanwhile is escaped.
    pub templates: Vec<(String, i64)>,
}

/// What a leak report did to the token that had the secret.
#[derive(Clone, Debug)]
pub struct Leaked {
    /// The token as it was, locked, when the report was judged.
    pub before: Token,
    /// As it is now.
    pub after: Token,
    /// Which of its secrets was reported.
    pub which: leak::Which,
    /// What the report did.
    pub effect: leak::Effect,
}

/// Builds the audit event of a leak report on a token, given what it does to it.
pub type LeakAudit<'a> =
    &'a (dyn Fn(&Token, leak::Which, leak::Effect) -> AuditEvent + Send + Sync);

/// Decides what to do to a token, given the token as it is locked; a refusal writes nothing.
pub type Decide<'a> = &'a (dyn Fn(&Token) -> Result<Decided, Refusal> + Send + Sync);

/// The result of a management write.
#[derive(Debug)]
pub enum Changed {
    /// Written (or nothing to write): the token as it was, and as it is now (`None` once
    /// deleted).
    Done {
        /// As it was, locked, when the decision was made.
        before: Box<Token>,
        /// As it is now.
        after: Option<Box<Token>>,
    },
    /// The decision refused it; nothing was written.
    Refused(Refusal),
    /// No such token.
    NotFound,
    /// The caller's token is gone, disabled or changed since the call authenticated.
    CallerChanged,
    /// The caller has fewer uses left than the call needs.
    OutOfUses,
    /// The token's type is no longer registered.
    TypeGone,
    /// A template the decision judged by changed before the write could lock it.
    TypeChanged,
}

/// Which tokens a query may touch: all, or one owner's.
#[derive(Clone, Copy, Debug, Default)]
pub enum Scope<'a> {
    /// Every owner's tokens.
    #[default]
    All,
    /// Only this owner's tokens.
    Owner(&'a str),
}

impl Scope<'_> {
    /// The one owner in scope; `None` for every owner.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Owner(owner) => Some(owner),
        }
    }
}

/// One page request of tokens, oldest first, with optional filters.
#[derive(Clone, Debug, Default)]
pub struct ListQuery<'a> {
    /// Whose tokens.
    pub scope: Scope<'a>,
    /// Only tokens created after this one (keyset pagination on the time-ordered id).
    pub after: Option<Uuid>,
    /// At most this many.
    pub limit: u32,
    /// Only tokens of this type.
    pub token_type: Option<&'a str>,
    /// Only enabled (true) or disabled (false) tokens.
    pub enabled: Option<bool>,
    /// Only tokens whose name starts with this.
    pub name_prefix: Option<&'a str>,
    /// Only expired (true) or unexpired (false) tokens, as of `now`.
    pub expired: Option<bool>,
    /// The time `expired` is judged at.
    pub now: DateTime<Utc>,
    /// Only tokens bound to every one of these.
    pub bindings: BTreeMap<String, String>,
    /// Only tokens this token created.
    pub created_by: Option<Uuid>,
}

/// Which enabled tokens a bulk revocation matches: those meeting every condition given.
#[derive(Clone, Copy, Debug, Default)]
pub struct RevokeQuery<'a> {
    /// Tokens of this owner.
    pub owner: Option<&'a str>,
    /// Tokens of this type.
    pub token_type: Option<&'a str>,
    /// Tokens this token created, and those they created, all the way down.
    pub descendants_of: Option<Uuid>,
}

/// What a bulk revocation did.
#[derive(Debug, Default)]
pub struct Revoked {
    /// The tokens it disabled, as stored now.
    pub tokens: Vec<Token>,
    /// The matching tokens it left enabled, because the caller may not revoke them.
    pub skipped: usize,
    /// Whether it was carried out at all: `Changed::Done`, or why not (the caller changed
    /// or ran out of uses); nothing is written unless done.
    pub outcome: RevokeOutcome,
}

/// Whether a bulk revocation was carried out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Written.
    #[default]
    Done,
    /// The caller's token is gone, disabled or changed since the call authenticated.
    CallerChanged,
    /// The caller has no use left.
    OutOfUses,
}

/// Decides, for each token a bulk revocation matches, whether to disable it.
pub type RevokeDecision<'a> = &'a (dyn Fn(&Token) -> bool + Send + Sync);

/// A token's new secret, from a rotation.
#[derive(Clone, Debug)]
pub struct Rotation {
    /// The new secret's hash.
    pub hash: SecretHash,
    /// The new secret's display hint.
    pub display_hint: String,
    /// Until when the current secret keeps working; none ends it at once.
    pub previous_until: Option<DateTime<Utc>>,
    /// When the rotation happens.
    pub now: DateTime<Utc>,
}

/// One page request of audit events, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery<'a> {
    /// Only events about tokens of this owner (and the owner's own actions).
    pub owner: Option<&'a str>,
    /// Only events older than this one (keyset pagination on the time-ordered id).
    pub before: Option<Uuid>,
    /// At most this many.
    pub limit: u32,
    /// Only events about this target.
    pub target: Option<&'a str>,
    /// Only events by this acting token.
    pub actor_id: Option<Uuid>,
    /// Only events of this action.
    pub action: Option<&'a str>,
    /// Only events at or after this time.
    pub start_time: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub end_time: Option<DateTime<Utc>>,
}

/// The result of deleting a token type.
#[derive(Debug, PartialEq, Eq)]
pub enum TypeDeletion {
    /// Gone.
    Deleted,
    /// No such type.
    NotFound,
    /// Built-in types stay.
    Builtin,
    /// This many tokens still have the type.
    InUse(i64),
}

/// What a token-type write did, its transaction having locked and checked its caller
/// again, as token writes do: a caller disabled or changed meanwhile changes nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum TypeWrite<T> {
    /// Written (or, for the inner outcome, not, for its own reason).
    Done(T),
    /// The caller's token was disabled, deleted or changed since it authenticated.
    CallerChanged,
    /// A usage-limited caller has no use left for the call.
    OutOfUses,
}

/// Successful uses of one token, gathered in memory and written in batches.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRecord {
    /// The token used.
    pub id: Uuid,
    /// How many successful uses since the last write.
    pub count: i64,
    /// The latest of them.
    pub last_used_time: DateTime<Utc>,
    /// The client address of the latest, when known.
    pub last_used_ip: Option<String>,
}

/// Changes made by any replica, as the hashes of the changed tokens' secrets.
#[async_trait]
pub trait ChangeFeed: Send {
    /// Waits for the next changed token. An error means the feed broke: changes may have
    /// been missed, so whoever caches must stop trusting its cache and subscribe again.
    async fn next(&mut self) -> Result<SecretHash, StoreError>;
}

/// The notification channel of token changes (Postgres), fed by a trigger on `tokens`.
pub const CHANGE_CHANNEL: &str = "token_changes";

/// The `application_name` of the change feed's connection, as `pg_stat_activity` shows it.
pub const LISTENER_APPLICATION_NAME: &str = "token-authority-listener";

/// Persistent storage of tokens.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Returns `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Applies the embedded migrations that have not run yet.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Stores a new token under the hash of its secret, with its audit event, if its
    /// creator (`actor`) is still as it authenticated and has the uses the creation costs
    /// (one, plus `delegated_uses`), and the token's type is still registered at
    /// `type_revision` (the template the creation was judged by).
    async fn insert(
        &self,
        token: &Token,
        type_revision: i64,
        actor: Actor,
        delegated_uses: i64,
        audit: &AuditEvent,
    ) -> Result<Changed, StoreError>;

    /// Stores an admin token made by bootstrap and marks the store as bootstrapped. With
    /// `only_first`, stores nothing (and returns false) when the store was bootstrapped
    /// before; of several racing first starts exactly one wins.
    async fn insert_admin(
        &self,
        token: &Token,
        only_first: bool,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Returns a token by id.
    async fn get(&self, id: Uuid, scope: Scope<'_>) -> Result<Option<Token>, StoreError>;

    /// Returns the token whose secret has this hash: its current secret, or its previous
    /// one while a rotation's grace period lasts at `now`.
    async fn find_by_hash(
        &self,
        hash: &SecretHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Token>, StoreError>;

    /// [`TokenStore::find_by_hash`] for many secrets at once, in one query per
    /// [`FIND_MANY_MAX`] of them: the tokens whose current secret, or previous one in its
    /// grace period at `now`, has one of these hashes, in no particular order.
    async fn find_many(
        &self,
        hashes: &[SecretHash],
        now: DateTime<Utc>,
    ) -> Result<Vec<Token>, StoreError>;

    /// Returns the token one of whose secrets has this hash, whatever the token's state:
    /// its current secret, or the previous one, in a rotation's grace period or past it.
    async fn lookup(&self, hash: &SecretHash) -> Result<Option<Token>, StoreError>;

    /// [`TokenStore::lookup`] for many secrets at once (at most 1,000), in one query: the
    /// tokens one of whose secrets has one of these hashes, in no particular order.
    async fn lookup_many(&self, hashes: &[SecretHash]) -> Result<Vec<Token>, StoreError>;

    /// Makes a reported leaked secret stop working, in one transaction with the report's
    /// audit event (`audit` builds it): the token whose current secret it is is disabled
    /// and its `secret_reported_time` set to `now` (also when it was disabled already),
    /// the grace period of the token whose previous secret it is ends (see
    /// [`leak::effect`]). `None` when no token has the secret.
    async fn end_leaked(
        &self,
        hash: &SecretHash,
        now: DateTime<Utc>,
        audit: LeakAudit<'_>,
    ) -> Result<Option<Leaked>, StoreError>;

    /// Returns a page of tokens, oldest first.
    async fn list(&self, query: &ListQuery<'_>) -> Result<Vec<Token>, StoreError>;

    /// Counts the tokens matching a query's filters (ignoring `after` and `limit`).
    async fn count(&self, query: &ListQuery<'_>) -> Result<i64, StoreError>;

    /// Changes one token as `decide` says, in one transaction that locks the token and its
    /// caller (in id order, the order every writer locks rows in), checks the caller,
    /// decides on the token as locked, spends the caller's uses and writes the change with
    /// its audit event. Nothing can change the token between the decision and the write.
    async fn change(
        &self,
        id: Uuid,
        actor: Actor,
        decide: Decide<'_>,
    ) -> Result<Changed, StoreError>;

    /// Disables, atomically, every enabled token matching the query that `decide` lets
    /// go (the others are counted as skipped), after checking the caller as `change`
    /// does and spending its use, and records `audit` with both counts.
    async fn revoke(
        &self,
        query: &RevokeQuery<'_>,
        actor: Actor,
        decide: RevokeDecision<'_>,
        now: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<Revoked, StoreError>;

    /// Counts one use against a usage-limited token, atomically: `Some(uses)` when it was
    /// under `max_uses`, `None` when the uses are used up (or the token is gone).
    async fn consume_use(&self, id: Uuid) -> Result<Option<i64>, StoreError>;

    /// Adds a batch of uses to the tokens' counters and last-used fields.
    async fn record_usage(&self, usage: &[UsageRecord]) -> Result<(), StoreError>;

    /// Records an audit event on its own (e.g. a failed authentication).
    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// Returns a page of audit events, newest first.
    async fn list_audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditEvent>, StoreError>;

    /// Adds the built-in types that are missing.
    async fn seed_types(&self, types: &[TokenType]) -> Result<(), StoreError>;

    /// Returns every token type, by id.
    async fn list_types(&self) -> Result<Vec<TokenType>, StoreError>;

    /// Returns a token type.
    async fn get_type(&self, id: &str) -> Result<Option<TokenType>, StoreError>;

    /// Stores a new token type, if its caller is still as it authenticated (its use is
    /// spent in the same transaction).
    async fn insert_type(
        &self,
        token_type: &TokenType,
        actor: Actor,
        audit: &AuditEvent,
    ) -> Result<TypeWrite<()>, StoreError>;

    /// Writes a type's fields if its revision is still `token_type.revision` (`None` when
    /// it is gone or changed meanwhile) and its caller is still as it authenticated.
    async fn update_type(
        &self,
        token_type: &TokenType,
        actor: Actor,
        audit: &AuditEvent,
    ) -> Result<TypeWrite<Option<TokenType>>, StoreError>;

    /// Deletes a type no token uses, if its caller is still as it authenticated.
    async fn delete_type(
        &self,
        id: &str,
        actor: Actor,
        audit: &AuditEvent,
    ) -> Result<TypeWrite<TypeDeletion>, StoreError>;

    /// Starts listening for changes made by any replica. `None` means the store has no
    /// other replicas to hear from (SQLite is single-node).
    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError>;

    /// Closes every connection.
    async fn close(&self);

    /// Returns the connection pool's state now.
    fn pool_stats(&self) -> PoolStats;

    /// Returns how long operations waited for a pooled connection.
    fn acquire_times(&self) -> &Histogram;
}

/// The state of a store's connection pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections, idle or in use.
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
}

/// How to reach the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `postgres://…` or `sqlite://…`.
    pub url: String,
    /// The most connections to hold open.
    pub max_connections: u32,
    /// How long to wait for a free connection before failing.
    pub acquire_timeout: Duration,
    /// How often the change feed's connection is checked (Postgres).
    pub feed_heartbeat: Duration,
}

/// Pooled Postgres connections idle longer than this are pinged before use (as are those
/// idle since before a connection was last found dead).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Returns the URL of the embedded default: a SQLite file under `data_dir`.
pub fn default_sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("token-authority.db").display())
}

/// Connects to the store the URL names. SQLite files (and their folder) are created when
/// missing; writes are durable once acknowledged (WAL with synchronous=FULL).
pub async fn connect(options: &StoreOptions) -> Result<Arc<dyn TokenStore>, StoreError> {
    let url = options.url.as_str();
    let lost = Arc::new(LostConnections::default());
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let lost_before = lost.clone();
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // sqlx pings every connection before handing it out, a second round trip per
            // query; ping only those idle long enough to have been dropped unnoticed, or
            // idle since before another was found dead (a failover or restart drops them
            // all at once). Under load, with no loss, that is none: one atomic load.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let ping = meta.idle_for > PING_IF_IDLE_FOR || lost_before.suspect(meta.idle_for);
                Box::pin(async move {
                    if ping && let Err(error) = sqlx::Connection::ping(conn).await {
                        // Dead: sqlx closes it and hands out another (or a new) one.
                        tracing::debug!(%error, "pooled store connection found dead before use");
                        return Ok(false);
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await?;
        Ok(Arc::new(SqlStore::new(pool, options.feed_heartbeat, lost)))
    } else if url.starts_with("sqlite:") {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(dir) = connect.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        Ok(Arc::new(SqlStore::new(pool, options.feed_heartbeat, lost)))
    } else {
        Err(StoreError::Unavailable(sqlx::Error::Configuration(
            "database url must start with postgres:// or sqlite://".into(),
        )))
    }
}
