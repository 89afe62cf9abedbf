//! The gRPC layer: one module per service, thin: decode, call the domain and store, encode.

pub mod audit_service;
pub mod auth;
pub mod calls;
pub mod codec;
pub mod convert;
pub mod detach;
pub mod ext_authz;
pub mod leak_service;
pub mod request_id;
pub mod token_service;
pub mod token_type_service;
pub mod verify_service;

use std::{net::IpAddr, sync::Arc};

use crate::{
    cache::TokenCache,
    domain::{audit::AuditEvent, secret::TokenPrefix, token::Token},
    limits::{FailureAudit, ManagementRate},
    metrics::Metrics,
    store::TokenStore,
    verifier::Verifier,
};

/// What the services share.
pub struct AppState {
    /// Where tokens live.
    pub store: Arc<dyn TokenStore>,
    /// The verification path.
    pub verifier: Arc<Verifier>,
    /// The Verify cache, evicted here on every change made through this replica.
    pub cache: Arc<TokenCache>,
    /// The prefix of new secrets.
    pub prefix: TokenPrefix,
    /// What the service counts; Verify and Check record their verdicts here.
    pub metrics: Arc<Metrics>,
    /// Requests per client address on the management API.
    pub management_rate: ManagementRate,
    /// Leak reports per client address.
    pub leak_report_rate: ManagementRate,
    /// How many failed authentications are written to the audit trail.
    pub failure_audit: FailureAudit,
    /// Proxies in front of this service whose `x-forwarded-for` names the management
    /// caller's address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl AppState {
    /// Evicts every secret of a token from this replica's Verify cache.
    pub fn evict(&self, token: &Token) {
        self.cache.invalidate(&token.secret_hash);
        if let Some(previous) = &token.previous_hash {
            self.cache.invalidate(previous);
        }
    }

    /// Records a failed management authentication, unless this address (or everyone) has
    /// had too many recorded lately, so that a flood cannot fill the disk.
    pub async fn audit_failed_authentication(
        &self,
        client_ip: Option<IpAddr>,
        limit_key: Option<IpAddr>,
        token: Option<&Token>,
        reason: &str,
    ) {
        if !self.failure_audit.allow(limit_key) {
            return;
        }
        let now = crate::domain::token::now();
        let mut event = AuditEvent::new("authentication_failed", "management".into(), None, now);
        event.client_ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        event.detail = reason.to_owned();
        if let Some(token) = token {
            // The token presented (disabled, expired, used up): its owner may see the attempt.
            event.actor_id = Some(token.id);
            event.actor_owner = token.owner.clone();
            event.target_owner = token.owner.clone();
        }
        if let Err(error) = self.store.record_audit(&event).await {
            tracing::warn!(%error, "could not audit a failed authentication");
        }
    }
}

/// The `:authority` (host) a request was sent to, put into the request's extensions by
/// [`calls::CallLayer`] so that host-restricted tokens can be checked on management calls.
#[derive(Clone, Debug)]
pub struct Authority(pub String);

type HttpRequest = http::Request<tonic::body::Body>;

/// A tower layer that records each request's `:authority` as an [`Authority`].
pub type AuthorityLayer = tower::util::MapRequestLayer<fn(HttpRequest) -> HttpRequest>;

/// Returns a layer that records each request's `:authority` as an [`Authority`], as
/// [`calls::CallLayer`] does (for the benchmark's no-op servers, which copy the server's
/// transport settings).
pub fn authority_layer() -> AuthorityLayer {
    fn record(mut request: HttpRequest) -> HttpRequest {
        if let Some(authority) = calls::authority_of(&request) {
            request.extensions_mut().insert(Authority(authority));
        }
        request
    }
    tower::util::MapRequestLayer::new(record as fn(HttpRequest) -> HttpRequest)
}
