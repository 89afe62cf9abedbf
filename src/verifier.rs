//! The one verification path, shared by the Verify RPC and the management API's caller
//! authentication: parse and checksum first, then the cache, then a lookup by hash, then
//! the rules.

use std::sync::Arc;

use crate::{
    cache::{Entry, TokenCache},
    domain::{
        secret::TokenSecret,
        token::{Token, limits, now},
        verify::{Outcome, Usage, evaluate},
    },
    store::{StoreError, TokenStore},
    usage::UsageRecorder,
};

/// The answer to one verification.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Why it passed or failed.
    pub outcome: Outcome,
    /// A short explanation for people; never the secret.
    pub reason: String,
    /// The token, when one was found (also when it failed a rule).
    pub token: Option<Arc<Token>>,
}

impl Verdict {
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

/// Verifies presented secrets against the cache and the store.
pub struct Verifier {
    store: Arc<dyn TokenStore>,
    cache: Arc<TokenCache>,
    usage: Arc<UsageRecorder>,
}

impl Verifier {
    /// Builds a verifier over a store and its cache, recording successful uses in `usage`.
    pub fn new(
        store: Arc<dyn TokenStore>,
        cache: Arc<TokenCache>,
        usage: Arc<UsageRecorder>,
    ) -> Self {
        Self {
            store,
            cache,
            usage,
        }
    }

    /// Verifies a presented secret for a use. Malformed secrets are answered without a
    /// lookup; only store failures are errors.
    pub async fn verify(&self, presented: &str, usage: &Usage) -> Result<Verdict, StoreError> {
        if presented.len() > limits::PRESENTED_LEN {
            return Ok(Verdict::without_token(
                Outcome::Malformed,
                "not a token of this service",
            ));
        }
        let secret = match TokenSecret::parse(presented) {
            Ok(secret) => secret,
            Err(malformed) => {
                return Ok(Verdict::without_token(
                    Outcome::Malformed,
                    malformed.to_string(),
                ));
            }
        };
        let Some(token) = self.lookup(&secret).await? else {
            return Ok(Verdict::without_token(Outcome::NotFound, "token not found"));
        };
        let now = now();
        let (outcome, reason) = evaluate(&token, usage, now);
        if outcome == Outcome::Ok {
            self.usage.record(token.id, now, usage.client_ip);
        }
        Ok(Verdict {
            outcome,
            reason,
            token: Some(token),
        })
    }

    /// Finds the token of a secret, in the cache or else in the store (filling the cache).
    async fn lookup(&self, secret: &TokenSecret) -> Result<Option<Arc<Token>>, StoreError> {
        let hash = secret.hash();
        match self.cache.get(&hash) {
            Some(Entry::Found(token)) => return Ok(Some(token)),
            Some(Entry::Missing) => return Ok(None),
            None => {}
        }
        let epoch = self.cache.epoch();
        let found = self.store.find_by_hash(&hash).await?.map(Arc::new);
        let entry = found.clone().map_or(Entry::Missing, Entry::Found);
        self.cache.fill(hash, entry, epoch);
        Ok(found)
    }
}
