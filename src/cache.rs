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

use quick_cache::sync::Cache;

use crate::{domain::secret::SecretHash, encoded::EncodedToken};

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

/// A bounded cache whose entries expire a fixed time after they were stored.
struct TtlCache<V: Clone> {
    entries: Cache<SecretHash, Expiring<V>>,
    ttl: Duration,
}

impl<V: Clone> TtlCache<V> {
    fn new(max_entries: u64, ttl: Duration) -> Self {
        Self {
            entries: Cache::new(usize::try_from(max_entries).unwrap_or(usize::MAX)),
            ttl,
        }
    }

    fn get(&self, hash: &SecretHash) -> Option<V> {
        let entry = self.entries.get(hash)?;
        if entry.until > Instant::now() {
            Some(entry.value)
        } else {
            self.entries.remove(hash);
            None
        }
    }

    fn insert(&self, hash: SecretHash, value: V) {
        let until = Instant::now() + self.ttl;
        self.entries.insert(hash, Expiring { value, until });
    }

    fn remove(&self, hash: &SecretHash) {
        self.entries.remove(hash);
    }

    fn clear(&self) {
        self.entries.clear();
    }
}

/// A bounded concurrent cache with invalidation that is safe against racing fills.
pub struct TokenCache {
    found: Option<TtlCache<Arc<EncodedToken>>>,
    missing: Option<TtlCache<()>>,
    /// False while changes made elsewhere might not reach us (the feed is down).
    trusted: AtomicBool,
    /// Bumped by every invalidation, so that a fill which raced one is dropped.
    epoch: AtomicU64,
}

impl TokenCache {
    /// Builds a cache; `trusted` says whether it may serve before a change feed is up.
    pub fn new(settings: CacheSettings, trusted: bool) -> Self {
        let enabled = settings.max_entries > 0;
        Self {
            found: enabled.then(|| TtlCache::new(settings.max_entries, settings.ttl)),
            missing: enabled.then(|| TtlCache::new(settings.max_entries, settings.negative_ttl)),
            trusted: AtomicBool::new(trusted),
            epoch: AtomicU64::new(0),
        }
    }

    /// Returns the cached entry, or `None` on a miss or while the cache is not trusted.
    pub fn get(&self, hash: &SecretHash) -> Option<Entry> {
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
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

    /// Caches a token just created here, replacing any negative entry for its hash.
    pub fn insert_new(&self, hash: SecretHash, token: Arc<EncodedToken>) {
        if let Some(missing) = &self.missing {
            missing.remove(&hash);
        }
        if let Some(found) = &self.found {
            found.insert(hash, token);
        }
    }

    /// Evicts one hash, after its token changed.
    pub fn invalidate(&self, hash: &SecretHash) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.remove(hash);
    }

    /// Evicts everything.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(found) = &self.found {
            found.clear();
        }
        if let Some(missing) = &self.missing {
            missing.clear();
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

    fn remove(&self, hash: &SecretHash) {
        if let Some(found) = &self.found {
            found.remove(hash);
        }
        if let Some(missing) = &self.missing {
            missing.remove(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::verify::tests::token;

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
    fn creating_a_token_replaces_a_negative_entry() {
        let cache = cache();
        let (hash, t) = cached();
        cache.fill(hash, Entry::Missing, cache.epoch());
        assert!(matches!(cache.get(&hash), Some(Entry::Missing)));
        cache.insert_new(hash, t.clone());
        assert!(matches!(cache.get(&hash), Some(Entry::Found(_))));
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
        cache.insert_new(hash, t.clone());
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
            cache.insert_new(hash, t.clone());
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
        cache.insert_new(hash, t.clone());
        cache.fill(hash, Entry::Found(t.clone()), cache.epoch());
        assert!(cache.get(&hash).is_none());
    }
}
