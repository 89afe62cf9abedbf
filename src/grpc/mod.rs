//! The gRPC layer: one module per service, thin: decode, call the domain and store, encode.

pub mod auth;
pub mod convert;
pub mod token_service;
pub mod verify_service;

use std::sync::Arc;

use crate::{domain::secret::TokenPrefix, store::TokenStore, verifier::Verifier};

/// What the services share.
pub struct AppState {
    /// Where tokens live.
    pub store: Arc<dyn TokenStore>,
    /// The verification path.
    pub verifier: Verifier,
    /// The prefix of new secrets.
    pub prefix: TokenPrefix,
}

/// The `:authority` (host) a request was sent to, put into the request's extensions by
/// [`authority_layer`] so that host-restricted tokens can be checked on management calls.
#[derive(Clone, Debug)]
pub struct Authority(pub String);

/// Returns a tower layer that records each request's `:authority` as an [`Authority`].
pub fn authority_layer() -> tower::layer::util::Stack<
    tower::util::MapRequestLayer<
        fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>,
    >,
    tower::layer::util::Identity,
> {
    fn record(mut request: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
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
    tower::ServiceBuilder::new()
        .map_request(record as fn(_) -> _)
        .into_inner()
}
