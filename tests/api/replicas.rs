//! Several replicas on one Postgres: a change made through one is refused by the others at
//! once (their caches are evicted through LISTEN/NOTIFY), and a replica whose change feed
//! is down does not trust its cache.

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};
use token_authority::pb::v1::{
    CreateTokenRequest, DeleteTokenRequest, SetTokenEnabledRequest, VerifyRequest, VerifyResponse,
    VerifyResult, token_service_client::TokenServiceClient,
    verify_service_client::VerifyServiceClient,
};
use tonic::transport::Channel;

use crate::helpers::{Backend, Replicas, TestDb, authed, spawn_app, spec};

/// Connects to the test's database with triggers off for this session, to change rows
/// behind the replicas' backs (no NOTIFY), which shows whether they serve from cache.
async fn silent_connection(db: &TestDb) -> PgConnection {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    conn.execute("SET session_replication_role = replica")
        .await
        .unwrap();
    conn
}

async fn set_enabled_silently(conn: &mut PgConnection, name: &str, enabled: bool) {
    sqlx::query("UPDATE tokens SET enabled = $1 WHERE name = $2")
        .bind(enabled)
        .bind(name)
        .execute(&mut *conn)
        .await
        .unwrap();
}

async fn verify(client: &mut VerifyServiceClient<Channel>, secret: &str) -> VerifyResponse {
    client
        .verify(VerifyRequest {
            token: secret.into(),
            ..Default::default()
        })
        .await
        .expect("verify answers")
        .into_inner()
}

/// Verifies until the result is `want`, for at most 10 s; returns how long it took.
async fn until(
    client: &mut VerifyServiceClient<Channel>,
    secret: &str,
    want: VerifyResult,
) -> Duration {
    let start = Instant::now();
    loop {
        let result = verify(client, secret).await.result();
        if result == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still {result:?}, not {want:?}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_is_refused_by_the_other() {
    // Arrange: two server processes on one Postgres.
    let Replicas {
        db,
        a,
        b,
        admin,
        _dir,
    } = Replicas::start().await;
    let mut tokens_a = TokenServiceClient::connect(format!("http://127.0.0.1:{}", a.port))
        .await
        .unwrap();
    let mut verify_b = VerifyServiceClient::connect(format!("http://127.0.0.1:{}", b.port))
        .await
        .unwrap();
    let mut silent = silent_connection(&db).await;
    let create = |name: &str| CreateTokenRequest {
        token: Some(spec(name, &[])),
        ttl: None,
    };
    let disabled = tokens_a
        .create_token(authed(&admin, create("to-disable")))
        .await
        .unwrap()
        .into_inner();
    let deleted = tokens_a
        .create_token(authed(&admin, create("to-delete")))
        .await
        .unwrap()
        .into_inner();

    // B serves from its cache: a change made without notification goes unseen there.
    let disabled_id = disabled.token.unwrap().id;
    let mut cached = false;
    for _ in 0..200 {
        // A notified change through A evicts whatever B holds (a probe below may have
        // cached a silently disabled state).
        tokens_a
            .set_token_enabled(authed(
                &admin,
                SetTokenEnabledRequest {
                    id: disabled_id.clone(),
                    enabled: true,
                },
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = verify(&mut verify_b, &disabled.secret).await.valid;
        set_enabled_silently(&mut silent, "to-disable", false).await;
        cached = before && verify(&mut verify_b, &disabled.secret).await.valid;
        set_enabled_silently(&mut silent, "to-disable", true).await;
        if cached {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await; // B's listener is starting
    }
    assert!(cached, "replica B caches verified tokens");
    assert!(verify(&mut verify_b, &deleted.secret).await.valid);

    // Act + Assert: disable and delete through A; B refuses both.
    tokens_a
        .set_token_enabled(authed(
            &admin,
            SetTokenEnabledRequest {
                id: disabled_id,
                enabled: false,
            },
        ))
        .await
        .unwrap();
    let took = until(&mut verify_b, &disabled.secret, VerifyResult::Disabled).await;
    eprintln!("disable reached replica B after {took:?}");
    tokens_a
        .delete_token(authed(
            &admin,
            DeleteTokenRequest {
                id: deleted.token.unwrap().id,
            },
        ))
        .await
        .unwrap();
    let took = until(&mut verify_b, &deleted.secret, VerifyResult::NotFound).await;
    eprintln!("delete reached replica B after {took:?}");

    drop((tokens_a, verify_b));
    assert!(a.terminate().await.0);
    assert!(b.terminate().await.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_change_feed_is_down_the_cache_is_bypassed() {
    // Arrange: a replica that has a token cached.
    let app = spawn_app(Backend::Postgres).await;
    let secret = app.create(spec("watched", &[])).await.secret;
    let mut verifier = app.verifier.clone();
    let mut silent = silent_connection(&app.db).await;
    let id = app
        .all_tokens()
        .await
        .into_iter()
        .find(|t| t.name == "watched")
        .unwrap()
        .id;
    let mut cached = false;
    for _ in 0..200 {
        app.tokens
            .clone()
            .set_token_enabled(authed(
                &app.admin,
                SetTokenEnabledRequest {
                    id: id.clone(),
                    enabled: true,
                },
            ))
            .await
            .unwrap();
        let before = verify(&mut verifier, &secret).await.valid;
        set_enabled_silently(&mut silent, "watched", false).await;
        cached = before && verify(&mut verifier, &secret).await.valid;
        set_enabled_silently(&mut silent, "watched", true).await;
        if cached {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(cached, "the token is served from the cache");
    let database = app.db.url.rsplit('/').next().unwrap().to_owned();
    let admin_url = std::env::var("DATABASE_URL").unwrap();
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();

    // Act: cut the listener off (new connections refused, so it cannot come back), then
    // disable the token without a notification.
    admin
        .execute(format!(r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS false"#).as_str())
        .await
        .unwrap();
    admin
        .execute(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{database}' AND application_name = 'token-authority-listener'"
            )
            .as_str(),
        )
        .await
        .unwrap();
    set_enabled_silently(&mut silent, "watched", false).await;

    // Assert: the replica stops trusting its cache and reads the store.
    until(&mut verifier, &secret, VerifyResult::Disabled).await;

    // And when the feed is back, the cache is flushed, trusted and used again: a silent
    // change then goes unseen.
    admin
        .execute(format!(r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS true"#).as_str())
        .await
        .unwrap();
    // Either direction proves it: a silent disable still answered from an earlier
    // "enabled", or a silent enable still answered from an earlier "disabled". While the
    // cache is bypassed, each answer follows the store.
    let mut cached_again = false;
    for _ in 0..400 {
        set_enabled_silently(&mut silent, "watched", false).await;
        if verify(&mut verifier, &secret).await.result() != VerifyResult::Disabled {
            cached_again = true;
            break;
        }
        set_enabled_silently(&mut silent, "watched", true).await;
        if verify(&mut verifier, &secret).await.result() == VerifyResult::Disabled {
            cached_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        cached_again,
        "the cache is used again once the feed is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_replica_loses_nothing_acknowledged_and_the_other_keeps_serving() {
    // Arrange: two server processes on one Postgres; writes go through A.
    let Replicas {
        mut a,
        b,
        admin,
        _dir,
        ..
    } = Replicas::start().await;
    let mut tokens_a = TokenServiceClient::connect(format!("http://127.0.0.1:{}", a.port))
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let created = tokens_a
            .create_token(authed(
                &admin,
                CreateTokenRequest {
                    token: Some(spec(&format!("acked-{i}"), &[])),
                    ttl: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        acknowledged.push(created);
    }
    let revoked_id = acknowledged[0].token.as_ref().unwrap().id.clone();
    tokens_a
        .set_token_enabled(authed(
            &admin,
            SetTokenEnabledRequest {
                id: revoked_id,
                enabled: false,
            },
        ))
        .await
        .unwrap();

    // Act: B is under Verify load while A is killed with SIGKILL.
    let b_target = format!("http://127.0.0.1:{}", b.port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let secret = acknowledged[1].secret.clone();
        let mut client = VerifyServiceClient::connect(b_target.clone())
            .await
            .unwrap();
        tokio::spawn(async move {
            let (mut calls, mut failures) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                calls += 1;
                match client
                    .verify(VerifyRequest {
                        token: secret.clone(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(answer) if answer.get_ref().valid => {}
                    _ => failures += 1,
                }
            }
            (calls, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failures) = load.await.unwrap();

    // Assert: B answered every call, and every acknowledged write is there.
    assert!(calls > 10, "B was under load ({calls} calls)");
    assert_eq!(
        failures, 0,
        "B failed {failures} of {calls} calls while A died"
    );
    let mut verify_b = VerifyServiceClient::connect(b_target.clone())
        .await
        .unwrap();
    let mut tokens_b = TokenServiceClient::connect(b_target).await.unwrap();
    for (i, created) in acknowledged.iter().enumerate() {
        let want = if i == 0 {
            VerifyResult::Disabled
        } else {
            VerifyResult::Ok
        };
        assert_eq!(
            verify(&mut verify_b, &created.secret).await.result(),
            want,
            "token {i}"
        );
    }
    let listed = tokens_b
        .list_tokens(authed(
            &admin,
            token_authority::pb::v1::ListTokensRequest {
                name_prefix: "acked-".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 20);
}
