//! Verify's store lookups on cache misses, through the real server on both backends: the
//! batching loader answers every concurrent Verify right, in fewer queries than misses;
//! a revocation is never answered valid after it returned; a flood of unknown secrets
//! from one client spends only its budget, while real tokens of others still verify.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, authorization_client::AuthorizationClient,
};
use hyper::StatusCode;
use token_authority::{
    domain::secret::TokenSecret,
    pb::v1::{DeleteTokenRequest, SetTokenEnabledRequest, VerifyRequest, VerifyResult},
    verifier::LookupSettings,
};
use tonic::Code;

use crate::{
    both_backends,
    helpers::{
        Backend, TestApp, TestDb, authed, http_request, metered_settings, sample, scrape,
        spawn_with, spec,
    },
};

both_backends!(
    concurrent_verifies_are_batched_and_each_is_answered_right,
    a_revoked_token_is_never_valid_after_the_revocation_returned,
    a_flooding_client_spends_only_its_budget,
    an_unreadable_forwarded_chain_charges_the_proxy_not_no_one,
    unknown_secrets_evict_no_cached_token,
);

/// A server with a cache of `max_entries` whose change listener listens (so the cache is
/// trusted from the first Verify on).
async fn start(backend: Backend, max_entries: u64, lookups: LookupSettings) -> TestApp {
    let db = TestDb::fresh(backend).await;
    let mut settings = metered_settings(&db);
    settings.cache.max_entries = max_entries;
    settings.lookups = lookups;
    settings.http_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = spawn_with(db, settings, None).await;
    let state = match backend {
        Backend::Postgres => "listening",
        Backend::Sqlite => "single_node",
    };
    let series = format!("token_authority_change_listener_state{{state=\"{state}\"}}");
    for _ in 0..5000 {
        if sample(&scrape(app.metrics_port.unwrap()).await, &series) == Some(1.0) {
            return app;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!("the change listener did not start");
}

/// No budget: every miss reaches the loader.
fn unlimited() -> LookupSettings {
    LookupSettings {
        unknown_per_address: 0,
        unknown_overall: 0,
        ..Default::default()
    }
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = scrape(app.metrics_port.unwrap()).await;
    sample(&text, series).unwrap_or_else(|| panic!("{series} in {text}"))
}

fn unknown_secret() -> String {
    TokenSecret::generate(&Default::default())
        .expose()
        .to_owned()
}

async fn set_enabled(app: &TestApp, id: &str, enabled: bool) {
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: id.into(),
                enabled,
            },
        ))
        .await
        .expect("admin sets enabled");
}

fn verify_from(secret: &str, client: &str) -> VerifyRequest {
    VerifyRequest {
        token: secret.into(),
        client_ip: client.into(),
        ..Default::default()
    }
}

async fn concurrent_verifies_are_batched_and_each_is_answered_right(backend: Backend) {
    // No cache: every Verify is a miss, so the loader alone answers each of them.
    let app = start(backend, 0, unlimited()).await;
    let mut expected: Vec<(String, VerifyResult)> = Vec::new();
    for i in 0..24 {
        let created = app.create(spec(&format!("t{i}"), &[])).await;
        let id = created.token.unwrap().id;
        let result = match i % 4 {
            0 => {
                set_enabled(&app, &id, false).await;
                VerifyResult::Disabled
            }
            1 => {
                app.tokens
                    .clone()
                    .delete_token(authed(&app.admin, DeleteTokenRequest { id }))
                    .await
                    .expect("deleted");
                VerifyResult::NotFound
            }
            _ => VerifyResult::Ok,
        };
        expected.push((created.secret, result));
    }
    for _ in 0..8 {
        expected.push((unknown_secret(), VerifyResult::NotFound));
    }
    let lookups_before = metric(&app, "token_authority_verify_store_lookups_total").await;
    let queries_before = metric(&app, "token_authority_verify_store_queries_total").await;

    // Each secret verified 10 times at once, from 4 connections: distinct and identical
    // misses side by side.
    let channels: Vec<_> = (0..4)
        .map(|_| {
            let endpoint = tonic::transport::Channel::from_shared(format!("http://{}", app.target));
            endpoint.unwrap().connect_lazy()
        })
        .collect();
    let mut tasks = Vec::new();
    for round in 0..10 {
        for (i, (secret, want)) in expected.iter().enumerate() {
            let mut client =
                token_authority::pb::v1::verify_service_client::VerifyServiceClient::new(
                    channels[(i + round) % channels.len()].clone(),
                );
            let (secret, want) = (secret.clone(), *want);
            tasks.push(tokio::spawn(async move {
                let answer = client
                    .verify(VerifyRequest {
                        token: secret,
                        ..Default::default()
                    })
                    .await
                    .expect("verify answers")
                    .into_inner();
                (answer.result(), answer.valid, want)
            }));
        }
    }
    let total = tasks.len() as f64;
    for task in tasks {
        let (got, valid, want) = task.await.unwrap();
        assert_eq!(got, want);
        assert_eq!(valid, want == VerifyResult::Ok);
    }
    let lookups = metric(&app, "token_authority_verify_store_lookups_total").await - lookups_before;
    let queries = metric(&app, "token_authority_verify_store_queries_total").await - queries_before;
    assert_eq!(lookups, total, "every Verify missed the disabled cache");
    assert!(
        queries < lookups,
        "{queries} store queries for {lookups} misses: batched"
    );
    let shared = metric(&app, "token_authority_verify_store_lookups_shared_total").await;
    assert!(shared > 0.0, "identical misses shared a lookup");
}

async fn a_revoked_token_is_never_valid_after_the_revocation_returned(backend: Backend) {
    for max_entries in [10_000, 0] {
        let app = start(backend, max_entries, unlimited()).await;
        let created = app.create(spec("victim", &[])).await;
        let id = created.token.unwrap().id;
        let revoked = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (mut client, secret, revoked) = (
                app.verifier.clone(),
                created.secret.clone(),
                revoked.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut stale = 0;
                let mut after = 0;
                while after < 50 {
                    // Read before the call: a Verify that began after the revocation returned.
                    let began_after = revoked.load(Ordering::SeqCst);
                    let answer = client
                        .verify(VerifyRequest {
                            token: secret.clone(),
                            ..Default::default()
                        })
                        .await
                        .expect("verify answers")
                        .into_inner();
                    if began_after {
                        after += 1;
                        if answer.valid {
                            stale += 1;
                        }
                    }
                }
                stale
            }));
        }
        // Let the verifies run, then revoke in the middle of them.
        for _ in 0..20 {
            app.verify_perms(&created.secret, &[]).await;
        }
        set_enabled(&app, &id, false).await;
        revoked.store(true, Ordering::SeqCst);
        for task in tasks {
            assert_eq!(
                task.await.unwrap(),
                0,
                "cache of {max_entries}: no Verify that began after the revocation is valid"
            );
        }
    }
}

async fn a_flooding_client_spends_only_its_budget(backend: Backend) {
    // 2 unknown secrets a second per address, a burst of 4.
    let app = start(
        backend,
        10_000,
        LookupSettings {
            unknown_per_address: 2,
            unknown_overall: 0,
            ..Default::default()
        },
    )
    .await;
    let real = app.create(spec("real", &[])).await.secret;
    let uncached = app.create(spec("uncached", &[])).await.secret;
    let gated = app.create(spec("gated", &["reports:read"])).await.secret;
    let checked = app.create(spec("checked", &["reports:read"])).await.secret;
    let answer = app.verify(verify_from(&real, "10.0.0.2")).await;
    assert!(answer.valid, "cached now");
    let secrets_before = metric(&app, "token_authority_verify_store_secrets_total").await;

    let started = Instant::now();
    let flood: Vec<String> = (0..60).map(|_| unknown_secret()).collect();
    let (mut not_found, mut exhausted) = (Vec::new(), 0);
    for secret in &flood {
        match app
            .verifier
            .clone()
            .verify(verify_from(secret, "10.0.0.1"))
            .await
        {
            Ok(answer) => {
                assert_eq!(answer.into_inner().result(), VerifyResult::NotFound);
                not_found.push(secret.clone());
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("unknown tokens"), "{status:?}");
                exhausted += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst, and what refilled meanwhile (measured, not assumed).
    let budget = 4.0 + 2.0 * elapsed;
    assert!(exhausted > 0, "the flood went over its budget");
    assert!(
        not_found.len() as f64 <= budget,
        "{} > {budget}",
        not_found.len()
    );
    let looked_up =
        metric(&app, "token_authority_verify_store_secrets_total").await - secrets_before;
    assert_eq!(
        looked_up,
        not_found.len() as f64,
        "refused lookups never reach the store"
    );
    let refused = metric(
        &app,
        "token_authority_verify_lookups_refused_total{budget=\"address\"}",
    )
    .await;
    assert_eq!(refused, f64::from(exhausted));

    // Over budget, the flooding address still gets cached answers: the real token, and a
    // remembered unknown secret.
    assert!(app.verify(verify_from(&real, "10.0.0.1")).await.valid);
    let remembered = app.verify(verify_from(&not_found[0], "10.0.0.1")).await;
    assert_eq!(remembered.result(), VerifyResult::NotFound);
    // A real token it has not verified is not called invalid: it is refused for now.
    let status = app
        .verifier
        .clone()
        .verify(verify_from(&uncached, "10.0.0.1"))
        .await
        .expect_err("over budget");
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Other addresses are untouched: the cached token, and one read from the store.
    assert!(app.verify(verify_from(&real, "10.0.0.2")).await.valid);
    assert!(app.verify(verify_from(&uncached, "10.0.0.3")).await.valid);

    // Gateways: forward auth counts the client the proxy names, and answers 429, not 401.
    let addr: SocketAddr = format!("127.0.0.1:{}", app.http_port.unwrap())
        .parse()
        .unwrap();
    let mut statuses = HashMap::new();
    for _ in 0..30 {
        let auth = format!("Bearer {}", unknown_secret());
        let (status, _, body) = http_request(
            addr,
            "GET",
            "/v1/forward-auth",
            &[("authorization", &auth), ("x-forwarded-for", "10.0.0.9")],
        )
        .await
        .expect("answers");
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(body.contains("LOOKUPS_EXHAUSTED"), "{body}");
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert!(
        statuses.contains_key(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .keys()
            .filter(|s| **s != StatusCode::TOO_MANY_REQUESTS && **s != StatusCode::UNAUTHORIZED)
            .count(),
        0,
        "{statuses:?}"
    );
    let auth = format!("Bearer {gated}");
    let (status, _, body) = http_request(
        addr,
        "GET",
        "/v1/forward-auth",
        &[
            ("authorization", &auth),
            ("x-forwarded-for", "10.0.0.10"),
            ("x-original-uri", "/reports/1"),
            ("x-original-method", "GET"),
        ],
    )
    .await
    .expect("answers");
    assert_eq!(
        status,
        StatusCode::OK,
        "another client behind the same gateway: {body}"
    );

    // Envoy's Check counts the source address Envoy names, and denies with 429: an
    // answer, not a gRPC error that `failure_mode_allow` could let through.
    let mut client = AuthorizationClient::new(app.channel.clone());
    let mut codes = HashMap::new();
    for _ in 0..30 {
        let auth = format!("Bearer {}", unknown_secret());
        let request = check_request("10.0.0.20", &auth);
        let answer = client.check(request).await.expect("an answer").into_inner();
        *codes.entry(answer.status.map(|s| s.code)).or_insert(0) += 1;
    }
    let exhausted = Some(Code::ResourceExhausted as i32);
    let unauthenticated = Some(Code::Unauthenticated as i32);
    assert!(codes.contains_key(&exhausted), "{codes:?}");
    assert!(
        codes
            .keys()
            .all(|c| *c == exhausted || *c == unauthenticated),
        "{codes:?}"
    );
    let auth = format!("Bearer {checked}");
    let answer = client
        .check(check_request("10.0.0.21", &auth))
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(
        answer.status.map(|s| s.code),
        Some(0),
        "another client of the same Envoy"
    );
}

async fn an_unreadable_forwarded_chain_charges_the_proxy_not_no_one(backend: Backend) {
    // The test client (127.0.0.1) is a trusted proxy of the gRPC port. A client behind it
    // that sends an `x-forwarded-for` no one can read (not visible ASCII: the proxy appends
    // its own entry to it) makes its address unknown, and so is whether the `client_ip`s
    // it names are real. Its flood of unknown secrets, naming a new made-up client each
    // time, must still be charged to someone: the proxy's own client bucket. Not to no one
    // (it slipped past every per-address budget), and not to the proxy's caller share,
    // which the same proxy's Check calls live on (the flood would starve those).
    let db = TestDb::fresh(backend).await;
    let mut settings = metered_settings(&db);
    settings.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    settings.lookups = LookupSettings {
        unknown_per_address: 2,
        unknown_overall: 0,
        ..Default::default()
    };
    let app = spawn_with(db, settings, None).await;
    let checked = app.create(spec("checked", &["reports:read"])).await.secret;
    let unreadable = tonic::metadata::MetadataValue::try_from(&b"\xff, 198.51.100.7"[..])
        .expect("obs-text is a valid header value");
    let started = Instant::now();
    let (mut not_found, mut exhausted) = (0, 0);
    // More than the caller share's burst (10 clients' worth: 40).
    for i in 0..80 {
        let mut request = tonic::Request::new(VerifyRequest {
            token: unknown_secret(),
            client_ip: format!("10.{}.{}.1", i / 200, i % 200),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-forwarded-for", unreadable.clone());
        match app.verifier.clone().verify(request).await {
            Ok(answer) => {
                assert_eq!(answer.into_inner().result(), VerifyResult::NotFound);
                not_found += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                exhausted += 1;
            }
        }
    }
    let budget = 4.0 + 2.0 * started.elapsed().as_secs_f64();
    assert!(
        exhausted > 0,
        "the flood was limited ({not_found} looked up)"
    );
    assert!(f64::from(not_found) <= budget, "{not_found} > {budget}");
    let refused = metric(
        &app,
        "token_authority_verify_lookups_refused_total{budget=\"address\"}",
    )
    .await;
    assert_eq!(refused, f64::from(exhausted), "by the per-address budget");

    // The same proxy, as the Envoy of a gateway, still has its caller share: a Check of a
    // token no one has verified yet is looked up and allowed.
    let mut client = AuthorizationClient::new(app.channel.clone());
    let auth = format!("Bearer {checked}");
    let answer = client
        .check(check_request("10.200.0.1", &auth))
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(
        answer.status.as_ref().map(|s| s.code),
        Some(0),
        "{answer:?}"
    );
}

fn check_request(source: &str, authorization: &str) -> CheckRequest {
    crate::ext_authz::request_from(
        source,
        "GET",
        "/reports/1",
        &[("authorization", authorization)],
        &[],
    )
}

async fn unknown_secrets_evict_no_cached_token(backend: Backend) {
    // Room for many more tokens than 10 (the cache is sharded, each shard a share of it),
    // and four times as many unknown secrets as there is room for negative entries.
    let app = start(backend, 500, unlimited()).await;
    let mut real = Vec::new();
    for i in 0..10 {
        real.push(app.create(spec(&format!("r{i}"), &[])).await.secret);
    }
    // On Postgres each creation is also heard on the change feed, and evicts the secret's
    // entry when it arrives: let those arrive before the tokens are cached.
    if backend == Backend::Postgres {
        let heard = "token_authority_invalidations_received_total";
        for _ in 0..5000 {
            if metric(&app, heard).await >= 10.0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    for secret in &real {
        assert!(app.verify_perms(secret, &[]).await.valid);
    }
    for _ in 0..2000 {
        let answer = app.verify_perms(&unknown_secret(), &[]).await;
        assert_eq!(answer.result(), VerifyResult::NotFound);
    }
    let text = scrape(app.metrics_port.unwrap()).await;
    assert_eq!(
        sample(&text, "token_authority_cache_entries{entry=\"token\"}"),
        Some(10.0),
        "{text}"
    );
    let evicted = sample(
        &text,
        "token_authority_cache_evictions_total{reason=\"capacity\"}",
    );
    assert!(
        evicted.unwrap() >= 1000.0,
        "negative entries were evicted, by each other: {text}"
    );
    let lookups = metric(&app, "token_authority_verify_store_lookups_total").await;
    for secret in &real {
        assert!(app.verify_perms(secret, &[]).await.valid);
    }
    assert_eq!(
        metric(&app, "token_authority_verify_store_lookups_total").await,
        lookups,
        "every real token answered from the cache after the flood"
    );
}
