//! The change listener owns its reconnection: its connection is terminated over and over
//! while replica A revokes tokens and replica B verifies them, and B never accepts a
//! revoked token past the bound. Every new listening connection is followed by a flush
//! before B trusts its cache again, and no library-made reconnection goes unnoticed.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection};
use token_authority::{
    pb::v1::{
        SetTokenEnabledRequest, VerifyRequest, token_service_client::TokenServiceClient,
        verify_service_client::VerifyServiceClient,
    },
    store::LISTENER_APPLICATION_NAME,
};
use tonic::transport::Channel;

use crate::helpers::{Replicas, authed, create_via, sample, scrape, spec};

/// How many times the listeners are cut off.
const ROUNDS: usize = 110;

/// The replicas' --change-feed-heartbeat: short, so that terminations can be timed to
/// land just before a heartbeat is due (the moment a listener that reconnected by itself
/// would have gone unnoticed) without the test taking minutes.
const HEARTBEAT_MS: f64 = 100.0;

/// The documented bound: B refuses a token at most this long after A acknowledged its
/// revocation, however often B's listener is cut off. (B notices a closed connection at
/// once, so this is mostly margin for a loaded machine; the test prints what it saw.)
const BOUND: Duration = Duration::from_secs(1);

async fn verify(client: &mut VerifyServiceClient<Channel>, secret: &str) -> bool {
    client
        .verify(VerifyRequest {
            token: secret.into(),
            ..Default::default()
        })
        .await
        .expect("B answers Verify")
        .into_inner()
        .valid
}

/// Waits until B's listener says it listens (its cache trusted), for at most 10 s.
async fn until_listening(metrics_port: u16) {
    let series = r#"token_authority_change_listener_state{state="listening"}"#;
    let start = Instant::now();
    while sample(&scrape(metrics_port).await, series) != Some(1.0) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "B's listener did not come back within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The idle listener connections: (pid, milliseconds until the heartbeat is due that the
/// connection's last query, a heartbeat or its LISTEN, scheduled when it went idle).
async fn listeners(admin: &mut PgConnection, database: &str) -> Vec<(i32, f64)> {
    sqlx::query_as(
        "SELECT pid, (EXTRACT(EPOCH FROM (state_change - clock_timestamp())) * 1000 + $3)::float8 \
         FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 AND state = 'idle' \
         ORDER BY pid",
    )
    .bind(database)
    .bind(LISTENER_APPLICATION_NAME)
    .bind(HEARTBEAT_MS)
    .fetch_all(&mut *admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_cut_off_over_a_hundred_times_never_lets_a_revoked_token_through() {
    // Arrange: two replicas on one Postgres, a token per round made through A.
    let replicas =
        Replicas::start_with(&["--change-feed-heartbeat=100ms", "--management-rate-limit=0"]).await;
    let (a, mut b) = (&replicas.a, replicas.b);
    let admin = replicas.admin.clone();
    let database = replicas.db.url.rsplit('/').next().unwrap().to_owned();
    let mut pg = PgConnection::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    let mut tokens_a = TokenServiceClient::connect(format!("http://127.0.0.1:{}", a.port))
        .await
        .unwrap();
    let mut verify_b = VerifyServiceClient::connect(format!("http://127.0.0.1:{}", b.port))
        .await
        .unwrap();
    let mut made = Vec::new();
    for round in 0..ROUNDS {
        let created = create_via(&mut tokens_a, &admin, spec(&format!("round-{round}"), &[]))
            .await
            .unwrap();
        made.push((created.token.unwrap().id, created.secret));
    }

    // Meanwhile B verifies every token revoked so far (each at least BOUND ago), over
    // and over: none may be accepted.
    let revoked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (revoked, stop, mut client) = (revoked.clone(), stop.clone(), verify_b.clone());
        tokio::spawn(async move {
            let (mut checked, mut accepted) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let due: Vec<String> = revoked
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, at)| at.elapsed() > BOUND)
                    .map(|(secret, _)| secret.clone())
                    .collect();
                for secret in due {
                    checked += 1;
                    if verify(&mut client, &secret).await {
                        accepted.push(secret[..9].to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (checked, accepted)
        })
    };

    // Act: every round, B caches the round's token; both listeners are cut off, timed to
    // land a few milliseconds before one of them is due its heartbeat; then A revokes the
    // token at once, while B's listener is down or reconnecting.
    let (mut terminated, mut slowest) = (0, Duration::ZERO);
    let mut late = Vec::new();
    for (round, (id, secret)) in made.iter().enumerate() {
        until_listening(b.metrics_port).await;
        assert!(verify(&mut verify_b, secret).await, "round {round}: valid");
        assert!(verify(&mut verify_b, secret).await, "round {round}: cached");
        // Wait for a heartbeat newer than the last revocation (so its timing is known).
        let mut due = Vec::new();
        for _ in 0..100 {
            due = listeners(&mut pg, &database).await;
            if due.len() == 2 && due.iter().all(|(_, ms)| *ms > 0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some((_, ms)) = due.get(round % due.len().max(1)) {
            let lead = 1.0 + (round % 15) as f64;
            if *ms > lead {
                tokio::time::sleep(Duration::from_secs_f64((ms - lead) / 1000.0)).await;
            }
        }
        // Terminated, then gone (polled: waiting in pg_terminate_backend takes 100 ms
        // steps), so that the revocation below cannot reach the old connections.
        let cut: Vec<i32> = sqlx::query_scalar(
            "WITH listeners AS MATERIALIZED (SELECT pid FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = $2) \
             SELECT pid FROM listeners WHERE pg_terminate_backend(pid)",
        )
        .bind(&database)
        .bind(LISTENER_APPLICATION_NAME)
        .fetch_all(&mut pg)
        .await
        .unwrap();
        loop {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(&cut)
                    .fetch_one(&mut pg)
                    .await
                    .unwrap();
            if left == 0 {
                break;
            }
        }
        let cut = cut.len() as i64;
        assert!(cut >= 1, "round {round}: B's listener was there to cut");
        terminated += cut;
        tokens_a
            .set_token_enabled(authed(
                &admin,
                SetTokenEnabledRequest {
                    id: id.clone(),
                    enabled: false,
                },
            ))
            .await
            .unwrap();
        let acknowledged = Instant::now();
        revoked.lock().unwrap().push((secret.clone(), acknowledged));
        while verify(&mut verify_b, secret).await {
            if acknowledged.elapsed() > BOUND {
                late.push(round);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        slowest = slowest.max(acknowledged.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let (checked, accepted) = watcher.await.unwrap();

    // Assert: no revoked token accepted past the bound, in any round or afterwards; B lost
    // and regained its feed every round, and its cache was in use between.
    let problems = b.problems_logged();
    let lost = problems
        .iter()
        .filter(|line| line.contains("lost the token change feed"))
        .count();
    let unexpected: Vec<_> = problems
        .iter()
        .filter(|line| !line.contains("lost the token change feed"))
        .collect();
    let hits = sample(
        &scrape(b.metrics_port).await,
        r#"token_authority_cache_hits_total{entry="token"}"#,
    )
    .unwrap_or(0.0);
    eprintln!(
        "{terminated} listener connections terminated in {ROUNDS} rounds; B lost its feed \
         {lost} times; B refused each revoked token at most {slowest:?} after A acknowledged \
         it; {checked} later checks of revoked tokens, {} accepted; {hits} cache hits on B",
        accepted.len()
    );
    assert!(
        late.is_empty(),
        "B accepted the revoked token more than {BOUND:?} after its revocation in rounds {late:?}"
    );
    assert!(
        accepted.is_empty(),
        "revoked tokens accepted later: {accepted:?}"
    );
    assert!(terminated >= ROUNDS as i64, "{terminated} terminations");
    assert!(lost >= 100, "B noticed only {lost} of the terminations");
    assert!(hits >= ROUNDS as f64, "B's cache was in use ({hits} hits)");
    assert!(unexpected.is_empty(), "B logged {unexpected:#?}");
}
