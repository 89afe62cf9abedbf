//! Usage bookkeeping off the hot path: successful verifications are counted in memory and
//! written to the store in batches, every few seconds and at shutdown.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use crossbeam_utils::CachePadded;
use thread_local::ThreadLocal;
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

use crate::store::{StoreError, TokenStore, UsageRecord};

#[derive(Clone, Copy, Debug)]
struct Pending {
    count: i64,
    last_used_time: DateTime<Utc>,
    last_used_ip: Option<IpAddr>,
}

impl Pending {
    /// Adds `other`'s uses; the later use's time and address win (on a tie, `other`'s if
    /// `later_wins_ties`).
    fn merge(&mut self, other: Pending, later_wins_ties: bool) {
        self.count += other.count;
        if other.last_used_time > self.last_used_time
            || (later_wins_ties && other.last_used_time == self.last_used_time)
        {
            self.last_used_time = other.last_used_time;
            self.last_used_ip = other.last_used_ip;
        }
    }
}

/// Pending uses by token id. The ids are made by the service (never chosen by a caller),
/// so a fast hash needs no protection from collisions made on purpose.
type Uses = HashMap<Uuid, Pending, foldhash::fast::RandomState>;

/// Uses gathered since the last write, kept per thread: a call records into its worker
/// thread's own map, under a lock no other call takes, so that two workers serving the same
/// token never write the same memory (a shared map's shard lock and entry were two cache
/// lines every call pulled from the other core). A flush takes every thread's map.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    /// Padded: `ThreadLocal` keeps values side by side, and two workers' maps must not
    /// share a cache line.
    threads: ThreadLocal<CachePadded<Mutex<Uses>>>,
}

fn lock(uses: &Mutex<Uses>) -> MutexGuard<'_, Uses> {
    // Nothing panics while holding it; a poisoned map is still whole.
    uses.lock().unwrap_or_else(PoisonError::into_inner)
}

impl UsageRecorder {
    /// Notes one successful use of a token.
    pub fn record(&self, id: Uuid, at: DateTime<Utc>, ip: Option<IpAddr>) {
        let use_ = Pending {
            count: 1,
            last_used_time: at,
            last_used_ip: ip,
        };
        lock(self.threads.get_or_default())
            .entry(id)
            .and_modify(|p| p.merge(use_, true))
            .or_insert(use_);
    }

    /// Takes every pending use out of memory, merged over the threads. Of two uses of one
    /// token at the very same time on two threads, either one's address is kept.
    fn drain(&self) -> Vec<UsageRecord> {
        let mut merged = Uses::default();
        for uses in self.threads.iter() {
            let mut uses = lock(uses);
            for (id, pending) in uses.drain() {
                merged
                    .entry(id)
                    .and_modify(|p| p.merge(pending, false))
                    .or_insert(pending);
            }
            // A burst of distinct tokens leaves no lasting table behind.
            uses.shrink_to(64);
        }
        merged
            .into_iter()
            .map(|(id, p)| UsageRecord {
                id,
                count: p.count,
                last_used_time: p.last_used_time,
                last_used_ip: p.last_used_ip.map(|ip| ip.to_string()),
            })
            .collect()
    }

    /// Puts back uses whose write failed, merged with any recorded since (which win a tie:
    /// they are the later).
    fn restore(&self, batch: Vec<UsageRecord>) {
        let mut uses = lock(self.threads.get_or_default());
        for record in batch {
            let restored = Pending {
                count: record.count,
                last_used_time: record.last_used_time,
                last_used_ip: record
                    .last_used_ip
                    .as_deref()
                    .and_then(|ip| ip.parse().ok()),
            };
            uses.entry(record.id)
                .and_modify(|p| {
                    let recorded = *p;
                    *p = restored;
                    p.merge(recorded, true);
                })
                .or_insert(restored);
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
        let mut tokens = std::collections::HashSet::new();
        let mut uses = 0;
        for thread in self.threads.iter() {
            for (id, pending) in lock(thread).iter() {
                tokens.insert(*id);
                uses += pending.count;
            }
        }
        (tokens.len(), uses)
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

    #[test]
    fn uses_recorded_on_many_threads_are_merged_by_token() {
        let recorder = Arc::new(UsageRecorder::default());
        let (shared, own) = (Uuid::now_v7(), Uuid::now_v7());
        let t0 = Utc::now();
        let threads: Vec<_> = (0..4i64)
            .map(|t| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let ip = IpAddr::from([10, 0, 0, t as u8]);
                        recorder.record(shared, t0 + Duration::milliseconds(t * 100 + i), Some(ip));
                    }
                    if t == 2 {
                        recorder.record(own, t0, None);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(
            recorder.pending(),
            (2, 401),
            "tokens counted once however many threads"
        );
        let mut batch = recorder.drain();
        batch.sort_by_key(|r| r.id);
        assert_eq!(batch.len(), 2);
        let shared_record = batch.iter().find(|r| r.id == shared).unwrap();
        assert_eq!(shared_record.count, 400);
        assert_eq!(
            shared_record.last_used_time,
            t0 + Duration::milliseconds(399),
            "the latest use of any thread"
        );
        assert_eq!(
            shared_record.last_used_ip.as_deref(),
            Some("10.0.0.3"),
            "and its address"
        );
        assert_eq!(batch.iter().find(|r| r.id == own).unwrap().count, 1);
        assert_eq!(recorder.pending(), (0, 0), "every thread's uses were taken");
    }
}
