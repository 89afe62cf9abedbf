//! A request id per call, through the real binary: the caller's `x-request-id` or a new
//! one, on the call's log lines and in its response, refused calls included.

use serde_json::Value;
use token_authority::pb::v1::{
    CreateTokenRequest, GetTokenRequest, SetTokenEnabledRequest,
    token_service_client::TokenServiceClient,
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
