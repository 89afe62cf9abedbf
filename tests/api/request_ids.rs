//! A request id per call, through the real binary: the caller's `x-request-id` or a new
//! one, on the call's log lines and in its response (management calls, refused ones
//! included; Verify and Check when the caller sent one or a line logged it).

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};
use serde_json::Value;
use token_authority::pb::v1::{
    CreateTokenRequest, GetTokenRequest, SetTokenEnabledRequest, VerifyRequest,
    token_service_client::TokenServiceClient, verify_service_client::VerifyServiceClient,
};
use tonic::{Code, Request, metadata::MetadataMap};

use crate::helpers::{Process, authed, spec};

fn request_id(metadata: &MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .expect("the response carries x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_has_a_request_id_on_its_log_lines_and_in_its_response() {
    // Arrange: the binary, logging JSON.
    let cwd = tempfile::tempdir().unwrap();
    let admin_file = cwd.path().join("admin.secret");
    let server = Process::start(
        cwd.path(),
        &["--bootstrap-token-file", admin_file.to_str().unwrap()],
        &[],
    );
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_owned();
    let mut tokens = TokenServiceClient::connect(format!("http://127.0.0.1:{}", server.port))
        .await
        .unwrap();

    // Act: a create with the caller's id, a disable without one, and a refused call whose
    // id is unusable (too long).
    let mut create = authed(
        &admin,
        CreateTokenRequest {
            token: Some(spec("traced", &["a:read"])),
            ttl: None,
        },
    );
    create
        .metadata_mut()
        .insert("x-request-id", "deploy-42.create".parse().unwrap());
    let created = tokens.create_token(create).await.unwrap();
    let create_id = request_id(created.metadata());
    let created = created.into_inner();
    let token_id = created.token.unwrap().id;
    let disabled = tokens
        .set_token_enabled(authed(
            &admin,
            SetTokenEnabledRequest {
                id: token_id.clone(),
                enabled: false,
            },
        ))
        .await
        .unwrap();
    let disable_id = request_id(disabled.metadata());
    let too_long = "x".repeat(200);
    let mut refused = Request::new(GetTokenRequest {
        id: token_id.clone(),
    });
    refused
        .metadata_mut()
        .insert("x-request-id", too_long.parse().unwrap());
    let refused = tokens.get_token(refused).await.unwrap_err();
    let refused_id = request_id(refused.metadata());
    let (stopped, _, stderr) = server.terminate().await;

    // Assert: ids in the responses, the caller's kept, others made.
    assert!(stopped);
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(create_id, "deploy-42.create");
    assert!(is_generated(&disable_id), "{disable_id}");
    assert!(is_generated(&refused_id), "{refused_id}");
    assert_ne!(disable_id, refused_id);

    // And one JSON line per management action, carrying its call's id.
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let action = |name: &str| -> &Value {
        let matching: Vec<&Value> = lines.iter().filter(|l| l["action"] == name).collect();
        assert_eq!(matching.len(), 1, "one {name} line in\n{stderr}");
        matching[0]
    };
    let create_line = action("create");
    assert_eq!(create_line["span"]["request_id"], "deploy-42.create");
    assert_eq!(
        create_line["span"]["rpc"],
        "tokenauthority.v1.TokenService/CreateToken"
    );
    assert_eq!(create_line["token_id"], token_id.as_str());
    let disable_line = action("disable");
    assert_eq!(disable_line["span"]["request_id"], disable_id.as_str());
    assert_eq!(disable_line["token_id"], token_id.as_str());
    assert!(!stderr.contains(&too_long), "an unusable id is not logged");
    for secret in [&created.secret, &admin] {
        assert!(!stderr.contains(&secret[3..]), "a secret in the log");
    }
}

/// The answer's x-request-id, if it has one.
fn answer_id(metadata: &MetadataMap) -> Option<String> {
    metadata
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Starts the binary logging JSON at `log_level`, makes a token allowed `domains:read`, and
/// returns the server, the token's secret and a Verify and a Check client.
async fn verification_server(
    cwd: &std::path::Path,
    log_level: &str,
) -> (
    Process,
    String,
    VerifyServiceClient<tonic::transport::Channel>,
    AuthorizationClient<tonic::transport::Channel>,
) {
    let admin_file = cwd.join("admin.secret");
    let server = Process::start(
        cwd,
        &["--bootstrap-token-file", admin_file.to_str().unwrap()],
        &[("RUST_LOG", log_level)],
    );
    let admin = std::fs::read_to_string(&admin_file).unwrap();
    let channel = server.channel().await;
    let secret = TokenServiceClient::new(channel.clone())
        .create_token(authed(
            admin.trim(),
            CreateTokenRequest {
                token: Some(spec("hot", &["domains:read"])),
                ttl: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    (
        server,
        secret,
        VerifyServiceClient::new(channel.clone()),
        AuthorizationClient::new(channel),
    )
}

fn check_of(secret: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/domains/1".into(),
                    host: "api.example".into(),
                    headers: [("authorization".to_owned(), format!("Bearer {secret}"))].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_check_answer_an_id_only_when_it_leads_to_something() {
    // Arrange: info logging, as production runs; a cached token (the first Verify fills
    // the cache).
    let cwd = tempfile::tempdir().unwrap();
    let (server, secret, mut verify, mut check) = verification_server(cwd.path(), "info").await;
    let verify_request = || VerifyRequest {
        token: secret.clone(),
        required_permissions: vec!["domains:read".into()],
        ..Default::default()
    };

    // Act: Verify twice and Check once without an id, then each with the caller's id.
    let mut made = Vec::new();
    for _ in 0..2 {
        let answer = verify.verify(verify_request()).await.unwrap();
        assert!(answer.get_ref().valid);
        made.push(answer_id(answer.metadata()));
    }
    let checked = check.check(check_of(&secret)).await.unwrap();
    assert_eq!(checked.get_ref().status.as_ref().unwrap().code, 0);
    made.push(answer_id(checked.metadata()));
    let mut theirs = Request::new(verify_request());
    theirs
        .metadata_mut()
        .insert("x-request-id", "svc-7.verify".parse().unwrap());
    let echoed = answer_id(verify.verify(theirs).await.unwrap().metadata());
    let mut theirs = Request::new(check_of(&secret));
    theirs
        .metadata_mut()
        .insert("x-request-id", "edge-9".parse().unwrap());
    let echoed_check = answer_id(check.check(theirs).await.unwrap().metadata());
    let (stopped, _, stderr) = server.terminate().await;

    // Assert: nothing logged those calls, so no made id is sent (it would lead nowhere);
    // the caller's own comes back.
    assert!(stopped);
    assert_eq!(made, vec![None, None, None], "{stderr}");
    assert_eq!(echoed.as_deref(), Some("svc-7.verify"));
    assert_eq!(echoed_check.as_deref(), Some("edge-9"));
    for rpc in ["VerifyService/Verify", "Authorization/Check"] {
        assert!(!stderr.contains(rpc), "no line of a {rpc}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_that_logs_answers_the_id_its_lines_carry() {
    // Arrange: debug logging for the service, so every Verify writes its `verified` line.
    let cwd = tempfile::tempdir().unwrap();
    let (server, secret, mut verify, _) =
        verification_server(cwd.path(), "info,token_authority=debug").await;

    // Act
    let answer = verify
        .verify(VerifyRequest {
            token: secret.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = answer_id(answer.metadata()).expect("a Verify that logged answers its id");
    // A client that put its bearer token in x-request-id too.
    let mut misplaced = Request::new(VerifyRequest {
        token: secret.clone(),
        ..Default::default()
    });
    misplaced
        .metadata_mut()
        .insert("x-request-id", format!("req_{secret}_2").parse().unwrap());
    let replaced = verify.verify(misplaced).await.unwrap();
    let replaced = answer_id(replaced.metadata()).expect("it logged, so it answers an id");
    let (stopped, _, stderr) = server.terminate().await;
    assert!(is_generated(&replaced) && replaced != id, "{replaced}");

    // Assert: the id is made, and the `verified` line carries it.
    assert!(stopped);
    assert!(is_generated(&id), "{id}");
    let verified: Vec<Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "verified")
        .collect();
    assert_eq!(verified.len(), 2, "{stderr}");
    assert_eq!(verified[1]["span"]["request_id"], replaced.as_str());
    assert_eq!(verified[0]["span"]["request_id"], id.as_str());
    assert_eq!(
        verified[0]["span"]["rpc"],
        "tokenauthority.v1.VerifyService/Verify"
    );
    assert!(!stderr.contains(&secret[3..]), "a secret in the log");
}
