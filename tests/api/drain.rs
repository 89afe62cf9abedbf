//! A replica being drained (SIGTERM, `--shutdown-drain`) keeps serving with everything that
//! keeps it honest: it still hears revocations made elsewhere, and every use it served is
//! in the store once it has exited; a last usage write that fails is retried until the
//! shutdown deadline, and what could not be written is logged.

use std::time::{Duration, Instant};

use token_authority::pb::v1::{
    CreateTokenRequest, GetTokenRequest, SetTokenEnabledRequest, VerifyRequest,
    token_service_client::TokenServiceClient, verify_service_client::VerifyServiceClient,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use sqlx::{Connection, Executor, PgConnection};

use crate::helpers::{
    Backend, Process, Replicas, TestDb, authed, create_via, sample, scrape, spec,
};

/// The documented bound: a draining replica refuses a token revoked through another one
/// within this long of the revocation's acknowledgement (the change notification takes
/// milliseconds; the rest is margin for a loaded machine).
const BOUND: Duration = Duration::from_secs(1);

/// B's drain: long enough for many calls after the bound.
const DRAIN: &str = "--shutdown-drain=3s";

/// Verifies, returning None once B no longer answers (the drain is over).
async fn verify(client: &mut VerifyServiceClient<Channel>, secret: &str) -> Option<bool> {
    let answer = client
        .verify(VerifyRequest {
            token: secret.into(),
            ..Default::default()
        })
        .await
        .ok()?;
    Some(answer.into_inner().valid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_still_hears_revocations_and_records_every_use() {
    // Arrange: two replicas; B drains for 3 s and writes usage every 5 s (the default), so
    // that what B serves during its drain can only reach the store through its last flush.
    let replicas = Replicas::start_with(&[DRAIN, "--shutdown-timeout=5s"]).await;
    let (a, b) = (&replicas.a, replicas.b);
    let admin = replicas.admin.clone();
    let mut tokens_a = TokenServiceClient::connect(format!("http://127.0.0.1:{}", a.port))
        .await
        .unwrap();
    let create = |name: &str| {
        authed(
            &admin,
            CreateTokenRequest {
                token: Some(spec(name, &[])),
                ttl: None,
            },
        )
    };
    let revoked = tokens_a
        .create_token(create("revoked-during-the-drain"))
        .await
        .unwrap()
        .into_inner();
    let counted = tokens_a
        .create_token(create("counted"))
        .await
        .unwrap()
        .into_inner();
    let channel = b.channel().await;
    let mut verify_b = VerifyServiceClient::new(channel.clone());
    let listening = r#"token_authority_change_listener_state{state="listening"}"#;
    while sample(&scrape(b.metrics_port).await, listening) != Some(1.0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(verify(&mut verify_b, &revoked.secret).await, Some(true));
    assert_eq!(
        verify(&mut verify_b, &revoked.secret).await,
        Some(true),
        "cached"
    );
    let mut uses = 0;
    for _ in 0..5 {
        assert_eq!(verify(&mut verify_b, &counted.secret).await, Some(true));
        uses += 1;
    }

    // Act: SIGTERM to B; once it reports NOT_SERVING, revoke the token through A; keep
    // verifying both tokens on B until it stops answering.
    b.sigterm();
    let mut health = HealthClient::new(channel.clone());
    loop {
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokens_a
        .set_token_enabled(authed(
            &admin,
            SetTokenEnabledRequest {
                id: revoked.token.as_ref().unwrap().id.clone(),
                enabled: false,
            },
        ))
        .await
        .unwrap();
    let acknowledged = Instant::now();
    let (mut accepted_late, mut refused_after_bound, mut first_refusal) = (0, 0, None);
    loop {
        let sent = acknowledged.elapsed();
        let Some(valid) = verify(&mut verify_b, &revoked.secret).await else {
            break;
        };
        if valid && sent > BOUND {
            accepted_late += 1;
        }
        if !valid {
            first_refusal.get_or_insert(sent);
            refused_after_bound += usize::from(sent > BOUND);
        }
        match verify(&mut verify_b, &counted.secret).await {
            Some(true) => uses += 1,
            Some(false) => panic!("the counted token was refused"),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((verify_b, health, channel));
    let (clean, _, stderr) = b.wait_for_exit(Duration::from_secs(15)).await;

    // Assert: no acceptance of the revoked token past the bound while B drained; B
    // exited cleanly; the store counts every use B served.
    eprintln!(
        "B first refused the revoked token {first_refusal:?} after A acknowledged it; \
         {refused_after_bound} refusals and {accepted_late} acceptances after {BOUND:?}; \
         B served {uses} uses of the counted token"
    );
    assert_eq!(
        accepted_late, 0,
        "B accepted the revoked token {accepted_late} times during its drain, past {BOUND:?}"
    );
    assert!(
        refused_after_bound > 10,
        "B was verifying during its drain ({refused_after_bound} refusals past the bound)"
    );
    assert!(clean, "{stderr}");
    let stored = tokens_a
        .get_token(authed(
            &admin,
            GetTokenRequest {
                id: counted.token.unwrap().id,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stored.use_count, uses,
        "the store recorded {} of the {uses} uses B served",
        stored.use_count
    );
}

/// Refuses (false) or allows (true) new connections to the test's database, ending the
/// open ones when refusing: the store is gone for the server, but not for the test.
async fn store_reachable(db: &TestDb, reachable: bool) {
    let database = db.url.rsplit('/').next().unwrap();
    let mut admin = PgConnection::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    admin
        .execute(format!(r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS {reachable}"#).as_str())
        .await
        .unwrap();
    if !reachable {
        admin
            .execute(
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{database}'"
                )
                .as_str(),
            )
            .await
            .unwrap();
    }
}

/// Starts the binary on `db` with usage written only at shutdown, and uses a token 7 times
/// through it; returns the server and the token's id.
async fn seven_unwritten_uses(db: &TestDb, dir: &std::path::Path, name: &str) -> (Process, String) {
    let admin_file = dir.join("admin.secret");
    let server = Process::start(
        dir,
        &["--usage-flush-interval=1h", "--shutdown-timeout=3s"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("RUST_LOG", "info"),
            ("TA_BOOTSTRAP_TOKEN_FILE", admin_file.to_str().unwrap()),
        ],
    );
    let admin = std::fs::read_to_string(&admin_file).unwrap();
    let target = format!("http://127.0.0.1:{}", server.port);
    let mut tokens = TokenServiceClient::connect(target.clone()).await.unwrap();
    let counted = create_via(&mut tokens, admin.trim(), spec(name, &[]))
        .await
        .unwrap();
    let mut verifier = VerifyServiceClient::connect(target).await.unwrap();
    for _ in 0..7 {
        assert_eq!(verify(&mut verifier, &counted.secret).await, Some(true));
    }
    (server, counted.token.unwrap().id)
}

async fn stored_use_count(db: &TestDb, id: &str) -> i64 {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query_scalar("SELECT use_count FROM tokens WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_usage_flush_is_retried_until_the_shutdown_deadline_then_the_loss_is_logged() {
    // Arrange: a server with 7 uses not yet written, whose store goes away.
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(Backend::Postgres).await;
    let (server, id) = seven_unwritten_uses(&db, dir.path(), "first").await;
    store_reachable(&db, false).await;

    // Act: SIGTERM; the store comes back 1 s later, within the 3 s shutdown timeout.
    server.sigterm();
    tokio::time::sleep(Duration::from_secs(1)).await;
    store_reachable(&db, true).await;
    let (clean, _, stderr) = server.wait_for_exit(Duration::from_secs(10)).await;

    // Assert: the retried flush wrote every use.
    assert!(clean, "{stderr}");
    assert!(stderr.contains("final usage flush written"), "{stderr}");
    assert_eq!(stored_use_count(&db, &id).await, 7);

    // Arrange again: 7 more unwritten uses, and a store that stays away.
    let (server, id) = seven_unwritten_uses(&db, dir.path(), "second").await;
    let before = stored_use_count(&db, &id).await;
    store_reachable(&db, false).await;

    // Act: SIGTERM; the store is back only after the server has given up.
    let signalled = Instant::now();
    server.sigterm();
    let (_, _, stderr) = server.wait_for_exit(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    store_reachable(&db, true).await;

    // Assert: the server gave up at the deadline, and said how many uses it lost.
    let lost = stderr
        .lines()
        .find(|line| line.contains("usage lost at shutdown"))
        .unwrap_or_else(|| panic!("no loss logged: {stderr}"));
    // The 7 Verify calls, and the admin's own use of its token to create the counted one.
    assert!(lost.contains(r#""tokens":2,"uses":8"#), "{lost}");
    assert!(lost.contains(r#""level":"ERROR""#), "{lost}");
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(
        stored_use_count(&db, &id).await,
        before,
        "nothing was written"
    );
}
