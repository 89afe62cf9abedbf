//! In-memory rate limits (GCRA, from the governor crate): per token for Verify and Check,
//! and per client address for the management API. Each replica keeps its own state.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::domain::token::RateLimit;

fn quota(requests: u32, interval: Duration) -> Quota {
    let burst = NonZeroU32::new(requests.max(1)).expect("at least one");
    // `requests` at once, then one more every interval/requests: at most `requests` in any
    // window of `interval`.
    Quota::with_period(interval / burst.get())
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

fn new_limiter(limit: RateLimit) -> (RateLimit, Arc<DefaultDirectRateLimiter>) {
    let limiter = RateLimiter::direct(quota(limit.requests, limit.interval));
    (limit, Arc::new(limiter))
}

/// Takes everything a limiter has left and returns how much that was (of at most
/// `burst`): the largest batches first, halving on each refusal (a refused batch takes
/// nothing).
fn drain(limiter: &DefaultDirectRateLimiter, burst: u32) -> u32 {
    let (mut taken, mut batch) = (0u32, burst);
    while let Some(n) = NonZeroU32::new(batch) {
        if matches!(limiter.check_n(n), Ok(Ok(()))) {
            taken = taken.saturating_add(batch);
            if taken >= burst {
                break;
            }
        } else {
            batch /= 2;
        }
    }
    taken.min(burst)
}

/// Per-token request rates, for tokens that have a rate limit.
#[derive(Default)]
pub struct TokenRates {
    limiters: DashMap<Uuid, (RateLimit, Arc<DefaultDirectRateLimiter>)>,
}

impl TokenRates {
    /// Counts one request of a token against its limit; false when it is over it.
    pub fn allow(&self, id: Uuid, limit: RateLimit) -> bool {
        // The common case under a shard's read lock; a new (or changed) limit is decided
        // under its write lock, so that uses arriving at once share one limiter instead of
        // each making its own (which allowed a burst per racing use).
        let known = self
            .limiters
            .get(&id)
            .filter(|entry| entry.0 == limit)
            .map(|entry| entry.1.clone());
        let limiter = known.unwrap_or_else(|| {
            let mut entry = self
                .limiters
                .entry(id)
                .or_insert_with(|| new_limiter(limit));
            if entry.0 != limit {
                let used = entry
                    .0
                    .requests
                    .saturating_sub(drain(&entry.1, entry.0.requests));
                *entry = new_limiter(limit);
                // The new limit starts with the uses already made under the old one, so
                // that changing its own limit (even to a hair slower one, which the
                // policy allows) cannot hand a token a fresh burst.
                if let Some(used) = NonZeroU32::new(used.min(limit.requests)) {
                    let _ = entry.1.check_n(used);
                }
            }
            entry.1.clone()
        });
        limiter.check().is_ok()
    }

    /// Forgets tokens whose limiters are full again (idle for a whole interval), so that
    /// the map holds only tokens in recent use.
    pub fn shrink(&self) {
        self.limiters.retain(|_, (limit, limiter)| {
            // A limiter that can take its whole burst again has no state worth keeping.
            limiter
                .check_n(NonZeroU32::new(limit.requests).expect("validated"))
                .map(|r| r.is_err())
                .unwrap_or(true)
        });
    }
}

/// Requests per client address on the management API.
pub struct ManagementRate {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl ManagementRate {
    /// At most `per_minute` requests per minute per address; 0 turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            limiter: (per_minute > 0)
                .then(|| RateLimiter::keyed(quota(per_minute, Duration::from_secs(60)))),
        }
    }

    /// Counts one request from `ip`; false when it is over the limit.
    pub fn allow(&self, ip: Option<IpAddr>) -> bool {
        match (&self.limiter, ip) {
            (Some(limiter), Some(ip)) => limiter.check_key(&ip).is_ok(),
            _ => true,
        }
    }

    /// Drops the state of addresses that are back under their limit.
    pub fn shrink(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Limits how many failed authentications are written to the audit trail: a few per
/// address per minute, and a ceiling for everyone together.
pub struct FailureAudit {
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    overall: DefaultDirectRateLimiter,
}

impl Default for FailureAudit {
    fn default() -> Self {
        Self {
            per_address: RateLimiter::keyed(quota(10, Duration::from_secs(60))),
            overall: RateLimiter::direct(quota(600, Duration::from_secs(60))),
        }
    }
}

impl FailureAudit {
    /// Whether one more failure from `ip` may be recorded now.
    pub fn allow(&self, ip: Option<IpAddr>) -> bool {
        let address_ok = ip.is_none_or(|ip| self.per_address.check_key(&ip).is_ok());
        address_ok && self.overall.check().is_ok()
    }

    /// Drops the state of addresses that are back under their limit.
    pub fn shrink(&self) {
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gets_its_requests_per_interval() {
        let rates = TokenRates::default();
        let id = Uuid::now_v7();
        let limit = RateLimit::new(3, Duration::from_secs(3600)).unwrap();
        assert!((0..3).all(|_| rates.allow(id, limit)));
        assert!(!rates.allow(id, limit));
        assert!(
            rates.allow(Uuid::now_v7(), limit),
            "tokens are limited separately"
        );
        let raised = RateLimit::new(10, Duration::from_secs(3600)).unwrap();
        assert!(
            (0..7).all(|_| rates.allow(id, raised)),
            "a raised limit gives what it adds: 10 less the 3 used"
        );
        assert!(!rates.allow(id, raised));
    }

    #[test]
    fn changing_its_limit_gives_a_token_no_fresh_burst() {
        let rates = TokenRates::default();
        let id = Uuid::now_v7();
        let limit = RateLimit::new(10, Duration::from_secs(60)).unwrap();
        assert!((0..10).all(|_| rates.allow(id, limit)));
        assert!(!rates.allow(id, limit));
        // A hair slower: no looser, so the policy lets a token set it on itself.
        let tweaked = RateLimit::new(10, Duration::from_millis(60_001)).unwrap();
        assert!(!rates.allow(id, tweaked), "the burst stays spent");
        let halved = RateLimit::new(5, Duration::from_secs(60)).unwrap();
        assert!(!rates.allow(id, halved), "a lower limit too");
        // Half used, then changed: the other half is left.
        let other = Uuid::now_v7();
        assert!((0..5).all(|_| rates.allow(other, limit)));
        assert!((0..5).all(|_| rates.allow(other, tweaked)));
        assert!(!rates.allow(other, tweaked));
    }

    #[test]
    fn first_uses_at_once_share_one_limiter() {
        // Two threads use each new token at the same moment (a barrier per trial); a token
        // with a burst of 1 must let exactly one of them through, every time. Two limiters
        // made by racing first uses let both through.
        const TRIALS: usize = 20_000;
        let rates = Arc::new(TokenRates::default());
        let limit = RateLimit::new(1, Duration::from_secs(3600)).unwrap();
        let ids: Arc<Vec<Uuid>> = Arc::new((0..TRIALS).map(|_| Uuid::now_v7()).collect());
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (rates, ids, barrier) = (rates.clone(), ids.clone(), barrier.clone());
                std::thread::spawn(move || {
                    ids.iter()
                        .map(|id| {
                            barrier.wait();
                            rates.allow(*id, limit)
                        })
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        let results: Vec<Vec<bool>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let doubled = (0..TRIALS)
            .filter(|&i| results[0][i] && results[1][i])
            .count();
        let neither = (0..TRIALS)
            .filter(|&i| !results[0][i] && !results[1][i])
            .count();
        assert_eq!(
            (doubled, neither),
            (0, 0),
            "of {TRIALS} tokens, {doubled} let both first uses through, {neither} neither"
        );
    }

    #[test]
    fn management_calls_are_limited_per_address() {
        let rate = ManagementRate::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(rate.allow(Some(a)) && rate.allow(Some(a)));
        assert!(!rate.allow(Some(a)));
        assert!(rate.allow(Some(b)));
        assert!(ManagementRate::new(0).allow(Some(a)));
    }
}
