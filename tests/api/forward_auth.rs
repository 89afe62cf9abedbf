//! Forward auth on the HTTP port, through the real server over real HTTP: what each proxy
//! sends (X-Original-*, X-Forwarded-*, Envoy's appended path), what only a trusted proxy
//! is believed on, route settings in the auth URL's path and never in the query, and the
//! answers (200 with every identity header, 401/403/429 with their challenge).

use std::{collections::HashMap, net::SocketAddr};

use hyper::StatusCode;
use token_authority::pb::v1::{RateLimit, SetTokenEnabledRequest, Token};

use crate::{
    both_backends,
    helpers::{Backend, TestApp, TestDb, authed, http_request, scrape, spawn_with, spec},
};

both_backends!(
    an_allowed_request_gets_every_identity_header,
    the_original_request_is_read_from_a_trusted_proxys_headers,
    an_untrusted_peers_headers_are_not_believed,
    route_settings_come_from_the_auth_urls_path_never_the_query,
    refusals_are_401_403_and_429_with_their_challenge,
    bound_tokens_fail_closed_at_the_gateway,
    a_revoked_token_is_refused_on_the_next_request,
    requests_are_counted_by_route_and_status,
    describing_headers_that_disagree_are_refused,
);

type Answer = (StatusCode, HashMap<String, String>, String);

async fn start(backend: Backend, trusted: &[&str]) -> TestApp {
    let db = TestDb::fresh(backend).await;
    let mut settings = crate::helpers::metered_settings(&db);
    settings.http_addr = Some("127.0.0.1:0".parse().unwrap());
    settings.forward_auth_trusted_proxies = trusted.iter().map(|n| n.parse().unwrap()).collect();
    spawn_with(db, settings, None).await
}

async fn ask(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Answer {
    let addr: SocketAddr = format!("127.0.0.1:{}", app.http_port.unwrap())
        .parse()
        .unwrap();
    http_request(addr, "GET", path, headers)
        .await
        .expect("the HTTP port answers")
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

async fn an_allowed_request_gets_every_identity_header(backend: Backend) {
    let app = start(backend, &["127.0.0.0/8"]).await;
    let created = app.create(spec("reader", &["reports:read"])).await;
    let auth = bearer(&created.secret);
    let (status, headers, body) = ask(
        &app,
        "/v1/forward-auth",
        &[
            ("authorization", &auth),
            ("x-original-uri", "/reports/1"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = created.token.unwrap();
    assert_eq!(headers["x-token-id"], token.id);
    assert_eq!(headers["x-token-owner"], token.owner);
    assert_eq!(headers["x-token-name"], "reader");
    assert_eq!(headers["x-token-type"], "personal");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.contains_key("x-request-id"));
    assert!(!body.contains(&created.secret));
    // The API-key header works as for Check.
    let (status, _, _) = ask(
        &app,
        "/v1/forward-auth",
        &[
            ("x-api-key", &created.secret),
            ("x-original-uri", "/reports"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

async fn the_original_request_is_read_from_a_trusted_proxys_headers(backend: Backend) {
    let app = start(backend, &["127.0.0.0/8"]).await;
    let writer = app.create(spec("writer", &["reports:write"])).await.secret;
    let office = app
        .create(Token {
            allowed_cidrs: vec!["203.0.113.0/24".into()],
            allowed_hosts: vec!["api.example.com".into()],
            ..spec("office", &["reports:read"])
        })
        .await
        .secret;
    let (w, o) = (bearer(&writer), bearer(&office));
    let status = |answer: Answer| answer.0;

    // nginx: X-Original-Method and X-Original-URI.
    assert_eq!(
        status(
            ask(
                &app,
                "/v1/forward-auth",
                &[
                    ("authorization", &w),
                    ("x-original-method", "PUT"),
                    ("x-original-uri", "/reports/7")
                ]
            )
            .await
        ),
        StatusCode::OK
    );
    assert_eq!(
        status(
            ask(
                &app,
                "/v1/forward-auth",
                &[
                    ("authorization", &w),
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/reports/7")
                ]
            )
            .await
        ),
        StatusCode::FORBIDDEN,
        "reports:read is needed and not held"
    );
    // Traefik and Caddy: X-Forwarded-Method, -Uri, -Host, -For.
    let traefik = [
        ("authorization", o.as_str()),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/reports/7?x=1"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    assert_eq!(
        status(ask(&app, "/v1/forward-auth", &traefik).await),
        StatusCode::OK
    );
    let mut elsewhere = traefik;
    elsewhere[4] = ("x-forwarded-for", "198.51.100.1");
    assert_eq!(
        status(ask(&app, "/v1/forward-auth", &elsewhere).await),
        StatusCode::FORBIDDEN
    );
    let mut other_host = traefik;
    other_host[3] = ("x-forwarded-host", "evil.example.net");
    assert_eq!(
        status(ask(&app, "/v1/forward-auth", &other_host).await),
        StatusCode::FORBIDDEN
    );
    // An absolute X-Original-URL gives the path and the host.
    assert_eq!(
        status(
            ask(
                &app,
                "/v1/forward-auth",
                &[
                    ("authorization", &o),
                    ("x-original-url", "https://api.example.com/reports/7"),
                    ("x-real-ip", "203.0.113.4")
                ]
            )
            .await
        ),
        StatusCode::OK
    );
    // A chain that cannot be read where it matters leaves the client unknown: a
    // network-limited token fails. (What a client wrote left of the proxies' own entries
    // is never read.)
    let mut unreadable = traefik;
    unreadable[4] = ("x-forwarded-for", "203.0.113.9, not-an-address");
    assert_eq!(
        status(ask(&app, "/v1/forward-auth", &unreadable).await),
        StatusCode::FORBIDDEN
    );
}

async fn an_untrusted_peers_headers_are_not_believed(backend: Backend) {
    let app = start(backend, &[]).await;
    let reader = bearer(&app.create(spec("reader", &["reports:read"])).await.secret);
    // The peer is the client: the forged original request and address are ignored, and
    // the request is judged on its own method and path (here none maps to a permission).
    let (status, _, body) = ask(
        &app,
        "/v1/forward-auth",
        &[
            ("authorization", &reader),
            ("x-original-uri", "/reports/1"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, _) = ask(
        &app,
        "/v1/forward-auth/-/reports/1",
        &[("authorization", &reader)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "its own path, after the dash");
}

async fn route_settings_come_from_the_auth_urls_path_never_the_query(backend: Backend) {
    let app = start(backend, &["127.0.0.0/8"]).await;
    let reader = bearer(&app.create(spec("reader", &["reports:read"])).await.secret);
    let exporter = bearer(
        &app.create(spec("exporter", &["reports:read", "reports:export"]))
            .await
            .secret,
    );
    let original = |auth: &str| {
        vec![
            ("authorization".to_owned(), auth.to_owned()),
            ("x-original-uri".to_owned(), "/reports/1".to_owned()),
        ]
    };
    let go = |path: &'static str, headers: Vec<(String, String)>| {
        let app = &app;
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            ask(app, path, &headers).await.0
        }
    };
    // The route needs reports:export, whatever the default mapping would say.
    assert_eq!(
        go("/v1/forward-auth/require/reports:export", original(&reader)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        go(
            "/v1/forward-auth/require/reports:export",
            original(&exporter)
        )
        .await,
        StatusCode::OK
    );
    // The client's query cannot lower it (Caddy and Envoy pass it through).
    assert_eq!(
        go(
            "/v1/forward-auth/require/reports:export?require=reports:read",
            original(&reader)
        )
        .await,
        StatusCode::FORBIDDEN
    );
    // Envoy's HTTP mode: the original path after the dash, never read as settings.
    assert_eq!(
        go(
            "/v1/forward-auth/require/reports:export/-/require/reports:read",
            vec![("authorization".into(), reader.clone())]
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        go(
            "/v1/forward-auth/-/reports/1",
            vec![("authorization".into(), reader.clone())]
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        go(
            "/v1/forward-auth/-/reports/1?x=y",
            vec![("authorization".into(), reader.clone())]
        )
        .await,
        StatusCode::OK
    );
    // An empty list asks only for a valid token.
    assert_eq!(
        go(
            "/v1/forward-auth/require/,/-/anything/at/all",
            vec![("authorization".into(), reader.clone())]
        )
        .await,
        StatusCode::OK
    );
    // A URL the proxy's configuration got wrong refuses everything, and says why.
    let (status, _, body) = ask(
        &app,
        "/v1/forward-auth/requires/x:y",
        &[("authorization", &reader)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("is not a setting"), "{body}");
}

async fn refusals_are_401_403_and_429_with_their_challenge(backend: Backend) {
    let app = start(backend, &["127.0.0.0/8"]).await;
    let uri = ("x-original-uri", "/reports/1");
    let (status, headers, body) = ask(&app, "/v1/forward-auth", &[uri]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers["www-authenticate"].contains("error=\"invalid_token\""),
        "{headers:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["result"], "MISSING");
    assert_eq!(headers["content-type"], "application/json");

    let (status, _, body) = ask(
        &app,
        "/v1/forward-auth",
        &[uri, ("authorization", "Bearer ta_nope")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("MALFORMED"), "{body}");

    let other = bearer(&app.create(spec("other", &["domains:read"])).await.secret);
    let (status, headers, body) =
        ask(&app, "/v1/forward-auth", &[uri, ("authorization", &other)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers["www-authenticate"].contains("error=\"insufficient_scope\""));
    assert!(headers["www-authenticate"].contains("scope=\"reports:read\""));
    assert!(body.contains("PERMISSION_DENIED"), "{body}");

    let limited = app
        .create(Token {
            rate_limit: Some(RateLimit {
                requests: 1,
                interval: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            }),
            ..spec("limited", &["reports:read"])
        })
        .await
        .secret;
    let limited = bearer(&limited);
    assert_eq!(
        ask(
            &app,
            "/v1/forward-auth",
            &[uri, ("authorization", &limited)]
        )
        .await
        .0,
        StatusCode::OK
    );
    let (status, headers, body) = ask(
        &app,
        "/v1/forward-auth",
        &[uri, ("authorization", &limited)],
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!headers.contains_key("www-authenticate"));
    assert!(body.contains("RATE_LIMITED"), "{body}");
}

async fn bound_tokens_fail_closed_at_the_gateway(backend: Backend) {
    let app = start(backend, &["127.0.0.0/8"]).await;
    let bound = bearer(
        &app.create(Token {
            bindings: [("reportId".to_owned(), "r-17".to_owned())].into(),
            ..spec("bound", &["reports:read", "datasets:read"])
        })
        .await
        .secret,
    );
    let go = |path: &'static str, uri: &'static str| {
        let (app, bound) = (&app, bound.clone());
        async move {
            ask(
                app,
                path,
                &[("authorization", &bound), ("x-original-uri", uri)],
            )
            .await
        }
    };
    let (status, _, body) = go("/v1/forward-auth", "/datasets/1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("BINDING_MISMATCH"), "{body}");
    assert_eq!(
        go("/v1/forward-auth/bind/reportId=r-17", "/datasets/1")
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        go("/v1/forward-auth/bind/reportId=r-18", "/datasets/1")
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        go("/v1/forward-auth/ignore-bindings", "/datasets/1")
            .await
            .0,
        StatusCode::OK
    );
}

async fn a_revoked_token_is_refused_on_the_next_request(backend: Backend) {
    let app = start(backend, &["127.0.0.0/8"]).await;
    let created = app.create(spec("reader", &["reports:read"])).await;
    let auth = bearer(&created.secret);
    let headers = [
        ("authorization", auth.as_str()),
        ("x-original-uri", "/reports"),
    ];
    assert_eq!(
        ask(&app, "/v1/forward-auth", &headers).await.0,
        StatusCode::OK
    );
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: created.token.unwrap().id,
                enabled: false,
            },
        ))
        .await
        .unwrap();
    let (status, _, body) = ask(&app, "/v1/forward-auth", &headers).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("DISABLED"), "{body}");
}

async fn requests_are_counted_by_route_and_status(backend: Backend) {
    let app = start(backend, &["127.0.0.0/8"]).await;
    let reader = bearer(&app.create(spec("reader", &["reports:read"])).await.secret);
    ask(
        &app,
        "/v1/forward-auth",
        &[("authorization", &reader), ("x-original-uri", "/reports")],
    )
    .await;
    ask(&app, "/v1/forward-auth", &[("x-original-uri", "/reports")]).await;
    let (status, _, _) = ask(&app, "/nowhere", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let text = scrape(app.metrics_port.unwrap()).await;
    for series in [
        r#"http_server_requests_total{route="forward_auth",status="200"} 1"#,
        r#"http_server_requests_total{route="forward_auth",status="401"} 1"#,
        r#"http_server_requests_total{route="unknown",status="404"} 1"#,
        r#"token_authority_verdicts_total{service="forward_auth",result="ok"} 1"#,
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }
}

async fn describing_headers_that_disagree_are_refused(backend: Backend) {
    let app = start(backend, &["127.0.0.0/8"]).await;
    let reader = bearer(&app.create(spec("reader", &["reports:read"])).await.secret);
    // ingress-nginx sets X-Original-URL and passes the client's own headers on: a client
    // adding X-Original-URI (or X-Forwarded-Host) of its choosing is refused, not believed.
    for extra in [
        [
            ("x-original-uri", "/reports/public"),
            ("x-original-method", "GET"),
        ],
        [
            ("x-forwarded-host", "internal.example.com"),
            ("x-original-method", "GET"),
        ],
        [
            ("x-forwarded-method", "GET"),
            ("x-original-method", "DELETE"),
        ],
    ] {
        let mut headers = vec![
            ("authorization", reader.as_str()),
            ("x-original-url", "https://api.example.com/reports/secret"),
        ];
        headers.extend(extra);
        let (status, _, body) = ask(&app, "/v1/forward-auth", &headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra:?}: {body}");
        assert!(body.contains("disagree"), "{body}");
    }
    // Agreeing headers are fine; a header sent twice is not.
    let (status, _, _) = ask(
        &app,
        "/v1/forward-auth",
        &[
            ("authorization", &reader),
            ("x-original-url", "https://api.example.com/reports/1"),
            ("x-original-uri", "/reports/1"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = ask(
        &app,
        "/v1/forward-auth",
        &[
            ("authorization", &reader),
            ("x-original-uri", "/reports/1"),
            ("x-original-uri", "/admin"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // An escaped slash is never judged as one segment.
    let (status, _, body) = ask(
        &app,
        "/v1/forward-auth",
        &[
            ("authorization", &reader),
            ("x-original-uri", "/reports/..%2fadmin/1"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}
