//! The single-flight, micro-batching loader behind Verify's cache misses.
//!
//! Concurrent misses are gathered into one store query (`secret_hash = ANY($1)` on
//! Postgres, `IN (…)` on SQLite): a miss that finds a query slot free is sent at once, with
//! every miss waiting beside it; the others wait for a slot, and each query that completes
//! takes the next batch (up to [`FIND_MANY_MAX`]). No timer ever holds a miss back, so at
//! low load a miss costs one query, as before. Identical misses share one lookup.
//!
//! **The freshness rule.** A caller is answered only from a query that was sent after its
//! lookup began, or, while the cache is trusted, from one sent since the last invalidation
//! this replica saw before the caller's lookup began (the batch's epoch equals the
//! caller's): exactly what a cache entry filled by that query would have answered. So a
//! revocation heard before a Verify began is never answered from a read made before it,
//! and a batch read before an invalidation fills no cache entry (the cache's epoch rule).
//! While the change feed is down (the cache untrusted) a caller joins only a batch not yet
//! sent: every Verify reads the store after it began.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::oneshot;

use crate::{
    cache::{Entry, TokenCache},
    domain::{secret::SecretHash, token::Token},
    encoded::EncodedToken,
    store::{FIND_MANY_MAX, StoreError, TokenStore},
};

/// What a lookup finds: the token as the presented secret may use it, or none.
pub type Found = Option<Arc<EncodedToken>>;

type Waiter = oneshot::Sender<Result<Found, StoreError>>;

/// How the loader batches.
#[derive(Clone, Copy, Debug)]
pub struct LoaderSettings {
    /// The most store queries of Verify in flight at once (at least 1).
    pub in_flight: usize,
}

/// Counts of what the loader did since the start, for the metrics and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoaderCounts {
    /// Cache misses handed to the loader.
    pub lookups: u64,
    /// Of those, answered by a lookup another miss of the same secret had started.
    pub shared: u64,
    /// Store queries sent.
    pub queries: u64,
    /// Distinct secrets those queries looked up.
    pub secrets: u64,
}

/// One batch: the epoch and trust it was sent under, and who waits for each secret.
struct Batch {
    id: u64,
    epoch: u64,
    trusted: bool,
    waiters: HashMap<SecretHash, Vec<Waiter>>,
}

#[derive(Default)]
struct State {
    /// Misses waiting for a query slot.
    pending: HashMap<SecretHash, Vec<Waiter>>,
    /// Batches whose query is in flight (at most `in_flight`).
    flying: Vec<Batch>,
    next_id: u64,
}

/// Batches Verify's cache misses into few store queries.
pub struct Loader {
    store: Arc<dyn TokenStore>,
    cache: Arc<TokenCache>,
    settings: LoaderSettings,
    state: Mutex<State>,
    lookups: AtomicU64,
    shared: AtomicU64,
    queries: AtomicU64,
    secrets: AtomicU64,
    /// Tests hold a batch here, after its query and before its answers, to make a change
    /// land in between.
    #[cfg(test)]
    hold: Option<Arc<tokio::sync::Semaphore>>,
    /// Tests make the next batch's run panic after its query.
    #[cfg(test)]
    panic_once: std::sync::atomic::AtomicBool,
}

impl Loader {
    /// Builds a loader over a store, filling `cache` with what it finds.
    pub fn new(
        store: Arc<dyn TokenStore>,
        cache: Arc<TokenCache>,
        settings: LoaderSettings,
    ) -> Self {
        Self {
            store,
            cache,
            settings: LoaderSettings {
                in_flight: settings.in_flight.max(1),
            },
            state: Mutex::default(),
            lookups: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            secrets: AtomicU64::new(0),
            #[cfg(test)]
            hold: None,
            #[cfg(test)]
            panic_once: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Looks a secret up in the store, batched with the misses beside it (see the module's
    /// freshness rule), and caches what it finds.
    pub async fn load(self: &Arc<Self>, hash: SecretHash) -> Result<Found, StoreError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        // Read before anything is looked up: the invalidations this lookup must see.
        let epoch = self.cache.epoch();
        let trusted = self.cache.is_trusted();
        let (sender, receiver) = oneshot::channel();
        let launch = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let joined = if trusted {
                state
                    .flying
                    .iter_mut()
                    .filter(|b| b.trusted && b.epoch == epoch)
                    .find_map(|b| b.waiters.get_mut(&hash))
            } else {
                None
            };
            let sender = match joined {
                Some(waiters) => {
                    waiters.push(sender);
                    None
                }
                None => Some(sender),
            };
            match sender {
                None => self.shared.fetch_add(1, Ordering::Relaxed),
                Some(sender) => {
                    let waiters = state.pending.entry(hash).or_default();
                    if !waiters.is_empty() {
                        self.shared.fetch_add(1, Ordering::Relaxed);
                    }
                    waiters.push(sender);
                    0
                }
            };
            self.take_batch(&mut state)
        };
        if let Some(batch) = launch {
            let loader = self.clone();
            // Its own task: the batch completes for every waiter even if this caller goes.
            tokio::spawn(loader.run(batch));
        }
        match receiver.await {
            Ok(answer) => answer,
            // The batch's task ended without answering: only if the runtime is shutting down.
            Err(_) => Err(StoreError::Contended("the lookup was cancelled; try again")),
        }
    }

    /// Takes the next batch from the pending misses if a query slot is free, marking it in
    /// flight; returns its id.
    fn take_batch(&self, state: &mut State) -> Option<u64> {
        if state.pending.is_empty() || state.flying.len() >= self.settings.in_flight {
            return None;
        }
        let waiters: HashMap<_, _> = if state.pending.len() <= FIND_MANY_MAX {
            std::mem::take(&mut state.pending)
        } else {
            let keys: Vec<SecretHash> = state.pending.keys().take(FIND_MANY_MAX).copied().collect();
            keys.into_iter()
                .filter_map(|k| state.pending.remove_entry(&k))
                .collect()
        };
        let id = state.next_id;
        state.next_id += 1;
        // Read under the lock, before the query is sent: the query sees every change whose
        // invalidation this epoch counts.
        state.flying.push(Batch {
            id,
            epoch: self.cache.epoch(),
            trusted: self.cache.is_trusted(),
            waiters,
        });
        Some(id)
    }

    /// Runs a batch, answers its waiters, and goes on with the next batch while there is one.
    async fn run(self: Arc<Self>, mut id: u64) {
        loop {
            // Should anything below panic, the guard frees the batch's query slot (its
            // waiters get an error) and starts the next batch: else the slot would stay taken
            // and every later miss would wait for ever.
            let mut guard = Flying {
                loader: self.clone(),
                id,
                armed: true,
            };
            let (hashes, epoch) = {
                let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let batch = state.flying.iter().find(|b| b.id == id).expect("in flight");
                (
                    batch.waiters.keys().copied().collect::<Vec<_>>(),
                    batch.epoch,
                )
            };
            self.queries.fetch_add(1, Ordering::Relaxed);
            self.secrets
                .fetch_add(hashes.len() as u64, Ordering::Relaxed);
            let found = self
                .store
                .find_many(&hashes, crate::domain::token::now())
                .await;
            #[cfg(test)]
            if let Some(hold) = &self.hold {
                hold.acquire().await.expect("open").forget();
            }
            #[cfg(test)]
            if self.panic_once.swap(false, Ordering::Relaxed) {
                panic!("a batch's run panics (test)");
            }
            let answers = found.map(|tokens| self.answers(&hashes, tokens, epoch));
            let (batch, next) = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let at = state
                    .flying
                    .iter()
                    .position(|b| b.id == id)
                    .expect("in flight");
                let batch = state.flying.swap_remove(at);
                guard.armed = false;
                (batch, self.take_batch(&mut state))
            };
            answer(batch, answers);
            match next {
                Some(next) => id = next,
                None => return,
            }
        }
    }

    /// What each looked-up secret found, cached under the batch's epoch (dropped if an
    /// invalidation came meanwhile).
    fn answers(
        &self,
        hashes: &[SecretHash],
        tokens: Vec<Token>,
        epoch: u64,
    ) -> HashMap<SecretHash, Found> {
        let mut answers: HashMap<SecretHash, Found> = hashes.iter().map(|h| (*h, None)).collect();
        for token in tokens {
            for hash in [Some(token.secret_hash), token.previous_hash]
                .into_iter()
                .flatten()
            {
                if let Some(slot) = answers.get_mut(&hash) {
                    *slot = Some(Arc::new(EncodedToken::new(&as_presented(
                        token.clone(),
                        &hash,
                    ))));
                }
            }
        }
        for (hash, found) in &answers {
            let entry = found.clone().map_or(Entry::Missing, Entry::Found);
            self.cache.fill(*hash, entry, epoch);
        }
        answers
    }

    /// What the loader did since the start.
    pub fn counts(&self) -> LoaderCounts {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LoaderCounts {
            lookups: load(&self.lookups),
            shared: load(&self.shared),
            queries: load(&self.queries),
            secrets: load(&self.secrets),
        }
    }
}

/// A batch in flight, freed by [`Drop`] if its run ends without answering it (a panic).
struct Flying {
    loader: Arc<Loader>,
    id: u64,
    armed: bool,
}

impl Drop for Flying {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let next = {
            let mut state = self.loader.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = state.flying.iter().position(|b| b.id == self.id) {
                // Dropping its waiters' senders answers them "cancelled; try again".
                state.flying.swap_remove(at);
            }
            self.loader.take_batch(&mut state)
        };
        if let Some(next) = next
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(self.loader.clone().run(next));
        }
    }
}

/// Hands every waiter of a batch its answer (or the store's error).
fn answer(batch: Batch, answers: Result<HashMap<SecretHash, Found>, StoreError>) {
    for (hash, waiters) in batch.waiters {
        for waiter in waiters {
            let result = match &answers {
                Ok(answers) => Ok(answers.get(&hash).cloned().flatten()),
                Err(error) => Err(duplicate(error)),
            };
            // A waiter that went away (its client hung up) needs no answer.
            let _ = waiter.send(result);
        }
    }
}

/// The same store error for each waiter of a failed batch.
fn duplicate(error: &StoreError) -> StoreError {
    match error {
        StoreError::Corrupt { id, reason } => StoreError::Corrupt {
            id: *id,
            reason: reason.clone(),
        },
        StoreError::Contended(message) => StoreError::Contended(message),
        other => StoreError::Unavailable(sqlx::Error::Protocol(other.to_string())),
    }
}

/// A token as the presented secret may use it: a previous secret, during a rotation's
/// grace period, works only until that period ends.
pub fn as_presented(mut token: Token, presented: &SecretHash) -> Token {
    if token.secret_hash != *presented {
        token.expire_time = match (token.expire_time, token.previous_hash_expire_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    token
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        cache::CacheSettings,
        domain::{
            audit::AuditEvent,
            secret::{TokenPrefix, TokenSecret},
        },
        store::StoreOptions,
    };

    /// A real SQLite store holding one enabled token; its secret, and a second connection.
    async fn store_with_token(
        dir: &tempfile::TempDir,
    ) -> (Arc<dyn TokenStore>, SecretHash, sqlx::SqlitePool) {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = crate::store::connect(&StoreOptions {
            url: url.clone(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            feed_heartbeat: Duration::from_secs(1),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let secret = TokenSecret::generate(&TokenPrefix::default());
        let now = crate::domain::token::now();
        let token = Token::new("o".into(), &secret, None, now);
        let audit = AuditEvent::new("create", AuditEvent::token_target(token.id), None, now);
        store.insert_admin(&token, false, &audit).await.unwrap();
        let other = sqlx::SqlitePool::connect(&url).await.unwrap();
        (store, secret.hash(), other)
    }

    fn trusted_cache() -> Arc<TokenCache> {
        let settings = CacheSettings {
            max_entries: 100,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
        };
        Arc::new(TokenCache::new(settings, true))
    }

    fn enabled(found: &Found) -> bool {
        use crate::domain::verify::Subject;
        found.as_ref().is_some_and(|t| t.enabled())
    }

    /// The freshness rule: a batch read before a revocation, still in flight when the
    /// revocation is heard, answers neither a caller who came after it nor the cache; with
    /// the change feed down, a caller never joins a batch sent before it came.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lookup_after_an_invalidation_never_gets_a_read_from_before_it() {
        for trusted in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (store, hash, other) = store_with_token(&dir).await;
            let cache = trusted_cache();
            cache.set_trusted(trusted);
            let hold = Arc::new(tokio::sync::Semaphore::new(0));
            let mut loader = Loader::new(store, cache.clone(), LoaderSettings { in_flight: 1 });
            loader.hold = Some(hold.clone());
            let loader = Arc::new(loader);

            // The first lookup reads the token enabled, and is held before it answers.
            let before = tokio::spawn({
                let loader = loader.clone();
                async move { loader.load(hash).await.unwrap() }
            });
            while loader.counts().queries == 0 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            // The token is revoked while that batch is in flight: heard, when the change
            // feed is up; unheard when it is down (another replica's change).
            sqlx::query("UPDATE tokens SET enabled = FALSE")
                .execute(&other)
                .await
                .unwrap();
            if trusted {
                cache.invalidate(&hash);
            }
            let after = tokio::spawn({
                let loader = loader.clone();
                async move { loader.load(hash).await.unwrap() }
            });
            while loader.counts().lookups < 2 {
                tokio::task::yield_now().await;
            }
            hold.add_permits(2);
            assert!(
                enabled(&before.await.unwrap()),
                "it began before the revocation"
            );
            assert!(
                !enabled(&after.await.unwrap()),
                "trusted {trusted}: read afresh"
            );
            assert_eq!(loader.counts().queries, 2);
            assert!(
                !matches!(cache.get(&hash), Some(Entry::Found(t)) if enabled(&Some(t.clone()))),
                "the stale read is not cached"
            );
        }
    }

    /// Misses of the same secret in one epoch share a lookup; distinct ones share a query.
    /// A run that panics frees its query slot: its callers get an error (never a verdict)
    /// and the next misses are answered, instead of waiting for ever behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_panics_frees_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (store, hash, _other) = store_with_token(&dir).await;
        let loader = Loader::new(store, trusted_cache(), LoaderSettings { in_flight: 1 });
        loader.panic_once.store(true, Ordering::Relaxed);
        let loader = Arc::new(loader);
        let first = tokio::time::timeout(Duration::from_secs(10), loader.load(hash))
            .await
            .expect("the panicked batch's caller is answered");
        assert!(first.is_err(), "an error, never a verdict");
        let found = tokio::time::timeout(Duration::from_secs(10), loader.load(hash))
            .await
            .expect("the slot was freed")
            .unwrap();
        assert!(found.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_misses_share_one_query() {
        let dir = tempfile::tempdir().unwrap();
        let (store, hash, _other) = store_with_token(&dir).await;
        let cache = trusted_cache();
        let hold = Arc::new(tokio::sync::Semaphore::new(0));
        let mut loader = Loader::new(store, cache, LoaderSettings { in_flight: 1 });
        loader.hold = Some(hold.clone());
        let loader = Arc::new(loader);
        let unknown: Vec<SecretHash> = (0..20u8).map(|i| SecretHash([i; 32])).collect();
        let mut tasks = Vec::new();
        for hash in std::iter::repeat_n(hash, 10).chain(unknown.iter().copied()) {
            let loader = loader.clone();
            tasks.push(tokio::spawn(
                async move { loader.load(hash).await.unwrap() },
            ));
        }
        while loader.counts().lookups < 30 {
            tokio::task::yield_now().await;
        }
        hold.add_permits(100);
        let found: Vec<Found> = futures_join(tasks).await;
        assert_eq!(found.iter().filter(|f| enabled(f)).count(), 10);
        let counts = loader.counts();
        assert!(
            counts.queries <= 2,
            "{counts:?}: the first, then all the rest"
        );
        assert_eq!(counts.shared, 9, "{counts:?}");
        assert_eq!(counts.secrets, 21, "{counts:?}");
    }

    async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Found>>) -> Vec<Found> {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    }
}
