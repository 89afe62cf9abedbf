//! Startup and shutdown: connect and migrate the store, bootstrap, bind, serve with health
//! and reflection, and stop gracefully.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    authz::CheckSettings,
    bootstrap::{self, Mode},
    cache::{CacheSettings, TokenCache},
    domain::secret::{TokenPrefix, TokenSecret},
    domain::token_type::builtin_types,
    grpc::{
        AppState,
        audit_service::AuditApi,
        calls::CallLayer,
        detach::Detached,
        ext_authz::{AuthorizationServer, ExtAuthzApi},
        leak_service::LeakApi,
        token_service::TokenApi,
        token_type_service::TokenTypeApi,
        verify_service::VerifyApi,
    },
    http::{self, HttpState, transcode::Transcoder},
    invalidation,
    leaks::github::GithubKeys,
    limits::{FailureAudit, ManagementRate},
    metrics::{self, Exporter, Metrics},
    pb::{
        self,
        v1::{
            audit_service_server::AuditServiceServer, leak_service_server::LeakServiceServer,
            token_service_server::TokenServiceServer,
            token_type_service_server::TokenTypeServiceServer,
        },
        wire::verify_service_server::VerifyServiceServer,
    },
    store::{self, StoreOptions, TokenStore},
    tls::TlsFiles,
    usage::{self, UsageRecorder},
    verifier::{LookupSettings, Verifier},
};

/// The gRPC services whose health is reported, besides the overall "" service.
pub const SERVICE_NAMES: [&str; 6] = [
    "tokenauthority.v1.TokenService",
    "tokenauthority.v1.LeakService",
    "tokenauthority.v1.VerifyService",
    "tokenauthority.v1.TokenTypeService",
    "tokenauthority.v1.AuditService",
    "envoy.service.auth.v3.Authorization",
];

/// A health name that reports whether the process serves at all, whatever the store's
/// state: for liveness probes, which should not restart a replica because Postgres is down
/// (readiness, on "" or a service, takes it out of rotation meanwhile).
pub const LIVENESS_SERVICE: &str = "token-authority.liveness";

/// Where GitHub's secret scanning keys come from (`--github-keys-url`, `--github-keys-file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GithubKeySource {
    /// GitHub's meta endpoint, or another URL serving the same JSON.
    Url(String),
    /// A file of that JSON.
    File(PathBuf),
}

impl Default for GithubKeySource {
    fn default() -> Self {
        Self::Url(crate::leaks::github::KEYS_URL.to_owned())
    }
}

/// Everything the service needs to start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Address of the gRPC port; port 0 picks a free one.
    pub listen_addr: SocketAddr,
    /// TLS on the gRPC port, if any.
    pub tls: Option<TlsFiles>,
    /// Address of the Prometheus endpoint, if any; port 0 picks a free one.
    pub metrics_addr: Option<SocketAddr>,
    /// Address of the HTTP port (forward auth), if any; port 0 picks a free one.
    pub http_addr: Option<SocketAddr>,
    /// Whether the HTTP port serves the API as JSON too (`--http-api`).
    pub http_api: bool,
    /// Proxies whose forwarded headers forward auth believes.
    pub forward_auth_trusted_proxies: Vec<ipnet::IpNet>,
    /// Where GitHub's secret scanning keys come from.
    pub github_keys: GithubKeySource,
    /// The store.
    pub store: StoreOptions,
    /// Prefix of new secrets.
    pub token_prefix: TokenPrefix,
    /// Make an admin token on the first start of an empty store.
    pub bootstrap: bool,
    /// Owner of that token.
    pub bootstrap_owner: String,
    /// Where to write its secret (else the caller shows it, see [`Application::bootstrap_secret`]).
    pub bootstrap_token_file: Option<PathBuf>,
    /// How often usage is written.
    pub usage_flush_interval: Duration,
    /// How often the store is checked for health.
    pub health_check_interval: Duration,
    /// How long to report NOT_SERVING before refusing new calls at shutdown.
    pub shutdown_drain: Duration,
    /// How long in-flight calls and open connections may take to finish after that.
    pub shutdown_timeout: Duration,
    /// The Verify cache.
    pub cache: CacheSettings,
    /// How Verify's cache misses reach the store.
    pub lookups: LookupSettings,
    /// How Envoy ext_authz Check requests are read and answered.
    pub ext_authz: CheckSettings,
    /// Management requests per minute per client address; 0 for no limit.
    pub management_rate_limit: u32,
    /// Leak reports per minute per client address; 0 for no limit.
    pub leak_report_rate_limit: u32,
    /// The largest request message a service accepts, in bytes.
    pub max_message_size: usize,
    /// Proxies in front of the gRPC port (load balancers) whose `x-forwarded-for` names
    /// a management caller's address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A built, bound, not yet serving service.
pub struct Application {
    listener: TcpListener,
    port: u16,
    tls: Option<ServerTlsConfig>,
    metrics_listener: Option<TcpListener>,
    http_listener: Option<TcpListener>,
    store: Arc<dyn TokenStore>,
    state: Arc<AppState>,
    usage: Arc<UsageRecorder>,
    bootstrap_secret: Option<TokenSecret>,
    github_keys: Arc<GithubKeys>,
    settings: Settings,
}

impl Application {
    /// Connects and migrates the store, makes the first admin token if this is the first
    /// start, and binds the port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = store::connect(&settings.store)
            .await
            .context("cannot connect to the token store")?;
        store
            .migrate()
            .await
            .context("cannot migrate the token store")?;
        store
            .seed_types(&builtin_types(crate::domain::token::now()))
            .await
            .context("cannot add the built-in token types")?;
        let mut bootstrap_secret = None;
        if settings.bootstrap {
            let made = bootstrap::create_admin_token(
                store.as_ref(),
                &settings.token_prefix,
                &settings.bootstrap_owner,
                Mode::FirstStart,
            )
            .await?;
            if let Some((_, secret)) = made {
                match &settings.bootstrap_token_file {
                    Some(path) => {
                        bootstrap::write_secret_file(path, &secret)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        tracing::info!(file = %path.display(), "bootstrap admin secret written");
                    }
                    None => bootstrap_secret = Some(secret),
                }
            }
        }
        let tls = settings.tls.as_ref().map(TlsFiles::load).transpose()?;
        let github_keys = Arc::new(match &settings.github_keys {
            GithubKeySource::Url(url) => GithubKeys::from_url(url)
                .map_err(|error| anyhow::anyhow!("--github-keys-url: {error}"))?,
            GithubKeySource::File(path) => GithubKeys::from_file(path.clone()),
        });
        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen_addr))?;
        let port = listener.local_addr()?.port();
        let http_listener = match settings.http_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot serve HTTP on {addr}"))?,
            ),
            None => None,
        };
        let metrics_listener = match settings.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot serve metrics on {addr}"))?,
            ),
            None => None,
        };
        let usage = Arc::new(UsageRecorder::default());
        // Not trusted until the change listener says so (at once for SQLite).
        let cache = Arc::new(TokenCache::new(settings.cache, false));
        let state = Arc::new(AppState {
            store: store.clone(),
            cache: cache.clone(),
            verifier: Arc::new(Verifier::new(
                store.clone(),
                cache,
                usage.clone(),
                settings.lookups,
            )),
            prefix: settings.token_prefix.clone(),
            management_rate: ManagementRate::new(settings.management_rate_limit),
            leak_report_rate: ManagementRate::new(settings.leak_report_rate_limit),
            failure_audit: FailureAudit::default(),
            metrics: Arc::new(Metrics::default()),
            trusted_proxies: settings.trusted_proxies.clone(),
        });
        Ok(Self {
            listener,
            port,
            tls,
            metrics_listener,
            http_listener,
            store,
            state,
            usage,
            bootstrap_secret,
            github_keys,
            settings,
        })
    }

    /// Returns the port the service listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the port of the HTTP port, when it is on.
    pub fn http_port(&self) -> Option<u16> {
        let addr = self.http_listener.as_ref()?.local_addr().ok()?;
        Some(addr.port())
    }

    /// Returns the port of the metrics endpoint, when it is on.
    pub fn metrics_port(&self) -> Option<u16> {
        let addr = self.metrics_listener.as_ref()?.local_addr().ok()?;
        Some(addr.port())
    }

    /// Returns the admin secret made on this start, if it was the first start and no
    /// bootstrap file was configured; the caller shows it once.
    pub fn bootstrap_secret(&self) -> Option<&TokenSecret> {
        self.bootstrap_secret.as_ref()
    }

    /// Serves until `shutdown` completes, then stops in this order: report NOT_SERVING;
    /// drain (keep serving, listening for changes and flushing usage); refuse new calls;
    /// let in-flight calls finish (at most the shutdown timeout); only then stop the change
    /// listener (the cache is untrusted from then on) and write the last usage, retried
    /// until the shutdown deadline; close the store.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            tls,
            metrics_listener,
            http_listener,
            store,
            state,
            usage,
            github_keys,
            settings,
            ..
        } = self;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // Turns true once the last call has been answered: what serves calls (the change
        // listener, the usage flusher) runs until then.
        let (served_tx, served_rx) = watch::channel(false);
        let health_task = tokio::spawn(watch_store_health(
            store.clone(),
            health_reporter.clone(),
            settings.health_check_interval,
        ));
        let health_abort = health_task.abort_handle();
        let change_listener = invalidation::spawn_listener(
            store.clone(),
            state.cache.clone(),
            state.metrics.clone(),
            served_rx.clone(),
        );
        // Scraped until the very end, shutdown included.
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let metrics_server = metrics_listener.map(|listener| {
            let exporter = Exporter::new(
                state.metrics.clone(),
                state.cache.clone(),
                store.clone(),
                state.verifier.clone(),
            );
            tokio::spawn(metrics::serve(listener, Arc::new(exporter)))
        });
        let flusher = usage::spawn_flusher(
            usage.clone(),
            store.clone(),
            settings.usage_flush_interval,
            served_rx.clone(),
        );
        tokio::spawn(shrink_limits(state.clone(), served_rx));

        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let drain = settings.shutdown_drain;
        let shutdown_timeout = settings.shutdown_timeout;
        let reporter = health_reporter.clone();
        // The shutdown deadline, set when the drain ends: from then on new calls are refused,
        // and the shutdown timeout runs for the calls in flight and then the last flush.
        let (deadline_tx, deadline_rx) = watch::channel(None::<tokio::time::Instant>);
        let stopping = async move {
            shutdown.await;
            tracing::info!(drain = ?drain, "shutting down: reporting NOT_SERVING");
            // The store's health no longer matters, and must not turn us SERVING again.
            health_task.abort();
            let _ = health_task.await;
            set_status(&reporter, ServingStatus::NotServing).await;
            reporter
                .set_service_status(LIVENESS_SERVICE, ServingStatus::NotServing)
                .await;
            tokio::time::sleep(drain).await;
            tracing::info!("drain over: refusing new calls, finishing those in flight");
            let _ = deadline_tx.send(Some(tokio::time::Instant::now() + shutdown_timeout));
        };
        // Graceful shutdown waits for every connection to close; a client that never
        // answers the final GOAWAY must not keep the process alive forever.
        let mut drained = deadline_rx.clone();
        let deadline = async move {
            match drained.wait_for(Option::is_some).await.map(|d| *d) {
                Ok(Some(deadline)) => tokio::time::sleep_until(deadline).await,
                _ => std::future::pending().await,
            }
        };

        // The services, built once: the gRPC port serves them, and the HTTP port's JSON API
        // calls them in process through the same layers.
        let check = Arc::new(settings.ext_authz.clone());
        let max_message = settings.max_message_size;
        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(Detached::new(
                TokenServiceServer::new(TokenApi::new(state.clone()))
                    .max_decoding_message_size(max_message),
            ))
            .add_service(Detached::new(
                TokenTypeServiceServer::new(TokenTypeApi::new(state.clone()))
                    .max_decoding_message_size(max_message),
            ))
            .add_service(Detached::new(
                LeakServiceServer::new(LeakApi::new(state.clone()))
                    .max_decoding_message_size(max_message),
            ))
            .add_service(
                AuditServiceServer::new(AuditApi::new(state.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                VerifyServiceServer::new(VerifyApi::new(state.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                AuthorizationServer::new(ExtAuthzApi::new(state.clone(), check.clone()))
                    .max_decoding_message_size(max_message),
            )
            .prepare();
        let layers = grpc_layers(&state);

        // The HTTP port stops accepting when the drain ends, as the gRPC port does (or when
        // the gRPC server failed), and gets the same shutdown timeout for its requests.
        let (http_stop_tx, http_stop_rx) = watch::channel(false);
        let http_addr = http_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let http_server = match http_listener {
            None => None,
            Some(listener) => {
                let http_tls = settings.tls.as_ref().map(TlsFiles::rustls).transpose()?;
                let grpc = tower::util::BoxCloneSyncService::new(tower::ServiceExt::<
                    ::http::Request<tonic::body::Body>,
                >::map_response(
                    tower::Layer::layer(&layers, routes.clone()),
                    |r| r.map(tonic::body::Body::new),
                ));
                let api = settings
                    .http_api
                    .then(|| Transcoder::new(grpc, max_message))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("the JSON API's HTTP rules: {e}"))?;
                let router = http::router(Arc::new(HttpState::new(
                    state.clone(),
                    check.clone(),
                    settings.forward_auth_trusted_proxies.clone(),
                    github_keys,
                    api,
                )));
                let (mut drained, mut failed) = (deadline_rx.clone(), http_stop_rx);
                let stop = async move {
                    tokio::select! {
                        _ = drained.wait_for(Option::is_some) => {}
                        _ = failed.wait_for(|stop| *stop) => {}
                    }
                };
                Some(tokio::spawn(http::serve(
                    listener,
                    http_tls,
                    router,
                    stop,
                    shutdown_timeout,
                )))
            }
        };

        let addr = listener.local_addr()?;
        tracing::info!(
            %addr,
            store = store.backend(),
            tls = settings.tls.as_ref().map_or("off", TlsFiles::mode),
            metrics_addr = %metrics_addr.map_or("off".to_owned(), |a| a.to_string()),
            http_addr = %http_addr.map_or("off".to_owned(), |a| a.to_string()),
            "token-authority serving"
        );
        // The store answered at build time; per-service statuses exist from the first call.
        set_status(&health_reporter, ServingStatus::Serving).await;
        health_reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let server = builder
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stopping);
        let served = tokio::select! {
            served = server => served,
            () = deadline => {
                tracing::warn!(timeout = ?shutdown_timeout, "connections still open after the shutdown timeout; stopping anyway");
                Ok(())
            }
        };

        // The HTTP port's requests in flight are answered too (it stopped accepting with
        // the gRPC port; at once if that one failed).
        let _ = http_stop_tx.send(true);
        if let Some(http_server) = http_server
            && let Err(error) = http_server.await
        {
            tracing::warn!(%error, "HTTP server failed");
        }
        // Every call has been answered: only now stop hearing changes (the listener's
        // guard untrusts the cache as it ends) and write the last uses.
        health_abort.abort(); // (already, unless the server failed without a signal)
        let _ = served_tx.send(true);
        if let Err(error) = change_listener.await {
            tracing::warn!(%error, "change listener failed");
        }
        if let Err(error) = flusher.await {
            tracing::warn!(%error, "usage flusher failed");
        }
        // (No deadline: the server ended without a shutdown signal, i.e. it failed.)
        let deadline = deadline_rx
            .borrow()
            .unwrap_or_else(|| tokio::time::Instant::now() + shutdown_timeout);
        usage.flush_until(store.as_ref(), deadline).await;
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        store.close().await;
        tracing::info!("stopped");
        served.context("gRPC server failed")
    }
}

/// The layer around every gRPC service (its method, request id, authority and metrics:
/// `grpc::calls`). The gRPC port and the HTTP port's JSON API both call the services
/// through it.
fn grpc_layers(state: &AppState) -> CallLayer {
    CallLayer::new(state.metrics.clone())
}

/// A reflection builder that knows every service on the port, both reflection versions
/// included, so that old (v1alpha) and new (v1) clients can list and describe them all.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(pb::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// Forgets, every minute, the rate-limit state of tokens and addresses not seen lately.
async fn shrink_limits(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {
                state.verifier.shrink_rates();
                state.management_rate.shrink();
                state.leak_report_rate.shrink();
                state.failure_audit.shrink();
            }
            _ = stop.changed() => return,
        }
    }
}

/// Sets the overall and every per-service status.
async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// Reports SERVING while the store answers and NOT_SERVING while it does not, until it is
/// aborted (at the start of shutdown).
async fn watch_store_health(
    store: Arc<dyn TokenStore>,
    reporter: HealthReporter,
    interval: Duration,
) {
    let mut healthy = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ok = matches!(
            tokio::time::timeout(interval.max(Duration::from_secs(1)), store.ping()).await,
            Ok(Ok(()))
        );
        if healthy != Some(ok) {
            if ok {
                tracing::info!("token store reachable: SERVING");
            } else {
                tracing::warn!("token store unreachable: NOT_SERVING");
            }
            set_status(
                &reporter,
                if ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                },
            )
            .await;
            healthy = Some(ok);
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C; a second Ctrl-C or SIGTERM exits at once.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
