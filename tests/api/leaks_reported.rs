//! A token whose current secret was reported leaked remembers it (`secret_reported_time`)
//! and cannot be enabled, by any call, until a rotation replaces that secret: enabled as
//! it was, it would accept the leaked secret again. A refused enable writes nothing; a
//! rotation clears the mark; a report of a previous secret marks nothing.

use serde_json::json;
use token_authority::pb::v1::{
    AuditEvent, GetTokenRequest, ReportLeakedTokensRequest, RevokeTokensRequest,
    RotateTokenRequest, RotateTokenResponse, SetTokenEnabledRequest, Token, UpdateTokenRequest,
    VerifyResult, leak_service_client::LeakServiceClient,
};
use tonic::Code;

use crate::{
    both_backends,
    helpers::{Backend, TestApp, TestDb, authed, spawn_app, spawn_with, spec, test_settings},
    json_api,
};

both_backends!(
    a_reported_token_is_enabled_again_only_after_a_rotation,
    a_token_disabled_before_its_secret_is_reported_cannot_be_enabled_with_it,
    a_report_of_a_disabled_tokens_secret_is_remembered_however_many_replays_came_first,
    a_reported_previous_secret_does_not_keep_the_token_from_being_enabled,
    no_other_call_enables_a_reported_token,
    tokens_reported_before_the_mark_existed_are_marked_by_the_upgrade,
);

/// Reports `secret` through ReportLeakedTokens; asserts it was one of ours.
async fn report(app: &TestApp, secret: &str) {
    let answer = LeakServiceClient::new(app.channel.clone())
        .report_leaked_tokens(ReportLeakedTokensRequest {
            secrets: vec![secret.to_owned()],
            source: "support-desk".into(),
            url: String::new(),
        })
        .await
        .expect("a report needs no credential")
        .into_inner();
    assert_eq!(answer.revoked, 1, "{answer:?}");
}

async fn get(app: &TestApp, id: &str) -> Token {
    app.tokens
        .clone()
        .get_token(authed(&app.admin, GetTokenRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
}

async fn set_enabled(app: &TestApp, id: &str, enabled: bool) -> Result<Token, tonic::Status> {
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: id.into(),
                enabled,
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn rotate(app: &TestApp, id: &str, grace_seconds: i64) -> RotateTokenResponse {
    app.tokens
        .clone()
        .rotate_token(authed(
            &app.admin,
            RotateTokenRequest {
                id: id.into(),
                grace_period: (grace_seconds > 0).then_some(prost_types::Duration {
                    seconds: grace_seconds,
                    nanos: 0,
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

fn has_change(event: &AuditEvent, field: &str) -> bool {
    event
        .changes
        .as_ref()
        .is_some_and(|changes| changes.fields.contains_key(field))
}

/// Asserts that enabling the token is refused as reported and changes nothing, and that
/// its leaked secret is still refused.
async fn assert_enable_refused(app: &TestApp, id: &str, leaked: &str) {
    let before = app.state().await;
    let refused = set_enabled(app, id, true)
        .await
        .expect_err("a reported token is not enabled before a rotation");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let message = refused.message();
    assert!(
        message.starts_with("enabled: "),
        "names the field: {message}"
    );
    assert!(
        message.contains("reported leaked") && message.contains("rotate"),
        "says why and what to do: {message}"
    );
    assert!(!message.contains(&leaked[3..]), "no secret in the message");
    assert_eq!(
        app.state().await,
        before,
        "nothing written, nothing audited"
    );
    let token = get(app, id).await;
    assert!(!token.enabled);
    assert!(token.secret_reported_time.is_some());
    assert_eq!(
        app.verify_perms(leaked, &[]).await.result(),
        VerifyResult::Disabled,
        "the leaked secret is still refused"
    );
}

async fn a_reported_token_is_enabled_again_only_after_a_rotation(backend: Backend) {
    let app = spawn_app(backend).await;
    let made = app.create(spec("reported", &["domains:read"])).await;
    let id = made.token.as_ref().unwrap().id.clone();
    let made_at = made.token.as_ref().unwrap().create_time.unwrap();

    report(&app, &made.secret).await;
    let reported = get(&app, &id).await;
    assert!(!reported.enabled);
    let at = reported
        .secret_reported_time
        .expect("the token remembers that its current secret was reported");
    assert!(at.seconds >= made_at.seconds, "the report's time: {at:?}");
    assert_eq!(reported.update_time, Some(at), "written by the report");

    assert_enable_refused(&app, &id, &made.secret).await;

    // The way back: a rotation without grace forgets the leaked secret and the mark.
    let rotated = rotate(&app, &id, 0).await;
    let token = rotated.token.unwrap();
    assert_eq!(token.secret_reported_time, None, "cleared by the rotation");
    assert!(!token.enabled, "a rotation does not enable");
    let event = app
        .audit_events()
        .await
        .into_iter()
        .find(|e| e.action == "rotate")
        .unwrap();
    assert!(
        has_change(&event, "secret_reported_time"),
        "the rotation that clears the mark says so: {event:?}"
    );
    let enabled = set_enabled(&app, &id, true).await.unwrap();
    assert!(enabled.enabled);
    assert!(app.verify_perms(&rotated.secret, &[]).await.valid);
    let leaked = app.verify_perms(&made.secret, &[]).await;
    assert!(!leaked.valid, "the leaked secret stays dead: {leaked:?}");
}

/// An administrator disabled the token first; the report then finds it disabled, and
/// must still make the token remember, or enabling it would revive the leaked secret.
async fn a_token_disabled_before_its_secret_is_reported_cannot_be_enabled_with_it(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let made = app.create(spec("disabled-first", &["domains:read"])).await;
    let id = made.token.as_ref().unwrap().id.clone();
    let disabled = set_enabled(&app, &id, false).await.unwrap();
    assert_eq!(
        disabled.secret_reported_time, None,
        "disabling marks nothing"
    );

    report(&app, &made.secret).await;
    let reported = get(&app, &id).await;
    assert!(reported.secret_reported_time.is_some());
    assert_ne!(reported.update_time, disabled.update_time, "written");
    assert_eq!(reported.update_time, reported.secret_reported_time);
    let event = app
        .audit_events()
        .await
        .into_iter()
        .find(|e| e.action == "leak_reported")
        .unwrap();
    assert!(has_change(&event, "secret_reported_time"), "{event:?}");
    assert_enable_refused(&app, &id, &made.secret).await;

    // Reported again: nothing more to write.
    report(&app, &made.secret).await;
    assert_eq!(get(&app, &id).await.update_time, reported.update_time);

    rotate(&app, &id, 0).await;
    assert!(set_enabled(&app, &id, true).await.unwrap().enabled);
}

/// Replays of a dead secret are audited only a few times a minute per address; the first
/// report of a disabled token's current secret is still written, whatever came before it.
async fn a_report_of_a_disabled_tokens_secret_is_remembered_however_many_replays_came_first(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let dead = app.create(spec("dead", &[])).await;
    report(&app, &dead.secret).await;
    for _ in 0..30 {
        report(&app, &dead.secret).await;
    }
    let made = app.create(spec("disabled-first", &[])).await;
    let id = made.token.as_ref().unwrap().id.clone();
    set_enabled(&app, &id, false).await.unwrap();

    report(&app, &made.secret).await;
    assert!(get(&app, &id).await.secret_reported_time.is_some());
    assert_enable_refused(&app, &id, &made.secret).await;
}

async fn a_reported_previous_secret_does_not_keep_the_token_from_being_enabled(backend: Backend) {
    let app = spawn_app(backend).await;
    let made = app.create(spec("rotated", &["domains:read"])).await;
    let id = made.token.as_ref().unwrap().id.clone();
    let rotated = rotate(&app, &id, 3600).await;
    // Disabled while its previous secret is in grace: the report ends the grace only.
    set_enabled(&app, &id, false).await.unwrap();

    report(&app, &made.secret).await;
    let token = get(&app, &id).await;
    assert_eq!(
        token.secret_reported_time, None,
        "the current secret was not reported"
    );
    assert_eq!(
        token.previous_secret_expire_time.unwrap().seconds,
        0,
        "ended"
    );
    let enabled = set_enabled(&app, &id, true).await.unwrap();
    assert!(enabled.enabled);
    assert!(app.verify_perms(&rotated.secret, &[]).await.valid);
    assert!(!app.verify_perms(&made.secret, &[]).await.valid);
}

/// UpdateToken cannot name `enabled`; a bulk revocation only disables; other fields of a
/// reported token may change, and leave the mark. Over the JSON API the refusal is the
/// same, as 400 FAILED_PRECONDITION; the CLI shows the mark and exits as for bad input.
async fn no_other_call_enables_a_reported_token(backend: Backend) {
    let db = TestDb::fresh(backend).await;
    let mut settings = test_settings(&db);
    settings.http_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = spawn_with(db, settings, None).await;
    let made = app
        .create(Token {
            owner: "team-a".into(),
            ..spec("reported", &["domains:read"])
        })
        .await;
    let id = made.token.as_ref().unwrap().id.clone();
    report(&app, &made.secret).await;

    let before = app.state().await;
    let update = |paths: &[&str]| UpdateTokenRequest {
        token: Some(Token {
            id: id.clone(),
            enabled: true,
            description: "still leaked".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let refused = app
        .tokens
        .clone()
        .update_token(authed(&app.admin, update(&["enabled"])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("update_mask"), "{refused:?}");
    let revoked = app
        .tokens
        .clone()
        .revoke_tokens(authed(
            &app.admin,
            RevokeTokensRequest {
                owner: "team-a".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked_count, 0, "already disabled");
    let answer = json_api::curl(
        &app,
        Some(&app.admin),
        &[],
        &format!("/v1/tokens/{id}:setEnabled"),
        Some(&json!({"enabled": true})),
    );
    assert_eq!(answer.status, 400, "{}", answer.json);
    assert_eq!(answer.json["error"]["status"], "FAILED_PRECONDITION");
    let message = answer.json["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("enabled: "), "{message}");
    let server = format!("http://{}", app.target);
    let cli = crate::cli::run_at(&server, Some(&app.admin), "", &["tokens", "enable", &id]).await;
    assert_eq!(cli.code, 2, "bad input: {}", cli.stderr);
    assert!(cli.stderr.contains("enabled: "), "{}", cli.stderr);
    let (tokens, events) = app.state().await;
    assert_eq!(
        (tokens, events.len()),
        (before.0, before.1.len() + 1),
        "only the revocation's own event"
    );

    let changed = app
        .tokens
        .clone()
        .update_token(authed(&app.admin, update(&["description"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.description, "still leaked");
    assert!(!changed.enabled);
    assert!(changed.secret_reported_time.is_some(), "an update keeps it");
    let shown = crate::cli::run_at(&server, Some(&app.admin), "", &["tokens", "get", &id]).await;
    assert!(
        shown.ok().contains("secret_reported_time:"),
        "{}",
        shown.stdout
    );
    assert_eq!(
        app.verify_perms(&made.secret, &[]).await.result(),
        VerifyResult::Disabled
    );
}

/// A database from before `secret_reported_time`: reports disabled tokens but marked none.
/// The upgrade's backfill (migration 20261203000002) marks each disabled token whose
/// current secret the audit trail says was reported and which was not rotated since;
/// a token rotated since, or enabled again since, is left unmarked.
async fn tokens_reported_before_the_mark_existed_are_marked_by_the_upgrade(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut made = Vec::new();
    for name in ["still-disabled", "rotated-since", "enabled-since"] {
        let token = app.create(spec(name, &["domains:read"])).await;
        report(&app, &token.secret).await;
        made.push(token);
    }
    let id = |i: usize| made[i].token.as_ref().unwrap().id.clone();
    rotate(&app, &id(1), 0).await;
    let marked_at = get(&app, &id(0)).await.secret_reported_time.unwrap();
    let (db, admin) = app.stop().await;
    as_before_the_mark(&db, "enabled-since").await;

    let settings = test_settings(&db);
    let app = spawn_with(db, settings, Some(admin)).await;
    let still = get(&app, &id(0)).await;
    assert_eq!(
        still.secret_reported_time,
        Some(marked_at),
        "marked with the report's time, from the audit trail"
    );
    assert_enable_refused(&app, &id(0), &made[0].secret).await;
    assert_eq!(
        get(&app, &id(1)).await.secret_reported_time,
        None,
        "rotated since"
    );
    let enabled = get(&app, &id(2)).await;
    assert!(
        enabled.enabled && enabled.secret_reported_time.is_none(),
        "{enabled:?}"
    );
}

/// Turns a stopped server's database back into one from before the mark: no token
/// marked, the backfill not yet run, and the token named `enabled` enabled again (as an
/// administrator could before the mark existed).
async fn as_before_the_mark(db: &TestDb, enabled: &str) {
    use sqlx::{Connection, Executor};
    let statements = [
        "UPDATE tokens SET secret_reported_time = NULL".to_owned(),
        format!("UPDATE tokens SET enabled = TRUE WHERE name = '{enabled}'"),
        "DELETE FROM _sqlx_migrations WHERE version = 20261203000002".to_owned(),
    ];
    match db.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            for statement in &statements {
                conn.execute(statement.as_str()).await.unwrap();
            }
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            for statement in &statements {
                conn.execute(statement.as_str()).await.unwrap();
            }
        }
    }
}
