//! The verification paths: parse and checksum first, then a lookup by hash, then the rules.
//!
//! The Verify RPC looks tokens up in the cache before the store, and gets back the token
//! in its encoded form. The management API's caller authentication always reads the store:
//! it is rare, and it needs the whole token to judge what the caller may grant. A use is
//! spent (rate limit, `max_uses`, usage record) only when the use is allowed.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use chrono::{DateTime, Utc};

use crate::{
    cache::{Entry, TokenCache},
    domain::{
        restrictions::limit_key,
        secret::{SecretHash, TokenSecret},
        token::{Token, limits, now},
        verify::{Outcome, Subject, Usage, evaluate},
    },
    encoded::EncodedToken,
    limits::TokenRates,
    store::{StoreError, TokenStore},
    usage::UsageRecorder,
    verify::{
        budget::{MissBudget, Rate, Refused},
        loader::{Loader, LoaderCounts, LoaderSettings},
    },
};

/// The answer to one verification; `T` is the form in which the token comes back.
#[derive(Clone, Debug)]
pub struct Verdict<T> {
    /// Why it passed or failed.
    pub outcome: Outcome,
    /// A short explanation for people; never the secret.
    pub reason: String,
    /// The token, when one was found (also when it failed a rule).
    pub token: Option<Arc<T>>,
}

impl<T> Verdict<T> {
    fn without_token(outcome: Outcome, reason: impl Into<String>) -> Self {
        Self {
            outcome,
            reason: reason.into(),
            token: None,
        }
    }

    /// Returns whether the token is valid for the use.
    pub fn is_valid(&self) -> bool {
        self.outcome == Outcome::Ok
    }
}

/// How Verify reaches the store on a cache miss.
#[derive(Clone, Copy, Debug)]
pub struct LookupSettings {
    /// How misses are batched.
    pub loader: LoaderSettings,
    /// Lookups of unknown secrets per second per client address (0: no limit).
    pub unknown_per_address: u32,
    /// Lookups of unknown secrets per second from every address together (0: no limit).
    pub unknown_overall: u32,
}

impl Default for LookupSettings {
    fn default() -> Self {
        Self {
            loader: LoaderSettings { in_flight: 1 },
            unknown_per_address: 50,
            unknown_overall: 1000,
        }
    }
}

/// Whose budget a cache miss's store lookup is charged to (see `verify::budget`): the end
/// client the request names, else the caller; and the caller, when it names a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payer {
    /// The end client (Check's source address, forward auth's client, Verify's
    /// `client_ip`), if known.
    pub client: Option<IpAddr>,
    /// The transport peer (or the client a trusted proxy names for it), if known.
    pub caller: Option<IpAddr>,
}

/// What Verify's store lookups did since the start, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupCounts {
    /// The loader's counts.
    pub loader: LoaderCounts,
    /// Lookups that found no token (and spent the budget).
    pub unknown: u64,
    /// Lookups refused because the client address spent its budget.
    pub refused_address: u64,
    /// Lookups refused because every address together spent the overall budget.
    pub refused_overall: u64,
}

/// Verifies presented secrets against the cache and the store.
pub struct Verifier {
    store: Arc<dyn TokenStore>,
    cache: Arc<TokenCache>,
    loader: Arc<Loader>,
    budget: MissBudget,
    usage: Arc<UsageRecorder>,
    rates: TokenRates,
    unknown: AtomicU64,
    refused: [AtomicU64; 2],
}

impl Verifier {
    /// Builds a verifier over a store and its cache, recording successful uses in `usage`.
    pub fn new(
        store: Arc<dyn TokenStore>,
        cache: Arc<TokenCache>,
        usage: Arc<UsageRecorder>,
        lookups: LookupSettings,
    ) -> Self {
        Self {
            loader: Arc::new(Loader::new(store.clone(), cache.clone(), lookups.loader)),
            budget: MissBudget::new(
                Rate::per_second(lookups.unknown_per_address),
                Rate::per_second(lookups.unknown_overall),
            ),
            store,
            cache,
            usage,
            rates: TokenRates::default(),
            unknown: AtomicU64::new(0),
            refused: Default::default(),
        }
    }

    /// Verifies a presented secret for a use, through the cache. Malformed secrets are
    /// answered without a lookup; only store failures, and a client over its budget of
    /// lookups of unknown secrets ([`StoreError::OverBudget`]), are errors. `payer` says
    /// whose buckets a store lookup is charged to, asked only on a cache miss.
    pub async fn verify(
        &self,
        presented: &str,
        usage: &Usage<'_>,
        payer: impl FnOnce() -> Payer,
    ) -> Result<Verdict<EncodedToken>, StoreError> {
        let hash = match parse(presented) {
            Ok(hash) => hash,
            Err(verdict) => return Ok(verdict),
        };
        let token = match self.cache.get(&hash) {
            Some(Entry::Found(token)) => Some(token),
            Some(Entry::Missing) => None,
            None => self.load(hash, payer()).await?,
        };
        self.judge(token, usage, now()).await
    }

    /// Looks a missed secret up in the store, within the budget of the client and of the
    /// caller naming it.
    async fn load(
        &self,
        hash: SecretHash,
        payer: Payer,
    ) -> Result<Option<Arc<EncodedToken>>, StoreError> {
        let reserved = self
            .budget
            .reserve(payer.client.map(limit_key), payer.caller.map(limit_key))
            .map_err(|refused| {
                self.refused[(refused == Refused::Overall) as usize]
                    .fetch_add(1, Ordering::Relaxed);
                StoreError::OverBudget
            })?;
        let found = self.loader.load(hash).await;
        match &found {
            Ok(None) => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
            _ => self.budget.found(reserved),
        }
        found
    }

    /// What Verify's store lookups did since the start.
    pub fn lookup_counts(&self) -> LookupCounts {
        LookupCounts {
            loader: self.loader.counts(),
            unknown: self.unknown.load(Ordering::Relaxed),
            refused_address: self.refused[0].load(Ordering::Relaxed),
            refused_overall: self.refused[1].load(Ordering::Relaxed),
        }
    }

    /// Authenticates a management caller's secret against the store (never the cache):
    /// the rules only, spending nothing (the call spends one use once it is allowed, see
    /// [`Verifier::spend`]). A previous secret in its rotation grace period still passes
    /// Verify and Check, but authenticates no management call: whoever holds a leaked,
    /// rotated-out secret must not be able to rotate again and keep the only live one.
    pub async fn authenticate(
        &self,
        presented: &str,
        usage: &Usage<'_>,
    ) -> Result<Verdict<Token>, StoreError> {
        let hash = match parse(presented) {
            Ok(hash) => hash,
            Err(verdict) => return Ok(verdict),
        };
        let now = now();
        let Some(token) = self.store.find_by_hash(&hash, now).await? else {
            return Ok(Verdict::without_token(Outcome::NotFound, "token not found"));
        };
        if token.secret_hash != hash {
            return Ok(Verdict {
                outcome: Outcome::NotFound,
                reason:
                    "this secret was rotated out; management calls need the token's current secret"
                        .into(),
                token: Some(Arc::new(token)),
            });
        }
        let (mut outcome, mut reason) = evaluate(&token, usage, now);
        if outcome == Outcome::Ok && token.max_uses.is_some_and(|max| token.uses >= max) {
            (outcome, reason) = (Outcome::UsageExceeded, "token has no uses left".into());
        }
        Ok(Verdict {
            outcome,
            reason,
            token: Some(Arc::new(token)),
        })
    }

    /// Applies the rules to a found (or missing) token, then, if it passed, spends one use.
    async fn judge<T: Subject>(
        &self,
        token: Option<Arc<T>>,
        usage: &Usage<'_>,
        now: DateTime<Utc>,
    ) -> Result<Verdict<T>, StoreError> {
        let Some(token) = token else {
            return Ok(Verdict::without_token(Outcome::NotFound, "token not found"));
        };
        let (mut outcome, mut reason) = evaluate(token.as_ref(), usage, now);
        if outcome == Outcome::Ok {
            (outcome, reason) = self.spend(token.as_ref(), usage, now).await?;
        }
        Ok(Verdict {
            outcome,
            reason,
            token: Some(token),
        })
    }

    /// Spends one use of a token that passed the rules: its rate limit, then its usage
    /// limit, then records the use. Only allowed uses are spent.
    pub async fn spend<T: Subject + ?Sized>(
        &self,
        token: &T,
        usage: &Usage<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Outcome, String), StoreError> {
        if let Err(reason) = self.take_rate(token) {
            return Ok((Outcome::RateLimited, reason));
        }
        // Counted in the store, atomically, so no replica can let a use past max_uses.
        if token.usage_limited() && self.store.consume_use(token.id()).await?.is_none() {
            return Ok((Outcome::UsageExceeded, "token has no uses left".into()));
        }
        self.record(token.id(), now, usage);
        Ok((Outcome::Ok, String::new()))
    }

    /// Counts one use against a token's rate limit, if it has one; why not, when over it.
    pub fn take_rate<T: Subject + ?Sized>(&self, token: &T) -> Result<(), String> {
        match token.rate_limit() {
            Some(limit) if !self.rates.allow(token.id(), limit) => Err(format!(
                "token is limited to {} requests per {:?} on this replica",
                limit.requests, limit.interval
            )),
            _ => Ok(()),
        }
    }

    /// Records a successful use for the last-used bookkeeping (written in batches).
    pub fn record(&self, id: uuid::Uuid, now: DateTime<Utc>, usage: &Usage) {
        self.usage.record(id, now, usage.client_ip);
    }

    /// Drops rate-limit and lookup-budget state of tokens and addresses not seen lately.
    pub fn shrink_rates(&self) {
        self.rates.shrink();
        self.budget.shrink();
    }
}

/// Checks a presented secret and returns its hash, or answers MALFORMED.
fn parse<T>(presented: &str) -> Result<SecretHash, Verdict<T>> {
    if presented.len() > limits::PRESENTED_LEN {
        return Err(Verdict::without_token(
            Outcome::Malformed,
            "not a token of this service",
        ));
    }
    TokenSecret::hash_of_presented(presented)
        .map_err(|malformed| Verdict::without_token(Outcome::Malformed, malformed.to_string()))
}
