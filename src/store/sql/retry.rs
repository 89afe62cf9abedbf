//! Dropped connections (a failover, a restart, an idle-connection killer) fail nothing that
//! could succeed. Once one pooled connection is found dead, every connection that has been
//! idle since before then is tested before it is used ([`LostConnections`], from the
//! pool's `before_acquire`), so the cost falls only on the moments after a loss; and an
//! operation that failed because its connection was lost runs once more, on another
//! connection, when running it again cannot apply it twice: a read, or a write whose
//! transaction failed before COMMIT was sent (the server rolls such a transaction back).
//! A failed COMMIT leaves the outcome unknown, so it is not retried
//! ([`StoreError::CommitUnknown`]); neither is the one autocommit write, `consume_use`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use sqlx::{Database, Transaction};

use crate::store::StoreError;

/// When a pooled connection of a store was last found dead.
#[derive(Debug)]
pub struct LostConnections {
    start: Instant,
    /// Nanoseconds from `start` to the latest loss, plus one; 0 for none yet.
    latest: AtomicU64,
}

impl Default for LostConnections {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            latest: AtomicU64::new(0),
        }
    }
}

impl LostConnections {
    /// Notes that a connection was just found dead.
    pub fn note(&self) {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.latest.fetch_max(now + 1, Ordering::Relaxed);
    }

    /// Returns whether a connection idle for `idle_for` went idle before the latest loss,
    /// so that it may have died with the others. One relaxed load when nothing was lost.
    pub fn idle_since_before_a_loss(&self, idle_for: Duration) -> bool {
        let latest = self.latest.load(Ordering::Relaxed);
        if latest == 0 {
            return false;
        }
        let idle_since = self.start.elapsed().saturating_sub(idle_for);
        u64::try_from(idle_since.as_nanos()).unwrap_or(u64::MAX) < latest
    }
}

/// Whether an error says the connection was lost, rather than that the server refused
/// the statement: I/O and TLS failures, a broken protocol stream, SQLSTATE class 08
/// (connection exception), and 57P01 to 57P03 (the server terminated the session, is
/// shutting down or cannot take connections yet).
pub(super) fn is_connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Commits a transaction. A failure here is not retried: the COMMIT may have been applied
/// before the connection broke.
pub(super) async fn commit<DB: Database>(tx: Transaction<'_, DB>) -> Result<(), StoreError> {
    tx.commit().await.map_err(StoreError::CommitUnknown)
}

impl<DB: Database> super::SqlStore<DB> {
    /// Runs an operation that is safe to run twice (see the module's documentation); when
    /// its connection turned out dead, notes the loss and runs it once more.
    pub(super) async fn retried<T, F, Fut>(&self, mut operation: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        match operation().await {
            Err(StoreError::Unavailable(error)) if is_connection_lost(&error) => {
                self.lost.note();
                tracing::info!(%error, "store connection lost; trying once more on another");
                self.noted(operation().await)
            }
            other => self.noted(other),
        }
    }

    /// Passes a result on, noting a lost connection if it says so.
    pub(super) fn noted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Unavailable(error) | StoreError::CommitUnknown(error)) = &result
            && is_connection_lost(error)
        {
            self.lost.note();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_idle_since_before_the_latest_loss_are_suspect() {
        let lost = LostConnections::default();
        assert!(
            !lost.idle_since_before_a_loss(Duration::from_secs(3600)),
            "no loss yet"
        );
        std::thread::sleep(Duration::from_millis(20));
        lost.note();
        assert!(lost.idle_since_before_a_loss(Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !lost.idle_since_before_a_loss(Duration::from_millis(5)),
            "idle only since after the loss"
        );
        assert!(lost.idle_since_before_a_loss(Duration::from_secs(1)));
    }

    #[test]
    fn lost_connections_are_told_from_refused_statements() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert!(is_connection_lost(&io));
        assert!(is_connection_lost(&sqlx::Error::Protocol(
            "unexpected message".into()
        )));
        assert!(
            !is_connection_lost(&sqlx::Error::PoolTimedOut),
            "no second wait"
        );
        assert!(!is_connection_lost(&sqlx::Error::RowNotFound));
    }
}
