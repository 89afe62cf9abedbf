//! Leaked secrets: whoever holds one reports it (no credential needed) and it stops working
//! at once, on every replica; the report is audited and counted, never the secret; bad
//! reports change nothing. LookupToken traces a found secret to its token, whatever the
//! token's state, within the caller's owner.

use std::time::Duration;

use token_authority::{
    domain::secret::{TokenPrefix, TokenSecret},
    pb::v1::{
        LeakOutcome, LookupTokenRequest, ReportLeakedTokensRequest, ReportLeakedTokensResponse,
        RotateTokenRequest, RotateTokenResponse, SecretKind, SetTokenEnabledRequest, Token,
        VerifyResult, leak_service_client::LeakServiceClient,
    },
};
use tonic::Code;

use crate::{
    both_backends,
    helpers::{
        Backend, Replicas, TestApp, TestDb, authed, metered_settings, sample, scrape, spawn_app,
        spawn_with, spec, test_settings,
    },
};

both_backends!(
    a_reported_secret_stops_working_at_once_and_is_audited_without_the_secret,
    a_reported_previous_secret_has_its_grace_ended_and_the_current_one_keeps_working,
    a_reported_token_cannot_be_rotated_with_grace_back_to_its_leaked_secret,
    bad_reports_are_refused_naming_the_field_and_change_nothing,
    reports_are_rate_limited_per_address_but_verify_is_not,
    a_full_report_finds_ours_among_a_thousand,
    lookup_finds_a_token_in_any_state_within_the_callers_owner,
);

async fn report(
    app: &TestApp,
    secrets: &[&str],
    source: &str,
    url: &str,
) -> Result<ReportLeakedTokensResponse, tonic::Status> {
    LeakServiceClient::new(app.channel.clone())
        .report_leaked_tokens(ReportLeakedTokensRequest {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            source: source.into(),
            url: url.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Rotates a token as the admin, its old secret working `seconds` more.
async fn rotate_with_grace(app: &TestApp, id: String, seconds: i64) -> RotateTokenResponse {
    app.tokens
        .clone()
        .rotate_token(authed(
            &app.admin,
            RotateTokenRequest {
                id,
                grace_period: Some(prost_types::Duration { seconds, nanos: 0 }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// The secret with its last character changed (to another one: a secret may end in `x`).
fn mistyped(secret: &str) -> String {
    let (head, last) = secret.split_at(secret.len() - 1);
    format!("{head}{}", if last == "x" { "y" } else { "x" })
}

fn outcomes(answer: &ReportLeakedTokensResponse) -> Vec<LeakOutcome> {
    answer.results.iter().map(|r| r.outcome()).collect()
}

fn unknown_secret() -> String {
    TokenSecret::generate(&TokenPrefix::default())
        .expose()
        .to_owned()
}

async fn token_named(app: &TestApp, name: &str) -> Token {
    app.all_tokens()
        .await
        .into_iter()
        .find(|t| t.name == name)
        .expect("the token is kept")
}

async fn a_reported_secret_stops_working_at_once_and_is_audited_without_the_secret(
    backend: Backend,
) {
    let db = TestDb::fresh(backend).await;
    let settings = metered_settings(&db);
    let app = spawn_with(db, settings, None).await;
    let leaked = app.create(spec("leaked", &["domains:read"])).await;
    let bystander = app.create(spec("bystander", &["domains:read"])).await;
    // Cached on this replica before the report.
    for _ in 0..2 {
        assert!(app.verify_perms(&leaked.secret, &[]).await.valid);
    }
    let mistyped = mistyped(&leaked.secret);
    let unknown = unknown_secret();

    let answer = report(
        &app,
        &[
            &leaked.secret,
            "not a secret",
            &unknown,
            &mistyped,
            &leaked.secret,
        ],
        "support-desk",
        "https://chat.example.com/c/42",
    )
    .await
    .expect("a report needs no credential");

    use LeakOutcome::{Revoked, Unknown};
    assert_eq!(
        outcomes(&answer),
        [Revoked, Unknown, Unknown, Unknown, Revoked]
    );
    assert_eq!((answer.revoked, answer.unknown), (2, 3));
    let hint = &leaked.token.as_ref().unwrap().display_hint;
    assert_eq!(&answer.results[0].display_hint, hint);
    assert_eq!(
        answer.results[1].display_hint, "",
        "no hint of a non-secret"
    );
    let verdict = app.verify_perms(&leaked.secret, &[]).await;
    assert_eq!(verdict.result(), VerifyResult::Disabled, "refused at once");
    assert!(app.verify_perms(&bystander.secret, &[]).await.valid);
    let kept = token_named(&app, "leaked").await;
    assert!(!kept.enabled, "disabled, kept for forensics");

    // Reported again: still ours, audited again, nothing else changes.
    let again = report(&app, &[&leaked.secret], "", "").await.unwrap();
    assert_eq!(outcomes(&again), [Revoked]);
    assert_eq!(
        token_named(&app, "leaked").await.update_time,
        kept.update_time
    );

    let events: Vec<_> = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "leak_reported")
        .collect();
    assert_eq!(events.len(), 2, "one event per report of one of ours");

    // Replayed again and again: still ours, but audited only a few times a minute.
    for _ in 0..30 {
        let replayed = report(&app, &[&leaked.secret], "", "").await.unwrap();
        assert_eq!(outcomes(&replayed), [Revoked]);
    }
    let replays = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "leak_reported")
        .count();
    assert!(
        (3..=12).contains(&replays),
        "{replays} events after 30 replays: a replay cannot fill the audit trail"
    );
    let first = events.last().unwrap();
    assert_eq!(first.target, format!("token/{}", kept.id));
    assert_eq!(first.target_owner, kept.owner);
    assert_eq!(first.actor_id, "", "no one authenticated");
    assert_eq!(first.client_ip, "127.0.0.1");
    let changes = format!("{:?}", first.changes);
    for expected in [
        "support-desk",
        "chat.example.com/c/42",
        "current",
        "enabled",
    ] {
        assert!(changes.contains(expected), "{expected} in {changes}");
    }
    assert!(events[0].detail.contains("already"), "{}", events[0].detail);
    let everything = format!("{:?}", app.audit_events().await);
    assert!(
        !everything.contains(&leaked.secret[3..]),
        "no secret audited"
    );

    let metrics = scrape(app.metrics_port.unwrap()).await;
    let series = |source: &str, outcome: &str| {
        sample(
            &metrics,
            &format!(
                r#"token_authority_leaked_secrets_total{{source="{source}",outcome="{outcome}"}}"#
            ),
        )
    };
    assert_eq!(series("other", "revoked"), Some(2.0), "{metrics}");
    assert_eq!(series("other", "unknown"), Some(3.0));
    assert_eq!(
        series("report", "revoked"),
        Some(31.0),
        "every replay counts"
    );
    assert!(
        !metrics.contains("support-desk"),
        "no reporter text as a label"
    );
}

async fn a_reported_previous_secret_has_its_grace_ended_and_the_current_one_keeps_working(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let made = app.create(spec("rotated", &["domains:read"])).await;
    let id = made.token.unwrap().id;
    let rotated = rotate_with_grace(&app, id, 3600).await;
    assert!(app.verify_perms(&made.secret, &[]).await.valid, "in grace");

    let answer = report(&app, &[&made.secret], "scan", "").await.unwrap();
    assert_eq!(outcomes(&answer), [LeakOutcome::Revoked]);
    assert!(!app.verify_perms(&made.secret, &[]).await.valid, "ended");
    assert!(
        app.verify_perms(&rotated.secret, &[]).await.valid,
        "whoever rotated keeps working"
    );
    let token = token_named(&app, "rotated").await;
    assert!(token.enabled);
    let ended = token
        .previous_secret_expire_time
        .expect("ended, not erased");
    assert_eq!(
        ended.seconds, 0,
        "the epoch: ended on every replica, whatever its clock"
    );
}

/// The attack: a reported token is disabled; rotated with a grace period, its leaked
/// current secret would become the previous one and work again once the token is enabled.
async fn a_reported_token_cannot_be_rotated_with_grace_back_to_its_leaked_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let made = app.create(spec("reported", &["domains:read"])).await;
    let id = made.token.as_ref().unwrap().id.clone();
    let answer = report(&app, &[&made.secret], "report", "").await.unwrap();
    assert_eq!(outcomes(&answer), [LeakOutcome::Revoked]);
    let reported = token_named(&app, "reported").await;

    let refused = app
        .tokens
        .clone()
        .rotate_token(authed(
            &app.admin,
            RotateTokenRequest {
                id: id.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            },
        ))
        .await
        .expect_err("a disabled token rotates only without grace");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("grace_period"),
        "names the field: {}",
        refused.message()
    );
    let unchanged = token_named(&app, "reported").await;
    assert_eq!(
        unchanged.update_time, reported.update_time,
        "nothing written"
    );
    assert_eq!(unchanged.display_hint, reported.display_hint);

    // The way back: rotate without grace, then enable; only the new secret works.
    let rotated = app
        .tokens
        .clone()
        .rotate_token(authed(
            &app.admin,
            RotateTokenRequest {
                id: id.clone(),
                grace_period: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest { id, enabled: true },
        ))
        .await
        .unwrap();
    assert!(app.verify_perms(&rotated.secret, &[]).await.valid);
    let leaked = app.verify_perms(&made.secret, &[]).await;
    assert!(!leaked.valid, "the leaked secret stays dead: {leaked:?}");
}

async fn bad_reports_are_refused_naming_the_field_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let leaked = app.create(spec("leaked", &["domains:read"])).await;
    let before = app.state().await;
    let many: Vec<String> = (0..1001).map(|_| leaked.secret.clone()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let long_url = "u".repeat(2049);
    for (secrets, source, url, field) in [
        (&[][..], "", "", "secrets"),
        (&many[..], "", "", "secrets"),
        (&[leaked.secret.as_str()][..], "Support Desk", "", "source"),
        (&[leaked.secret.as_str()][..], "github", "", "source"),
        (&[leaked.secret.as_str()][..], "", "a\nb", "url"),
        (&[leaked.secret.as_str()][..], "", long_url.as_str(), "url"),
    ] {
        let status = report(&app, secrets, source, url).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {status:?}");
        assert!(!status.message().contains(&leaked.secret[3..]));
    }
    assert_eq!(app.state().await, before, "nothing changed");
    assert!(app.verify_perms(&leaked.secret, &[]).await.valid);
}

/// The most secrets a report takes, looked up in one query: ours among them, current and
/// previous, are found wherever they are.
async fn a_full_report_finds_ours_among_a_thousand(backend: Backend) {
    let app = spawn_app(backend).await;
    let current = app.create(spec("current", &[])).await;
    let rotated = app.create(spec("rotated", &[])).await;
    rotate_with_grace(&app, rotated.token.as_ref().unwrap().id.clone(), 3600).await;
    let mut secrets: Vec<String> = (0..998).map(|_| unknown_secret()).collect();
    secrets.insert(500, rotated.secret.clone());
    secrets.push(current.secret.clone());
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let answer = report(&app, &secrets, "scan", "").await.unwrap();
    assert_eq!((answer.revoked, answer.unknown), (2, 998));
    assert_eq!(answer.results[500].outcome(), LeakOutcome::Revoked);
    assert_eq!(answer.results[999].outcome(), LeakOutcome::Revoked);
    assert!(!app.verify_perms(&current.secret, &[]).await.valid);
    assert!(!app.verify_perms(&rotated.secret, &[]).await.valid);
}

async fn reports_are_rate_limited_per_address_but_verify_is_not(backend: Backend) {
    let db = TestDb::fresh(backend).await;
    let mut settings = test_settings(&db);
    settings.leak_report_rate_limit = 3;
    let app = spawn_with(db, settings, None).await;
    let unknown = unknown_secret();
    for _ in 0..3 {
        report(&app, &[&unknown], "", "").await.unwrap();
    }
    let status = report(&app, &[&unknown], "", "").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let token = app.create(spec("still-works", &[])).await;
    assert!(app.verify_perms(&token.secret, &[]).await.valid);
}

async fn lookup_finds_a_token_in_any_state_within_the_callers_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let lookup = async |caller: &str, secret: &str| {
        app.tokens
            .clone()
            .lookup_token(authed(
                caller,
                LookupTokenRequest {
                    secret: secret.into(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    };
    let of = |owner: &str, name: &str| Token {
        owner: owner.into(),
        ..spec(name, &["domains:read"])
    };
    let reader = app
        .create(Token {
            owner: "team-a".into(),
            ..spec("reader", &["tokens:read"])
        })
        .await;
    let disabled = app.create(of("team-a", "disabled")).await;
    report(&app, &[&disabled.secret], "", "").await.unwrap();
    let expiring = app
        .create_with_ttl(&app.admin, of("team-a", "expiring"), 1)
        .await
        .unwrap();
    let rotated = app.create(of("team-a", "rotated")).await;
    rotate_with_grace(&app, rotated.token.as_ref().unwrap().id.clone(), 1).await;
    let theirs = app.create(of("team-b", "theirs")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!app.verify_perms(&expiring.secret, &[]).await.valid);
    assert!(!app.verify_perms(&rotated.secret, &[]).await.valid);

    for (secret, name, kind) in [
        (&disabled.secret, "disabled", SecretKind::Current),
        (&expiring.secret, "expiring", SecretKind::Current),
        (&rotated.secret, "rotated", SecretKind::Previous),
    ] {
        let found = lookup(&reader.secret, secret).await.expect(name);
        let token = found.token.as_ref().unwrap();
        assert_eq!((token.name.as_str(), found.secret_kind()), (name, kind));
        assert_eq!(token.created_by, app.admin_token().await.id);
    }
    let hidden = lookup(&reader.secret, &theirs.secret).await.unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound, "another owner's is unknown");
    let found = lookup(&app.admin, &theirs.secret).await.unwrap();
    assert_eq!(
        found.token.unwrap().owner,
        "team-b",
        "the admin sees every owner"
    );
    let unknown = lookup(&reader.secret, &unknown_secret()).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(hidden.message(), unknown.message(), "indistinguishable");
    for bad in ["", "ta_short", &mistyped(&theirs.secret)] {
        let status = lookup(&reader.secret, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(status.message().starts_with("secret"), "{status:?}");
    }
    let weak = app
        .create(Token {
            owner: "team-a".into(),
            ..spec("weak", &["domains:read"])
        })
        .await;
    let status = lookup(&weak.secret, &disabled.secret).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "needs tokens:read");
}

/// Two replicas: a report through A is refused by B, which had the token cached, as soon
/// as B hears of it (the store's change feed), and a report through B of a token A cached
/// likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_through_one_replica_is_refused_by_the_other() {
    use token_authority::pb::v1::{
        CreateTokenRequest, VerifyRequest, token_service_client::TokenServiceClient,
        verify_service_client::VerifyServiceClient,
    };
    let mut replicas = Replicas::start().await;
    let target = |port: u16| format!("http://127.0.0.1:{port}");
    let mut tokens = TokenServiceClient::connect(target(replicas.a.port))
        .await
        .unwrap();
    let mut secrets = Vec::new();
    for (via, other) in [
        (replicas.a.port, replicas.b.port),
        (replicas.b.port, replicas.a.port),
    ] {
        let secret = tokens
            .create_token(authed(
                &replicas.admin,
                CreateTokenRequest {
                    token: Some(spec(&format!("leaked-{via}"), &[])),
                    ttl: None,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .secret;
        let mut verifier = VerifyServiceClient::connect(target(other)).await.unwrap();
        let verify = async |verifier: &mut VerifyServiceClient<_>| {
            verifier
                .verify(VerifyRequest {
                    token: secret.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .result()
        };
        for _ in 0..2 {
            assert_eq!(verify(&mut verifier).await, VerifyResult::Ok, "cached");
        }
        let answer = LeakServiceClient::connect(target(via))
            .await
            .unwrap()
            .report_leaked_tokens(ReportLeakedTokensRequest {
                secrets: vec![secret.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcomes(&answer), [LeakOutcome::Revoked]);
        let start = std::time::Instant::now();
        while verify(&mut verifier).await != VerifyResult::Disabled {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the other replica still accepts a reported token"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        secrets.push(secret);
    }
    // Each report is a WARN line naming the token and its owner, never the secret. (The
    // lines come through each process's stderr pipe: wait for them.)
    let start = std::time::Instant::now();
    let logged = loop {
        let mut logged = replicas.a.problems_logged();
        logged.extend(replicas.b.problems_logged());
        let reported = logged
            .iter()
            .filter(|l| l.contains("leaked token reported"));
        if reported.count() >= 2 || start.elapsed() > Duration::from_secs(10) {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reports: Vec<_> = logged
        .iter()
        .filter(|line| line.contains("leaked token reported"))
        .collect();
    assert_eq!(reports.len(), 2, "{logged:#?}");
    for line in &reports {
        assert!(
            line.contains("token_id") && line.contains(r#""owner":"admin""#),
            "{line}"
        );
    }
    for secret in &secrets {
        assert!(
            !logged.iter().any(|line| line.contains(&secret[3..])),
            "secret logged"
        );
    }
}

fn curl(url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, text) = crate::helpers::curl(url, &[], body.map(str::as_bytes));
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// `POST /v1/leaks` on the HTTP port is ReportLeakedTokens as JSON, with the same checks,
/// and errors as `{"error": {"code", "status", "message"}}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_can_be_reported_as_json_with_curl() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let mut settings = test_settings(&db);
    settings.http_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = spawn_with(db, settings, None).await;
    let url = format!("http://127.0.0.1:{}/v1/leaks", app.http_port.unwrap());
    let leaked = app.create(spec("leaked", &[])).await;
    assert!(app.verify_perms(&leaked.secret, &[]).await.valid);

    let body = serde_json::json!({
        "secrets": [leaked.secret, "nonsense"],
        "source": "support-desk",
        "url": "https://tickets.example.com/42",
    })
    .to_string();
    let (status, answer) = curl(&url, Some(&body));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revoked"], 1);
    assert_eq!(answer["unknown"], 1);
    assert_eq!(answer["results"][0]["outcome"], "LEAK_OUTCOME_REVOKED");
    assert_eq!(
        answer["results"][0]["displayHint"],
        leaked.token.as_ref().unwrap().display_hint
    );
    assert_eq!(answer["results"][1]["outcome"], "LEAK_OUTCOME_UNKNOWN");
    assert_eq!(
        app.verify_perms(&leaked.secret, &[]).await.result(),
        VerifyResult::Disabled
    );

    let other = app.create(spec("other", &[])).await;
    let before = app.state().await;
    // Past the gRPC port's --max-message-size (4 MiB here), as over gRPC.
    let too_big = format!("{{\"secrets\": [\"{}\"]}}", "a".repeat(5 << 20));
    for (body, want, field) in [
        (r#"{"secrets": []}"#.to_owned(), 400, "secrets"),
        (
            format!(r#"{{"secrets": ["{}"], "source": "github"}}"#, other.secret),
            400,
            "source",
        ),
        (
            format!(r#"{{"secretz": ["{}"]}}"#, other.secret),
            400,
            "body",
        ),
        (format!(r#"{{"secrets": ["{}""#, other.secret), 400, "body"),
        (too_big, 413, ""),
    ] {
        let (status, answer) = curl(&url, Some(&body));
        assert_eq!(status, want, "{answer}");
        let error = &answer["error"];
        assert_eq!(error["code"], want, "{answer}");
        let name = if want == 413 {
            "OUT_OF_RANGE"
        } else {
            "INVALID_ARGUMENT"
        };
        assert_eq!(error["status"], name, "{answer}");
        assert!(
            error["message"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
        assert!(!answer.to_string().contains(&other.secret[3..]), "{answer}");
    }
    let (status, _) = curl(&url, None);
    assert_eq!(status, 405, "GET is refused");
    assert_eq!(app.state().await, before, "nothing changed");
    assert!(app.verify_perms(&other.secret, &[]).await.valid);
}
