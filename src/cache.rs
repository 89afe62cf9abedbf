//! The Verify cache: tokens by the SHA-256 of their secret, in front of the store.
//!
//! Positive and negative entries, bounded in entries, with a TTL, in
//! [quick_cache](https://docs.rs/quick_cache) (sharded, S3-FIFO eviction, ~70 bytes of
//! overhead per entry; moka measured ~330 here). Entries carry their own expiry, checked on
//! read. Correctness never rests on the TTL: every change to a token evicts it at once here and, through the store's
//! change feed (Postgres LISTEN/NOTIFY), on every other replica. While the feed is down the
//! cache is not trusted: lookups bypass it until the feed listens again and the cache has
//! been flushed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter, sync::Cache};

use crate::{counters::LocalCounters, domain::secret::SecretHash, encoded::EncodedToken};

/// What the cache knows about a hash.
#[derive(Clone, Debug)]
pub enum Entry {
    /// The token with this secret.
    Found(Arc<EncodedToken>),
    /// No token has this secret (a negative entry).
    Missing,
}

/// Cache limits.
#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// The most entries held; 0 disables the cache (every Verify reads the store).
    pub max_entries: u64,
    /// How long a found token is kept.
    pub ttl: Duration,
    /// How long a miss is kept.
    pub negative_ttl: Duration,
}

/// A cached value and when it stops being served.
#[derive(Clone)]
struct Expiring<V> {
    value: V,
    until: Instant,
}

/// Entries dropped without being invalidated: for lack of room, or past their TTL.
#[derive(Debug, Default)]
struct Evictions {
    capacity: AtomicU64,
    expired: AtomicU64,
}

/// quick_cache's default lifecycle (evicted entries are dropped after the shard lock is
/// released), counting what it evicts for lack of room.
#[derive(Clone)]
struct CountEvictions(Arc<Evictions>);

impl<K, V> Lifecycle<K, V> for CountEvictions {
    type RequestState = [Option<(K, V)>; 2];

    fn on_evict(&self, state: &mut Self::RequestState, key: K, value: V) {
        self.0.capacity.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = state.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some((key, value));
        }
    }
}

type Entries<V> = Cache<SecretHash, Expiring<V>, UnitWeighter, DefaultHashBuilder, CountEvictions>;

/// A bounded cache whose entries expire a fixed time after they were stored.
struct TtlCache<V: Clone> {
    entries: Entries<V>,
    ttl: Duration,
    evictions: Arc<Evictions>,
}

impl<V: Clone> TtlCache<V> {
    fn new(max_entries: u64, ttl: Duration, evictions: Arc<Evictions>) -> Self {
        Self {
            entries: Cache::with(
                usize::try_from(max_entries).unwrap_or(usize::MAX),
                max_entries,
                UnitWeighter,
                DefaultHashBuilder::default(),
                CountEvictions(evictions.clone()),
            ),
            ttl,
            evictions,
        }
    }

    fn get(&self, hash: &SecretHash) -> Option<V> {
        let entry = self.entries.get(hash)?;
        if entry.until > Instant::now() {
            Some(entry.value)
        } else {
            if self.entries.remove(hash).is_some() {
                self.evictions.expired.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
    }

    fn insert(&self, hash: SecretHash, value: V) {
        let until = Instant::now() + self.ttl;
        self.entries.insert(hash, Expiring { value, until });
    }

    /// Removes an entry; returns whether there was one.
    fn remove(&self, hash: &SecretHash) -> bool {
        self.entries.remove(hash).is_some()
    }

    /// Removes every entry; returns about how many there were.
    fn clear(&self) -> u64 {
        let len = self.entries.len() as u64;
        self.entries.clear();
        len
    }
}

/// What the cache has done since the start, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Lookups answered with a cached token.
    pub hits: u64,
    /// Lookups answered with a cached "no such token".
    pub negative_hits: u64,
    /// Lookups that found nothing and went to the store.
    pub misses: u64,
    /// Lookups that skipped the cache while it was not trusted.
    pub bypassed: u64,
    /// Entries evicted because their token changed.
    pub evicted_changed: u64,
    /// Entries dropped by flushing the whole cache (the change feed reconnected).
    pub evicted_flushed: u64,
    /// Entries dropped past their TTL.
    pub evicted_expired: u64,
    /// Entries evicted for lack of room.
    pub evicted_capacity: u64,
    /// Tokens held now.
    pub tokens: u64,
    /// Negative entries held now.
    pub negatives: u64,
}

/// The counters behind [`CacheCounts`], indexes into [`LocalCounters`]: one add per
/// lookup, into the looking-up thread's own cells.
#[derive(Clone, Copy)]
enum Counter {
    Hits,
    NegativeHits,
    Misses,
    Bypassed,
    Changed,
    Flushed,
}

impl Counter {
    const COUNT: usize = Counter::Flushed as usize + 1;
}

/// A bounded concurrent cache with invalidation that is safe against racing fills.
pub struct TokenCache {
    found: Option<TtlCache<Arc<EncodedToken>>>,
    missing: Option<TtlCache<()>>,
    /// False while changes made elsewhere might not reach us (the feed is down).
    trusted: AtomicBool,
    /// Bumped by every invalidation, so that a fill which raced one is dropped.
    epoch: AtomicU64,
    counters: LocalCounters,
    evictions: Arc<Evictions>,
}

impl TokenCache {
    /// Builds a cache; `trusted` says whether it may serve before a change feed is up.
    pub fn new(settings: CacheSettings, trusted: bool) -> Self {
        let enabled = settings.max_entries > 0;
        let evictions = Arc::new(Evictions::default());
        let max = settings.max_entries;
        Self {
            found: enabled.then(|| TtlCache::new(max, settings.ttl, evictions.clone())),
            missing: enabled.then(|| TtlCache::new(max, settings.negative_ttl, evictions.clone())),
            trusted: AtomicBool::new(trusted),
            epoch: AtomicU64::new(0),
            counters: LocalCounters::new(Counter::COUNT),
            evictions,
        }
    }

    /// Returns the cached entry, or `None` on a miss or while the cache is not trusted.
    pub fn get(&self, hash: &SecretHash) -> Option<Entry> {
        if !self.trusted.load(Ordering::Acquire) {
            self.bump(Counter::Bypassed, 1);
            return None;
        }
        let entry = self.lookup(hash);
        self.bump(
            match entry {
                Some(Entry::Found(_)) => Counter::Hits,
                Some(Entry::Missing) => Counter::NegativeHits,
                None => Counter::Misses,
            },
            1,
        );
        entry
    }

    fn bump(&self, counter: Counter, by: u64) {
        self.counters.add(counter as usize, by);
    }

    fn lookup(&self, hash: &SecretHash) -> Option<Entry> {
        if let Some(token) = self.found.as_ref()?.get(hash) {
            return Some(Entry::Found(token));
        }
        self.missing.as_ref()?.get(hash).map(|()| Entry::Missing)
    }

    /// Returns the current epoch; read it before the store lookup whose result you will
    /// pass to [`TokenCache::fill`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Caches a store lookup's result unless an invalidation happened since `epoch`.
    pub fn fill(&self, hash: SecretHash, entry: Entry, epoch: u64) {
        if !self.trusted.load(Ordering::Acquire) || self.epoch() != epoch {
            return;
        }
        match entry {
            Entry::Found(token) => {
                if let Some(found) = &self.found {
                    found.insert(hash, token);
                }
            }
            Entry::Missing => {
                if let Some(missing) = &self.missing {
                    missing.insert(hash, ());
                }
            }
        }
        // An invalidation between the check above and the insert may have run before the
        // insert landed; if the epoch moved, drop what we inserted.
        if self.epoch() != epoch {
            self.remove(&hash);
        }
    }

    /// Evicts one hash, after its token changed.
    pub fn invalidate(&self, hash: &SecretHash) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.remove(hash) {
            self.bump(Counter::Changed, 1);
        }
    }

    /// Evicts everything.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let found = self.found.as_ref().map_or(0, TtlCache::clear);
        let missing = self.missing.as_ref().map_or(0, TtlCache::clear);
        self.bump(Counter::Flushed, found + missing);
    }

    /// Returns what the cache has done since the start, and what it holds.
    pub fn counts(&self) -> CacheCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = self.counters.totals();
        let counted = |counter: Counter| counters[counter as usize];
        CacheCounts {
            hits: counted(Counter::Hits),
            negative_hits: counted(Counter::NegativeHits),
            misses: counted(Counter::Misses),
            bypassed: counted(Counter::Bypassed),
            evicted_changed: counted(Counter::Changed),
            evicted_flushed: counted(Counter::Flushed),
            evicted_expired: load(&self.evictions.expired),
            evicted_capacity: load(&self.evictions.capacity),
            tokens: self.len(),
            negatives: self.missing.as_ref().map_or(0, |c| c.entries.len() as u64),
        }
    }

    /// Sets whether the cache may serve lookups.
    pub fn set_trusted(&self, trusted: bool) {
        self.trusted.store(trusted, Ordering::Release);
    }

    /// Returns whether the cache may serve lookups.
    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Returns the number of cached tokens, expired ones not yet dropped included.
    pub fn len(&self) -> u64 {
        self.found.as_ref().map_or(0, |c| c.entries.len() as u64)
    }

    /// Returns whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a hash's entries; returns whether there was one.
    fn remove(&self, hash: &SecretHash) -> bool {
        let found = self.found.as_ref().is_some_and(|c| c.remove(hash));
        let missing = self.missing.as_ref().is_some_and(|c| c.remove(hash));
        found || missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::verify::tests::token;

    /// Caches a token as a Verify that found it in the store would.
    fn put(cache: &TokenCache, hash: SecretHash, token: Arc<EncodedToken>) {
        cache.fill(hash, Entry::Found(token), cache.epoch());
    }

    /// A cached token and its hash.
    fn cached() -> (SecretHash, Arc<EncodedToken>) {
        let t = token(&[]);
        (t.secret_hash, Arc::new(EncodedToken::new(&t)))
    }

    fn cache() -> TokenCache {
        TokenCache::new(
            CacheSettings {
                max_entries: 100,
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(60),
            },
            true,
        )
    }

    #[test]
    fn fills_are_served_and_invalidations_evict() {
        let cache = cache();
        let (hash, t) = cached();
        cache.fill(hash, Entry::Found(t.clone()), cache.epoch());
        assert!(matches!(cache.get(&hash), Some(Entry::Found(_))));
        cache.invalidate(&hash);
        assert!(cache.get(&hash).is_none());
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache = cache();
        let (hash, t) = cached();
        let before_read = cache.epoch();
        cache.invalidate(&hash); // the token changed while we read the store
        cache.fill(hash, Entry::Found(t.clone()), before_read);
        assert!(cache.get(&hash).is_none(), "the stale read is not cached");
    }

    #[test]
    fn an_untrusted_cache_serves_nothing_and_stores_nothing() {
        let cache = cache();
        let (hash, t) = cached();
        cache.fill(hash, Entry::Found(t.clone()), cache.epoch());
        cache.set_trusted(false);
        assert!(cache.get(&hash).is_none());
        let other = SecretHash([9; 32]);
        cache.fill(other, Entry::Missing, cache.epoch());
        cache.set_trusted(true);
        assert!(cache.get(&other).is_none());
    }

    #[test]
    fn creating_a_token_evicts_a_negative_entry() {
        let cache = cache();
        let (hash, _) = cached();
        cache.fill(hash, Entry::Missing, cache.epoch());
        assert!(matches!(cache.get(&hash), Some(Entry::Missing)));
        cache.invalidate(&hash);
        assert!(
            cache.get(&hash).is_none(),
            "the next Verify reads the store"
        );
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let cache = TokenCache::new(
            CacheSettings {
                max_entries: 10,
                ttl: Duration::from_millis(20),
                negative_ttl: Duration::from_millis(20),
            },
            true,
        );
        let (hash, t) = cached();
        put(&cache, hash, t.clone());
        assert!(cache.get(&hash).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(cache.get(&hash).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = TokenCache::new(
            CacheSettings {
                max_entries: 100,
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(60),
            },
            true,
        );
        let (_, t) = cached();
        for i in 0..1000u32 {
            let mut hash = SecretHash([0; 32]);
            hash.0[..4].copy_from_slice(&i.to_le_bytes());
            put(&cache, hash, t.clone());
        }
        assert!(cache.len() <= 110, "{}", cache.len());
    }

    #[test]
    fn a_disabled_cache_never_hits() {
        let cache = TokenCache::new(
            CacheSettings {
                max_entries: 0,
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(60),
            },
            true,
        );
        let (hash, t) = cached();
        put(&cache, hash, t.clone());
        cache.fill(hash, Entry::Found(t.clone()), cache.epoch());
        assert!(cache.get(&hash).is_none());
    }

    #[test]
    fn lookups_and_evictions_are_counted() {
        let cache = TokenCache::new(
            CacheSettings {
                max_entries: 100,
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_millis(20),
            },
            true,
        );
        let (hash, t) = cached();
        let unknown = SecretHash([7; 32]);
        cache.get(&hash); // miss
        cache.fill(hash, Entry::Found(t.clone()), cache.epoch());
        cache.get(&hash); // hit
        cache.fill(unknown, Entry::Missing, cache.epoch());
        cache.get(&unknown); // negative hit
        std::thread::sleep(Duration::from_millis(30));
        cache.get(&unknown); // expired, so a miss
        cache.invalidate(&hash); // changed
        cache.invalidate(&hash); // nothing left to evict
        put(&cache, hash, t.clone());
        cache.invalidate_all(); // flushed
        for i in 0..1000u32 {
            let mut other = SecretHash([0; 32]);
            other.0[..4].copy_from_slice(&i.to_le_bytes());
            put(&cache, other, t.clone());
        }
        cache.set_trusted(false);
        cache.get(&hash); // bypassed

        let counts = cache.counts();
        assert_eq!(
            (
                counts.hits,
                counts.negative_hits,
                counts.misses,
                counts.bypassed
            ),
            (1, 1, 2, 1)
        );
        assert_eq!(
            (
                counts.evicted_changed,
                counts.evicted_flushed,
                counts.evicted_expired
            ),
            (1, 1, 1)
        );
        assert!(counts.evicted_capacity >= 890, "{counts:?}");
        assert_eq!(counts.tokens, cache.len());
    }
}
