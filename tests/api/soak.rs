//! Soak: a bounded mixed workload on two replicas of the real binary sharing one Postgres.
//! Several clients verify, create, update, disable, enable and delete tokens at once; every
//! Verify answer is checked against what the store holds, every interval reports
//! throughput, errors and each replica's resident memory, and at the end the store must hold
//! exactly what was acknowledged.
//!
//! Each client owns its tokens (no other client touches them), so it knows each one's state
//! exactly. A replica may answer by an earlier state only if it made neither the change
//! that ended that state nor any later one (its own changes evict at once), and only if
//! that state was current less than [`PROPAGATION_ALLOWANCE`] before the Verify was sent (LISTEN/NOTIFY delivers changes in
//! commit order, measured at a few milliseconds; a client changing one token twice in
//! quick succession can leave the other replica two states behind for that long).
//!
//! `TA_SOAK_SECONDS` sets the length (default 20, as part of the suite); `scripts/soak`
//! runs it for minutes on a release build and prints the table the README quotes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use prost_types::FieldMask;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use token_authority::pb::v1::{
    CreateTokenRequest, DeleteTokenRequest, ListTokensRequest, SetTokenEnabledRequest, Token,
    UpdateTokenRequest, VerifyRequest, VerifyResult, token_service_client::TokenServiceClient,
    verify_service_client::VerifyServiceClient,
};
use tonic::transport::Channel;

use crate::helpers::{Replicas, authed, sample, scrape};

/// How long after an acknowledged change the replica that did not make it may still answer
/// by the state before it.
const PROPAGATION_ALLOWANCE: Duration = Duration::from_secs(1);
/// Concurrent clients; each runs one call at a time.
const CLIENTS: usize = 6;
/// Live tokens each client keeps; creating past it deletes first.
const LIVE_PER_CLIENT: usize = 12;
/// Deleted tokens each client keeps verifying (they must stay NOT_FOUND).
const DELETED_PER_CLIENT: usize = 8;
/// The permissions tokens get and Verify asks for.
const PERMISSIONS: [&str; 4] = [
    "reports:read",
    "reports:write",
    "domains:read",
    "billing:read",
];

/// What a token is, as far as Verify is concerned.
#[derive(Clone, Debug, PartialEq)]
struct State {
    exists: bool,
    enabled: bool,
    permissions: Vec<String>,
}

impl State {
    /// The answer Verify owes for `required`.
    fn answer(&self, required: &str) -> VerifyResult {
        if !self.exists {
            VerifyResult::NotFound
        } else if !self.enabled {
            VerifyResult::Disabled
        } else if !self.permissions.iter().any(|p| p == required) {
            VerifyResult::PermissionDenied
        } else {
            VerifyResult::Ok
        }
    }
}

/// A token a client owns.
struct Owned {
    id: String,
    secret: String,
    now: State,
    /// Earlier states, newest last, each with when it stopped being current and through
    /// which replica: a replica may still show one superseded within the allowance unless
    /// it made that change or a later one.
    superseded: Vec<(State, Instant, usize)>,
    /// When the last change was acknowledged, and by which replica.
    changed_at: Instant,
    changed_via: usize,
}

/// Counters of one reporting interval (and of the whole run).
#[derive(Default)]
struct Counters {
    verifies: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    wrong: AtomicU64,
    /// Answers by an earlier state, on the other replica, within the allowance.
    stale_allowed: AtomicU64,
}

/// The two replicas' clients.
#[derive(Clone)]
struct Clients {
    tokens: [TokenServiceClient<Channel>; 2],
    verify: [VerifyServiceClient<Channel>; 2],
    admin: String,
}

/// One row of the report.
struct Sample {
    at: Duration,
    verifies_per_s: f64,
    writes_per_s: f64,
    errors: u64,
    wrong: u64,
    stale_allowed: u64,
    rss: [u64; 2],
    /// Verify cache entries of each replica, positive plus negative (from /metrics).
    cached: [u64; 2],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_mixed_workload_every_answer_matches_the_store_and_memory_stays_flat() {
    let seconds: u64 = std::env::var("TA_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
        .max(1);
    let duration = Duration::from_secs(seconds);
    let interval = Duration::from_secs((seconds / 12).max(1));

    // Arrange: two replicas, each with its own channels.
    // A small cache, so that it reaches its bound early (expired entries are dropped only
    // when looked up or pushed out) and memory after that shows anything else growing.
    let mut replicas = Replicas::start_with(&[
        "--management-rate-limit",
        "0",
        "--cache-max-entries",
        "2000",
    ])
    .await;
    let connect = |port: u16| async move {
        Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let (a, b) = (
        connect(replicas.a.port).await,
        connect(replicas.b.port).await,
    );
    let clients = Clients {
        tokens: [
            TokenServiceClient::new(a.clone()),
            TokenServiceClient::new(b.clone()),
        ],
        verify: [VerifyServiceClient::new(a), VerifyServiceClient::new(b)],
        admin: replicas.admin.clone(),
    };
    let interval_counts = Arc::new(Counters::default());
    let total = Arc::new(Counters::default());
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));

    // Act: the clients, until the deadline.
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let clients = clients.clone();
            let counts = [interval_counts.clone(), total.clone()];
            let failures = failures.clone();
            tokio::spawn(
                async move { run_client(client, clients, deadline, &counts, &failures).await },
            )
        })
        .collect();

    // Sample every interval: the counts since the last one and each replica's RSS.
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut last = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(interval.min(deadline.saturating_duration_since(Instant::now()))).await;
        let elapsed = last.elapsed().as_secs_f64();
        last = Instant::now();
        samples.push(Sample {
            at: started.elapsed(),
            verifies_per_s: interval_counts.verifies.swap(0, Relaxed) as f64 / elapsed,
            writes_per_s: interval_counts.writes.swap(0, Relaxed) as f64 / elapsed,
            errors: interval_counts.errors.swap(0, Relaxed),
            wrong: interval_counts.wrong.swap(0, Relaxed),
            stale_allowed: interval_counts.stale_allowed.swap(0, Relaxed),
            rss: [replicas.a.rss_bytes(), replicas.b.rss_bytes()],
            cached: [
                cache_entries(replicas.a.metrics_port).await,
                cache_entries(replicas.b.metrics_port).await,
            ],
        });
    }
    let mut owned = Vec::new();
    for worker in workers {
        owned.extend(worker.await.expect("a soak client panicked"));
    }

    // Assert: the report, then every answer right, no call failed, the store holds every
    // acknowledged state, and memory did not grow.
    print_report(&samples, &total, seconds);
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let logged = [replicas.a.problems_logged(), replicas.b.problems_logged()];
    assert!(
        failures.is_empty(),
        "{} wrong answers or errors, the first: {:#?}\nreplica A logged: {:#?}\nreplica B logged: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)],
        &logged[0][..logged[0].len().min(10)],
        &logged[1][..logged[1].len().min(10)],
    );
    // Nothing failed behind the clients' backs either: no errors, and no deadlock (usage
    // writes retry, so clients would not see one).
    for (replica, lines) in logged.iter().enumerate() {
        let failed: Vec<_> = lines
            .iter()
            .filter(|l| l.contains(r#""level":"ERROR""#) || l.contains("deadlock"))
            .collect();
        assert!(
            failed.is_empty(),
            "replica {replica} logged failures: {failed:#?}"
        );
    }
    assert!(
        total.verifies.load(Relaxed) > 0 && total.writes.load(Relaxed) > 0,
        "the workload ran"
    );
    assert_store_holds(&clients, &owned).await;
    assert_memory_flat(&samples);
}

/// One client: its own tokens, one call at a time, until the deadline. Returns its tokens.
async fn run_client(
    client: usize,
    mut clients: Clients,
    deadline: Instant,
    counts: &[Arc<Counters>; 2],
    failures: &Mutex<Vec<String>>,
) -> Vec<Owned> {
    let mut rng = StdRng::seed_from_u64(client as u64);
    let mut tokens: Vec<Owned> = Vec::new();
    let mut made = 0usize;
    let count = |field: fn(&Counters) -> &AtomicU64| {
        for c in counts {
            field(c).fetch_add(1, Relaxed);
        }
    };
    let fail = |what: String| failures.lock().unwrap().push(what);

    while Instant::now() < deadline {
        let live = tokens.iter().filter(|t| t.now.exists).count();
        let via = rng.random_range(0..2);
        if !tokens.is_empty() && rng.random_bool(0.75) {
            // Verify a token of ours, asking for a permission it likely has.
            let token = tokens.choose(&mut rng).unwrap();
            let required = match token.now.permissions.choose(&mut rng) {
                Some(held) if rng.random_bool(0.7) => held.clone(),
                _ => PERMISSIONS.choose(&mut rng).unwrap().to_string(),
            };
            let sent = Instant::now();
            let answer = clients.verify[via]
                .verify(VerifyRequest {
                    token: token.secret.clone(),
                    required_permissions: vec![required.clone()],
                    ..Default::default()
                })
                .await;
            count(|c| &c.verifies);
            let answer = match answer {
                Ok(answer) => answer.into_inner().result(),
                Err(status) => {
                    count(|c| &c.errors);
                    fail(format!("Verify via replica {via}: {status:?}"));
                    continue;
                }
            };
            let expected = token.now.answer(&required);
            if answer == expected {
                continue;
            }
            let may_lag = token
                .superseded
                .iter()
                .rev()
                .take_while(|(_, _, by)| *by != via)
                .any(|(state, until, _)| {
                    sent < *until + PROPAGATION_ALLOWANCE && answer == state.answer(&required)
                });
            if may_lag {
                count(|c| &c.stale_allowed);
            } else {
                count(|c| &c.wrong);
                fail(format!(
                    "Verify of {} for {required} via replica {via}, {:?} after its last change via replica {}: got {answer:?}, expected {expected:?} (state {:?}, earlier {:?})",
                    token.id,
                    sent.saturating_duration_since(token.changed_at),
                    token.changed_via,
                    token.now,
                    token.superseded
                ));
            }
            continue;
        }

        // A write: create while below the live count (or now and then), else change one.
        let tokens_client = &mut clients.tokens[via];
        let admin = clients.admin.clone();
        let result = if live < LIVE_PER_CLIENT || rng.random_bool(0.1) {
            if live >= LIVE_PER_CLIENT {
                // Make room first.
                let index = live_index(&tokens, &mut rng);
                delete(tokens_client, &admin, &mut tokens[index], via).await
            } else {
                let mut permissions: Vec<String> = PERMISSIONS
                    .iter()
                    .filter(|_| rng.random_bool(0.5))
                    .map(|p| p.to_string())
                    .collect();
                if permissions.is_empty() {
                    permissions.push(PERMISSIONS[0].to_owned());
                }
                made += 1;
                let request = CreateTokenRequest {
                    token: Some(Token {
                        name: format!("soak-{client}-{made}"),
                        owner: format!("soak-{client}"),
                        permissions: permissions.clone(),
                        ..Default::default()
                    }),
                    ttl: None,
                };
                tokens_client
                    .create_token(authed(&admin, request))
                    .await
                    .map(|created| {
                        let created = created.into_inner();
                        // A new secret was never looked up anywhere: exact on both replicas.
                        let state = State {
                            exists: true,
                            enabled: true,
                            permissions,
                        };
                        tokens.push(Owned {
                            id: created.token.unwrap().id,
                            secret: created.secret,
                            now: state,
                            superseded: Vec::new(),
                            changed_at: Instant::now(),
                            changed_via: via,
                        });
                    })
            }
        } else {
            let index = live_index(&tokens, &mut rng);
            let token = &mut tokens[index];
            match rng.random_range(0..10) {
                0..=3 => {
                    let mut permissions = token.now.permissions.clone();
                    let toggled = PERMISSIONS.choose(&mut rng).unwrap().to_string();
                    match permissions.iter().position(|p| *p == toggled) {
                        Some(at) if permissions.len() > 1 => {
                            permissions.remove(at);
                        }
                        Some(_) => {}
                        None => permissions.push(toggled),
                    }
                    let request = UpdateTokenRequest {
                        token: Some(Token {
                            id: token.id.clone(),
                            permissions: permissions.clone(),
                            ..Default::default()
                        }),
                        update_mask: Some(FieldMask {
                            paths: vec!["permissions".into()],
                        }),
                    };
                    tokens_client
                        .update_token(authed(&admin, request))
                        .await
                        .map(|_| {
                            let next = State {
                                permissions,
                                ..token.now.clone()
                            };
                            token.changed(next, via);
                        })
                }
                4..=7 => {
                    let enabled = !token.now.enabled;
                    let request = SetTokenEnabledRequest {
                        id: token.id.clone(),
                        enabled,
                    };
                    tokens_client
                        .set_token_enabled(authed(&admin, request))
                        .await
                        .map(|_| {
                            let next = State {
                                enabled,
                                ..token.now.clone()
                            };
                            token.changed(next, via);
                        })
                }
                _ => delete(tokens_client, &admin, token, via).await,
            }
        };
        count(|c| &c.writes);
        if let Err(status) = result {
            count(|c| &c.errors);
            fail(format!("write via replica {via}: {status:?}"));
        }
        // Forget the oldest deleted tokens past the bound, so the verify mix stays mixed.
        while tokens.iter().filter(|t| !t.now.exists).count() > DELETED_PER_CLIENT {
            let oldest = tokens.iter().position(|t| !t.now.exists).unwrap();
            tokens.remove(oldest);
        }
    }
    tokens
}

impl Owned {
    /// Records an acknowledged change.
    fn changed(&mut self, next: State, via: usize) {
        let now = Instant::now();
        let previous = std::mem::replace(&mut self.now, next);
        // Verifies are sent from now on: states superseded before now - allowance no longer
        // qualify.
        self.superseded
            .retain(|(_, until, _)| *until + PROPAGATION_ALLOWANCE > now);
        self.superseded.push((previous, now, via));
        self.changed_at = now;
        self.changed_via = via;
    }
}

fn live_index(tokens: &[Owned], rng: &mut StdRng) -> usize {
    let live: Vec<usize> = (0..tokens.len())
        .filter(|&i| tokens[i].now.exists)
        .collect();
    *live.choose(rng).expect("a live token")
}

async fn delete(
    client: &mut TokenServiceClient<Channel>,
    admin: &str,
    token: &mut Owned,
    via: usize,
) -> Result<(), tonic::Status> {
    let request = DeleteTokenRequest {
        id: token.id.clone(),
    };
    client.delete_token(authed(admin, request)).await?;
    let gone = State {
        exists: false,
        ..token.now.clone()
    };
    token.changed(gone, via);
    Ok(())
}

/// Every token the clients still know is in the store exactly as last acknowledged.
async fn assert_store_holds(clients: &Clients, owned: &[Owned]) {
    let mut stored = std::collections::HashMap::new();
    for client in 0..CLIENTS {
        let mut page_token = String::new();
        loop {
            let page = clients.tokens[0]
                .clone()
                .list_tokens(authed(
                    &clients.admin,
                    ListTokensRequest {
                        page_size: 1000,
                        page_token,
                        owner: format!("soak-{client}"),
                        ..Default::default()
                    },
                ))
                .await
                .expect("the admin lists tokens")
                .into_inner();
            stored.extend(page.tokens.into_iter().map(|t| (t.id.clone(), t)));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    let live = owned.iter().filter(|t| t.now.exists).count();
    assert_eq!(
        stored.len(),
        live,
        "the store holds exactly the live tokens the clients made"
    );
    for token in owned {
        match stored.get(&token.id) {
            None => assert!(!token.now.exists, "{} was lost", token.id),
            Some(row) => {
                assert!(token.now.exists, "{} was deleted, yet is listed", token.id);
                let mut permissions = row.permissions.clone();
                let mut expected = token.now.permissions.clone();
                permissions.sort();
                expected.sort();
                assert_eq!(
                    (row.enabled, permissions),
                    (token.now.enabled, expected),
                    "{}",
                    token.id
                );
            }
        }
    }
}

/// Resident memory at the end is within 1.5× (plus 16 MiB of allocator slack) of what it
/// was once warmed up, a quarter of the way in, on each replica.
fn assert_memory_flat(samples: &[Sample]) {
    let warm = &samples[samples.len() / 4];
    let last = samples.last().unwrap();
    for replica in 0..2 {
        let bound = warm.rss[replica] * 3 / 2 + (16 << 20);
        assert!(
            last.rss[replica] <= bound,
            "replica {replica}'s RSS grew from {} MiB to {} MiB",
            warm.rss[replica] >> 20,
            last.rss[replica] >> 20
        );
    }
}

/// Entries in a replica's Verify cache, positive and negative.
async fn cache_entries(metrics_port: u16) -> u64 {
    let text = scrape(metrics_port).await;
    ["token", "negative"]
        .iter()
        .map(|entry| {
            sample(
                &text,
                &format!(r#"token_authority_cache_entries{{entry="{entry}"}}"#),
            )
            .unwrap_or(0.0) as u64
        })
        .sum()
}

fn print_report(samples: &[Sample], total: &Counters, seconds: u64) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "soak: {CLIENTS} clients, 2 replicas, {seconds} s, propagation allowance {PROPAGATION_ALLOWANCE:?}"
    );
    println!(
        "{:>6} {:>10} {:>9} {:>6} {:>6} {:>6} {:>9} {:>9} {:>8} {:>8}",
        "t (s)",
        "verify/s",
        "writes/s",
        "errors",
        "wrong",
        "stale",
        "RSS A",
        "RSS B",
        "cache A",
        "cache B"
    );
    for s in samples {
        println!(
            "{:>6.0} {:>10.0} {:>9.0} {:>6} {:>6} {:>6} {:>5.1} MiB {:>5.1} MiB {:>8} {:>8}",
            s.at.as_secs_f64(),
            s.verifies_per_s,
            s.writes_per_s,
            s.errors,
            s.wrong,
            s.stale_allowed,
            mib(s.rss[0]),
            mib(s.rss[1]),
            s.cached[0],
            s.cached[1]
        );
    }
    println!(
        "total: {} verifies, {} writes, {} errors, {} wrong, {} stale within the allowance",
        total.verifies.load(Relaxed),
        total.writes.load(Relaxed),
        total.errors.load(Relaxed),
        total.wrong.load(Relaxed),
        total.stale_allowed.load(Relaxed)
    );
}
