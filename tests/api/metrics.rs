//! The Prometheus endpoint, scraped over real HTTP after real gRPC calls: calls by method
//! and code, verdicts, the cache, the change listener and the store's pool; and no label
//! that a caller can choose.

use std::time::Duration;

use token_authority::{
    domain::secret::{TokenPrefix, TokenSecret},
    pb::v1::{GetTokenRequest, SetTokenEnabledRequest, VerifyResult},
};
use tonic::Code;

use crate::{
    both_backends,
    helpers::{
        Backend, TestApp, TestDb, authed, metered_settings, sample, scrape, spawn_with, spec,
    },
};

both_backends!(
    metrics_count_calls_verdicts_the_cache_and_the_store,
    check_verdicts_are_counted_apart_from_verify,
);

async fn spawn_metered(backend: Backend) -> (TestApp, u16) {
    let db = TestDb::fresh(backend).await;
    let settings = metered_settings(&db);
    let app = spawn_with(db, settings, None).await;
    let port = app.metrics_port.expect("metrics are on");
    (app, port)
}

/// Scrapes until `series` reaches at least `min`, and returns that scrape.
async fn scrape_until(port: u16, series: &str, min: f64) -> String {
    for _ in 0..200 {
        let text = scrape(port).await;
        if sample(&text, series).is_some_and(|v| v >= min) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{series} never reached {min}:\n{}", scrape(port).await);
}

async fn check_verdicts_are_counted_apart_from_verify(backend: Backend) {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    let (app, port) = spawn_metered(backend).await;
    let secret = app.create(spec("checked", &["reports:read"])).await.secret;
    let unknown = TokenSecret::generate(&TokenPrefix::default());
    let mut client = AuthorizationClient::new(app.channel.clone());
    for presented in [secret.as_str(), secret.as_str(), unknown.expose()] {
        let auth = format!("Bearer {presented}");
        client
            .check(crate::ext_authz::request(
                "GET",
                "/reports/1",
                &[("authorization", &auth)],
            ))
            .await
            .unwrap();
    }
    let ok = r#"token_authority_verdicts_total{service="check",result="ok"}"#;
    let text = scrape_until(port, ok, 2.0).await;
    assert_eq!(sample(&text, ok), Some(2.0));
    assert_eq!(
        sample(
            &text,
            r#"token_authority_verdicts_total{service="check",result="not_found"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"token_authority_verdicts_total{service="verify",result="ok"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"grpc_server_handled_total{grpc_service="envoy.service.auth.v3.Authorization",grpc_method="Check",grpc_code="OK"}"#
        ),
        Some(3.0)
    );
}

fn rpc(method: &str, code: &str) -> String {
    let service = match method {
        "Verify" => "tokenauthority.v1.VerifyService",
        _ => "tokenauthority.v1.TokenService",
    };
    format!(r#"{{grpc_service="{service}",grpc_method="{method}",grpc_code="{code}"}}"#)
}

async fn metrics_count_calls_verdicts_the_cache_and_the_store(backend: Backend) {
    // Arrange: a server whose cache is trusted (on Postgres, once it listens for changes).
    let (app, port) = spawn_metered(backend).await;
    let (state, invalidations) = match backend {
        Backend::Sqlite => ("single_node", 0.0),
        Backend::Postgres => ("listening", 1.0),
    };
    let listening = format!(r#"token_authority_change_listener_state{{state="{state}"}}"#);
    scrape_until(port, &listening, 1.0).await;
    let created = app.create(spec("metered", &["a:read"])).await;
    let id = created.token.unwrap().id;
    // On Postgres the creation comes back as a notification; let it land first, so that
    // it cannot evict a lookup's result in the middle of what is counted below.
    scrape_until(
        port,
        "token_authority_invalidations_received_total",
        invalidations,
    )
    .await;
    let unknown = TokenSecret::generate(&TokenPrefix::default());

    // Act: Verify ok twice, not_found twice, malformed and permission_denied once each; a
    // refused management call; a disable.
    for _ in 0..2 {
        assert!(app.verify_perms(&created.secret, &["a:read"]).await.valid);
        let answer = app.verify_perms(unknown.expose(), &[]).await;
        assert_eq!(answer.result(), VerifyResult::NotFound);
    }
    let malformed = app.verify_perms("ta_not-a-token", &[]).await;
    assert_eq!(malformed.result(), VerifyResult::Malformed);
    let denied = app.verify_perms(&created.secret, &["a:write"]).await;
    assert_eq!(denied.result(), VerifyResult::PermissionDenied);
    let refused = app
        .tokens
        .clone()
        .get_token(GetTokenRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest { id, enabled: false },
        ))
        .await
        .unwrap();
    let text = scrape_until(
        port,
        "token_authority_invalidations_received_total",
        invalidations * 2.0,
    )
    .await;

    // Assert: calls by method and code, with their latency.
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        value(&format!("grpc_server_handled_total{}", rpc("Verify", "OK"))),
        6.0
    );
    assert_eq!(
        value(&format!(
            "grpc_server_handled_total{}",
            rpc("CreateToken", "OK")
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "grpc_server_handled_total{}",
            rpc("GetToken", "Unauthenticated")
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "grpc_server_handled_total{}",
            rpc("SetTokenEnabled", "OK")
        )),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("grpc_server_handled_total{}", rpc("GetToken", "OK"))
        ),
        None
    );
    let verify_ok = rpc("Verify", "OK");
    let labels = verify_ok.trim_start_matches('{');
    assert_eq!(
        value(&format!("grpc_server_handling_seconds_count{verify_ok}")),
        6.0
    );
    assert_eq!(
        value(&format!(
            r#"grpc_server_handling_seconds_bucket{{le="+Inf",{labels}"#
        )),
        6.0
    );
    assert!(value(&format!("grpc_server_handling_seconds_sum{verify_ok}")) > 0.0);

    // Verdicts by result, every result listed.
    for (result, count) in [
        ("ok", 2.0),
        ("not_found", 2.0),
        ("malformed", 1.0),
        ("permission_denied", 1.0),
        ("disabled", 0.0),
    ] {
        let series =
            format!(r#"token_authority_verdicts_total{{service="verify",result="{result}"}}"#);
        assert_eq!(value(&series), count, "{series}");
    }

    // The cache: five lookups (a malformed token needs none); the unknown secret missed,
    // then was remembered; the token missed once (a creation caches nothing, so that no
    // revocation racing it can leave a stale entry), then was cached, unless (Postgres)
    // its own creation's notification evicted it after that.
    let hits = value(r#"token_authority_cache_hits_total{entry="token"}"#);
    let negative_hits = value(r#"token_authority_cache_hits_total{entry="negative"}"#);
    let misses = value("token_authority_cache_misses_total");
    assert_eq!(negative_hits, 1.0);
    assert_eq!(hits + negative_hits + misses, 5.0);
    match backend {
        Backend::Sqlite => assert_eq!((hits, misses), (2.0, 2.0)),
        Backend::Postgres => assert!(hits >= 1.0, "{hits}"),
    }
    assert_eq!(value("token_authority_cache_bypassed_total"), 0.0);
    assert!(value(r#"token_authority_cache_evictions_total{reason="changed"}"#) >= 1.0);
    assert_eq!(
        value(r#"token_authority_cache_evictions_total{reason="capacity"}"#),
        0.0
    );
    assert_eq!(
        value(r#"token_authority_cache_entries{entry="negative"}"#),
        1.0
    );

    // The change listener.
    assert_eq!(value(&listening), 1.0);
    assert_eq!(
        value(r#"token_authority_change_listener_state{state="connecting"}"#),
        0.0
    );
    let heard = value("token_authority_invalidations_received_total");
    assert!(heard >= invalidations * 2.0, "{heard}");

    // The store's pool.
    assert_eq!(value("token_authority_store_pool_max_connections"), 8.0);
    let open = value(r#"token_authority_store_pool_connections{state="idle"}"#)
        + value(r#"token_authority_store_pool_connections{state="in_use"}"#);
    assert!((1.0..=8.0).contains(&open), "{open}");
    assert!(value("token_authority_store_pool_acquire_seconds_count") >= 4.0);
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_caller_chosen_value_becomes_a_label() {
    // Arrange
    let (app, port) = spawn_metered(Backend::Sqlite).await;
    let created = app.create(spec("labelled", &["a:read"])).await;
    let unknown = TokenSecret::generate(&TokenPrefix::default());

    // Act: present secrets every way a caller can, and call a method that does not exist,
    // named after a secret.
    app.verify_perms(&created.secret, &["a:read"]).await;
    app.verify_perms(unknown.expose(), &[]).await;
    app.tokens
        .clone()
        .get_token(authed(unknown.expose(), GetTokenRequest::default()))
        .await
        .unwrap_err();
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let path = format!("/{0}.Service/{0}", created.secret).parse().unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let unimplemented = grpc
        .unary(tonic::Request::new(()), path, codec)
        .await
        .unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);
    let text = scrape(port).await;

    // Assert: no secret, nor any part of one; the unknown method counted as "unknown".
    for secret in [&created.secret, unknown.expose(), &app.admin] {
        let random = &secret[3..];
        assert!(
            !text.contains(&random[..16]),
            "a secret in the scrape:\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            r#"grpc_server_handled_total{grpc_service="unknown",grpc_method="unknown",grpc_code="Unimplemented"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // And every label value comes from a fixed list.
    let fixed: Vec<&str> = token_authority::metrics::rpc::KNOWN_METHODS
        .iter()
        .flat_map(|path| {
            let (service, method) = path[1..].split_once('/').unwrap();
            [service, method]
        })
        .chain([
            "unknown",
            "OK",
            "NotFound",
            "Unauthenticated",
            "Unimplemented",
        ])
        .chain([
            "verify",
            "check",
            "forward_auth",
            "token",
            "negative",
            "changed",
            "flushed",
        ])
        .chain([
            "expired",
            "capacity",
            "connecting",
            "listening",
            "single_node",
        ])
        .chain(["idle", "in_use"])
        .chain(token_authority::metrics::LeakSource::ALL.map(|s| s.as_str()))
        .chain(["revoked", "unknown"])
        .chain(["address", "overall"])
        .chain(token_authority::metrics::http::Route::ALL.map(|r| r.as_str()))
        .chain(token_authority::domain::verify::Outcome::ALL.map(|o| o.as_str()))
        .collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        let labels = &labels[..labels.rfind('}').unwrap()];
        for pair in labels.split(',') {
            let (key, value) = pair.split_once('=').unwrap();
            let value = value.trim_matches('"');
            if key == "le" {
                assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
            } else {
                assert!(
                    fixed.contains(&value),
                    "{value:?} is not a fixed label: {line}"
                );
            }
        }
    }
}
