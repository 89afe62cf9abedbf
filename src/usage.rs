//! Usage bookkeeping off the hot path: successful verifications are counted in memory and
//! written to the store in batches, every few seconds and at shutdown.

use std::{net::IpAddr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

use crate::store::{StoreError, TokenStore, UsageRecord};

#[derive(Clone, Copy, Debug)]
struct Pending {
    count: i64,
    last_used_time: DateTime<Utc>,
    last_used_ip: Option<IpAddr>,
}

/// Uses gathered since the last write. Sharded, so recording takes no lock shared by all
/// requests.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    pending: DashMap<Uuid, Pending>,
}

impl UsageRecorder {
    /// Notes one successful use of a token.
    pub fn record(&self, id: Uuid, at: DateTime<Utc>, ip: Option<IpAddr>) {
        self.pending
            .entry(id)
            .and_modify(|p| {
                p.count += 1;
                if at >= p.last_used_time {
                    p.last_used_time = at;
                    p.last_used_ip = ip;
                }
            })
            .or_insert(Pending {
                count: 1,
                last_used_time: at,
                last_used_ip: ip,
            });
    }

    /// Takes every pending use out of memory.
    fn drain(&self) -> Vec<UsageRecord> {
        let mut batch = Vec::with_capacity(self.pending.len());
        self.pending.retain(|id, p| {
            batch.push(UsageRecord {
                id: *id,
                count: p.count,
                last_used_time: p.last_used_time,
                last_used_ip: p.last_used_ip.map(|ip| ip.to_string()),
            });
            false
        });
        batch
    }

    /// Puts back uses whose write failed, merged with any recorded since.
    fn restore(&self, batch: Vec<UsageRecord>) {
        for record in batch {
            let ip = record
                .last_used_ip
                .as_deref()
                .and_then(|ip| ip.parse().ok());
            self.pending
                .entry(record.id)
                .and_modify(|p| {
                    p.count += record.count;
                    if record.last_used_time > p.last_used_time {
                        p.last_used_time = record.last_used_time;
                        p.last_used_ip = ip;
                    }
                })
                .or_insert(Pending {
                    count: record.count,
                    last_used_time: record.last_used_time,
                    last_used_ip: ip,
                });
        }
    }

    /// Writes every pending use to the store; on failure keeps them for the next try.
    /// Returns how many tokens were written.
    pub async fn flush(&self, store: &dyn TokenStore) -> usize {
        self.flush_with(|chunk| async move { store.record_usage(&chunk).await })
            .await
    }

    /// The final flush: writes every pending use, trying again after failures until
    /// `deadline` (at least once). Returns the uses that could not be written, which are
    /// logged as lost.
    pub async fn flush_until(&self, store: &dyn TokenStore, deadline: tokio::time::Instant) -> i64 {
        let mut written = 0;
        loop {
            written += self.flush(store).await;
            let (tokens, uses) = self.pending();
            if tokens == 0 {
                tracing::info!(tokens = written, "final usage flush written");
                return 0;
            }
            if tokio::time::Instant::now() + FINAL_RETRY > deadline {
                tracing::error!(
                    tokens,
                    uses,
                    "usage lost at shutdown: the store did not take the final flush in time"
                );
                return uses;
            }
            tokio::time::sleep(FINAL_RETRY).await;
        }
    }

    /// Returns how many tokens have unwritten uses, and how many uses those are.
    fn pending(&self) -> (usize, i64) {
        let uses = self.pending.iter().map(|p| p.count).sum();
        (self.pending.len(), uses)
    }

    /// [`flush`](Self::flush) through `write`, which writes one chunk in one transaction.
    ///
    /// Every replica writes rows in ascending id order, in short transactions of at most
    /// [`FLUSH_CHUNK`] rows: two replicas flushing at once then take row locks in the same
    /// order and cannot deadlock each other, and no management write waits long behind a
    /// flush. (Unordered, in one transaction per batch, they deadlocked under load, which
    /// failed management writes; the soak found it.) A failed chunk and the ones after it
    /// are kept for the next flush; the chunks before it are not written twice.
    async fn flush_with<F, Fut>(&self, mut write: F) -> usize
    where
        F: FnMut(Vec<UsageRecord>) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let mut batch = self.drain();
        batch.sort_unstable_by_key(|record| record.id);
        let mut written = 0;
        while written < batch.len() {
            let end = (written + FLUSH_CHUNK).min(batch.len());
            if let Err(error) = write(batch[written..end].to_vec()).await {
                let unwritten = batch.split_off(written);
                tracing::warn!(%error, tokens = unwritten.len(), "usage write failed; will retry");
                self.restore(unwritten);
                break;
            }
            written = end;
        }
        written
    }
}

/// The most usage rows written in one transaction.
const FLUSH_CHUNK: usize = 128;

/// How long a failed final flush waits before it tries again.
const FINAL_RETRY: Duration = Duration::from_millis(200);

/// Flushes `recorder` every `interval` until `shutdown` turns true. The last flush is the
/// caller's ([`UsageRecorder::flush_until`]), once no call can record a use any more.
pub fn spawn_flusher(
    recorder: Arc<UsageRecorder>,
    store: Arc<dyn TokenStore>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    recorder.flush(store.as_ref()).await;
                }
                _ = stopped(&mut shutdown) => return,
            }
        }
    })
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn uses_of_one_token_are_merged() {
        let recorder = UsageRecorder::default();
        let id = Uuid::now_v7();
        let t0 = Utc::now();
        recorder.record(id, t0, Some("10.0.0.1".parse().unwrap()));
        recorder.record(
            id,
            t0 + Duration::seconds(1),
            Some("10.0.0.2".parse().unwrap()),
        );
        recorder.record(
            id,
            t0 - Duration::seconds(1),
            Some("10.0.0.3".parse().unwrap()),
        );
        let batch = recorder.drain();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].count, 3);
        assert_eq!(batch[0].last_used_time, t0 + Duration::seconds(1));
        assert_eq!(batch[0].last_used_ip.as_deref(), Some("10.0.0.2"));
        assert!(recorder.drain().is_empty(), "drain empties");
    }

    #[test]
    fn a_flush_writes_in_ascending_id_order_in_chunks_and_keeps_only_what_failed() {
        let recorder = UsageRecorder::default();
        let ids: Vec<Uuid> = (0..FLUSH_CHUNK * 2 + 5)
            .map(|_| Uuid::from_u128(rand::random()))
            .collect();
        for id in &ids {
            recorder.record(*id, Utc::now(), None);
        }
        let mut sorted = ids.clone();
        sorted.sort();

        // The second chunk fails.
        let chunks = std::sync::Mutex::new(Vec::<Vec<Uuid>>::new());
        let written = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(recorder.flush_with(|chunk| {
                let mut seen = chunks.lock().unwrap();
                seen.push(chunk.iter().map(|r| r.id).collect());
                let result = if seen.len() == 2 {
                    Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut))
                } else {
                    Ok(())
                };
                async move { result }
            }));

        let chunks = chunks.into_inner().unwrap();
        assert_eq!(written, FLUSH_CHUNK, "the first chunk was written");
        assert_eq!(chunks.len(), 2, "no chunk after the failed one is tried");
        assert!(chunks.iter().all(|c| c.len() == FLUSH_CHUNK));
        let attempted: Vec<Uuid> = chunks.concat();
        assert_eq!(
            attempted,
            sorted[..FLUSH_CHUNK * 2],
            "in ascending id order"
        );
        let mut kept: Vec<Uuid> = recorder.drain().iter().map(|r| r.id).collect();
        kept.sort();
        assert_eq!(
            kept,
            sorted[FLUSH_CHUNK..],
            "exactly the unwritten uses are kept"
        );
    }

    #[test]
    fn restored_uses_merge_with_new_ones() {
        let recorder = UsageRecorder::default();
        let id = Uuid::now_v7();
        let t0 = Utc::now();
        recorder.record(id, t0, None);
        let batch = recorder.drain();
        recorder.record(id, t0 + Duration::seconds(1), None);
        recorder.restore(batch);
        let merged = recorder.drain();
        assert_eq!(merged[0].count, 2);
        assert_eq!(merged[0].last_used_time, t0 + Duration::seconds(1));
    }
}
