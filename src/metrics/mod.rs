//! Prometheus metrics: what the service counts, and the `/metrics` endpoint that shows it.
//!
//! Recording is a relaxed atomic add into counters made at startup: no allocation, no lock,
//! no label built per call. Every label value comes from a fixed list (known methods, gRPC
//! codes, verdict results, cache and listener states), never from a request, so no label
//! can carry a secret or grow without bound. Values owned elsewhere (the cache's counters,
//! the store's pool) are read when scraped.

pub mod histogram;
pub mod http;
pub mod rpc;

use std::{
    fmt::{self, Write as _},
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
};

use axum::{extract::State, http::header::CONTENT_TYPE, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{
    cache::{CacheCounts, TokenCache},
    counters::LocalCounters,
    domain::verify::Outcome,
    store::TokenStore,
    verifier::{LookupCounts, Verifier},
};

/// Which API gave a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `tokenauthority.v1.VerifyService/Verify`.
    Verify,
    /// Envoy's ext_authz `Check`.
    Check,
    /// Forward auth on the HTTP port.
    ForwardAuth,
}

impl Endpoint {
    const ALL: [Endpoint; 3] = [Endpoint::Verify, Endpoint::Check, Endpoint::ForwardAuth];

    fn as_str(self) -> &'static str {
        match self {
            Endpoint::Verify => "verify",
            Endpoint::Check => "check",
            Endpoint::ForwardAuth => "forward_auth",
        }
    }
}

/// What the change listener (which keeps the cache honest across replicas) is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerState {
    /// Not listening (yet, or again): Verify bypasses the cache.
    Connecting = 0,
    /// Listening for changes: the cache is trusted.
    Listening = 1,
    /// No other replicas to hear from (SQLite): the cache is trusted.
    SingleNode = 2,
}

impl ListenerState {
    const ALL: [ListenerState; 3] = [
        ListenerState::Connecting,
        ListenerState::Listening,
        ListenerState::SingleNode,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ListenerState::Connecting => "connecting",
            ListenerState::Listening => "listening",
            ListenerState::SingleNode => "single_node",
        }
    }
}

/// Who reported a leaked secret, as the metrics count it: a fixed set, never the text a
/// reporter wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakSource {
    /// GitHub's secret scanning (signed).
    Github,
    /// `token-authority scan --report`.
    Scan,
    /// A report that named no source.
    Report,
    /// Any other named source.
    Other,
}

impl LeakSource {
    /// Every source, in label order.
    pub const ALL: [LeakSource; 4] = [
        LeakSource::Github,
        LeakSource::Scan,
        LeakSource::Report,
        LeakSource::Other,
    ];

    /// The source's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LeakSource::Github => "github",
            LeakSource::Scan => "scan",
            LeakSource::Report => "report",
            LeakSource::Other => "other",
        }
    }
}

/// The counters the service records into; one per application, shared by its parts.
#[derive(Debug)]
pub struct Metrics {
    rpc: rpc::RpcTable,
    http: http::HttpTable,
    /// Per (endpoint, outcome), kept per thread: every Verify and Check bumps one.
    verdicts: LocalCounters,
    invalidations: AtomicU64,
    listener: AtomicU8,
    /// Reported leaked secrets by source, and whether each was ours (1) or not (0).
    leaks: [[AtomicU64; 2]; LeakSource::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rpc: rpc::RpcTable::default(),
            http: http::HttpTable::default(),
            verdicts: LocalCounters::new(Endpoint::ALL.len() * Outcome::ALL.len()),
            invalidations: AtomicU64::new(0),
            listener: AtomicU8::new(ListenerState::Connecting as u8),
            leaks: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts one verdict given by Verify or Check.
    pub fn record_verdict(&self, endpoint: Endpoint, outcome: Outcome) {
        self.verdicts
            .add(endpoint as usize * Outcome::ALL.len() + outcome as usize, 1);
    }

    /// Records one request answered on the HTTP port.
    pub fn record_http(&self, route: http::Route, status: u16, elapsed: std::time::Duration) {
        self.http.record(route, status, elapsed);
    }

    /// Counts one change heard from the store's change feed.
    pub fn record_invalidation(&self) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one reported leaked secret: ours (and now revoked) or unknown.
    pub fn leak_reported(&self, source: LeakSource, ours: bool) {
        self.leaks[source as usize][usize::from(ours)].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets what the change listener is doing.
    pub fn set_listener_state(&self, state: ListenerState) {
        self.listener.store(state as u8, Ordering::Relaxed);
    }

    fn verdicts(&self, endpoint: Endpoint, outcome: Outcome) -> u64 {
        self.verdicts
            .get(endpoint as usize * Outcome::ALL.len() + outcome as usize)
    }
}

/// Renders every metric of one application in the OpenMetrics text format.
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    /// The content type of [`Exporter::render`]'s output.
    pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// Builds an exporter of the recorded metrics and of the cache's and store's state.
    pub fn new(
        metrics: Arc<Metrics>,
        cache: Arc<TokenCache>,
        store: Arc<dyn TokenStore>,
        verifier: Arc<Verifier>,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            metrics,
            cache,
            store,
            verifier,
        }));
        Self { registry }
    }

    /// Returns the exposition text.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing to a String fails only on a bug in an encoder; say so, keep serving.
            tracing::error!(%error, "cannot encode metrics");
            let _ = writeln!(text, "# encoding failed");
        }
        text
    }
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>) -> std::io::Result<()> {
    async fn scrape(State(exporter): State<Arc<Exporter>>) -> impl IntoResponse {
        ([(CONTENT_TYPE, Exporter::CONTENT_TYPE)], exporter.render())
    }
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(exporter);
    axum::serve(listener, app).await
}

/// Reads everything at scrape time.
struct Scrape {
    metrics: Arc<Metrics>,
    cache: Arc<TokenCache>,
    store: Arc<dyn TokenStore>,
    verifier: Arc<Verifier>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        encode_rpc(e, &self.metrics.rpc)?;
        encode_http(e, &self.metrics.http)?;
        encode_verdicts(e, &self.metrics)?;
        encode_leaks(e, &self.metrics)?;
        encode_cache(e, self.cache.counts())?;
        encode_lookups(e, self.verifier.lookup_counts())?;
        encode_listener(e, &self.metrics)?;
        encode_pool(e, self.store.as_ref())
    }
}

/// Calls by service, method and code, named as go-grpc-prometheus names them, so that
/// existing gRPC dashboards work.
fn encode_rpc(e: &mut DescriptorEncoder, rpc: &rpc::RpcTable) -> fmt::Result {
    // One snapshot for both families, so that a call count equals its histogram's count.
    let used: Vec<_> = rpc.used().collect();
    let labels = |service, method, code| {
        [
            ("grpc_service", service),
            ("grpc_method", method),
            ("grpc_code", rpc::code_name(code)),
        ]
    };
    samples(
        e,
        (
            "grpc_server_handled",
            "gRPC calls completed, by service, method and status code",
        ),
        MetricType::Counter,
        used.iter().map(|(service, method, code, histogram)| {
            (labels(service, method, *code), histogram.count())
        }),
    )?;
    let mut handling = e.encode_descriptor(
        "grpc_server_handling_seconds",
        "Time from a gRPC call's arrival to its status, by service, method and status code",
        None,
        MetricType::Histogram,
    )?;
    for (service, method, code, histogram) in &used {
        histogram.encode(handling.encode_family(&labels(service, method, *code))?)?;
    }
    Ok(())
}

/// Requests on the HTTP port by route and status.
fn encode_http(e: &mut DescriptorEncoder, table: &http::HttpTable) -> fmt::Result {
    let used: Vec<_> = table.used().collect();
    let labels = |route, status| [("route", route), ("status", status)];
    samples(
        e,
        (
            "http_server_requests",
            "HTTP requests answered on the HTTP port, by route and status",
        ),
        MetricType::Counter,
        used.iter()
            .map(|(route, status, histogram)| (labels(*route, *status), histogram.count())),
    )?;
    let mut duration = e.encode_descriptor(
        "http_server_request_duration_seconds",
        "Time from an HTTP request's arrival to its answer's head, by route and status",
        None,
        MetricType::Histogram,
    )?;
    for (route, status, histogram) in &used {
        histogram.encode(duration.encode_family(&labels(*route, *status))?)?;
    }
    Ok(())
}

fn encode_verdicts(e: &mut DescriptorEncoder, metrics: &Metrics) -> fmt::Result {
    let all = Endpoint::ALL.into_iter().flat_map(|endpoint| {
        Outcome::ALL.into_iter().map(move |outcome| {
            let labels = [("service", endpoint.as_str()), ("result", outcome.as_str())];
            (labels, metrics.verdicts(endpoint, outcome))
        })
    });
    samples(
        e,
        (
            "token_authority_verdicts",
            "Verdicts of Verify, Check and forward auth, by endpoint and result",
        ),
        MetricType::Counter,
        all,
    )
}

fn encode_leaks(e: &mut DescriptorEncoder, metrics: &Metrics) -> fmt::Result {
    let all = LeakSource::ALL.into_iter().flat_map(|source| {
        [("unknown", 0), ("revoked", 1)].map(|(outcome, ours)| {
            let labels = [("source", source.as_str()), ("outcome", outcome)];
            let count = metrics.leaks[source as usize][ours].load(Ordering::Relaxed);
            (labels, count)
        })
    });
    samples(
        e,
        (
            "token_authority_leaked_secrets",
            "Secrets reported leaked, by source and outcome: ours (now revoked) or unknown",
        ),
        MetricType::Counter,
        all,
    )
}

/// Verify's store lookups on cache misses: batched, shared, and held to a budget.
fn encode_lookups(e: &mut DescriptorEncoder, lookups: LookupCounts) -> fmt::Result {
    let loader = lookups.loader;
    for (name, help, value) in [
        (
            "token_authority_verify_store_lookups",
            "Verify cache misses looked up in the store (Verify, Check and forward auth)",
            loader.lookups,
        ),
        (
            "token_authority_verify_store_lookups_shared",
            "Of those, answered by a lookup of the same secret another miss had started",
            loader.shared,
        ),
        (
            "token_authority_verify_store_queries",
            "Store queries those lookups were batched into",
            loader.queries,
        ),
        (
            "token_authority_verify_store_secrets",
            "Distinct secrets those queries looked up",
            loader.secrets,
        ),
        (
            "token_authority_verify_unknown_lookups",
            "Lookups that found no token, each spending the client's budget of unknown secrets",
            lookups.unknown,
        ),
    ] {
        sample(e, (name, help), MetricType::Counter, value)?;
    }
    samples(
        e,
        (
            "token_authority_verify_lookups_refused",
            "Cache misses refused (RESOURCE_EXHAUSTED, HTTP 429) because the budget of lookups of unknown secrets was spent, by whose: the client address's or every address's",
        ),
        MetricType::Counter,
        [
            ([("budget", "address")], lookups.refused_address),
            ([("budget", "overall")], lookups.refused_overall),
        ],
    )
}

fn encode_cache(e: &mut DescriptorEncoder, cache: CacheCounts) -> fmt::Result {
    samples(
        e,
        (
            "token_authority_cache_hits",
            "Verify cache lookups answered by the cache: a token, or a remembered unknown secret",
        ),
        MetricType::Counter,
        [
            ([("entry", "token")], cache.hits),
            ([("entry", "negative")], cache.negative_hits),
        ],
    )?;
    sample(
        e,
        (
            "token_authority_cache_misses",
            "Verify cache lookups that went to the store",
        ),
        MetricType::Counter,
        cache.misses,
    )?;
    sample(
        e,
        (
            "token_authority_cache_bypassed",
            "Verify lookups that skipped the cache while the change listener was not listening",
        ),
        MetricType::Counter,
        cache.bypassed,
    )?;
    samples(
        e,
        (
            "token_authority_cache_evictions",
            "Entries removed from the Verify cache, by reason",
        ),
        MetricType::Counter,
        [
            ([("reason", "changed")], cache.evicted_changed),
            ([("reason", "flushed")], cache.evicted_flushed),
            ([("reason", "expired")], cache.evicted_expired),
            ([("reason", "capacity")], cache.evicted_capacity),
        ],
    )?;
    samples(
        e,
        (
            "token_authority_cache_entries",
            "Entries in the Verify cache",
        ),
        MetricType::Gauge,
        [
            ([("entry", "token")], cache.tokens),
            ([("entry", "negative")], cache.negatives),
        ],
    )
}

fn encode_listener(e: &mut DescriptorEncoder, metrics: &Metrics) -> fmt::Result {
    sample(
        e,
        (
            "token_authority_invalidations_received",
            "Token changes heard from the store's change feed",
        ),
        MetricType::Counter,
        metrics.invalidations.load(Ordering::Relaxed),
    )?;
    let current = metrics.listener.load(Ordering::Relaxed);
    samples(
        e,
        (
            "token_authority_change_listener_state",
            "What the change listener is doing: 1 for the current state, 0 for the others",
        ),
        MetricType::Gauge,
        ListenerState::ALL.map(|state| {
            (
                [("state", state.as_str())],
                u64::from(state as u8 == current),
            )
        }),
    )
}

fn encode_pool(e: &mut DescriptorEncoder, store: &dyn TokenStore) -> fmt::Result {
    let pool = store.pool_stats();
    samples(
        e,
        (
            "token_authority_store_pool_connections",
            "Open connections of the store's pool, idle or in use",
        ),
        MetricType::Gauge,
        [
            ([("state", "idle")], u64::from(pool.idle)),
            (
                [("state", "in_use")],
                u64::from(pool.size.saturating_sub(pool.idle)),
            ),
        ],
    )?;
    sample(
        e,
        (
            "token_authority_store_pool_max_connections",
            "The most connections the store's pool opens (--db-max-connections)",
        ),
        MetricType::Gauge,
        u64::from(pool.max),
    )?;
    let acquire = e.encode_descriptor(
        "token_authority_store_pool_acquire_seconds",
        "Time a store operation waited for a pooled connection",
        None,
        MetricType::Histogram,
    )?;
    store.acquire_times().snapshot().encode(acquire)
}

/// Writes a counter or gauge family: its name and help, then one sample per label set.
fn samples<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    kind: MetricType,
    values: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        value_of(kind, &mut family.encode_family(&labels)?, value)?;
    }
    Ok(())
}

/// Writes a counter or gauge without labels.
fn sample(
    e: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    kind: MetricType,
    value: u64,
) -> fmt::Result {
    value_of(
        kind,
        &mut e.encode_descriptor(name, help, None, kind)?,
        value,
    )
}

fn value_of(kind: MetricType, encoder: &mut MetricEncoder, value: u64) -> fmt::Result {
    match kind {
        MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, u64>(&value, None),
        _ => encoder.encode_gauge(&value),
    }
}
