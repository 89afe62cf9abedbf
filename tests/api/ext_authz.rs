//! Envoy ext_authz `Check` through the real service: every allow and deny path, with
//! CheckRequests shaped as Envoy sends them.

use std::collections::HashMap;

use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            Address, SocketAddress, address, header_value_option::HeaderAppendAction,
        },
        service::auth::v3::{
            AttributeContext, CheckRequest, CheckResponse,
            attribute_context::{HttpRequest, Peer, Request},
            authorization_client::AuthorizationClient,
            check_response::HttpResponse,
        },
    },
    google::protobuf::value::Kind,
};
use token_authority::{
    authz::{CheckSettings, Rules},
    pb::v1::{SetTokenEnabledRequest, Token},
};
use tonic::Code;

use crate::{
    both_backends,
    helpers::{Backend, TestApp, TestDb, authed, spawn_app, spawn_with, spec, test_settings},
};

both_backends!(
    an_allowed_request_carries_the_identity_and_not_the_credential,
    the_api_key_header_and_any_scheme_case_are_accepted,
    bad_tokens_are_refused_with_401_invalid_token,
    a_revoked_token_is_refused_on_the_next_check,
    unmet_requirements_are_refused_with_403_insufficient_scope,
    context_extensions_name_permissions_and_bindings,
    rules_and_the_path_prefix_decide_the_permission,
    bound_tokens_fail_closed_where_no_route_or_rule_names_their_keys,
    paths_without_a_permission_are_refused_after_the_token_is_judged,
    forwarded_for_counts_only_from_trusted_proxies,
    the_host_is_enforced,
    the_credential_can_be_forwarded_when_configured,
    requests_that_are_not_check_requests_are_invalid_arguments,
);

/// A CheckRequest as Envoy sends it for an HTTP request from `source`.
pub(crate) fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    request_from("127.0.0.1", method, path, headers, &[])
}

pub(crate) fn request_from(
    source: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    extensions: &[(&str, &str)],
) -> CheckRequest {
    let pairs = |list: &[(&str, &str)]| -> HashMap<String, String> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut all_headers = pairs(headers);
    all_headers.insert(":method".into(), method.into());
    all_headers.insert(":path".into(), path.into());
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: source.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "api.example.com".into(),
                    headers: all_headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: pairs(extensions),
            ..Default::default()
        }),
    }
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

async fn check(app: &TestApp, request: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(app.channel.clone())
        .check(request)
        .await
        .expect("check answers")
        .into_inner()
}

/// What an allowed answer tells Envoy.
struct Allowed {
    headers: HashMap<String, String>,
    removed: Vec<String>,
    metadata: HashMap<String, Kind>,
}

fn allowed(response: CheckResponse) -> Allowed {
    assert_eq!(
        response.status.as_ref().map(|s| s.code),
        Some(0),
        "{response:?}"
    );
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
        panic!("not an ok response: {response:?}");
    };
    let mut headers = HashMap::new();
    for option in ok.headers {
        assert_eq!(
            option.append_action(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
            "identity headers replace what the client sent"
        );
        let header = option.header.unwrap();
        headers.insert(header.key, header.value);
    }
    let metadata = response
        .dynamic_metadata
        .unwrap_or_default()
        .fields
        .into_iter()
        .map(|(k, v)| (k, v.kind.unwrap()))
        .collect();
    Allowed {
        headers,
        removed: ok.headers_to_remove,
        metadata,
    }
}

/// What a denied answer tells the client, through Envoy.
#[derive(Debug)]
struct Denied {
    http_status: i32,
    grpc_code: i32,
    challenge: String,
    body: serde_json::Value,
    raw: String,
}

fn denied(response: CheckResponse) -> Denied {
    let raw = format!("{response:?}");
    let Some(HttpResponse::DeniedResponse(deny)) = response.http_response else {
        panic!("not a denied response: {raw}");
    };
    let headers: HashMap<_, _> = deny
        .headers
        .into_iter()
        .map(|o| o.header.unwrap())
        .map(|h| (h.key, h.value))
        .collect();
    assert_eq!(headers["content-type"], "application/json");
    Denied {
        http_status: deny.status.unwrap().code,
        grpc_code: response.status.unwrap().code,
        challenge: headers["www-authenticate"].clone(),
        body: serde_json::from_str(&deny.body).expect("a JSON body"),
        raw,
    }
}

fn assert_401(denial: &Denied, result: &str) {
    assert_eq!(denial.http_status, 401, "{denial:?}");
    assert_eq!(denial.grpc_code, Code::Unauthenticated as i32);
    assert!(
        denial
            .challenge
            .starts_with("Bearer realm=\"token-authority\", error=\"invalid_token\""),
        "{}",
        denial.challenge
    );
    assert_eq!(denial.body["error"], "invalid_token");
    assert_eq!(denial.body["result"], result, "{denial:?}");
}

fn assert_403(denial: &Denied, result: &str) {
    assert_eq!(denial.http_status, 403, "{denial:?}");
    assert_eq!(denial.grpc_code, Code::PermissionDenied as i32);
    assert!(
        denial
            .challenge
            .starts_with("Bearer realm=\"token-authority\", error=\"insufficient_scope\""),
        "{}",
        denial.challenge
    );
    assert_eq!(denial.body["error"], "insufficient_scope");
    assert_eq!(denial.body["result"], result, "{denial:?}");
}

async fn spawn_checking(backend: Backend, settings: CheckSettings) -> TestApp {
    let db = TestDb::fresh(backend).await;
    let mut server = test_settings(&db);
    server.ext_authz = settings;
    spawn_with(db, server, None).await
}

async fn an_allowed_request_carries_the_identity_and_not_the_credential(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut token = spec("reporting", &["reports:read", "domains:*"]);
    token.owner = "team-a".into();
    token.r#type = "personal".into();
    let created = app.create(token).await;
    let id = created.token.unwrap().id;

    let answer = allowed(
        check(
            &app,
            request(
                "GET",
                "/reports/17?page=2",
                &[
                    ("authorization", &bearer(&created.secret)),
                    ("x-token-owner", "someone-else"),
                ],
            ),
        )
        .await,
    );

    assert_eq!(answer.headers["x-token-id"], id);
    assert_eq!(answer.headers["x-token-owner"], "team-a");
    assert_eq!(answer.headers["x-token-name"], "reporting");
    assert_eq!(answer.headers["x-token-type"], "personal");
    assert_eq!(answer.removed, ["authorization"]);
    assert!(matches!(&answer.metadata["token_id"], Kind::StringValue(v) if *v == id));
    assert!(matches!(&answer.metadata["owner"], Kind::StringValue(v) if v == "team-a"));
    let Kind::ListValue(permissions) = &answer.metadata["permissions"] else {
        panic!("permissions are a list");
    };
    let permissions: Vec<_> = permissions
        .values
        .iter()
        .map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => s.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(permissions, ["reports:read", "domains:*"]);
}

async fn the_api_key_header_and_any_scheme_case_are_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = app.create(spec("k", &["reports:read"])).await.secret;

    let by_key = allowed(check(&app, request("GET", "/reports", &[("X-Api-Key", &secret)])).await);
    assert_eq!(by_key.removed, ["x-api-key"]);

    let lower = format!("bearer {secret}");
    allowed(
        check(
            &app,
            request("GET", "/reports", &[("authorization", &lower)]),
        )
        .await,
    );

    // Basic credentials are the upstream's business: the API key still counts, and the
    // Authorization header is left alone.
    let both = allowed(
        check(
            &app,
            request(
                "GET",
                "/reports",
                &[
                    ("authorization", "Basic dXNlcjpwdw=="),
                    ("x-api-key", &secret),
                ],
            ),
        )
        .await,
    );
    assert_eq!(both.removed, ["x-api-key"]);
}

async fn bad_tokens_are_refused_with_401_invalid_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = app.create(spec("gone", &["reports:read"])).await.secret;
    let disabled = app.create(spec("off", &["reports:read"])).await;
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: disabled.token.unwrap().id,
                enabled: false,
            },
        ))
        .await
        .unwrap();
    let expiring = app
        .create_with_ttl(&app.admin, spec("brief", &["reports:read"]), 1)
        .await
        .unwrap()
        .secret;
    let mut typo = secret.clone().into_bytes();
    typo[8] = if typo[8] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    let unknown = {
        let other = spawn_app(Backend::Sqlite).await;
        other.create(spec("elsewhere", &[])).await.secret
    };

    let missing = denied(check(&app, request("GET", "/reports", &[])).await);
    assert_401(&missing, "MISSING");
    let basic_only = denied(
        check(
            &app,
            request(
                "GET",
                "/reports",
                &[("authorization", "Basic dXNlcjpwdw==")],
            ),
        )
        .await,
    );
    assert_401(&basic_only, "MISSING");
    let empty = denied(
        check(
            &app,
            request("GET", "/reports", &[("authorization", "Bearer ")]),
        )
        .await,
    );
    assert_401(&empty, "MALFORMED");
    let malformed = denied(
        check(
            &app,
            request("GET", "/reports", &[("authorization", &bearer(&typo))]),
        )
        .await,
    );
    assert_401(&malformed, "MALFORMED");
    let not_found = denied(
        check(
            &app,
            request("GET", "/reports", &[("authorization", &bearer(&unknown))]),
        )
        .await,
    );
    assert_401(&not_found, "NOT_FOUND");
    let off = denied(
        check(
            &app,
            request(
                "GET",
                "/reports",
                &[("authorization", &bearer(&disabled.secret))],
            ),
        )
        .await,
    );
    assert_401(&off, "DISABLED");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let expired = denied(
        check(
            &app,
            request("GET", "/reports", &[("authorization", &bearer(&expiring))]),
        )
        .await,
    );
    assert_401(&expired, "EXPIRED");

    for denial in [&malformed, &not_found, &off, &expired] {
        for secret in [&typo, &unknown, &disabled.secret, &expiring] {
            assert!(
                !denial.raw.contains(secret.as_str()),
                "a secret in {denial:?}"
            );
        }
    }
}

async fn a_revoked_token_is_refused_on_the_next_check(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create(spec("soon-revoked", &["reports:read"])).await;
    let headers = [("authorization", bearer(&created.secret))];
    let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    allowed(check(&app, request("GET", "/reports", &headers)).await);
    allowed(check(&app, request("GET", "/reports", &headers)).await);

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

    assert_401(
        &denied(check(&app, request("GET", "/reports", &headers)).await),
        "DISABLED",
    );
}

async fn unmet_requirements_are_refused_with_403_insufficient_scope(backend: Backend) {
    let app = spawn_app(backend).await;
    let reader = app.create(spec("reader", &["reports:read"])).await.secret;
    let read_only = app
        .create(Token {
            read_only: true,
            ..spec("ro", &["*:*"])
        })
        .await
        .secret;
    let bound = app
        .create(Token {
            bindings: [("tenant".to_owned(), "acme".to_owned())].into(),
            ..spec("bound", &["*:*"])
        })
        .await
        .secret;
    let networked = app
        .create(Token {
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..spec("net", &["*:*"])
        })
        .await
        .secret;
    let hosted = app
        .create(Token {
            allowed_hosts: vec!["internal.example.com".into()],
            ..spec("host", &["*:*"])
        })
        .await
        .secret;
    let by = |secret: &str| vec![("authorization".to_owned(), bearer(secret))];
    let send = |method: &'static str,
                headers: Vec<(String, String)>,
                extensions: &'static [(&'static str, &'static str)]| {
        let app = &app;
        async move {
            let headers: Vec<_> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            denied(
                check(
                    app,
                    request_from("127.0.0.1", method, "/reports/1", &headers, extensions),
                )
                .await,
            )
        }
    };

    let write = send("DELETE", by(&reader), &[]).await;
    assert_403(&write, "PERMISSION_DENIED");
    assert!(
        write.challenge.contains("scope=\"reports:delete\""),
        "{}",
        write.challenge
    );
    assert!(
        write.body["reason"]
            .as_str()
            .unwrap()
            .contains("reports:delete")
    );
    assert_403(&send("POST", by(&read_only), &[]).await, "READ_ONLY");
    assert_403(
        &send("GET", by(&bound), &[("binding.tenant", "other")]).await,
        "BINDING_MISMATCH",
    );
    assert_403(&send("GET", by(&networked), &[]).await, "IP_NOT_ALLOWED");
    assert_403(&send("GET", by(&hosted), &[]).await, "HOST_NOT_ALLOWED");
}

async fn context_extensions_name_permissions_and_bindings(backend: Backend) {
    let app = spawn_app(backend).await;
    let both = app
        .create(Token {
            bindings: [("tenant".to_owned(), "acme".to_owned())].into(),
            ..spec("both", &["reports:export", "datasources:read"])
        })
        .await
        .secret;
    let one = app.create(spec("one", &["reports:export"])).await.secret;
    let route = [
        ("permission", "reports:export, datasources:read"),
        ("binding.tenant", "acme"),
    ];
    let send = |secret: String| {
        let app = &app;
        async move {
            let auth = bearer(&secret);
            check(
                app,
                request_from(
                    "127.0.0.1",
                    "GET",
                    "/anything",
                    &[("authorization", &auth)],
                    &route,
                ),
            )
            .await
        }
    };

    allowed(send(both).await);
    let missing = denied(send(one).await);
    assert_403(&missing, "PERMISSION_DENIED");
    assert!(
        missing.body["reason"]
            .as_str()
            .unwrap()
            .contains("datasources:read")
    );

    // An empty list asks only for a valid token.
    let anyone = app.create(spec("nobody-special", &[])).await.secret;
    let auth = bearer(&anyone);
    allowed(
        check(
            &app,
            request_from(
                "127.0.0.1",
                "DELETE",
                "/x",
                &[("authorization", &auth)],
                &[("permission", "")],
            ),
        )
        .await,
    );
}

async fn rules_and_the_path_prefix_decide_the_permission(backend: Backend) {
    let rules = Rules::parse(
        r#"
        [[rule]]
        methods = ["POST"]
        path = "/api/reports/{reportId}/export"
        permissions = ["reports:export"]
        "#,
    )
    .unwrap();
    let app = spawn_checking(
        backend,
        CheckSettings {
            rules,
            path_prefix: token_authority::authz::path_prefix("/api").unwrap(),
            ..CheckSettings::default()
        },
    )
    .await;
    let exporter = app
        .create(Token {
            bindings: [("reportId".to_owned(), "r-17".to_owned())].into(),
            ..spec("exporter", &["reports:export"])
        })
        .await
        .secret;
    let reader = app.create(spec("reader", &["reports:read"])).await.secret;
    let go = |secret: &str, method: &str, path: &str| {
        let auth = bearer(secret);
        let request = request(method, path, &[("authorization", &auth)]);
        let app = &app;
        async move { check(app, request).await }
    };

    allowed(go(&exporter, "POST", "/api/reports/r-17/export").await);
    assert_403(
        &denied(go(&exporter, "POST", "/api/reports/r-18/export").await),
        "BINDING_MISMATCH",
    );
    assert_403(
        &denied(go(&reader, "POST", "/api/reports/r-17/%65xport").await),
        "PERMISSION_DENIED",
    );
    // No rule: the default mapping, after the prefix, which names no binding: an unbound
    // token passes on its permissions, a bound one is refused (bindings fail closed).
    allowed(go(&reader, "GET", "/api/reports/r-17").await);
    assert_403(
        &denied(go(&exporter, "GET", "/api/reports/r-17").await),
        "BINDING_MISMATCH",
    );
}

async fn bound_tokens_fail_closed_where_no_route_or_rule_names_their_keys(backend: Backend) {
    let rules = Rules::parse(
        r#"
        [[rule]]
        methods = ["GET"]
        path = "/reports/{reportId}"
        permissions = ["reports:read"]

        [[rule]]
        methods = ["GET"]
        path = "/status"
        permissions = []
        ignore_bindings = true
        "#,
    )
    .unwrap();
    let app = spawn_checking(
        backend,
        CheckSettings {
            rules,
            ..CheckSettings::default()
        },
    )
    .await;
    let bound = app
        .create(Token {
            bindings: [("reportId".to_owned(), "r-17".to_owned())].into(),
            ..spec("bound", &["reports:read", "datasets:read"])
        })
        .await
        .secret;
    let auth = bearer(&bound);
    let go = |path: &str, extensions: &[(&str, &str)]| {
        request_from(
            "127.0.0.1",
            "GET",
            path,
            &[("authorization", auth.as_str())],
            extensions,
        )
    };
    allowed(check(&app, go("/reports/r-17", &[])).await);
    assert_403(
        &denied(check(&app, go("/reports/r-18", &[])).await),
        "BINDING_MISMATCH",
    );
    // The default mapping names no binding: a token bound to r-17 reaches no dataset.
    assert_403(
        &denied(check(&app, go("/datasets/d-1", &[])).await),
        "BINDING_MISMATCH",
    );
    // Unless the rule, or the route, says bindings do not apply there.
    allowed(check(&app, go("/status", &[])).await);
    allowed(check(&app, go("/datasets/d-1", &[("bindings", "ignore")])).await);
    allowed(check(&app, go("/datasets/d-1", &[("binding.reportId", "r-17")])).await);
}

async fn paths_without_a_permission_are_refused_after_the_token_is_judged(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = bearer(&app.admin);
    let unmapped = denied(
        check(
            &app,
            request("OPTIONS", "/reports", &[("authorization", &admin)]),
        )
        .await,
    );
    assert_403(&unmapped, "PERMISSION_DENIED");
    assert!(
        unmapped.body["reason"]
            .as_str()
            .unwrap()
            .contains("OPTIONS")
    );
    assert_403(
        &denied(check(&app, request("GET", "/", &[("authorization", &admin)])).await),
        "PERMISSION_DENIED",
    );
    assert_401(
        &denied(
            check(
                &app,
                request("GET", "/", &[("authorization", "Bearer nope")]),
            )
            .await,
        ),
        "MALFORMED",
    );
}

async fn forwarded_for_counts_only_from_trusted_proxies(backend: Backend) {
    let app = spawn_checking(
        backend,
        CheckSettings {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..CheckSettings::default()
        },
    )
    .await;
    let office = app
        .create(Token {
            allowed_cidrs: vec!["203.0.113.0/24".into()],
            ..spec("office", &["reports:read"])
        })
        .await
        .secret;
    let auth = bearer(&office);
    let from = |source: &'static str, forwarded: &'static str| {
        let mut headers = vec![("authorization", auth.as_str())];
        if !forwarded.is_empty() {
            headers.push(("x-forwarded-for", forwarded));
        }
        request_from(source, "GET", "/reports", &headers, &[])
    };

    allowed(check(&app, from("203.0.113.5", "")).await);
    allowed(check(&app, from("10.1.1.1", "203.0.113.7")).await);
    allowed(
        check(
            &app,
            from("10.1.1.1", "198.51.100.1, 203.0.113.7, 10.2.2.2"),
        )
        .await,
    );
    assert_403(
        &denied(check(&app, from("198.51.100.1", "203.0.113.7")).await),
        "IP_NOT_ALLOWED",
    );
    assert_403(
        &denied(check(&app, from("10.1.1.1", "")).await),
        "IP_NOT_ALLOWED",
    );
    assert_403(
        &denied(check(&app, from("10.1.1.1", "203.0.113.7, 198.51.100.1")).await),
        "IP_NOT_ALLOWED",
    );
}

async fn the_host_is_enforced(backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = app
        .create(Token {
            allowed_hosts: vec!["*.example.com".into()],
            ..spec("hosted", &["reports:read"])
        })
        .await
        .secret;
    let auth = bearer(&secret);
    let mut inside = request("GET", "/reports", &[("authorization", &auth)]);
    allowed(check(&app, inside.clone()).await);

    let http = inside
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.host = "evil.test".into();
    assert_403(
        &denied(check(&app, inside.clone()).await),
        "HOST_NOT_ALLOWED",
    );

    // Without the host field, the :authority header tells.
    let http = inside
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.host.clear();
    http.headers
        .insert(":authority".into(), "api.example.com".into());
    allowed(check(&app, inside).await);
}

async fn the_credential_can_be_forwarded_when_configured(backend: Backend) {
    let app = spawn_checking(
        backend,
        CheckSettings {
            forward_credential: true,
            ..CheckSettings::default()
        },
    )
    .await;
    let auth = bearer(&app.admin);
    let answer = allowed(
        check(
            &app,
            request("GET", "/reports", &[("authorization", &auth)]),
        )
        .await,
    );
    assert!(answer.removed.is_empty(), "{:?}", answer.removed);
}

async fn requests_that_are_not_check_requests_are_invalid_arguments(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = AuthorizationClient::new(app.channel.clone());
    let error = client.check(CheckRequest::default()).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("attributes"),
        "{}",
        error.message()
    );

    let mut no_http = request("GET", "/", &[]);
    no_http.attributes.as_mut().unwrap().request = None;
    let error = client.check(no_http).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("attributes.request.http"),
        "{}",
        error.message()
    );

    let auth = bearer(&app.admin);
    let bad_route = request_from(
        "127.0.0.1",
        "GET",
        "/",
        &[("authorization", &auth)],
        &[("permission", "Not A Permission")],
    );
    let error = client.check(bad_route).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("context_extensions.permission"),
        "{}",
        error.message()
    );
}
