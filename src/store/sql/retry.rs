//! Dropped connections (a failover, a restart, an idle-connection killer) fail nothing that
//! could succeed. Once one pooled connection is found dead, every connection that has been
//! idle since before then, and for a second every connection, is tested before it is used
//! ([`LostConnections`], from the pool's `before_acquire`), so the cost falls only on the
//! moments after a loss; and an
//! operation that failed because its connection was lost runs again (a few times at most),
//! on another connection, when running it again cannot apply it twice: a read, or a write whose
//! transaction failed before COMMIT was sent (the server rolls such a transaction back).
//! A failed COMMIT leaves the outcome unknown, so it is not retried
//! ([`StoreError::CommitUnknown`]); neither is the one autocommit write, `consume_use`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use sqlx::{Database, Transaction};

use crate::store::StoreError;

/// How many times an operation that is safe to run again runs again. More than once: the
/// server ends its connections one by one, so the connection a retry gets may have passed
/// its test just before its own end reached it (seen in CI: a write whose retry, too, found
/// its connection dead). Each attempt's connection is tested or new, so a few suffice.
const RETRIES: usize = 3;

/// How long after a connection was found dead every connection is tested before use.
const SUSPECT_FOR: Duration = Duration::from_secs(1);

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

    /// Returns whether a connection idle for `idle_for` may have died with the one lost
    /// latest: it went idle before that loss, or the loss was less than [`SUSPECT_FOR`] ago
    /// (the server ends connections one by one, so some die after the first is found dead,
    /// even after being handed back alive). One relaxed load when nothing was lost.
    pub fn suspect(&self, idle_for: Duration) -> bool {
        let latest = self.latest.load(Ordering::Relaxed);
        if latest == 0 {
            return false;
        }
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let now = self.start.elapsed();
        nanos(now.saturating_sub(idle_for)) < latest
            || nanos(now) < latest.saturating_add(nanos(SUSPECT_FOR))
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

/// Whether a statement failed because Postgres chose it as the victim of a deadlock
/// (40P01) or a serialization failure (40001): the server rolled its transaction back,
/// before any COMMIT, so running the operation again is safe. Writers lock rows in id
/// order, but a bulk revocation that reads its lineage again after waiting for a lock
/// locks the newly found rows after higher ones, so a rare deadlock with a usage flush is
/// possible; it is retried rather than failed.
pub(super) fn is_conflict(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| conflict_code(&code)),
        _ => false,
    }
}

fn conflict_code(code: &str) -> bool {
    matches!(code, "40P01" | "40001")
}

/// Commits a transaction. A failure here is not retried: the COMMIT may have been applied
/// before the connection broke.
pub(super) async fn commit<DB: Database>(tx: Transaction<'_, DB>) -> Result<(), StoreError> {
    tx.commit().await.map_err(StoreError::CommitUnknown)
}

impl<DB: Database> super::SqlStore<DB> {
    /// Runs an operation that is safe to run again (see the module's documentation); when
    /// its connection turned out dead, or it lost a lock conflict, notes that and runs it
    /// again, up to [`RETRIES`] times.
    pub(super) async fn retried<T, F, Fut>(&self, mut operation: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut retries = 0;
        loop {
            match operation().await {
                Err(StoreError::Unavailable(error))
                    if retries < RETRIES && is_connection_lost(&error) =>
                {
                    self.lost.note();
                    tracing::info!(%error, "store connection lost; trying again on another");
                }
                Err(StoreError::Unavailable(error)) if retries < RETRIES && is_conflict(&error) => {
                    tracing::info!(%error, "store transaction lost a lock conflict; trying again");
                }
                other => return self.noted(other),
            }
            retries += 1;
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
    fn connections_are_suspect_after_a_loss_only() {
        let lost = LostConnections {
            start: Instant::now()
                .checked_sub(Duration::from_secs(60))
                .expect("the clock has run for a minute"),
            latest: AtomicU64::new(0),
        };
        assert!(!lost.suspect(Duration::from_secs(30)), "no loss yet");
        lost.note();
        assert!(
            lost.suspect(Duration::ZERO),
            "every connection, just after a loss"
        );
        // As if the loss had been 2 s ago.
        let two_seconds_ago = lost.latest.load(Ordering::Relaxed) - 2_000_000_000;
        lost.latest.store(two_seconds_ago, Ordering::Relaxed);
        assert!(
            lost.suspect(Duration::from_secs(3)),
            "idle since before the loss"
        );
        assert!(
            !lost.suspect(Duration::from_secs(1)),
            "idle only since after it"
        );
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

    #[test]
    fn deadlock_and_serialization_victims_are_conflicts_and_nothing_else_is() {
        assert!(conflict_code("40P01") && conflict_code("40001"));
        for other in ["23505", "08006", "57P01", "40002", "25P02"] {
            assert!(!conflict_code(other), "{other}");
        }
        assert!(!is_conflict(&sqlx::Error::RowNotFound));
    }
}
