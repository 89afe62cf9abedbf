//! RotateToken, usage-limited and rate-limited tokens, bulk revocation and the management
//! rate limit, through the real service on both stores.

use std::time::Duration;

use token_authority::pb::v1::{
    GetTokenRequest, RateLimit, RevokeTokensRequest, RotateTokenRequest, SetTokenEnabledRequest,
    Token, VerifyResult,
};
use tonic::Code;

use crate::{
    both_backends,
    helpers::{Backend, TestApp, TestDb, authed, spawn_app, spawn_with, spec, test_settings},
};

both_backends!(
    rotation_keeps_the_token_and_replaces_its_secret,
    a_grace_period_lets_the_old_secret_work_until_it_ends,
    rotation_never_extends_a_lifetime,
    revoking_a_rotated_token_revokes_every_secret,
    rotating_needs_write_and_a_valid_grace_period,
    a_usage_limited_token_is_accepted_at_most_max_uses_times,
    racing_verifies_on_two_replicas_never_exceed_max_uses,
    a_rate_limited_token_is_refused_past_its_rate,
    bulk_revocation_disables_every_token_of_an_owner_or_type,
    the_management_api_is_rate_limited_per_address_but_verify_is_not,
);

fn grace(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

async fn rotate(
    app: &TestApp,
    id: &str,
    grace_period: Option<prost_types::Duration>,
) -> Result<token_authority::pb::v1::RotateTokenResponse, tonic::Status> {
    app.tokens
        .clone()
        .rotate_token(authed(
            &app.admin,
            RotateTokenRequest {
                id: id.into(),
                grace_period,
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn result(app: &TestApp, secret: &str) -> VerifyResult {
    app.verify_perms(secret, &[]).await.result()
}

async fn rotation_keeps_the_token_and_replaces_its_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create_with_ttl(&app.admin, spec("rotating", &["domains:read"]), 3600)
        .await
        .unwrap();
    let before = created.token.unwrap();
    assert_eq!(result(&app, &created.secret).await, VerifyResult::Ok);

    let rotated = rotate(&app, &before.id, None).await.unwrap();
    let after = rotated.token.unwrap();

    assert_ne!(rotated.secret, created.secret);
    assert!(rotated.secret.starts_with(&after.display_hint));
    assert_ne!(after.display_hint, before.display_hint);
    assert_eq!(after.id, before.id);
    assert_eq!(after.name, before.name);
    assert_eq!(after.permissions, before.permissions);
    assert_eq!(after.expire_time, before.expire_time, "the same expiry");
    assert!(after.previous_secret_expire_time.is_none());
    assert_eq!(result(&app, &rotated.secret).await, VerifyResult::Ok);
    assert_eq!(
        result(&app, &created.secret).await,
        VerifyResult::NotFound,
        "without a grace period the old secret stops at once"
    );
    let got = app
        .tokens
        .clone()
        .get_token(authed(&app.admin, GetTokenRequest { id: after.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.display_hint, after.display_hint);
}

async fn a_grace_period_lets_the_old_secret_work_until_it_ends(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create(spec("graceful", &["domains:read"])).await;
    let id = created.token.unwrap().id;
    // Cached before the rotation, so the rotation must shorten the cached entry's life.
    assert_eq!(result(&app, &created.secret).await, VerifyResult::Ok);

    let rotated = rotate(&app, &id, grace(2)).await.unwrap();
    assert!(rotated.token.unwrap().previous_secret_expire_time.is_some());
    assert_eq!(result(&app, &created.secret).await, VerifyResult::Ok);
    assert_eq!(result(&app, &rotated.secret).await, VerifyResult::Ok);

    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_ne!(
        result(&app, &created.secret).await,
        VerifyResult::Ok,
        "never after the grace period"
    );
    assert_eq!(result(&app, &rotated.secret).await, VerifyResult::Ok);

    // A second rotation without grace ends the previous secret too.
    let again = rotate(&app, &id, grace(60)).await.unwrap();
    assert_eq!(result(&app, &rotated.secret).await, VerifyResult::Ok);
    let last = rotate(&app, &id, None).await.unwrap();
    assert_eq!(result(&app, &again.secret).await, VerifyResult::NotFound);
    assert_eq!(result(&app, &rotated.secret).await, VerifyResult::NotFound);
    assert_eq!(result(&app, &last.secret).await, VerifyResult::Ok);
}

async fn rotation_never_extends_a_lifetime(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create_with_ttl(&app.admin, spec("short", &[]), 1)
        .await
        .unwrap();
    let before = created.token.unwrap();
    let rotated = rotate(&app, &before.id, grace(3600)).await.unwrap();
    let after = rotated.token.unwrap();
    assert_eq!(after.expire_time, before.expire_time);
    let previous_end = after.previous_secret_expire_time.unwrap();
    assert!(
        previous_end.seconds <= before.expire_time.unwrap().seconds,
        "the old secret ends with the token"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(result(&app, &rotated.secret).await, VerifyResult::Expired);
    assert_ne!(result(&app, &created.secret).await, VerifyResult::Ok);
}

async fn revoking_a_rotated_token_revokes_every_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create(spec("both-secrets", &[])).await;
    let id = created.token.unwrap().id;
    let rotated = rotate(&app, &id, grace(3600)).await.unwrap();
    assert_eq!(result(&app, &created.secret).await, VerifyResult::Ok);
    assert_eq!(result(&app, &rotated.secret).await, VerifyResult::Ok);

    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: id.clone(),
                enabled: false,
            },
        ))
        .await
        .unwrap();
    assert_eq!(result(&app, &created.secret).await, VerifyResult::Disabled);
    assert_eq!(result(&app, &rotated.secret).await, VerifyResult::Disabled);

    app.tokens
        .clone()
        .delete_token(authed(
            &app.admin,
            token_authority::pb::v1::DeleteTokenRequest { id },
        ))
        .await
        .unwrap();
    assert_eq!(result(&app, &created.secret).await, VerifyResult::NotFound);
    assert_eq!(result(&app, &rotated.secret).await, VerifyResult::NotFound);
}

async fn rotating_needs_write_and_a_valid_grace_period(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(spec("target", &[])).await.token.unwrap().id;
    let reader = app.create(spec("reader", &["tokens:read"])).await.secret;

    let error = app
        .tokens
        .clone()
        .rotate_token(authed(
            &reader,
            RotateTokenRequest {
                id: id.clone(),
                grace_period: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);

    let error = rotate(&app, &id, grace(31 * 24 * 3600)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("grace_period"),
        "{}",
        error.message()
    );
    let error = rotate(&app, &id, grace(-1)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = rotate(&app, "not-a-uuid", None).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = rotate(&app, &uuid::Uuid::now_v7().to_string(), None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
}

async fn a_usage_limited_token_is_accepted_at_most_max_uses_times(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create(Token {
            max_uses: 3,
            ..spec("thrice", &["domains:read"])
        })
        .await;
    assert_eq!(created.token.as_ref().unwrap().max_uses, 3);
    for _ in 0..3 {
        assert_eq!(result(&app, &created.secret).await, VerifyResult::Ok);
    }
    let answer = app.verify_perms(&created.secret, &[]).await;
    assert_eq!(answer.result(), VerifyResult::UsageExceeded);
    assert!(!answer.valid);
    // A failed check consumes nothing.
    let other = app
        .create(Token {
            max_uses: 1,
            ..spec("once", &["domains:read"])
        })
        .await;
    assert_eq!(
        app.verify_perms(&other.secret, &["domains:write"])
            .await
            .result(),
        VerifyResult::PermissionDenied
    );
    assert_eq!(result(&app, &other.secret).await, VerifyResult::Ok);
    let got = app
        .tokens
        .clone()
        .get_token(authed(
            &app.admin,
            GetTokenRequest {
                id: other.token.unwrap().id,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.uses, 1);

    let error = app
        .create_as(
            &app.admin.clone(),
            Token {
                max_uses: -1,
                ..spec("negative", &[])
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("token.max_uses"));
}

async fn racing_verifies_on_two_replicas_never_exceed_max_uses(backend: Backend) {
    let app = spawn_app(backend).await;
    // On Postgres a second replica shares the store; SQLite has one process, so both
    // "replicas" are the same server's two connections.
    let second = match backend {
        Backend::Postgres => {
            let db = TestDb {
                backend,
                url: app.db.url.clone(),
                dir: None,
            };
            let settings = test_settings(&db);
            Some(spawn_with(db, settings, Some(app.admin.clone())).await)
        }
        Backend::Sqlite => None,
    };
    let created = app
        .create(Token {
            max_uses: 25,
            ..spec("limited", &["domains:read"])
        })
        .await;
    let mut calls = Vec::new();
    for i in 0..100 {
        let client = match (&second, i % 2) {
            (Some(second), 1) => second.verifier.clone(),
            _ => app.verifier.clone(),
        };
        let secret = created.secret.clone();
        calls.push(tokio::spawn(async move {
            let mut client = client;
            client
                .verify(token_authority::pb::v1::VerifyRequest {
                    token: secret,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .result()
        }));
    }
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            VerifyResult::Ok => ok += 1,
            VerifyResult::UsageExceeded => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok, 25, "exactly max_uses accepted");
}

async fn a_rate_limited_token_is_refused_past_its_rate(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create(Token {
            rate_limit: Some(RateLimit {
                requests: 3,
                interval: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            }),
            ..spec("slow", &["domains:read"])
        })
        .await;
    assert_eq!(created.token.unwrap().rate_limit.unwrap().requests, 3);
    for _ in 0..3 {
        assert_eq!(result(&app, &created.secret).await, VerifyResult::Ok);
    }
    assert_eq!(
        result(&app, &created.secret).await,
        VerifyResult::RateLimited
    );

    let error = app
        .create_as(
            &app.admin.clone(),
            Token {
                rate_limit: Some(RateLimit {
                    requests: 0,
                    interval: None,
                }),
                ..spec("bad-rate", &[])
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("token.rate_limit"),
        "{}",
        error.message()
    );
}

async fn bulk_revocation_disables_every_token_of_an_owner_or_type(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut secrets = Vec::new();
    for i in 0..3 {
        let created = app
            .create(Token {
                owner: "team-red".into(),
                ..spec(&format!("red-{i}"), &[])
            })
            .await;
        assert_eq!(result(&app, &created.secret).await, VerifyResult::Ok);
        secrets.push(created.secret);
    }
    let blue = app
        .create(Token {
            owner: "team-blue".into(),
            ..spec("blue", &[])
        })
        .await
        .secret;

    let revoked = app
        .tokens
        .clone()
        .revoke_tokens(authed(
            &app.admin,
            RevokeTokensRequest {
                owner: "team-red".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked_count, 3);
    for secret in &secrets {
        assert_eq!(result(&app, secret).await, VerifyResult::Disabled);
    }
    assert_eq!(result(&app, &blue).await, VerifyResult::Ok);

    // By type; a non-admin caller revokes only its own owner's tokens of the type.
    let blue_admin = app
        .create(Token {
            owner: "team-blue".into(),
            ..spec("blue-writer", &["tokens:write"])
        })
        .await
        .secret;
    let red = app
        .create(Token {
            owner: "team-red".into(),
            ..spec("red-late", &[])
        })
        .await
        .secret;
    let revoked = app
        .tokens
        .clone()
        .revoke_tokens(authed(
            &blue_admin,
            RevokeTokensRequest {
                r#type: "personal".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (revoked.revoked_count, revoked.skipped_count),
        (1, 1),
        "blue; the caller's own token is kept"
    );
    assert_eq!(result(&app, &blue).await, VerifyResult::Disabled);
    assert_eq!(result(&app, &red).await, VerifyResult::Ok);

    let green = app
        .create(Token {
            owner: "team-green".into(),
            ..spec("green-writer", &["tokens:write"])
        })
        .await
        .secret;
    for (caller, owner, kind, code) in [
        (&app.admin, "", "", Code::InvalidArgument),
        (&app.admin, "team-red", "personal", Code::InvalidArgument),
        (&app.admin, "Not An Owner", "", Code::InvalidArgument),
        (&green, "team-red", "", Code::PermissionDenied),
    ] {
        let error = app
            .tokens
            .clone()
            .revoke_tokens(authed(
                caller,
                RevokeTokensRequest {
                    owner: owner.into(),
                    r#type: kind.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(error.code(), code, "{owner}/{kind}: {error:?}");
    }
    assert_eq!(
        result(&app, &red).await,
        VerifyResult::Ok,
        "nothing changed"
    );
}

async fn the_management_api_is_rate_limited_per_address_but_verify_is_not(backend: Backend) {
    let db = TestDb::fresh(backend).await;
    let mut settings = test_settings(&db);
    settings.management_rate_limit = 5;
    let app = spawn_with(db, settings, None).await;
    let mut limited = None;
    for i in 0..10 {
        match app
            .tokens
            .clone()
            .get_token(authed(
                &app.admin,
                GetTokenRequest {
                    id: uuid::Uuid::now_v7().to_string(),
                },
            ))
            .await
        {
            Err(status) if status.code() == Code::ResourceExhausted => {
                limited = Some(i);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::NotFound),
            Ok(_) => panic!("no such token"),
        }
    }
    assert_eq!(
        limited,
        Some(5),
        "the sixth call within a minute is refused"
    );
    for _ in 0..20 {
        assert_eq!(result(&app, &app.admin).await, VerifyResult::Ok);
    }
}
