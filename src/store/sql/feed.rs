//! The Postgres change feed: LISTEN on [`CHANGE_CHANNEL`] over a connection of its own.
//!
//! The feed owns its connection's lifetime: when the connection is lost the feed ends (and
//! whoever caches must flush before trusting a new one), and it never reconnects by itself.
//! sqlx's `PgListener` would: with `eager_reconnect` (its default) `try_recv` reconnects and
//! LISTENs again before it reports the loss, and any query through the listener reconnects
//! silently if the connection had been dropped, so that notifications sent in between are
//! missed without a trace. So reconnection is off, and the heartbeat proves every second
//! that the feed still speaks to the very backend that LISTENs.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Pool, Postgres,
    postgres::{PgListener, PgPoolOptions},
};
use tokio::time::Instant;

use crate::{
    domain::secret::SecretHash,
    store::{CHANGE_CHANNEL, ChangeFeed, LISTENER_APPLICATION_NAME, StoreError},
};

/// Starts listening on a connection of the feed's own, checked every `heartbeat`.
pub(super) async fn subscribe(
    pool: &Pool<Postgres>,
    heartbeat: Duration,
) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
    // A connection of its own, not one of the request pool's: the feed is only as
    // good as the connection it listens on, and it must not take a request's place.
    // Named, so operators (and the tests) can find it in pg_stat_activity.
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name(LISTENER_APPLICATION_NAME);
    let own_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&own_pool).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANGE_CHANNEL).await?;
    let backend = backend_of(&mut listener).await?;
    Ok(Some(Box::new(PgChangeFeed {
        listener,
        backend,
        heartbeat,
        next_check: Instant::now() + heartbeat,
        pool: own_pool,
    }) as Box<dyn ChangeFeed>))
}

/// Which server process a connection talks to: its pid, and when its server started (a
/// pid alone could come again after a restart or on a failover target).
type Backend = (i32, DateTime<Utc>);

async fn backend_of(listener: &mut PgListener) -> Result<Backend, sqlx::Error> {
    sqlx::query_as("SELECT pg_backend_pid(), pg_postmaster_start_time()")
        .fetch_one(listener)
        .await
}

/// Postgres LISTEN on [`CHANGE_CHANNEL`], with a heartbeat so that a silently dead
/// connection is noticed within two heartbeats, not at the next TCP timeout, and so that a
/// connection replaced behind the feed's back (which would have missed notifications) ends
/// the feed.
struct PgChangeFeed {
    listener: PgListener,
    /// The backend that LISTENs for this feed.
    backend: Backend,
    heartbeat: Duration,
    /// When the heartbeat is due, whether or not notifications arrive meanwhile.
    next_check: Instant,
    /// The listener's own one-connection pool, closed with the feed.
    pool: Pool<Postgres>,
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> Result<SecretHash, StoreError> {
        loop {
            // try_recv reads whole messages only, so a timeout cannot cut one in half.
            match tokio::time::timeout_at(self.next_check, self.listener.try_recv()).await {
                Ok(Ok(Some(notification))) => match parse_hash(notification.payload()) {
                    Some(hash) => return Ok(hash),
                    None => tracing::warn!(
                        payload = notification.payload(),
                        "ignoring a malformed change notification"
                    ),
                },
                // The connection is gone (and, with eager_reconnect off, not replaced).
                Ok(Ok(None)) => return Err(StoreError::FeedLost),
                Ok(Err(error)) => return Err(error.into()),
                Err(_due) => {
                    let check = backend_of(&mut self.listener);
                    match tokio::time::timeout(self.heartbeat, check).await {
                        Ok(Ok(backend)) if backend == self.backend => {
                            self.next_check = Instant::now() + self.heartbeat;
                        }
                        Ok(Ok(other)) => {
                            tracing::warn!(
                                pid = self.backend.0,
                                now_pid = other.0,
                                "the change feed's connection was replaced behind its back"
                            );
                            return Err(StoreError::FeedLost);
                        }
                        Ok(Err(error)) => return Err(error.into()),
                        Err(_) => return Err(StoreError::FeedLost),
                    }
                }
            }
        }
    }
}

impl Drop for PgChangeFeed {
    fn drop(&mut self) {
        // Closing the feed's own pool first (close() marks it closed at once) makes the
        // listener's connection close when it is handed back, instead of being pinged
        // there: a feed usually ends because that connection died, and the ping would
        // only log sqlx's warning about it.
        drop(self.pool.close());
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
