//! Postgres crashes (`pg_ctl stop -m immediate`: no checkpoint, crash recovery at the next
//! start) under mixed load on two replicas, on a cluster of the test's own that
//! acknowledges a commit only once its WAL is written: every acknowledged write is there
//! afterwards, no revoked token is ever accepted, calls during the outage fail
//! UNAVAILABLE, and calls after it succeed.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use token_authority::pb::v1::{
    ListTokensRequest, SetTokenEnabledRequest, Token, VerifyRequest, VerifyResult,
    token_service_client::TokenServiceClient, verify_service_client::VerifyServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::{
    faults::OwnPostgres,
    helpers::{CallLog, Replicas, TestDb, authed, create_via, spec},
};

/// A revoked token is refused everywhere within this long of its acknowledgement (the
/// change notification takes milliseconds; the rest is margin for a loaded machine).
const BOUND: Duration = Duration::from_secs(1);

/// How long Postgres stays down.
const OUTAGE: Duration = Duration::from_secs(2);

/// A token whose creation was acknowledged, and whether (and when) its revocation was.
#[derive(Clone)]
struct Acked {
    name: String,
    id: String,
    secret: String,
    revoked: Option<Instant>,
    /// A revocation was sent (and may have been applied, whatever its answer).
    maybe_revoked: bool,
}

/// Everything the clients saw.
#[derive(Default)]
struct Seen {
    tokens: Mutex<Vec<Acked>>,
    calls: CallLog,
    /// What must never happen: a revoked token accepted past the bound, an acknowledged
    /// token unknown to the store.
    violations: Mutex<Vec<String>>,
}

/// Creates tokens and revokes every other one made so far, through `tokens`.
async fn write(
    mut tokens: TokenServiceClient<Channel>,
    admin: String,
    replica: &'static str,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) {
    let made = AtomicUsize::new(0);
    while !stop.load(Ordering::Relaxed) {
        let name = format!("{replica}-{}", made.fetch_add(1, Ordering::Relaxed));
        let sent = Instant::now();
        let created = create_via(&mut tokens, &admin, spec(&name, &[])).await;
        seen.calls.note("create", sent, &created);
        if let Ok(created) = created {
            seen.tokens.lock().unwrap().push(Acked {
                name,
                id: created.token.unwrap().id,
                secret: created.secret,
                revoked: None,
                maybe_revoked: false,
            });
        }
        let victim = {
            let tokens = seen.tokens.lock().unwrap();
            let live: Vec<_> = tokens
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.maybe_revoked)
                .map(|(i, _)| i)
                .collect();
            (live.len() > 4).then(|| (live[0], tokens[live[0]].id.clone()))
        };
        if let Some((index, _)) = victim {
            seen.tokens.lock().unwrap()[index].maybe_revoked = true;
        }
        if let Some((index, id)) = victim {
            let sent = Instant::now();
            let answer = tokens
                .set_token_enabled(authed(
                    &admin,
                    SetTokenEnabledRequest { id, enabled: false },
                ))
                .await;
            seen.calls.note("revoke", sent, &answer);
            if answer.is_ok() {
                seen.tokens.lock().unwrap()[index].revoked = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Verifies acknowledged tokens, revoked and not, through `client`, checking each answer.
async fn verify(mut client: VerifyServiceClient<Channel>, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let pick = {
            let tokens = seen.tokens.lock().unwrap();
            (!tokens.is_empty()).then(|| tokens[turn * 7919 % tokens.len()].clone())
        };
        let Some(token) = pick else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let sent = Instant::now();
        let answer = client
            .verify(VerifyRequest {
                token: token.secret.clone(),
                ..Default::default()
            })
            .await;
        seen.calls.note("verify", sent, &answer);
        let Ok(answer) = answer else { continue };
        let answer = answer.into_inner();
        let revoked_long_ago = token.revoked.is_some_and(|at| at + BOUND < sent);
        let violation = if answer.valid && revoked_long_ago {
            Some(format!("revoked token {} accepted", token.name))
        } else if answer.result() == VerifyResult::NotFound {
            Some(format!("acknowledged token {} not found", token.name))
        } else if !answer.valid && !token.maybe_revoked {
            // Refused, though no revocation was sent before this call: one may have been
            // sent since (then it is marked by now).
            let now = seen.tokens.lock().unwrap();
            let raced = now.iter().any(|t| t.id == token.id && t.maybe_revoked);
            (!raced).then(|| format!("live token {} refused: {}", token.name, answer.reason))
        } else {
            None
        };
        if let Some(violation) = violation {
            seen.violations.lock().unwrap().push(violation);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_under_load_loses_nothing_acknowledged_and_accepts_no_revoked_token() {
    // Arrange: two replicas on a crash-safe Postgres of this test's own, each taking
    // creates, revocations and Verify calls.
    let postgres = OwnPostgres::start_durable();
    let db = TestDb::fresh_postgres(&postgres.url).await;
    // Calls wait at most --db-acquire-timeout for a connection: shorter than the outage,
    // so that calls during it fail instead of waiting it out.
    let replicas = Replicas::start_on(
        db,
        &["--management-rate-limit=0", "--db-acquire-timeout=500ms"],
    );
    let admin = replicas.admin.clone();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (replica, port) in [("a", replicas.a.port), ("b", replicas.b.port)] {
        let target = format!("http://127.0.0.1:{port}");
        let tokens = TokenServiceClient::connect(target.clone()).await.unwrap();
        let verifier = VerifyServiceClient::connect(target).await.unwrap();
        let (seen, stop) = (seen.clone(), stop.clone());
        clients.push(tokio::spawn(write(
            tokens,
            admin.clone(),
            replica,
            seen.clone(),
            stop.clone(),
        )));
        clients.push(tokio::spawn(verify(verifier, seen, stop)));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Act: crash Postgres; start it again (recovering) after the outage.
    let crashed = Instant::now();
    postgres.crash();
    tokio::time::sleep(OUTAGE).await;
    postgres.resume();
    let recovered = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    // Assert: the answers were right throughout.
    let violations = seen.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let calls = seen.calls.calls();
    let mut by_phase = BTreeMap::<(&str, &str), (usize, usize)>::new();
    let mut wrong = Vec::new();
    for (kind, sent, answered, failure) in calls.iter() {
        let phase = if *answered < crashed {
            "before"
        } else if *sent < recovered {
            "outage"
        } else {
            "after"
        };
        let entry = by_phase.entry((phase, kind)).or_default();
        entry.0 += 1;
        entry.1 += usize::from(failure.is_some());
        match (phase, failure) {
            // Calls during the outage fail closed, and only as UNAVAILABLE.
            ("outage", Some((Code::Unavailable, _))) => {}
            // Answered anyway: sent before the crash was noticed, or answered after the
            // recovery.
            ("outage", None) if *sent < crashed + BOUND || *answered > recovered => {}
            (_, None) => {}
            (phase, failure) => wrong.push(format!("{phase} {kind}: {failure:?}")),
        }
    }
    eprintln!("calls (total, failed) by phase and kind: {by_phase:?}");
    assert!(
        wrong.is_empty(),
        "{} wrong outcomes: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(30)]
    );
    let outage_failures: usize = by_phase
        .iter()
        .filter(|((phase, _), _)| *phase == "outage")
        .map(|(_, (_, failed))| failed)
        .sum();
    assert!(outage_failures > 0, "the outage was felt");
    for kind in ["create", "revoke", "verify"] {
        assert!(
            by_phase
                .get(&("after", kind))
                .is_some_and(|(total, _)| *total >= 10),
            "{kind} calls after the outage: {by_phase:?}"
        );
    }

    // And every acknowledged write is in the store.
    let mut listing = TokenServiceClient::connect(format!("http://127.0.0.1:{}", replicas.a.port))
        .await
        .unwrap();
    let mut stored = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = listing
            .list_tokens(authed(
                &admin,
                ListTokensRequest {
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        stored.extend(page.tokens.into_iter().map(|t: Token| (t.name.clone(), t)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let tokens = seen.tokens.lock().unwrap().clone();
    let mut lost = Vec::new();
    let names: HashSet<_> = tokens.iter().map(|t| t.name.as_str()).collect();
    for token in tokens.iter() {
        match stored.get(&token.name) {
            None => lost.push(format!("{}: acknowledged, not stored", token.name)),
            Some(t) if token.revoked.is_some() && t.enabled => lost.push(format!(
                "{}: revocation acknowledged, still enabled",
                token.name
            )),
            Some(t) if !token.maybe_revoked && !t.enabled => {
                lost.push(format!("{}: never revoked, disabled", token.name))
            }
            Some(_) => {}
        }
    }
    eprintln!(
        "{} tokens acknowledged ({} revocations), {} stored",
        names.len(),
        tokens.iter().filter(|t| t.revoked.is_some()).count(),
        stored.len()
    );
    assert!(lost.is_empty(), "{lost:#?}");
}
