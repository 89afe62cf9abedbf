//! Load benchmark for a running token-authority, over real gRPC (HTTP/2 on loopback).
//!
//! ```sh
//! cargo run --release --example bench -- health noop verify \
//!     --target http://127.0.0.1:50051 --admin-secret-file /tmp/benchdata/admin.secret
//! ```
//!
//! Each scenario runs `--concurrency` tasks, each with one call in flight, spread
//! round-robin over `--connections` HTTP/2 connections, for `--warmup` (not recorded) and
//! then `--duration`, and prints successful calls/s, p50 / p99 / p99.9 latency in
//! microseconds (HDR histogram) and the error count. The scenarios that make tokens
//! (all but `health`) need the secret of a `*:*` token and leave their tokens (owner
//! `bench`) in the server's store: point it at a throwaway data directory.
//!
//! `noop` hosts, in this process (or, with `--noop-in-child`, in a child process, as the
//! real server is), a VerifyService that answers every Verify with a real Verify reply
//! fetched just before, its token encoded once as the real server's cache hits are: the
//! same request and reply bytes over the same transport with no verification, so its rate is the ceiling for Verify on this machine. `compare`
//! alternates noop, verify and health and prints the medians, the ratios of the medians and
//! the per-round ratios; on a small shared machine rounds vary by 10-20%, so quote it with
//! enough rounds. `latency-at` is an open loop whose latency counts from each call's due
//! time; its "due-to-sent lag" shows how much of that the load generator itself added,
//! and `--against-noop` runs the same load against the no-op server, for the latency this
//! machine, transport and load generator give on their own.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, authorization_client::AuthorizationClient,
};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use token_authority::{
    config::parse_duration,
    pb::v1::{
        CreateTokenRequest, CreateTokenResponse, Token, VerifyRequest, VerifyResponse,
        token_service_client::TokenServiceClient, verify_service_client::VerifyServiceClient,
    },
};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[path = "bench/h2load.rs"]
mod h2load;
#[path = "bench/http.rs"]
mod http;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/noop.rs"]
mod noop;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/store.rs"]
mod store;

use load::{Caller, Measured};
use report::{Printer, Row};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// grpc.health.v1 Health/Check of "": the transport with almost no work.
    Health,
    /// Verify of one valid token (made first), needing domains:read, from 10.1.2.3.
    Verify,
    /// Verify cycling through --tokens distinct valid tokens (made first).
    VerifyMany,
    /// Envoy ext_authz Check of an HTTP request (GET /domains/1 from 10.1.2.3, the headers
    /// Envoy sends) bearing the `verify` scenario's token: the same judgement as `verify`.
    Check,
    /// Check against a no-op Authorization service (hosted by this tool) that answers a real
    /// Check answer without checking: the ceiling for Check's bytes.
    NoopCheck,
    /// verify, check and noop-check alternately for --rounds rounds; medians and ratios.
    CompareCheck,
    /// Forward auth on the HTTP port (--http-target) of the `verify` scenario's token: the
    /// request nginx's auth_request sends for GET /domains/1 from 10.1.2.3, over
    /// --concurrency HTTP/1.1 keep-alive connections (one request in flight on each).
    ForwardAuth,
    /// The same requests against a no-op HTTP server hosted by this tool (hyper and axum,
    /// as the HTTP port) answering the real answer's head without judging: the ceiling.
    NoopForwardAuth,
    /// forward-auth and noop-forward-auth alternately for --rounds rounds; medians, ratio.
    CompareForwardAuth,
    /// CreateToken of a new token (owner bench) each call.
    Create,
    /// Verify against a no-op VerifyService hosted by this tool that returns a real
    /// Verify reply without verifying: the ceiling for Verify's bytes.
    Noop,
    /// noop, verify, health alternately for --rounds rounds; medians and ratios.
    Compare,
    /// Verify at a fixed --rate (open loop), latency from each call's due time.
    LatencyAt,
    /// An independent client: h2load (--connections × --h2load-streams) alternating, for
    /// --rounds rounds, no-op Verify, Verify, health Check, Check and no-op Check (the
    /// no-ops in a child process); medians and ratios.
    H2loadCompare,
    /// Starts the no-op server (Verify and Check) in a child process, prints `noop <addr>
    /// <pid>`, and keeps it until this program's stdin closes.
    ServeNoop,
    /// Makes the `verify` token and writes the framed requests h2load posts (verify.bin,
    /// health.bin, check.bin) into --out-dir, for scripts/callgrind-calls.sh.
    H2loadBodies,
    /// Makes --tokens tokens straight in Postgres (--database-url), their secrets written
    /// to --secrets-file; run before the server starts, for `cold`.
    Seed,
    /// Verifies each secret of --secrets-file once (a cold cache: every Verify a miss).
    Cold,
    /// `verify` alone, then `verify` while --flood-concurrency tasks on
    /// --flood-connections other connections send Verify of new unknown secrets, for
    /// --rounds rounds; the flood's row counts its store lookups (NOT_FOUND) as calls and
    /// its over-budget refusals as errors.
    CompareFlood,
}

/// Drives a running token-authority over gRPC and reports throughput and latency.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Scenarios to run, in order.
    #[arg(value_enum, required_unless_present_any = ["serve_noop", "serve_noop_http"])]
    scenarios: Vec<Scenario>,

    /// The token-authority server.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,

    /// The token-authority server's HTTP port, for forward auth.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_target: std::net::SocketAddr,

    /// Calls in flight at once (one task each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// HTTP/2 connections the calls are spread over, round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// How long each run is measured.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// How long each run sends before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,

    /// Secret of a `*:*` token, for the scenarios that make tokens.
    #[arg(long, env = "TA_ADMIN", hide_env_values = true)]
    admin_secret: Option<String>,

    /// File holding that secret (e.g. the server's --bootstrap-token-file); wins over
    /// --admin-secret.
    #[arg(long)]
    admin_secret_file: Option<PathBuf>,

    /// Rounds of `compare`.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Distinct tokens of `verify-many`.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,

    /// Calls per second of `latency-at`; without it, `latency-at` first measures Verify's
    /// closed-loop throughput and uses half of it.
    #[arg(long)]
    rate: Option<f64>,

    /// Postgres database of `seed`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Secrets file of `seed` and `cold`.
    #[arg(long, default_value = "cold.secrets")]
    secrets_file: PathBuf,

    /// Flooding tasks of `compare-flood`.
    #[arg(long, default_value_t = 64)]
    flood_concurrency: usize,

    /// Connections of `compare-flood`'s flood (besides --connections).
    #[arg(long, default_value_t = 4)]
    flood_connections: usize,

    /// Also print each result as one JSON object per line.
    #[arg(long)]
    json: bool,

    /// Worker threads of the load generator's runtime (default: one per core).
    #[arg(long)]
    client_threads: Option<usize>,

    /// Host the no-op server in a child process (this program run again) instead of in
    /// this one, so that, like the real server, it shares no process with the client
    /// (in-process hosting measured ~4% slower on a 2-core machine, which flatters
    /// verify/noop).
    #[arg(long)]
    noop_in_child: bool,

    /// Send `latency-at`'s load to the no-op server instead of --target: the latency of
    /// this machine, transport and load generator alone at that rate, to set the server's
    /// figures against (its row is `latency-noop`).
    #[arg(long)]
    against_noop: bool,

    /// Where `h2load-bodies` writes the request files.
    #[arg(long)]
    out_dir: Option<PathBuf>,

    /// Streams in flight per connection for h2load (`-m`).
    #[arg(long, default_value_t = 16)]
    h2load_streams: usize,

    /// Internal: be the child of --noop-in-child.
    #[arg(long, hide = true)]
    serve_noop: bool,

    /// Internal: be the HTTP child of --noop-in-child.
    #[arg(long, hide = true)]
    serve_noop_http: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The server's own log subscriber (RUST_LOG, info by default), in every role: the
    // no-op ceilings then pay for tracing what the server pays. Without a subscriber, the
    // no-op's callgrind profile showed tracing's span bookkeeping for h2's spans
    // (`Span::log`, `Span::record_all`, dropping spans: about 14,000 instructions per
    // call), which the server's filter turns off: a ceiling lowered by work the server
    // never does.
    token_authority::telemetry::init(token_authority::config::LogFormat::Text);
    if args.serve_noop {
        return noop::serve_child();
    }
    if args.serve_noop_http {
        return http::serve_child();
    }
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(args.tokens > 0, "--tokens must be at least 1");
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be more than 0");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("bench-client");
    if let Some(threads) = args.client_threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime.build()?.block_on(async {
        let mut bench = Bench::new(args).await?;
        bench.run_all().await
    })
}

/// The run's settings, its setup connection and what it has made so far.
struct Bench {
    args: Args,
    target: String,
    /// A connection for setup and probes, never used by the load.
    control: Channel,
    authorization: Option<MetadataValue<Ascii>>,
    /// The `verify` scenario's request (one token), made on first use.
    single: Option<Arc<[VerifyRequest]>>,
    /// The `verify-many` requests, made on first use.
    many: Option<Arc<[VerifyRequest]>>,
    printer: Printer,
}

impl Bench {
    async fn new(args: Args) -> anyhow::Result<Self> {
        let target = if args.target.contains("://") {
            args.target.clone()
        } else {
            format!("http://{}", args.target)
        };
        let secret = match &args.admin_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => args.admin_secret.clone(),
        };
        let authorization = secret
            .filter(|s| !s.is_empty())
            .map(|s| format!("Bearer {s}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .context("the admin secret is not a valid header value")?;
        // `seed` runs before the server starts.
        let control = if args.scenarios.iter().all(|s| *s == Scenario::Seed) {
            Endpoint::from_shared(target.clone())?.connect_lazy()
        } else {
            connect(&target)
                .await
                .with_context(|| format!("cannot connect to {target}; is the server running?"))?
        };
        let printer = Printer::new(args.json);
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        printer.note(format_args!(
            "target {target}; {cores} cores; client threads {}; warmup {:?}, duration {:?}; no-op server {}",
            args.client_threads
                .map_or_else(|| "one per core".to_owned(), |n| n.to_string()),
            args.warmup,
            args.duration,
            noop_host(&args),
        ));
        Ok(Self {
            args,
            target,
            control,
            authorization,
            single: None,
            many: None,
            printer,
        })
    }

    async fn run_all(&mut self) -> anyhow::Result<()> {
        for scenario in self.args.scenarios.clone() {
            match scenario {
                Scenario::Compare => self.compare().await?,
                Scenario::CompareCheck => self.compare_check().await?,
                Scenario::CompareForwardAuth => self.compare_forward_auth().await?,
                Scenario::LatencyAt => self.latency_at().await?,
                Scenario::H2loadCompare => self.h2load_compare().await?,
                Scenario::ServeNoop => self.serve_noop().await?,
                Scenario::H2loadBodies => {
                    let dir = self
                        .args
                        .out_dir
                        .clone()
                        .context("h2load-bodies needs --out-dir")?;
                    self.write_bodies(&dir).await?;
                }
                Scenario::CompareFlood => self.compare_flood().await?,
                Scenario::Seed => {
                    let url = self
                        .args
                        .database_url
                        .as_deref()
                        .context("seed needs --database-url")?;
                    store::seed(url, self.args.tokens, &self.args.secrets_file).await?;
                    self.printer.note(format_args!(
                        "seed: {} tokens made, secrets in {}",
                        self.args.tokens,
                        self.args.secrets_file.display()
                    ));
                }
                _ => {
                    let row = self.run(scenario, None).await?;
                    self.printer.row(&row);
                }
            }
        }
        Ok(())
    }

    /// noop, verify, health alternately, `--rounds` times, then the medians and ratios.
    async fn compare(&mut self) -> anyhow::Result<()> {
        // Make the token before round one, and let the server write its usage, so that every
        // round's no-op reply has the fields of the real replies.
        self.settle_usage().await?;
        let mut rows = Vec::new();
        for round in 1..=self.args.rounds {
            let mut order = [Scenario::Noop, Scenario::Verify, Scenario::Health];
            if round % 2 == 0 {
                order.reverse(); // ABBA: drift within a round favours neither side
            }
            for scenario in order {
                let row = self.run(scenario, Some(round)).await?;
                self.printer.row(&row);
                rows.push(row);
            }
        }
        self.printer
            .compare_summary(&rows, self.args.rounds, noop_host(&self.args));
        Ok(())
    }

    /// verify alone and verify beside a flood of unknown secrets, alternately.
    async fn compare_flood(&mut self) -> anyhow::Result<()> {
        let requests = self.single_requests().await?;
        let mut rows = Vec::new();
        for round in 1..=self.args.rounds {
            let row = self.run(Scenario::Verify, Some(round)).await?;
            self.printer.row(&row);
            rows.push(row);
            let channels = connect_many(&self.target, self.args.connections).await?;
            let flood_channels =
                connect_many(&self.target, self.args.flood_connections.max(1)).await?;
            let verify = self.closed(self.verify_callers(&channels, &requests));
            let flood_callers = (0..self.args.flood_concurrency)
                .map(|task| Caller::Flood {
                    client: VerifyServiceClient::new(
                        flood_channels[task % flood_channels.len()].clone(),
                    ),
                })
                .collect();
            let flood = load::closed_loop(flood_callers, self.args.warmup, self.args.duration);
            let (verified, flooded) = tokio::join!(verify, flood);
            let row = self.row("verify-flooded", Some(round), verified, None);
            self.printer.row(&row);
            rows.push(row);
            let mut row = self.row("flood", Some(round), flooded, None);
            row.concurrency = self.args.flood_concurrency;
            row.connections = self.args.flood_connections;
            self.printer.row(&row);
            rows.push(row);
        }
        self.printer.pair_summary(&rows, "verify-flooded", "verify");
        Ok(())
    }

    /// verify and check alternately, `--rounds` times, then the medians and their ratio.
    async fn compare_check(&mut self) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        for round in 1..=self.args.rounds {
            let mut order = [Scenario::Verify, Scenario::Check, Scenario::NoopCheck];
            if round % 2 == 0 {
                order.reverse(); // ABBA: drift within a round favours neither side
            }
            for scenario in order {
                let row = self.run(scenario, Some(round)).await?;
                self.printer.row(&row);
                rows.push(row);
            }
        }
        self.printer.pair_summary(&rows, "check", "verify");
        self.printer.pair_summary(&rows, "check", "noop-check");
        self.printer.pair_summary(&rows, "noop-check", "verify");
        Ok(())
    }

    /// The same bytes through h2load: no-op Verify, Verify, health, Check and no-op Check,
    /// alternately, `--rounds` times, then the medians and ratios.
    async fn h2load_compare(&mut self) -> anyhow::Result<()> {
        self.settle_usage().await?;
        let noop = self.start_noop_child().await?;
        let dir = tempfile_dir()?;
        let bodies = self.write_bodies(&dir).await?;
        let target = self.target.trim_end_matches('/').to_owned();
        let noop_target = format!("http://{}", noop.addr);
        let verify = "/tokenauthority.v1.VerifyService/Verify";
        let check_path = "/envoy.service.auth.v3.Authorization/Check";
        let runs: [(&'static str, &str, &str, &std::path::Path); 5] = [
            ("h2-noop", &noop_target, verify, &bodies[0].1),
            ("h2-verify", &target, verify, &bodies[0].1),
            (
                "h2-health",
                &target,
                "/grpc.health.v1.Health/Check",
                &bodies[1].1,
            ),
            ("h2-check", &target, check_path, &bodies[2].1),
            ("h2-noop-check", &noop_target, check_path, &bodies[2].1),
        ];
        let driver = h2load::H2load {
            connections: self.args.connections,
            streams: self.args.h2load_streams,
            warmup: self.args.warmup,
            duration: self.args.duration,
            threads: self.args.client_threads.unwrap_or(1),
        };
        let mut rates: Vec<(&'static str, f64)> = Vec::new();
        for round in 1..=self.args.rounds {
            // Every other round in reverse (ABBA), so that a machine speeding up or slowing
            // down through a round favours neither side of a pair.
            let mut order = runs;
            if round % 2 == 0 {
                order.reverse();
            }
            for (name, base, path, body) in order {
                let rate = driver.run(&format!("{base}{path}"), body).await?;
                self.printer
                    .note(format_args!("{name}#{round}: {rate:.1} calls/s"));
                rates.push((name, rate));
            }
        }
        noop.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        for (a, b) in [
            ("h2-verify", "h2-noop"),
            ("h2-health", "h2-noop"),
            ("h2-check", "h2-noop-check"),
        ] {
            let of = |n: &str| -> Vec<f64> {
                rates
                    .iter()
                    .filter(|(s, _)| *s == n)
                    .map(|(_, r)| *r)
                    .collect()
            };
            let (ra, rb) = (of(a), of(b));
            let per_round: Vec<f64> = ra.iter().zip(&rb).map(|(x, y)| x / y).collect();
            println!(
                "{a}/{b} = {:.3}  (medians {:.1} and {:.1} calls/s over {} round(s); per round: {}; their median {:.3})",
                report::median(ra.clone()) / report::median(rb.clone()),
                report::median(ra),
                report::median(rb),
                per_round.len(),
                per_round
                    .iter()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                report::median(per_round.clone()),
            );
        }
        Ok(())
    }

    /// A no-op server in a child process answering this server's real Verify reply and
    /// Check answer for the `verify` token.
    async fn start_noop_child(&mut self) -> anyhow::Result<noop::Noop> {
        let requests = self.single_requests().await?;
        let verify_reply = self.real_reply().await?;
        let check_answer = AuthorizationClient::new(self.control.clone())
            .check(check_request(&requests[0].token))
            .await
            .map_err(|status| anyhow::anyhow!("Check: {}", load::status_text(&status)))?
            .into_inner();
        let wire = token_authority::pb::ext_authz_wire::CheckResponse::decode(
            check_answer.encode_to_vec().as_slice(),
        )?;
        noop::Noop::start_serving(&verify_reply, Some(wire), true).await
    }

    /// `serve-noop`: the no-op child, until stdin closes.
    async fn serve_noop(&mut self) -> anyhow::Result<()> {
        self.settle_usage().await?;
        let noop = self.start_noop_child().await?;
        println!("noop {} {}", noop.addr, noop.pid().unwrap_or_default());
        let _ = tokio::task::spawn_blocking(|| {
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)
        })
        .await;
        noop.stop().await;
        Ok(())
    }

    /// Writes the framed Verify, health Check and ext_authz Check requests into `dir`.
    async fn write_bodies(
        &mut self,
        dir: &std::path::Path,
    ) -> anyhow::Result<[(&'static str, PathBuf); 3]> {
        let requests = self.single_requests().await?;
        let bodies = [
            ("verify", dir.join("verify.bin")),
            ("health", dir.join("health.bin")),
            ("check", dir.join("check.bin")),
        ];
        h2load::write_frame(&bodies[0].1, &requests[0])?;
        h2load::write_frame(&bodies[1].1, &HealthCheckRequest::default())?;
        h2load::write_frame(&bodies[2].1, &check_request(&requests[0].token))?;
        Ok(bodies)
    }

    /// forward-auth and noop-forward-auth alternately, `--rounds` times.
    async fn compare_forward_auth(&mut self) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        for round in 1..=self.args.rounds {
            for scenario in [Scenario::ForwardAuth, Scenario::NoopForwardAuth] {
                let row = self.run(scenario, Some(round)).await?;
                self.printer.row(&row);
                rows.push(row);
            }
        }
        self.printer
            .pair_summary(&rows, "forward-auth", "noop-forward-auth");
        Ok(())
    }

    /// HTTP callers of one request, one keep-alive connection each.
    async fn http_callers(
        &self,
        addr: std::net::SocketAddr,
        request: &Arc<hyper::Request<http_body_util::Empty<bytes::Bytes>>>,
    ) -> anyhow::Result<Vec<Caller>> {
        let mut callers = Vec::with_capacity(self.args.concurrency);
        for _ in 0..self.args.concurrency {
            callers.push(Caller::Http {
                sender: http::connect(addr).await?,
                request: request.clone(),
            });
        }
        Ok(callers)
    }

    /// Verify at a fixed rate, open loop.
    async fn latency_at(&mut self) -> anyhow::Result<()> {
        let rate = match self.args.rate {
            Some(rate) => rate,
            None => {
                let max = self.run(Scenario::Verify, None).await?;
                self.printer.row(&max);
                let half = (max.calls_per_sec() / 2.0).floor();
                self.printer.note(format_args!(
                    "latency-at: no --rate given; using half of the Verify throughput just measured: {half} calls/s"
                ));
                half
            }
        };
        let requests = self.single_requests().await?;
        let (noop, target) = if self.args.against_noop {
            let reply = self.real_reply().await?;
            let server = noop::Noop::start(&reply, self.args.noop_in_child).await?;
            let target = format!("http://{}", server.addr);
            (Some((server, reply.encoded_len())), target)
        } else {
            (None, self.target.clone())
        };
        let channels = connect_many(&target, self.args.connections).await?;
        let callers = self.verify_callers(&channels, &requests);
        let measured = load::open_loop(callers, rate, self.args.warmup, self.args.duration).await?;
        drop(channels);
        let row = match noop {
            Some((server, reply_bytes)) => {
                server.stop().await;
                self.row("latency-noop", None, measured, Some(reply_bytes))
            }
            None => {
                let reply_bytes = self.probe_verify(&requests[0]).await?.encoded_len();
                self.row("latency-at", None, measured, Some(reply_bytes))
            }
        };
        self.printer.row(&row);
        Ok(())
    }

    /// Runs one closed-loop scenario.
    async fn run(&mut self, scenario: Scenario, round: Option<usize>) -> anyhow::Result<Row> {
        match scenario {
            Scenario::Health => {
                let channels = connect_many(&self.target, self.args.connections).await?;
                let callers = self.spread(&channels, |channel, _| Caller::Health {
                    client: HealthClient::new(channel),
                    request: HealthCheckRequest::default(),
                });
                let measured = self.closed(callers).await;
                let reply = HealthClient::new(self.control.clone())
                    .check(HealthCheckRequest::default())
                    .await
                    .context("Health/Check")?
                    .into_inner();
                Ok(self.row("health", round, measured, Some(reply.encoded_len())))
            }
            Scenario::Verify => {
                let requests = self.single_requests().await?;
                let channels = connect_many(&self.target, self.args.connections).await?;
                let callers = self.verify_callers(&channels, &requests);
                let measured = self.closed(callers).await;
                let reply = self.probe_verify(&requests[0]).await?;
                Ok(self.row("verify", round, measured, Some(reply.encoded_len())))
            }
            Scenario::VerifyMany => {
                let requests = self.many_requests().await?;
                let channels = connect_many(&self.target, self.args.connections).await?;
                let callers = self.verify_callers(&channels, &requests);
                let measured = self.closed(callers).await;
                let reply = self.probe_verify(&requests[0]).await?;
                Ok(self.row("verify-many", round, measured, Some(reply.encoded_len())))
            }
            Scenario::Check => {
                let requests = self.single_requests().await?;
                let request = Arc::new(check_request(&requests[0].token));
                let channels = connect_many(&self.target, self.args.connections).await?;
                let callers = self.spread(&channels, |channel, _| Caller::Check {
                    client: AuthorizationClient::new(channel),
                    request: request.clone(),
                });
                let measured = self.closed(callers).await;
                let reply = AuthorizationClient::new(self.control.clone())
                    .check(CheckRequest::clone(&request))
                    .await
                    .map_err(|status| anyhow::anyhow!("Check: {}", load::status_text(&status)))?
                    .into_inner();
                if reply.status.as_ref().is_some_and(|s| s.code != 0) {
                    bail!("Check of the bench token is denied: {:?}", reply.status);
                }
                Ok(self.row("check", round, measured, Some(reply.encoded_len())))
            }
            Scenario::NoopCheck => {
                let requests = self.single_requests().await?;
                let request = Arc::new(check_request(&requests[0].token));
                let real = AuthorizationClient::new(self.control.clone())
                    .check(CheckRequest::clone(&request))
                    .await
                    .map_err(|status| anyhow::anyhow!("Check: {}", load::status_text(&status)))?
                    .into_inner();
                let reply_bytes = real.encoded_len();
                let wire = token_authority::pb::ext_authz_wire::CheckResponse::decode(
                    real.encode_to_vec().as_slice(),
                )?;
                let verify_reply = self.real_reply().await?;
                let server = noop::Noop::start_with_check(&verify_reply, wire).await?;
                let channels =
                    connect_many(&format!("http://{}", server.addr), self.args.connections).await?;
                let callers = self.spread(&channels, |channel, _| Caller::Check {
                    client: AuthorizationClient::new(channel),
                    request: request.clone(),
                });
                let measured = self.closed(callers).await;
                drop(channels);
                server.stop().await;
                Ok(self.row("noop-check", round, measured, Some(reply_bytes)))
            }
            Scenario::Create => {
                let authorization = self.authorization("create")?;
                let run_id: u32 = rand::random();
                // One token first: checks the secret, and gives the reply's size.
                let probe = self
                    .create_token(format!("bench-{run_id:08x}-probe"))
                    .await?;
                let channels = connect_many(&self.target, self.args.connections).await?;
                let callers = self.spread(&channels, |channel, task| Caller::Create {
                    client: TokenServiceClient::new(channel),
                    authorization: authorization.clone(),
                    prefix: format!("bench-{run_id:08x}-{task}"),
                    made: 0,
                });
                let measured = self.closed(callers).await;
                Ok(self.row("create", round, measured, Some(probe.encoded_len())))
            }
            Scenario::Noop => {
                let requests = self.single_requests().await?;
                let reply = self.real_reply().await?;
                let reply_bytes = reply.encoded_len();
                let server = noop::Noop::start(&reply, self.args.noop_in_child).await?;
                let channels =
                    connect_many(&format!("http://{}", server.addr), self.args.connections).await?;
                let callers = self.verify_callers(&channels, &requests);
                let measured = self.closed(callers).await;
                drop(channels);
                server.stop().await;
                Ok(self.row("noop", round, measured, Some(reply_bytes)))
            }
            Scenario::ForwardAuth | Scenario::NoopForwardAuth => {
                let requests = self.single_requests().await?;
                let request = Arc::new(http::request(&requests[0].token));
                let real = http::real_answer(self.args.http_target, &request).await?;
                let (name, noop, addr) = if scenario == Scenario::ForwardAuth {
                    ("forward-auth", None, self.args.http_target)
                } else {
                    let server = http::NoopHttpHost::start(real, self.args.noop_in_child).await?;
                    let addr = server.addr();
                    ("noop-forward-auth", Some(server), addr)
                };
                let callers = self.http_callers(addr, &request).await?;
                let measured = self.closed(callers).await;
                if let Some(server) = noop {
                    server.stop().await;
                }
                Ok(self.row(name, round, measured, None))
            }
            Scenario::Cold => {
                let channels = connect_many(&self.target, self.args.connections).await?;
                let measured =
                    store::cold(&channels, &self.args.secrets_file, self.args.concurrency).await?;
                Ok(self.row("cold", round, measured, None))
            }
            Scenario::Compare
            | Scenario::CompareCheck
            | Scenario::CompareForwardAuth
            | Scenario::LatencyAt
            | Scenario::H2loadCompare
            | Scenario::H2loadBodies
            | Scenario::ServeNoop
            | Scenario::CompareFlood
            | Scenario::Seed => {
                unreachable!("run_all handles {scenario:?}")
            }
        }
    }

    fn row(
        &self,
        scenario: &'static str,
        round: Option<usize>,
        measured: Measured,
        reply_bytes: Option<usize>,
    ) -> Row {
        Row {
            scenario,
            round,
            concurrency: self.args.concurrency,
            connections: self.args.connections,
            measured,
            reply_bytes,
        }
    }

    async fn closed(&self, callers: Vec<Caller>) -> Measured {
        load::closed_loop(callers, self.args.warmup, self.args.duration).await
    }

    /// One caller per task; task `i` uses connection `i % connections`.
    fn spread(&self, channels: &[Channel], make: impl Fn(Channel, usize) -> Caller) -> Vec<Caller> {
        (0..self.args.concurrency)
            .map(|task| make(channels[task % channels.len()].clone(), task))
            .collect()
    }

    /// Verify callers over `requests`, each task starting at a different one.
    fn verify_callers(&self, channels: &[Channel], requests: &Arc<[VerifyRequest]>) -> Vec<Caller> {
        let concurrency = self.args.concurrency;
        self.spread(channels, |channel, task| Caller::Verify {
            client: VerifyServiceClient::new(channel),
            requests: requests.clone(),
            next: task * requests.len() / concurrency,
        })
    }

    fn authorization(&self, scenario: &str) -> anyhow::Result<MetadataValue<Ascii>> {
        self.authorization.clone().with_context(|| {
            format!(
                "{scenario} makes tokens: pass --admin-secret-file FILE or --admin-secret SECRET (or set TA_ADMIN), the secret of a *:* token such as the bootstrap one"
            )
        })
    }

    /// Creates a token (owner `bench`, permission `domains:read`) as the admin.
    async fn create_token(&self, name: String) -> anyhow::Result<CreateTokenResponse> {
        let mut request = Request::new(CreateTokenRequest {
            token: Some(Token {
                name,
                owner: "bench".into(),
                permissions: vec!["domains:read".into()],
                ..Default::default()
            }),
            ttl: None,
        });
        request
            .metadata_mut()
            .insert("authorization", self.authorization("this scenario")?);
        let created = TokenServiceClient::new(self.control.clone())
            .create_token(request)
            .await
            .map_err(|status| anyhow::anyhow!("CreateToken: {}", load::status_text(&status)))?;
        Ok(created.into_inner())
    }

    /// The `verify` scenario's request, making its token on first use.
    async fn single_requests(&mut self) -> anyhow::Result<Arc<[VerifyRequest]>> {
        if let Some(requests) = &self.single {
            return Ok(requests.clone());
        }
        self.authorization("verify")?;
        let name = format!("bench-{:016x}", rand::random::<u64>());
        let secret = self.create_token(name).await?.secret;
        let requests: Arc<[VerifyRequest]> = Arc::from(vec![verify_request(secret)]);
        let reply = self.probe_verify(&requests[0]).await?;
        if !reply.valid {
            bail!("the new token does not verify: {reply:?}");
        }
        self.single = Some(requests.clone());
        Ok(requests)
    }

    /// The `verify-many` requests, making their tokens on first use.
    async fn many_requests(&mut self) -> anyhow::Result<Arc<[VerifyRequest]>> {
        if let Some(requests) = &self.many {
            return Ok(requests.clone());
        }
        self.authorization("verify-many")?;
        let count = self.args.tokens;
        self.printer
            .note(format_args!("verify-many: creating {count} tokens"));
        let run_id: u32 = rand::random();
        let started = std::time::Instant::now();
        let secrets: Vec<String> = futures::stream::iter(0..count)
            .map(|n| self.create_token(format!("bench-{run_id:08x}-many-{n}")))
            .buffer_unordered(16)
            .map_ok(|created| created.secret)
            .try_collect()
            .await?;
        self.printer.note(format_args!(
            "verify-many: {count} tokens created in {:.1?}",
            started.elapsed()
        ));
        let requests: Arc<[VerifyRequest]> = secrets.into_iter().map(verify_request).collect();
        self.many = Some(requests.clone());
        Ok(requests)
    }

    /// Calls the real server's Verify once, outside any measurement.
    async fn probe_verify(&self, request: &VerifyRequest) -> anyhow::Result<VerifyResponse> {
        Ok(VerifyServiceClient::new(self.control.clone())
            .verify(request.clone())
            .await
            .map_err(|status| anyhow::anyhow!("Verify: {}", load::status_text(&status)))?
            .into_inner())
    }

    /// Waits (at most 6 s) until real Verify replies carry the token's usage fields, which
    /// appear once the server has written its first use (every --usage-flush-interval, 5 s
    /// by default) unless the server's cache keeps the token as first read.
    async fn settle_usage(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(6);
        loop {
            let reply = self.real_reply().await?;
            if reply
                .token
                .as_ref()
                .is_some_and(|t| t.last_used_time.is_some())
            {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                self.printer.note(
                    "real Verify replies carry no usage fields after 6 s (the server's cache keeps tokens as first read, or usage is written later); the summary compares reply sizes",
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A real Verify reply for the `verify` scenario's request, fetched now, for the no-op
    /// server to serve. Fetched before every noop run, so that the no-op reply follows the
    /// real one (e.g. once the server has written the token's usage, when its cache is
    /// off, the reply grows by the usage fields); the `reply_bytes` column shows both.
    async fn real_reply(&mut self) -> anyhow::Result<VerifyResponse> {
        let requests = self.single_requests().await?;
        let reply = self.probe_verify(&requests[0]).await?;
        if !reply.valid {
            bail!("Verify of the bench token is no longer valid: {reply:?}");
        }
        Ok(reply)
    }
}

/// A fresh directory for h2load's request bodies.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ta-h2load-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Where the no-op server runs, for the report.
fn noop_host(args: &Args) -> &'static str {
    if args.noop_in_child {
        "in a child process"
    } else {
        "in this process"
    }
}

/// The `verify` scenario's request for a secret.
fn verify_request(secret: String) -> VerifyRequest {
    VerifyRequest {
        token: secret,
        required_permissions: vec!["domains:read".into()],
        client_ip: "10.1.2.3".into(),
        ..Default::default()
    }
}

/// What Envoy 1.40 sends for `GET /domains/1` from 10.1.2.3 with this bearer token: the
/// peers, the request line and the usual headers.
fn check_request(secret: &str) -> CheckRequest {
    use envoy_types::pb::envoy::{
        config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
        service::auth::v3::{
            AttributeContext,
            attribute_context::{HttpRequest, Peer, Request},
        },
    };
    let peer = |ip: &str, port: u32| Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let headers = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/domains/1"),
        (":scheme", "http"),
        ("accept", "*/*"),
        ("authorization", &format!("Bearer {secret}")),
        ("user-agent", "curl/8.5.0"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f1c0c7e-8c43-4a5c-9d0e-3b8f0f0e2a17"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("10.1.2.3", 53412)),
            destination: Some(peer("10.0.0.7", 8080)),
            request: Some(Request {
                time: Some(Default::default()),
                http: Some(HttpRequest {
                    id: "14612553839390786417".into(),
                    method: "GET".into(),
                    headers,
                    path: "/domains/1".into(),
                    host: "api.example.com".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// Opens one HTTP/2 connection.
async fn connect(target: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(target.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Opens `n` separate HTTP/2 connections (one tonic Channel each).
async fn connect_many(target: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(
            connect(target)
                .await
                .with_context(|| format!("cannot connect to {target}"))?,
        );
    }
    Ok(channels)
}
