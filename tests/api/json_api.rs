//! The whole gRPC API as JSON over HTTP (`/v1/...`, transcoded by the google.api.http
//! rules), driven with a real curl: every route, its JSON shape, every error status, and
//! the gRPC API's promises (authorization, audit with the HTTP peer, rate limit, request
//! ids) holding here too. And `/v1/openapi.json`, checked against the descriptor set.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestDb, spawn_with, spec, test_settings};

crate::both_backends!(
    every_route_answers_its_rpc_in_protojson,
    errors_have_the_http_status_of_their_grpc_code_and_change_nothing,
    a_weaker_token_is_refused_as_over_grpc,
    the_audit_names_the_http_peer_and_a_forged_forwarded_for_is_not_believed,
    the_management_rate_limit_holds_over_http,
    an_unauthenticated_flood_is_limited_before_its_bodies_are_parsed,
    no_error_quotes_a_secret_however_it_is_sent,
);

/// A server with the HTTP port on.
async fn start(
    backend: Backend,
    tune: impl FnOnce(&mut token_authority::startup::Settings),
) -> TestApp {
    let db = TestDb::fresh(backend).await;
    let mut settings = test_settings(&db);
    settings.http_addr = Some("127.0.0.1:0".parse().unwrap());
    tune(&mut settings);
    spawn_with(db, settings, None).await
}

/// One curl call: its status, JSON answer and headers.
pub struct Answer {
    pub status: u16,
    pub json: Value,
    pub headers: String,
}

/// Runs curl with `args` against `path` on the app's HTTP port, a JSON body on stdin if
/// given, as the holder of `secret` if given.
pub fn curl(
    app: &TestApp,
    secret: Option<&str>,
    args: &[&str],
    path: &str,
    body: Option<&Value>,
) -> Answer {
    use std::io::Write;
    let url = format!("http://127.0.0.1:{}{path}", app.http_port.unwrap());
    let mut command = std::process::Command::new("curl");
    command.args(["-sS", "-D", "/dev/stderr", "-w", "\n%{http_code}"]);
    if let Some(secret) = secret {
        command.args(["-H", &format!("authorization: Bearer {secret}")]);
    }
    command.args(args);
    if body.is_some() {
        command.args(["--data-binary", "@-"]);
    }
    let mut child = command
        .arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl is installed");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(body) = body {
        stdin.write_all(body.to_string().as_bytes()).unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    Answer {
        status: status.parse().unwrap(),
        json: serde_json::from_str(body).unwrap_or(Value::Null),
        headers: String::from_utf8_lossy(&output.stderr).to_ascii_lowercase(),
    }
}

fn ok(answer: Answer) -> Value {
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.json
}

async fn every_route_answers_its_rpc_in_protojson(backend: Backend) {
    let app = start(backend, |_| {}).await;
    let admin = app.admin.clone();
    let a = Some(admin.as_str());

    // TokenTypeService: body "token_type".
    let created_type = ok(curl(
        &app,
        a,
        &[],
        "/v1/tokenTypes",
        Some(&json!({
            "id": "service", "displayName": "Service Token",
            "template": {"requiredFields": ["description"], "maxLifetime": "31536000s", "writable": true}
        })),
    ));
    assert_eq!(created_type["template"]["maxLifetime"], "31536000s");
    assert!(
        created_type["createTime"].as_str().unwrap().ends_with('Z'),
        "RFC 3339: {created_type}"
    );
    let types = ok(curl(&app, a, &[], "/v1/tokenTypes", None));
    assert!(
        types["tokenTypes"].as_array().unwrap().len() >= 3,
        "{types}"
    );
    assert_eq!(types["totalSize"], "3", "int64 as a string: {types}");
    let assistant = ok(curl(&app, a, &[], "/v1/tokenTypes/assistant", None));
    assert_eq!(
        assistant["template"]["requiredBindings"],
        json!(["assistantId"])
    );
    let patched_type = ok(curl(
        &app,
        a,
        &["-X", "PATCH"],
        "/v1/tokenTypes/service?updateMask=description",
        Some(&json!({"description": "machine-to-machine"})),
    ));
    assert_eq!(patched_type["description"], "machine-to-machine");

    // TokenService. snake_case accepted on input, lowerCamelCase out.
    let created = ok(curl(
        &app,
        a,
        &[],
        "/v1/tokens",
        Some(&json!({
            "token": {"name": "billing-ci", "owner": "team-billing", "type": "service",
                "description": "deploys billing", "permissions": ["domains:read", "backends:write"],
                "allowed_cidrs": ["10.0.0.0/8"], "bindings": {"reportId": "r-17"},
                "metadata": {"ticket": "OPS-42"}, "read_only": false},
            "ttl": "2592000s"
        })),
    ));
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["token"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["token"]["allowedCidrs"], json!(["10.0.0.0/8"]));
    assert_eq!(created["token"]["metadata"]["ticket"], "OPS-42");
    assert_eq!(created["token"]["enabled"], true);
    assert_eq!(
        created["token"]["useCount"], "0",
        "every scalar present: {created}"
    );
    assert!(created["token"]["expireTime"].is_string());

    let got = ok(curl(&app, a, &[], &format!("/v1/tokens/{id}"), None));
    assert_eq!(got["name"], "billing-ci");
    assert!(got.get("secret").is_none());

    let listed = ok(curl(
        &app,
        a,
        &[],
        "/v1/tokens?owner=team-billing&enabled=true&bindings%5BreportId%5D=r-17&pageSize=10&name_prefix=billing",
        None,
    ));
    assert_eq!(listed["totalSize"], "1", "{listed}");
    assert_eq!(listed["tokens"][0]["id"], id.as_str());
    let none = ok(curl(
        &app,
        a,
        &[],
        "/v1/tokens?owner=team-billing&enabled=false",
        None,
    ));
    assert_eq!(none["tokens"], json!([]), "{none}");

    let updated = ok(curl(
        &app,
        a,
        &["-X", "PATCH"],
        &format!("/v1/tokens/{id}?updateMask=description,permissions"),
        Some(
            &json!({"description": "deploys invoices", "permissions": ["domains:read"],
            "name": "not-in-the-mask"}),
        ),
    ));
    assert_eq!(updated["description"], "deploys invoices");
    assert_eq!(updated["permissions"], json!(["domains:read"]));
    assert_eq!(
        updated["name"], "billing-ci",
        "only the mask's fields change"
    );

    let verified = ok(curl(
        &app,
        None,
        &[],
        "/v1/verify",
        Some(&json!({
            "token": secret, "requiredPermissions": ["domains:read"], "clientIp": "10.1.2.3",
            "bindings": {"reportId": "r-17"}
        })),
    ));
    assert_eq!(verified["valid"], true, "{verified}");
    assert_eq!(verified["result"], "VERIFY_RESULT_OK");
    assert_eq!(verified["token"]["owner"], "team-billing");

    let rotated = ok(curl(
        &app,
        a,
        &[],
        &format!("/v1/tokens/{id}:rotate"),
        Some(&json!({"gracePeriod": "3600s"})),
    ));
    assert_eq!(rotated["token"]["id"], id.as_str());
    assert!(rotated["token"]["previousSecretExpireTime"].is_string());
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);

    let looked_up = ok(curl(
        &app,
        a,
        &[],
        "/v1/tokens:lookup",
        Some(&json!({"secret": secret})),
    ));
    assert_eq!(
        looked_up["secretKind"], "SECRET_KIND_PREVIOUS",
        "{looked_up}"
    );

    let disabled = ok(curl(
        &app,
        a,
        &[],
        &format!("/v1/tokens/{id}:setEnabled"),
        Some(&json!({"enabled": false})),
    ));
    assert_eq!(disabled["enabled"], false);
    let enabled = ok(curl(
        &app,
        a,
        &[],
        &format!("/v1/tokens/{id}:setEnabled"),
        Some(&json!({"enabled": true})),
    ));
    assert_eq!(enabled["enabled"], true);

    let revoked = ok(curl(
        &app,
        a,
        &[],
        "/v1/tokens:revoke",
        Some(&json!({"owner": "team-billing"})),
    ));
    assert_eq!(revoked["revokedCount"], "1", "{revoked}");
    assert_eq!(revoked["skippedCount"], "0");

    let leaked = app.create(spec("leaked", &[])).await;
    let reported = ok(curl(
        &app,
        None,
        &[],
        "/v1/leaks",
        Some(&json!({"secrets": [leaked.secret], "source": "support-desk"})),
    ));
    assert_eq!(reported["revoked"], 1);
    assert_eq!(reported["results"][0]["outcome"], "LEAK_OUTCOME_REVOKED");

    let trail = ok(curl(
        &app,
        a,
        &[],
        &format!("/v1/auditEvents?target=token/{id}&pageSize=20"),
        None,
    ));
    let actions: Vec<_> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        ["enable", "disable", "rotate", "update", "create"],
        "{trail}"
    );

    let deleted = ok(curl(
        &app,
        a,
        &["-X", "DELETE"],
        &format!("/v1/tokens/{id}"),
        None,
    ));
    assert_eq!(deleted, json!({}));
    let gone = curl(&app, a, &[], &format!("/v1/tokens/{id}"), None);
    assert_eq!(gone.status, 404, "{}", gone.json);

    ok(curl(
        &app,
        a,
        &["-X", "DELETE"],
        "/v1/tokenTypes/service",
        None,
    ));
    assert_eq!(
        curl(&app, a, &[], "/v1/tokenTypes/service", None).status,
        404
    );
}

async fn errors_have_the_http_status_of_their_grpc_code_and_change_nothing(backend: Backend) {
    let app = start(backend, |_| {}).await;
    let admin = app.admin.clone();
    let a = Some(admin.as_str());
    let target = app.create(spec("target", &["domains:read"])).await;
    let id = target.token.as_ref().unwrap().id.clone();
    let before = app.state().await;
    let error = |answer: &Answer, status: u16, name: &str, starts: &str| {
        assert_eq!(answer.status, status, "{}", answer.json);
        assert_eq!(answer.json["error"]["code"], status, "{}", answer.json);
        assert_eq!(answer.json["error"]["status"], name, "{}", answer.json);
        let message = answer.json["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(starts), "{message:?} names {starts:?}");
        assert!(
            !message.contains(&target.secret[3..]),
            "no secret quoted: {message}"
        );
    };
    let patch = ["-X", "PATCH"];
    let tokens_path = format!("/v1/tokens/{id}");
    for (args, path, body, status, name, starts) in [
        (
            &[][..],
            "/v1/tokens",
            Some(json!("not an object")),
            400,
            "INVALID_ARGUMENT",
            "body",
        ),
        (
            &[][..],
            "/v1/tokens",
            Some(json!({"token": {"nmae": "x"}})),
            400,
            "INVALID_ARGUMENT",
            "body.token",
        ),
        (
            &[][..],
            "/v1/tokens",
            Some(json!({"token": {"permissions": target.secret}})),
            400,
            "INVALID_ARGUMENT",
            "body.token.permissions",
        ),
        (
            &[][..],
            "/v1/tokens",
            Some(json!({"token": {"name": "x", "expireTime": "tomorrow"}})),
            400,
            "INVALID_ARGUMENT",
            "body.token.expireTime",
        ),
        (
            &[][..],
            "/v1/tokens?pageSize=3",
            Some(json!({"token": {"name": "q"}})),
            400,
            "INVALID_ARGUMENT",
            "query parameter pageSize",
        ),
        (
            &[][..],
            "/v1/tokens?nope=1",
            None,
            400,
            "INVALID_ARGUMENT",
            "query parameter nope",
        ),
        (
            &[][..],
            "/v1/tokens/not-a-uuid",
            None,
            400,
            "INVALID_ARGUMENT",
            "id",
        ),
        (
            &[][..],
            "/v1/tokens?enabled=yes",
            None,
            400,
            "INVALID_ARGUMENT",
            "query parameter enabled",
        ),
        (
            &[][..],
            "/v1/tokens?owner=a&owner=b",
            None,
            400,
            "INVALID_ARGUMENT",
            "query parameter owner",
        ),
        (
            &patch[..],
            tokens_path.as_str(),
            Some(json!({"description": "x"})),
            400,
            "INVALID_ARGUMENT",
            "update_mask",
        ),
        (
            &patch[..],
            &format!("{tokens_path}?updateMask=description&token.name=x"),
            Some(json!({})),
            400,
            "INVALID_ARGUMENT",
            "query parameter token.name",
        ),
        (
            &[][..],
            "/v1/tokens/00000000-0000-7000-8000-000000000000",
            None,
            404,
            "NOT_FOUND",
            "",
        ),
        (
            &[][..],
            "/v1/tokens",
            Some(json!({"token": {"name": "target"}})),
            409,
            "ALREADY_EXISTS",
            "",
        ),
        (
            &["-X", "PUT"][..],
            "/v1/tokens",
            None,
            405,
            "UNIMPLEMENTED",
            "use ",
        ),
    ] {
        let answer = curl(&app, a, args, path, body.as_ref());
        error(&answer, status, name, starts);
    }
    let unknown = curl(&app, a, &[], "/v1/nowhere", None);
    assert_eq!(unknown.status, 404);
    let anonymous = curl(&app, None, &[], "/v1/tokens", None);
    error(&anonymous, 401, "UNAUTHENTICATED", "");
    let forged = curl(&app, Some("ta_not-a-secret"), &[], "/v1/tokens", None);
    error(&forged, 401, "UNAUTHENTICATED", "");
    let reader = app.create(spec("reader", &["tokens:read"])).await;
    let refused = curl(
        &app,
        Some(&reader.secret),
        &[],
        "/v1/tokens",
        Some(&json!({"token": {"name": "mine"}})),
    );
    error(&refused, 403, "PERMISSION_DENIED", "");
    // Nothing changed but the reader and the audit of the failed authentications.
    let after = app.state().await;
    let tokens_after: Vec<_> = after
        .0
        .iter()
        .filter(|t| t.name != "reader")
        .cloned()
        .collect();
    assert_eq!(tokens_after, before.0, "no token changed");
}

async fn a_weaker_token_is_refused_as_over_grpc(backend: Backend) {
    let app = start(backend, |_| {}).await;
    let writer = app
        .create(spec("writer", &["tokens:write", "tokens:read"]))
        .await;
    let admin_id = app.admin_token().await.id;
    let over_http = curl(
        &app,
        Some(&writer.secret),
        &[],
        &format!("/v1/tokens/{admin_id}:setEnabled"),
        Some(&json!({"enabled": false})),
    );
    let over_grpc = app
        .tokens
        .clone()
        .set_token_enabled(crate::helpers::authed(
            &writer.secret,
            token_authority::pb::v1::SetTokenEnabledRequest {
                id: admin_id.clone(),
                enabled: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(over_http.status, 403, "{}", over_http.json);
    assert_eq!(over_grpc.code(), tonic::Code::PermissionDenied);
    assert_eq!(over_http.json["error"]["message"], over_grpc.message());
    assert!(
        app.admin_token().await.enabled,
        "the admin token is untouched"
    );

    // A host-restricted token manages only at its host: the HTTP Host is the authority.
    let pinned = app
        .create(token_authority::pb::v1::Token {
            allowed_hosts: vec!["admin.example.com".into()],
            ..spec("pinned", &["tokens:read"])
        })
        .await;
    let elsewhere = curl(
        &app,
        Some(&pinned.secret),
        &["-H", "Host: other.example.com"],
        "/v1/tokens",
        None,
    );
    assert_ne!(elsewhere.status, 200, "{}", elsewhere.json);
    let at_home = curl(
        &app,
        Some(&pinned.secret),
        &["-H", "Host: admin.example.com"],
        "/v1/tokens",
        None,
    );
    assert_eq!(at_home.status, 200, "{}", at_home.json);
}

async fn the_audit_names_the_http_peer_and_a_forged_forwarded_for_is_not_believed(
    backend: Backend,
) {
    let app = start(backend, |s| {
        s.trusted_proxies = vec!["127.0.0.3/32".parse().unwrap()]
    })
    .await;
    let admin = app.admin.clone();
    let create = |name: &str, from: &str, id: &str| {
        let answer = curl(
            &app,
            Some(&admin),
            &[
                "--interface",
                from,
                "-H",
                "X-Forwarded-For: 203.0.113.9",
                "-H",
                &format!("x-request-id: {id}"),
            ],
            "/v1/tokens",
            Some(&json!({"token": {"name": name}})),
        );
        assert!(
            answer.headers.contains(&format!("x-request-id: {id}")),
            "{}",
            answer.headers
        );
        ok(answer)["token"]["id"].as_str().unwrap().to_owned()
    };
    let untrusted = create("from-an-untrusted-peer", "127.0.0.2", "req-untrusted-1");
    let proxied = create("through-a-trusted-proxy", "127.0.0.3", "req-proxied-1");
    let events = app.audit_events().await;
    let ip_of = |id: &str| {
        events
            .iter()
            .find(|e| e.action == "create" && e.target == format!("token/{id}"))
            .map(|e| e.client_ip.clone())
            .unwrap()
    };
    assert_eq!(
        ip_of(&untrusted),
        "127.0.0.2",
        "the HTTP peer, not the forged header"
    );
    assert_eq!(
        ip_of(&proxied),
        "203.0.113.9",
        "a trusted proxy's X-Forwarded-For"
    );
}

async fn the_management_rate_limit_holds_over_http(backend: Backend) {
    let app = start(backend, |s| s.management_rate_limit = 3).await;
    let admin = app.admin.clone();
    let statuses: Vec<u16> = (0..6)
        .map(|_| curl(&app, Some(&admin), &[], "/v1/tokens", None).status)
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    let limited = curl(&app, Some(&admin), &[], "/v1/tokens", None);
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json["error"]["status"], "RESOURCE_EXHAUSTED");
}

/// The OpenAPI document parses, names every RPC of every service of ours (taken from the
/// descriptor set, not a list), and every reference in it resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_annotated_rpc() {
    let app = start(Backend::Sqlite, |_| {}).await;
    let document = ok(curl(&app, None, &[], "/v1/openapi.json", None));
    assert_eq!(document["openapi"], "3.0.3");
    let mut operations = Vec::new();
    for (path, methods) in document["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            operations.push((
                path.clone(),
                method.clone(),
                operation["operationId"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let pool =
        prost_reflect::DescriptorPool::decode(token_authority::pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = 0;
    for service in pool
        .services()
        .filter(|s| s.full_name().starts_with("tokenauthority."))
    {
        for rpc in service.methods() {
            rpcs += 1;
            assert!(
                operations.iter().any(|(_, _, id)| id == rpc.full_name()),
                "{} in {operations:?}",
                rpc.full_name()
            );
        }
    }
    assert_eq!(operations.len(), rpcs, "one operation per RPC");
    assert!(operations.contains(&(
        "/v1/tokens/{token.id}".into(),
        "patch".into(),
        "tokenauthority.v1.TokenService.UpdateToken".into()
    )));
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &reference[..reference.find('"').unwrap()];
        assert!(
            document["components"]["schemas"][name].is_object(),
            "{name} resolves"
        );
    }
    let update = &document["paths"]["/v1/tokens/{token.id}"]["patch"];
    let names: Vec<_> = update["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["token.id", "updateMask"]);
    // Verify and leak reports take no credential; everything else a bearer token.
    assert_eq!(
        document["paths"]["/v1/verify"]["post"]["security"],
        json!([])
    );
    assert_eq!(
        document["paths"]["/v1/leaks"]["post"]["security"],
        json!([])
    );
    assert!(
        document["paths"]["/v1/tokens"]["post"]
            .get("security")
            .is_none()
    );
    assert_eq!(document["security"], json!([{"bearer": []}]));
}

/// The management rate limit counts each HTTP request once, and before its body is read
/// or parsed: a caller without a credential sending bodies is stopped at the limit, not
/// after the server has parsed them. Bodies are capped far below the gRPC message limit.
async fn an_unauthenticated_flood_is_limited_before_its_bodies_are_parsed(backend: Backend) {
    let app = start(backend, |s| s.management_rate_limit = 3).await;
    let admin = app.admin.clone();
    // Exactly three per minute: each request counted once, not once here and once by the
    // call it makes.
    for _ in 0..3 {
        ok(curl(&app, Some(&admin), &[], "/v1/tokens", None));
    }
    assert_eq!(
        curl(&app, Some(&admin), &[], "/v1/tokens", None).status,
        429
    );
    // From another address (curl --interface 127.0.0.2), with no credential: bodies that
    // would not even parse are counted first, and the fourth is refused unread.
    let other = ["--interface", "127.0.0.2"];
    let junk = json!({"token": {"permissions": ["", "", ""]}, "nope": 1});
    for _ in 0..3 {
        let answer = curl(&app, None, &other, "/v1/tokens", Some(&junk));
        assert_eq!(answer.status, 400, "{}", answer.json);
    }
    let refused = curl(&app, None, &other, "/v1/tokens", Some(&junk));
    assert_eq!(refused.status, 429, "{}", refused.json);
    assert_eq!(refused.json["error"]["status"], "RESOURCE_EXHAUSTED");
    // Verify is never limited by it.
    let verify = json!({"token": "ta_x"});
    for _ in 0..5 {
        assert_eq!(
            curl(&app, None, &other, "/v1/verify", Some(&verify)).status,
            200
        );
    }
    // A JSON body past 256 KiB is refused whatever --max-message-size allows.
    let big = json!({"token": "x".repeat(300 * 1024)});
    let large = curl(&app, None, &[], "/v1/verify", Some(&big));
    assert_eq!(large.status, 413, "{}", large.json);
}

/// A secret sent where it does not belong (a string for a list, with its quotes; a key;
/// a value of the wrong type) is refused 400 without being quoted back, however the
/// deserializer words its error.
async fn no_error_quotes_a_secret_however_it_is_sent(backend: Backend) {
    let app = start(backend, |_| {}).await;
    let admin = app.admin.clone();
    let token = app.create(spec("pasted", &["domains:read"])).await;
    let secret = token.secret.clone();
    let quoted = format!("\"{secret}\"");
    for (path, auth, body) in [
        ("/v1/leaks", None, json!({"secrets": quoted})),
        ("/v1/leaks", None, json!({ format!("x'{secret}"): 1 })),
        ("/v1/leaks", None, json!({ format!("x\"{secret}"): 1 })),
        ("/v1/verify", None, json!({"token": [secret]})),
        ("/v1/verify", None, json!({"clientIp": {"a": &secret}})),
        (
            "/v1/tokens",
            Some(admin.as_str()),
            json!({"token": {"name": {"x": &quoted}}}),
        ),
        ("/v1/tokens", Some(admin.as_str()), json!({"ttl": &secret})),
    ] {
        let answer = curl(&app, auth, &[], path, Some(&body));
        assert_eq!(answer.status, 400, "{path} {body}: {}", answer.json);
        let text = answer.json.to_string();
        assert!(!text.contains(&secret[3..20]), "{path}: {text}");
    }
    // The token is untouched by all of it.
    let verify = json!({"token": secret});
    assert_eq!(
        curl(&app, None, &[], "/v1/verify", Some(&verify)).json["valid"],
        true
    );
}

/// `--http-api false` leaves the HTTP port to forward auth and GitHub's reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_can_be_switched_off() {
    let app = start(Backend::Sqlite, |s| s.http_api = false).await;
    let admin = app.admin.clone();
    for path in ["/v1/tokens", "/v1/openapi.json", "/v1/verify"] {
        assert_eq!(
            curl(&app, Some(&admin), &[], path, None).status,
            404,
            "{path}"
        );
    }
    let forward = curl(&app, Some(&admin), &[], "/v1/forward-auth", None);
    assert_ne!(forward.status, 404, "forward auth stays");
}
