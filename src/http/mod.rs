//! The HTTP port: HTTP/1.1 and h2c (or HTTP/2 and HTTP/1.1 over TLS, by ALPN) on one
//! port, served by hyper with an axum router. Forward auth for gateways, GitHub's leak
//! reports and the whole gRPC API as JSON (transcoded by its google.api.http rules, with
//! its OpenAPI document) live here; every request gets a request id, its span, and metrics by route and status; shutdown is
//! graceful, like the gRPC port's.

pub mod api;
pub mod forward_auth;
pub mod leaks;
pub mod openapi;
pub mod transcode;

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig};
use tower::ServiceExt;

use crate::{
    authz::CheckSettings,
    grpc::{AppState, request_id},
    leaks::github::GithubKeys,
    metrics::http::Route,
    telemetry::call::{self, Call, Kind, RequestId},
    tls::HANDSHAKE_TIMEOUT,
};

/// What the HTTP port's handlers share.
pub struct HttpState {
    /// The service's shared state: the verifier, metrics, the store.
    pub app: Arc<AppState>,
    /// How gateway requests are read and answered (shared with ext_authz Check).
    pub check: Arc<CheckSettings>,
    /// Proxies whose forwarded headers (X-Original-*, X-Forwarded-*) are believed.
    pub forward_auth_trusted_proxies: Vec<IpNet>,
    /// The identity headers' names (id, owner, name, type), parsed once.
    pub identity_names: [axum::http::HeaderName; 4],
    /// GitHub's secret scanning keys, which sign its leak reports.
    pub github_keys: Arc<GithubKeys>,
    /// Request bodies being read now, at most [`api::BODIES_AT_ONCE`].
    pub bodies: api::BodySlots,
    /// The JSON API, when the gRPC services are given to the port.
    pub api: Option<transcode::Transcoder>,
}

impl HttpState {
    /// Builds the HTTP port's state; the identity header names were checked at start.
    pub fn new(
        app: Arc<AppState>,
        check: Arc<CheckSettings>,
        forward_auth_trusted_proxies: Vec<IpNet>,
        github_keys: Arc<GithubKeys>,
        api: Option<transcode::Transcoder>,
    ) -> Self {
        let names = &check.identity_headers;
        let name = |n: &str| {
            axum::http::HeaderName::from_bytes(n.as_bytes())
                .unwrap_or(axum::http::HeaderName::from_static("x-token-unnamed"))
        };
        let identity_names = [
            name(&names.id),
            name(&names.owner),
            name(&names.name),
            name(&names.kind),
        ];
        Self {
            app,
            check,
            forward_auth_trusted_proxies,
            identity_names,
            github_keys,
            bodies: api::BodySlots::default(),
            api,
        }
    }
}

/// The peer of a connection, put into each of its requests' extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Returns the HTTP port's routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/v1/forward-auth", any(forward_auth::handle))
        .route("/v1/forward-auth/{*settings}", any(forward_auth::handle))
        .route("/v1/leaks/github", any(leaks::github))
        .route("/v1/openapi.json", get(transcode::openapi))
        .fallback(transcode::handle)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The answer to a path the port does not serve.
pub fn not_found_response() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// A small JSON error answer.
pub fn json_error(status: StatusCode, error: &str, reason: &str) -> Response {
    let body = serde_json::json!({"error": error, "reason": reason}).to_string();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Gives each request its request id (the caller's `x-request-id` when usable, else a new
/// one), which its log lines carry ([`call::scope`]) and the answer returns, and records
/// the answer in the metrics.
async fn observe(
    State(state): State<Arc<HttpState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let route = Route::of(request.uri().path());
    let id = RequestId::from_caller(crate::headers::get(request.headers(), &request_id::HEADER));
    let call = Call::new(id.clone(), Kind::Http, route.as_str());
    let header = id.header();
    // The JSON API hands the same id to the gRPC call it makes.
    request
        .headers_mut()
        .insert(request_id::HEADER, header.clone());
    let mut response = call::scope(call, next.run(request)).await;
    response.headers_mut().insert(request_id::HEADER, header);
    state
        .app
        .metrics
        .record_http(route, response.status().as_u16(), start.elapsed());
    response
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown`
/// completes; then stops accepting and waits for the requests in flight, at most
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            tower::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                router.clone().oneshot(request.map(Body::new))
            });
        let service = TowerToHyperService::new(service);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let served =
                match acceptor {
                    None => {
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(connection.into_owned()).await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%error, %peer, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(connection.into_owned()).await
                    }
                };
            if let Err(error) = served {
                tracing::debug!(error = %error, %peer, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?grace, "HTTP connections still open after the shutdown timeout");
    }
}
