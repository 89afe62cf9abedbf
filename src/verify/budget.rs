//! The budget of store lookups for unknown secrets: what keeps a flood of well-formed but
//! made-up secrets (anyone can compute the checksum) from reaching the store at its rate.
//!
//! Every Verify, Check or forward-auth that misses the cache reserves one lookup from its
//! client address's bucket and from one bucket for all addresses; a lookup that finds a
//! token gives both back, so only unknown secrets spend them, and a service verifying many
//! real tokens on a cold cache is never held back. An empty bucket refuses the lookup:
//! the caller gets RESOURCE_EXHAUSTED (HTTP 429), never a verdict, so no real token is ever
//! called invalid for it; cached tokens, and remembered unknown secrets, still answer.
//! Buckets are kept per end client, per caller, and for all together:
//! - the end client is the address the request names (Check's source address or the
//!   gateway's `x-forwarded-for`, forward auth's client, Verify's `client_ip`), else the
//!   caller's own; IPv6 by its /64: one flooding client behind a gateway spends its own
//!   bucket, not its neighbours';
//! - the caller is the transport peer (the gateway, the service calling Verify; for Verify
//!   through a trusted proxy, the client it names, see `grpc::verify_service::payer`), whose
//!   bucket holds [`CALLER_SHARE`] times a client's when it names clients: anyone may call
//!   Verify or Check and name made-up addresses, and this caps what one caller gets by
//!   doing so, leaving the rest of the overall bucket to everyone else;
//! - the bucket of all addresses bounds what the store sees, whatever the addresses.

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

/// How many clients' worth of lookups a caller that names its clients may spend.
pub const CALLER_SHARE: u32 = 10;

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
    /// This client address (or the caller naming it) spent its lookups of unknown secrets.
    Address,
    /// Every address together did.
    Overall,
}

/// A lookup reserved from the budget: give it back with [`MissBudget::found`] when it
/// found a token.
#[derive(Debug)]
#[must_use]
pub struct Reserved {
    client: Option<IpAddr>,
    caller: Option<IpAddr>,
    overall: bool,
}

/// One kind of bucket: a rate and a bucket per address.
struct Buckets {
    rate: Rate,
    by_address: DashMap<IpAddr, Bucket>,
}

impl Buckets {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            by_address: DashMap::new(),
        }
    }

    fn limited(&self) -> bool {
        self.rate.per_second > 0.0
    }

    fn take(&self, ip: IpAddr, now: Instant) -> bool {
        let rate = self.rate;
        self.by_address
            .entry(ip)
            .or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
    }

    fn give_back(&self, ip: IpAddr) {
        if let Some(mut bucket) = self.by_address.get_mut(&ip) {
            bucket.give_back(self.rate);
        }
    }

    fn shrink(&self, now: Instant) {
        let idle = Duration::from_secs(60);
        self.by_address.retain(|_, bucket| {
            let mut b = *bucket;
            b.refill(self.rate, now);
            b.held < self.rate.burst || now.saturating_duration_since(bucket.at) < idle
        });
    }
}

/// Lookups of unknown secrets per client address, per caller and overall.
pub struct MissBudget {
    clients: Buckets,
    callers: Buckets,
    overall_rate: Rate,
    overall: Mutex<Bucket>,
}

impl MissBudget {
    /// A budget of `per_address` (a caller naming clients: [`CALLER_SHARE`] times that)
    /// and `overall` lookups of unknown secrets (0: no limit).
    pub fn new(per_address: Rate, overall: Rate) -> Self {
        let share = f64::from(CALLER_SHARE);
        let per_caller = Rate {
            per_second: per_address.per_second * share,
            burst: per_address.burst * share,
        };
        Self {
            clients: Buckets::new(per_address),
            callers: Buckets::new(per_caller),
            overall_rate: overall,
            overall: Mutex::new(Bucket::full(overall, Instant::now())),
        }
    }

    /// Reserves one lookup for the end client `client` named by `caller` (either may be
    /// unknown; a caller naming no one, or itself, is its own client).
    pub fn reserve(
        &self,
        client: Option<IpAddr>,
        caller: Option<IpAddr>,
    ) -> Result<Reserved, Refused> {
        let now = Instant::now();
        let client = client.or(caller).filter(|_| self.clients.limited());
        let caller = caller
            .filter(|c| Some(*c) != client)
            .filter(|_| self.callers.limited());
        // The caller's bucket first: a caller past its share adds no bucket for the client
        // it names (else made-up addresses would grow the map without bound).
        if let Some(ip) = caller
            && !self.callers.take(ip, now)
        {
            return Err(Refused::Address);
        }
        if let Some(ip) = client
            && !self.clients.take(ip, now)
        {
            if let Some(ip) = caller {
                self.callers.give_back(ip);
            }
            return Err(Refused::Address);
        }
        let overall = self.overall_rate.per_second > 0.0;
        if overall {
            let mut bucket = self.overall.lock().unwrap_or_else(|e| e.into_inner());
            if !bucket.take(self.overall_rate, now) {
                drop(bucket);
                self.give_back(client, caller);
                return Err(Refused::Overall);
            }
        }
        Ok(Reserved {
            client,
            caller,
            overall,
        })
    }

    /// Gives a reserved lookup back: it found a token (or never reached the store).
    pub fn found(&self, reserved: Reserved) {
        self.give_back(reserved.client, reserved.caller);
        if reserved.overall {
            let mut bucket = self.overall.lock().unwrap_or_else(|e| e.into_inner());
            bucket.give_back(self.overall_rate);
        }
    }

    fn give_back(&self, client: Option<IpAddr>, caller: Option<IpAddr>) {
        if let Some(ip) = client {
            self.clients.give_back(ip);
        }
        if let Some(ip) = caller {
            self.callers.give_back(ip);
        }
    }

    /// Forgets addresses whose bucket has been full for a while (they spent nothing lately).
    pub fn shrink(&self) {
        let now = Instant::now();
        self.clients.shrink(now);
        self.callers.shrink(now);
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
            let reserved = budget
                .reserve(ip(1), None)
                .expect("found tokens cost nothing");
            budget.found(reserved);
        }
        assert!(budget.reserve(ip(1), None).is_ok());
        assert!(budget.reserve(ip(1), None).is_ok());
        assert_eq!(budget.reserve(ip(1), None).unwrap_err(), Refused::Address);
        assert!(
            budget.reserve(ip(2), None).is_ok(),
            "each address has its own"
        );
    }

    #[test]
    fn every_address_together_has_a_bound() {
        let budget = MissBudget::new(Rate::per_second(100), Rate::per_second(2));
        let spent = (0..=255u8)
            .filter(|i| budget.reserve(ip(*i), None).is_ok())
            .count();
        assert_eq!(spent, 4, "the overall burst");
        assert_eq!(budget.reserve(ip(1), None).unwrap_err(), Refused::Overall);
    }

    #[test]
    fn a_caller_naming_made_up_clients_gets_its_share_and_no_more() {
        let budget = MissBudget::new(Rate::per_second(1), Rate::per_second(0));
        let gateway = ip(200);
        // A client of its own (burst 2 each), as many made-up ones as it likes: the
        // caller's bucket (10 times a client's) ends it.
        let spent = (0..=199u8)
            .filter(|i| budget.reserve(ip(*i), gateway).is_ok())
            .count();
        assert_eq!(spent, 2 * CALLER_SHARE as usize);
        // Refused callers add no bucket for the clients they name.
        let buckets = budget.clients.by_address.len();
        assert!(budget.reserve(ip(250), gateway).is_err());
        assert_eq!(budget.clients.by_address.len(), buckets);
        // Another caller, and a client calling for itself, are untouched.
        assert!(budget.reserve(ip(1), ip(201)).is_ok());
        assert!(budget.reserve(ip(202), ip(202)).is_ok());
        // One flooding client behind a gateway spends its own bucket, not its neighbours'.
        let budget = MissBudget::new(Rate::per_second(1), Rate::per_second(0));
        assert!(budget.reserve(ip(1), gateway).is_ok());
        assert!(budget.reserve(ip(1), gateway).is_ok());
        assert_eq!(
            budget.reserve(ip(1), gateway).unwrap_err(),
            Refused::Address
        );
        assert!(budget.reserve(ip(2), gateway).is_ok());
        // What found a token is given back to every bucket it was taken from.
        let budget = MissBudget::new(Rate::per_second(1), Rate::per_second(1));
        for _ in 0..100 {
            let reserved = budget.reserve(ip(3), gateway).unwrap();
            budget.found(reserved);
        }
    }

    #[test]
    fn no_limit_refuses_nothing() {
        let budget = MissBudget::new(Rate::per_second(0), Rate::per_second(0));
        assert!((0..10_000).all(|_| budget.reserve(ip(1), None).is_ok()));
    }
}
