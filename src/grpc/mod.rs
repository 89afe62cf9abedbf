//! The gRPC layer: one module per service, thin: decode, call the domain and store, encode.

pub mod auth;
pub mod convert;
pub mod request_id;
pub mod token_service;
pub mod verify_service;

use std::sync::Arc;

use crate::{
    cache::TokenCache, domain::secret::TokenPrefix, metrics::Metrics, store::TokenStore,
    verifier::Verifier,
};

/// What the services share.
pub struct AppState {
    /// Where tokens live.
    pub store: Arc<dyn TokenStore>,
    /// The verification path.
    pub verifier: Verifier,
    /// The Verify cache, evicted here on every change made through this replica.
    pub cache: Arc<TokenCache>,
    /// The prefix of new secrets.
    pub prefix: TokenPrefix,
    /// What the service counts; Verify and Check record their verdicts here.
    pub metrics: Arc<Metrics>,
}

/// The `:authority` (host) a request was sent to, put into the request's extensions by
/// [`authority_layer`] so that host-restricted tokens can be checked on management calls.
#[derive(Clone, Debug)]
pub struct Authority(pub String);

type HttpRequest = http::Request<tonic::body::Body>;

/// A tower layer that records each request's `:authority` as an [`Authority`].
pub type AuthorityLayer = tower::util::MapRequestLayer<fn(HttpRequest) -> HttpRequest>;

/// Returns the layer that records each request's `:authority` as an [`Authority`].
pub fn authority_layer() -> AuthorityLayer {
    fn record(mut request: HttpRequest) -> HttpRequest {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        if let Some(authority) = authority {
            request.extensions_mut().insert(Authority(authority));
        }
        request
    }
    tower::util::MapRequestLayer::new(record as fn(HttpRequest) -> HttpRequest)
}
