//! Every Verify result through the real service, and usage bookkeeping.

use std::time::Duration;

use token_authority::pb::v1::{GetTokenRequest, VerifyRequest, VerifyResult};
use tonic::Code;

use crate::{
    both_backends,
    helpers::{Backend, TestDb, authed, spawn_app, spawn_with, spec, test_settings},
};

both_backends!(
    a_valid_token_is_ok_and_names_its_owner,
    a_mistyped_token_is_malformed,
    an_unknown_token_is_not_found,
    an_expired_token_is_expired,
    cidr_restrictions_are_enforced,
    host_restrictions_are_enforced,
    missing_permissions_are_denied,
    read_only_tokens_satisfy_only_reads,
    bindings_must_match,
    usage_is_recorded_in_batches_not_per_call,
);

async fn a_valid_token_is_ok_and_names_its_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = spec("svc", &["domains:*", "backends:read"]);
    request.owner = "team-a".into();
    let created = app.create(request).await;

    let answer = app
        .verify_perms(&created.secret, &["domains:delete", "backends:read"])
        .await;

    assert!(answer.valid);
    assert_eq!(answer.result(), VerifyResult::Ok);
    let token = answer.token.unwrap();
    assert_eq!(token.owner, "team-a");
    assert_eq!(token.name, "svc");
    assert_eq!(token.permissions, ["domains:*", "backends:read"]);
    assert!(answer.reason.is_empty());
}

async fn a_mistyped_token_is_malformed(backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = app.create(spec("t", &[])).await.secret;
    let mut typo = secret.clone().into_bytes();
    typo[8] = if typo[8] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();

    for bad in [
        typo.as_str(),
        "hello",
        "Bearer abc",
        "ta_short",
        &"x".repeat(5000),
    ] {
        let answer = app.verify_perms(bad, &[]).await;
        assert_eq!(answer.result(), VerifyResult::Malformed, "{bad:?}");
        assert!(!answer.valid && answer.token.is_none());
    }
}

async fn an_unknown_token_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let never_issued = token_authority::domain::secret::TokenSecret::generate(&Default::default());

    let answer = app.verify_perms(never_issued.expose(), &[]).await;

    assert_eq!(answer.result(), VerifyResult::NotFound);
    assert!(!answer.valid);
}

async fn an_expired_token_is_expired(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create_with_ttl(&app.admin, spec("brief", &[]), 1)
        .await
        .unwrap();
    assert!(app.verify_perms(&created.secret, &[]).await.valid);

    tokio::time::sleep(Duration::from_millis(1100)).await;

    let answer = app.verify_perms(&created.secret, &[]).await;
    assert_eq!(answer.result(), VerifyResult::Expired);
}

async fn cidr_restrictions_are_enforced(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = spec("net", &[]);
    request.allowed_cidrs = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
    let secret = app.create(request).await.secret;
    let from = |ip: &str| VerifyRequest {
        token: secret.clone(),
        client_ip: ip.into(),
        ..Default::default()
    };

    assert!(app.verify(from("10.9.8.7")).await.valid);
    assert!(app.verify(from("2001:db8::1")).await.valid);
    assert!(
        app.verify(from("::ffff:10.1.1.1")).await.valid,
        "IPv4-mapped IPv6"
    );
    assert_eq!(
        app.verify(from("192.168.1.1")).await.result(),
        VerifyResult::IpNotAllowed
    );
    assert_eq!(
        app.verify(from("")).await.result(),
        VerifyResult::IpNotAllowed,
        "unknown client fails closed"
    );
}

async fn host_restrictions_are_enforced(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = spec("hosts", &[]);
    request.allowed_hosts = vec!["api.example.com".into(), "*.internal.example.com".into()];
    let secret = app.create(request).await.secret;
    let at = |host: &str| VerifyRequest {
        token: secret.clone(),
        host: host.into(),
        ..Default::default()
    };

    assert!(app.verify(at("api.example.com")).await.valid);
    assert!(app.verify(at("API.Example.com:443")).await.valid);
    assert!(app.verify(at("billing.internal.example.com")).await.valid);
    assert_eq!(
        app.verify(at("evil.example.net")).await.result(),
        VerifyResult::HostNotAllowed
    );
    assert_eq!(
        app.verify(at("internal.example.com")).await.result(),
        VerifyResult::HostNotAllowed
    );
    assert_eq!(
        app.verify(at("")).await.result(),
        VerifyResult::HostNotAllowed
    );
}

async fn missing_permissions_are_denied(backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = app
        .create(spec("narrow", &["domains:read", "*:create"]))
        .await
        .secret;

    assert!(
        app.verify_perms(&secret, &["backends:create"]).await.valid,
        "wildcard resource"
    );
    let answer = app
        .verify_perms(&secret, &["domains:read", "domains:delete"])
        .await;

    assert_eq!(answer.result(), VerifyResult::PermissionDenied);
    assert!(
        answer.reason.contains("domains:delete"),
        "{}",
        answer.reason
    );
    assert!(answer.token.is_none());
}

async fn read_only_tokens_satisfy_only_reads(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = spec("viewer", &["domains:*"]);
    request.read_only = true;
    let secret = app.create(request).await.secret;

    assert!(app.verify_perms(&secret, &["domains:read"]).await.valid);
    assert_eq!(
        app.verify_perms(&secret, &["domains:write"]).await.result(),
        VerifyResult::ReadOnly
    );
    assert_eq!(
        app.verify_perms(&secret, &["domains:delete"])
            .await
            .result(),
        VerifyResult::ReadOnly
    );
}

async fn bindings_must_match(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = spec("report", &[]);
    request.bindings = [("reportId".to_owned(), "r-17".to_owned())].into();
    let secret = app.create(request).await.secret;
    let with = |pairs: &[(&str, &str)]| VerifyRequest {
        token: secret.clone(),
        bindings: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };

    assert!(app.verify(with(&[("reportId", "r-17")])).await.valid);
    assert!(
        app.verify(with(&[("datasourceId", "d-1")])).await.valid,
        "unbound keys are free"
    );
    assert!(app.verify(with(&[])).await.valid);
    let answer = app
        .verify(with(&[("reportId", "r-18"), ("datasourceId", "d-1")]))
        .await;
    assert_eq!(answer.result(), VerifyResult::BindingMismatch);
}

async fn usage_is_recorded_in_batches_not_per_call(backend: Backend) {
    // Arrange: a flush interval far longer than the test, so only shutdown writes usage.
    let db = TestDb::fresh(backend).await;
    let mut settings = test_settings(&db);
    settings.usage_flush_interval = Duration::from_secs(3600);
    let app = spawn_with(db, settings.clone(), None).await;
    let created = app.create(spec("busy", &[])).await;
    let id = created.token.unwrap().id;

    for _ in 0..25 {
        let answer = app
            .verify(VerifyRequest {
                token: created.secret.clone(),
                client_ip: "10.1.2.3".into(),
                ..Default::default()
            })
            .await;
        assert!(answer.valid);
    }
    let get = |app: &crate::helpers::TestApp| {
        let mut tokens = app.tokens.clone();
        let request = authed(&app.admin, GetTokenRequest { id: id.clone() });
        async move { tokens.get_token(request).await.unwrap().into_inner() }
    };
    let before_flush = get(&app).await;
    assert_eq!(before_flush.use_count, 0, "no store write per Verify");
    assert!(before_flush.last_used_time.is_none());

    // Act: a graceful stop flushes what is pending; a restart reads it back.
    let (db, admin) = app.stop().await;
    let app = spawn_with(db, settings, Some(admin)).await;

    // Assert: the 25 verifies of this token (GetToken counts for the admin token instead).
    let after = get(&app).await;
    assert_eq!(after.use_count, 25);
    assert_eq!(after.last_used_ip, "10.1.2.3");
    assert!(after.last_used_time.is_some());
}

#[tokio::test]
async fn last_used_time_appears_within_the_flush_interval() {
    let app = spawn_app(Backend::Sqlite).await;
    let created = app.create(spec("t", &[])).await;
    assert!(app.verify_perms(&created.secret, &[]).await.valid);
    let id = created.token.unwrap().id;

    let mut last_used = None;
    for _ in 0..100 {
        let token = app
            .tokens
            .clone()
            .get_token(authed(&app.admin, GetTokenRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        if token.last_used_time.is_some() {
            last_used = token.last_used_time;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert!(last_used.is_some(), "the 100 ms flush wrote last_used_time");
}

#[tokio::test]
async fn an_empty_token_is_a_bad_request() {
    let app = spawn_app(Backend::Sqlite).await;

    let err = app
        .verifier
        .clone()
        .verify(VerifyRequest::default())
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("token:"));
}
