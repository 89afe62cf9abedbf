//! The load generators: a closed loop (each task sends one call, awaits it, sends the next)
//! and an open loop (calls are due at a fixed rate, latency counted from when each was due).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, authorization_client::AuthorizationClient,
};
use hdrhistogram::Histogram;
use token_authority::pb::v1::{
    CreateTokenRequest, Token, VerifyRequest, token_service_client::TokenServiceClient,
    verify_service_client::VerifyServiceClient,
};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The largest latency the histograms hold, in microseconds (a minute); longer ones are
/// recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Returns an empty latency histogram: microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us.max(1));
}

/// One load task's client and request. Every variant reuses its prepared request, so the
/// client does the same small amount of work per call whichever server answers.
pub enum Caller {
    /// grpc.health.v1.Health/Check; anything but SERVING is an error.
    Health {
        client: HealthClient<Channel>,
        request: HealthCheckRequest,
    },
    /// VerifyService/Verify of `requests` in turn; an answer with `valid = false` is an error.
    Verify {
        client: VerifyServiceClient<Channel>,
        requests: Arc<[VerifyRequest]>,
        next: usize,
    },
    /// envoy.service.auth.v3.Authorization/Check of one request, as Envoy sends it; a
    /// denied answer is an error.
    Check {
        client: AuthorizationClient<Channel>,
        request: Arc<CheckRequest>,
    },
    /// Forward auth over one HTTP/1.1 keep-alive connection; anything but 200 is an error.
    Http {
        sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        request: Arc<hyper::Request<http_body_util::Empty<bytes::Bytes>>>,
    },
    /// VerifyService/Verify of a new well-formed unknown secret each call (a flood); see
    /// `store::flood_call`.
    Flood {
        client: VerifyServiceClient<Channel>,
    },
    /// TokenService/CreateToken of a new token named `<prefix>-<n>` each call.
    Create {
        client: TokenServiceClient<Channel>,
        authorization: MetadataValue<Ascii>,
        prefix: String,
        made: u64,
    },
}

impl Caller {
    /// Makes one call; `Err` describes why it counts as an error.
    pub async fn call(&mut self) -> Result<(), String> {
        match self {
            Caller::Health { client, request } => {
                let reply = client
                    .check(request.clone())
                    .await
                    .map_err(|status| status_text(&status))?;
                let status = reply.get_ref().status;
                if status == ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err(format!("health status {status}, not SERVING"))
                }
            }
            Caller::Verify {
                client,
                requests,
                next,
            } => {
                let request = requests[*next].clone();
                *next += 1;
                if *next == requests.len() {
                    *next = 0;
                }
                let reply = client
                    .verify(request)
                    .await
                    .map_err(|status| status_text(&status))?;
                let reply = reply.get_ref();
                if reply.valid {
                    Ok(())
                } else {
                    Err(format!(
                        "valid=false, result {}: {}",
                        reply.result, reply.reason
                    ))
                }
            }
            Caller::Check { client, request } => {
                let reply = client
                    .check(CheckRequest::clone(request))
                    .await
                    .map_err(|status| status_text(&status))?;
                match &reply.get_ref().status {
                    Some(status) if status.code != 0 => {
                        Err(format!("denied, code {}: {}", status.code, status.message))
                    }
                    _ => Ok(()),
                }
            }
            Caller::Http { sender, request } => super::http::call(sender, request).await,
            Caller::Flood { client } => super::store::flood_call(client).await,
            Caller::Create {
                client,
                authorization,
                prefix,
                made,
            } => {
                *made += 1;
                let mut request = Request::new(CreateTokenRequest {
                    token: Some(Token {
                        name: format!("{prefix}-{made}"),
                        owner: "bench".into(),
                        permissions: vec!["domains:read".into()],
                        ..Default::default()
                    }),
                    ttl: None,
                });
                request
                    .metadata_mut()
                    .insert("authorization", authorization.clone());
                client
                    .create_token(request)
                    .await
                    .map_err(|status| status_text(&status))?;
                Ok(())
            }
        }
    }
}

/// Describes a gRPC error in one line.
pub fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// What one run measured, after the warmup.
pub struct Measured {
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed or answered something other than expected.
    pub errors: u64,
    /// From the end of the warmup to the last recorded call's answer.
    pub elapsed: Duration,
    /// Latency of the successful calls, microseconds. In the open loop, from when each
    /// call was due, not from when it was sent.
    pub latency: Histogram<u64>,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Open loop only.
    pub open: Option<OpenLoopExtra>,
}

/// What only the open loop measures.
pub struct OpenLoopExtra {
    /// The rate asked for, calls/s.
    pub rate: f64,
    /// From when a call was due to when it was sent: the pacer's and scheduler's delay plus
    /// any wait for a free task.
    pub start_lag: Histogram<u64>,
    /// From sending to the answer (what a closed loop would report).
    pub service: Histogram<u64>,
    /// Calls due during the run that were never sent because the run had to end.
    pub unsent: u64,
}

impl Measured {
    /// Successful calls per second.
    pub fn calls_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }
}

/// Per-task tallies, merged at the end.
struct Tally {
    ok: u64,
    errors: u64,
    last_answer: Option<Instant>,
    latency: Histogram<u64>,
    start_lag: Histogram<u64>,
    service: Histogram<u64>,
    first_error: Option<String>,
    unsent: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: 0,
            last_answer: None,
            latency: histogram(),
            start_lag: histogram(),
            service: histogram(),
            first_error: None,
            unsent: 0,
        }
    }

    fn error(&mut self, error: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }
}

/// Merges the tallies of every task of a run that measured from `measure_from`.
async fn merge(
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    measure_from: Instant,
    stop_at: Instant,
    open_rate: Option<f64>,
) -> Measured {
    let mut total = Tally::new();
    let mut last_answer = stop_at;
    for task in tasks {
        let tally = match task.await {
            Ok(tally) => tally,
            Err(error) => {
                total.error(format!("load task failed: {error}"));
                continue;
            }
        };
        total.ok += tally.ok;
        total.errors += tally.errors;
        total.unsent += tally.unsent;
        if let Some(at) = tally.last_answer {
            last_answer = last_answer.max(at);
        }
        total.latency.add(&tally.latency).expect("same bounds");
        total.start_lag.add(&tally.start_lag).expect("same bounds");
        total.service.add(&tally.service).expect("same bounds");
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
    }
    Measured {
        ok: total.ok,
        errors: total.errors,
        elapsed: last_answer - measure_from,
        latency: total.latency,
        first_error: total.first_error,
        open: open_rate.map(|rate| OpenLoopExtra {
            rate,
            start_lag: total.start_lag,
            service: total.service,
            unsent: total.unsent,
        }),
    }
}

/// Runs each caller in its own task, one call in flight per task, for `warmup` (not
/// recorded) then `duration`. Calls sent before the end are awaited and counted; the
/// rate is over the time up to the last answer.
pub async fn closed_loop(callers: Vec<Caller>, warmup: Duration, duration: Duration) -> Measured {
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let tasks = callers
        .into_iter()
        .map(|mut caller| {
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let sent = Instant::now();
                    if sent >= stop_at {
                        break;
                    }
                    let result = caller.call().await;
                    if sent < measure_from {
                        continue;
                    }
                    let answered = Instant::now();
                    tally.last_answer = Some(answered);
                    match result {
                        Ok(()) => {
                            tally.ok += 1;
                            record(&mut tally.latency, answered - sent);
                        }
                        Err(error) => tally.error(error),
                    }
                }
                tally
            })
        })
        .collect();
    merge(tasks, measure_from, stop_at, None).await
}

/// Sends calls due at `rate` per second, from `warmup` (not recorded) for `duration`, over
/// the callers: each due call goes to the next free caller (one shared queue), so a slow
/// answer delays no other call unless every caller is busy. Latency is measured from
/// when each call was due, so a stall shows in the figures instead of slowing the load
/// (no coordinated omission). Calls still queued a `duration` after the end are not sent
/// and are counted as unsent.
pub async fn open_loop(
    callers: Vec<Caller>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measured> {
    anyhow::ensure!(
        rate.is_finite() && rate > 0.0,
        "--rate must be a positive number"
    );
    // Let every task reach its queue before the first call is due.
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let give_up_at = stop_at + duration;
    let (due_tx, due_rx) = flume::unbounded::<Instant>();

    let tasks = callers
        .into_iter()
        .map(|mut caller| {
            let due_rx = due_rx.clone();
            tokio::spawn(async move {
                let mut tally = Tally::new();
                while let Ok(due) = due_rx.recv_async().await {
                    let sent = Instant::now();
                    if sent >= give_up_at {
                        tally.unsent += 1;
                        continue;
                    }
                    let result = caller.call().await;
                    if due < measure_from {
                        continue;
                    }
                    let answered = Instant::now();
                    tally.last_answer = Some(answered);
                    match result {
                        Ok(()) => {
                            tally.ok += 1;
                            record(&mut tally.latency, answered - due);
                            record(&mut tally.start_lag, sent.saturating_duration_since(due));
                            record(&mut tally.service, answered - sent);
                        }
                        Err(error) => tally.error(error),
                    }
                }
                tally
            })
        })
        .collect();
    drop(due_rx);

    // The pacer is an OS thread sleeping to each due time: tokio's timers tick in whole
    // milliseconds, which would add up to a millisecond to every latency measured here.
    let period_ns = 1e9 / rate;
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            fine_timer_slack();
            for n in 0u64.. {
                let due = start + Duration::from_nanos((n as f64 * period_ns) as u64);
                if due >= stop_at {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if due_tx.send(due).is_err() {
                    break;
                }
            }
        })?;
    let measured = merge(tasks, measure_from, stop_at, Some(rate)).await;
    tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    Ok(measured)
}

/// Asks Linux to wake this thread's sleeps within a microsecond of their deadline instead
/// of the default 50 µs, so the pacer sends calls when they are due.
fn fine_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes this thread's
    // timer slack; it touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}
