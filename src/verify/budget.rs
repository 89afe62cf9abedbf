//! The budget of store lookups for unknown secrets: what keeps a flood of well-formed but
//! made-up secrets (anyone can compute the checksum) from reaching the store at its rate.
//!
//! Every Verify, Check or forward-auth that misses the cache reserves one lookup from its
//! client address's bucket and from one bucket for all addresses; a lookup that finds a
//! token gives both back, so only unknown secrets spend them, and a service verifying many
//! real tokens on a cold cache is never held back. An empty bucket refuses the lookup:
//! the caller gets RESOURCE_EXHAUSTED (HTTP 429), never a verdict, so no real token is ever
//! called invalid for it; cached tokens, and remembered unknown secrets, still answer.
//! The address is the end client's when the request names it (Check's source address or
//! the gateway's `x-forwarded-for`, forward auth's client, Verify's `client_ip`), else the
//! caller's own; IPv6 by its /64. A caller that names made-up addresses gets a bucket per
//! address, and reaches only the bucket of all addresses: the store never sees more than
//! its rate of unknown secrets.

use std::{
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use dashmap::DashMap;

/// Lookups per second, and how many may be spent at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Refilled per second; 0 for no limit.
    pub per_second: f64,
    /// The most held (the burst).
    pub burst: f64,
}

impl Rate {
    /// `per_second` with a burst of twice that (at least one).
    pub fn per_second(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(per_second.saturating_mul(2).max(1)),
        }
    }
}

/// A token bucket that can give back what it lent.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    held: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            held: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.held = (self.held + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
    }

    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.held >= 1.0 {
            self.held -= 1.0;
            true
        } else {
            false
        }
    }

    fn give_back(&mut self, rate: Rate) {
        self.held = (self.held + 1.0).min(rate.burst);
    }
}

/// Why a lookup was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// This client address spent its lookups of unknown secrets.
    Address,
    /// Every address together did.
    Overall,
}

/// A lookup reserved from the budget: give it back with [`MissBudget::found`] when it
/// found a token.
#[derive(Debug)]
#[must_use]
pub struct Reserved {
    address: Option<IpAddr>,
    overall: bool,
}

/// Lookups of unknown secrets per client address and overall.
pub struct MissBudget {
    per_address: Rate,
    overall_rate: Rate,
    addresses: DashMap<IpAddr, Bucket>,
    overall: Mutex<Bucket>,
}

impl MissBudget {
    /// A budget of `per_address` and `overall` lookups of unknown secrets (0: no limit).
    pub fn new(per_address: Rate, overall: Rate) -> Self {
        Self {
            per_address,
            overall_rate: overall,
            addresses: DashMap::new(),
            overall: Mutex::new(Bucket::full(overall, Instant::now())),
        }
    }

    /// Reserves one lookup for a client address (`None`: unknown, counted overall only).
    pub fn reserve(&self, address: Option<IpAddr>) -> Result<Reserved, Refused> {
        let now = Instant::now();
        let address = address.filter(|_| self.per_address.per_second > 0.0);
        if let Some(ip) = address {
            let mut bucket = self
                .addresses
                .entry(ip)
                .or_insert_with(|| Bucket::full(self.per_address, now));
            if !bucket.take(self.per_address, now) {
                return Err(Refused::Address);
            }
        }
        let overall = self.overall_rate.per_second > 0.0;
        if overall {
            let mut bucket = self.overall.lock().unwrap_or_else(|e| e.into_inner());
            if !bucket.take(self.overall_rate, now) {
                drop(bucket);
                if let Some(ip) = address {
                    self.give_back(ip);
                }
                return Err(Refused::Overall);
            }
        }
        Ok(Reserved { address, overall })
    }

    /// Gives a reserved lookup back: it found a token (or never reached the store).
    pub fn found(&self, reserved: Reserved) {
        if let Some(ip) = reserved.address {
            self.give_back(ip);
        }
        if reserved.overall {
            let mut bucket = self.overall.lock().unwrap_or_else(|e| e.into_inner());
            bucket.give_back(self.overall_rate);
        }
    }

    fn give_back(&self, ip: IpAddr) {
        if let Some(mut bucket) = self.addresses.get_mut(&ip) {
            bucket.give_back(self.per_address);
        }
    }

    /// Forgets addresses whose bucket has been full for a while (they spent nothing lately).
    pub fn shrink(&self) {
        let now = Instant::now();
        let idle = Duration::from_secs(60);
        self.addresses.retain(|_, bucket| {
            let mut b = *bucket;
            b.refill(self.per_address, now);
            b.held < self.per_address.burst || now.saturating_duration_since(bucket.at) < idle
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn an_address_spends_its_burst_on_unknown_secrets_only() {
        let budget = MissBudget::new(Rate::per_second(1), Rate::per_second(0));
        for _ in 0..100 {
            let reserved = budget.reserve(ip(1)).expect("found tokens cost nothing");
            budget.found(reserved);
        }
        assert!(budget.reserve(ip(1)).is_ok());
        assert!(budget.reserve(ip(1)).is_ok());
        assert_eq!(budget.reserve(ip(1)).unwrap_err(), Refused::Address);
        assert!(budget.reserve(ip(2)).is_ok(), "each address has its own");
    }

    #[test]
    fn every_address_together_has_a_bound() {
        let budget = MissBudget::new(Rate::per_second(100), Rate::per_second(2));
        let spent = (0..=255u8)
            .filter(|i| budget.reserve(ip(*i)).is_ok())
            .count();
        assert_eq!(spent, 4, "the overall burst");
        assert_eq!(budget.reserve(ip(1)).unwrap_err(), Refused::Overall);
    }

    #[test]
    fn no_limit_refuses_nothing() {
        let budget = MissBudget::new(Rate::per_second(0), Rate::per_second(0));
        assert!((0..10_000).all(|_| budget.reserve(ip(1)).is_ok()));
    }
}
