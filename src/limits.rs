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

/// Per-token request rates, for tokens that have a rate limit.
#[derive(Default)]
pub struct TokenRates {
    limiters: DashMap<Uuid, (RateLimit, Arc<DefaultDirectRateLimiter>)>,
}

impl TokenRates {
    /// Counts one request of a token against its limit; false when it is over it.
    pub fn allow(&self, id: Uuid, limit: RateLimit) -> bool {
        let limiter = {
            let entry = self.limiters.get(&id);
            match entry {
                Some(entry) if entry.0 == limit => entry.1.clone(),
                _ => {
                    drop(entry);
                    let limiter =
                        Arc::new(RateLimiter::direct(quota(limit.requests, limit.interval)));
                    self.limiters.insert(id, (limit, limiter.clone()));
                    limiter
                }
            }
        };
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
        assert!(rates.allow(id, raised), "a changed limit starts afresh");
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
