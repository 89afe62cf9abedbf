//! The Postgres change feed: LISTEN on [`CHANGE_CHANNEL`] over a connection of its own.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{
    Pool, Postgres,
    postgres::{PgListener, PgPoolOptions},
};

use crate::{
    domain::secret::SecretHash,
    store::{CHANGE_CHANNEL, ChangeFeed, StoreError},
};

/// Starts listening on a connection of the feed's own.
pub(super) async fn subscribe(
    pool: &Pool<Postgres>,
) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
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
