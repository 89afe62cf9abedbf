//! The management policy under races an attacker can start: a leaked token's calls in
//! flight while an administrator disables it. Each write reads, decides and writes in one
//! transaction that locks the token and its caller, so a caller disabled meanwhile changes
//! nothing, and a flood of its calls cannot make the administrator's disable fail.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prost_types::FieldMask;
use token_authority::pb::v1::{
    CreateTokenRequest, RevokeTokensRequest, SetTokenEnabledRequest, Token, UpdateTokenRequest,
    VerifyResult,
};
use tonic::Code;
use uuid::Uuid;

use crate::{
    both_backends,
    helpers::{Backend, TestApp, authed, spawn_app, spec},
};

both_backends!(
    a_disabled_token_cannot_reenable_itself_with_calls_in_flight,
    children_made_by_calls_in_flight_do_not_survive_the_runbook,
    a_flood_of_the_leaked_tokens_calls_cannot_fail_the_admins_disable,
    grandchildren_made_during_the_revocation_do_not_survive_it,
    a_disable_whose_caller_hung_up_is_still_refused_everywhere,
    a_disabled_token_changes_no_type_with_calls_in_flight,
    no_token_escapes_a_template_tightened_while_it_was_made,
);

const ROUNDS: usize = 5;
const ATTACKERS: usize = 6;

async fn disable(app: &TestApp, id: &str) {
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: id.into(),
                enabled: false,
            },
        ))
        .await
        .expect("the admin's disable succeeds, however busy the token");
}

async fn enabled(app: &TestApp, id: &str) -> bool {
    app.all_tokens()
        .await
        .into_iter()
        .find(|t| t.id == id)
        .expect("the token is there")
        .enabled
}

async fn a_disabled_token_cannot_reenable_itself_with_calls_in_flight(backend: Backend) {
    let app = spawn_app(backend).await;
    for round in 0..ROUNDS {
        let leaked = app
            .create(spec(&format!("leaked-{round}"), &["tokens:write"]))
            .await;
        let id = leaked.token.unwrap().id;
        let (stop, disabled) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let late = Arc::new(Mutex::new(0usize));
        let mut attackers = Vec::new();
        for _ in 0..ATTACKERS {
            let (mut tokens, secret, id) = (app.tokens.clone(), leaked.secret.clone(), id.clone());
            let (stop, disabled, late) = (stop.clone(), disabled.clone(), late.clone());
            attackers.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    // Sent after the disable was acknowledged: it must fail.
                    let after = disabled.load(Ordering::SeqCst);
                    let answer = tokens
                        .set_token_enabled(authed(
                            &secret,
                            SetTokenEnabledRequest {
                                id: id.clone(),
                                enabled: true,
                            },
                        ))
                        .await;
                    if after && answer.is_ok() {
                        *late.lock().unwrap() += 1;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        disable(&app, &id).await;
        disabled.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        for attacker in attackers {
            attacker.await.unwrap();
        }
        assert!(
            !enabled(&app, &id).await,
            "round {round}: the token re-enabled itself"
        );
        assert_eq!(
            *late.lock().unwrap(),
            0,
            "round {round}: calls after the disable passed"
        );
        assert_eq!(
            app.verify_perms(&leaked.secret, &[]).await.result(),
            VerifyResult::Disabled
        );
    }
}

async fn children_made_by_calls_in_flight_do_not_survive_the_runbook(backend: Backend) {
    let app = spawn_app(backend).await;
    for round in 0..ROUNDS {
        let leaked = app
            .create(spec(
                &format!("leaked-{round}"),
                &["tokens:create", "domains:read"],
            ))
            .await;
        let id = leaked.token.unwrap().id;
        let stop = Arc::new(AtomicBool::new(false));
        let stolen = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut attackers = Vec::new();
        for a in 0..ATTACKERS {
            let (mut tokens, secret) = (app.tokens.clone(), leaked.secret.clone());
            let (stop, stolen) = (stop.clone(), stolen.clone());
            attackers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let made = tokens
                        .create_token(authed(
                            &secret,
                            CreateTokenRequest {
                                token: Some(spec(&format!("k-{round}-{a}-{i}"), &["domains:read"])),
                                ttl: None,
                            },
                        ))
                        .await;
                    if let Ok(made) = made {
                        stolen.lock().unwrap().push(made.into_inner().secret);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The runbook: disable the leaked token, then everything it made.
        disable(&app, &id).await;
        app.tokens
            .clone()
            .revoke_tokens(authed(
                &app.admin,
                RevokeTokensRequest {
                    created_by: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        for attacker in attackers {
            attacker.await.unwrap();
        }
        let stolen = stolen.lock().unwrap().clone();
        for secret in &stolen {
            assert_ne!(
                app.verify_perms(secret, &[]).await.result(),
                VerifyResult::Ok,
                "round {round}: a child made in flight survived ({} made)",
                stolen.len()
            );
        }
    }
}

async fn a_flood_of_the_leaked_tokens_calls_cannot_fail_the_admins_disable(backend: Backend) {
    let app = spawn_app(backend).await;
    let leaked = app.create(spec("leaked", &["tokens:write"])).await;
    let id = leaked.token.unwrap().id;
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for a in 0..ATTACKERS * 2 {
        let (mut tokens, secret, id, stop) = (
            app.tokens.clone(),
            leaked.secret.clone(),
            id.clone(),
            stop.clone(),
        );
        attackers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                // No-op enables, and changes that bump the token's revision.
                let _ = tokens
                    .set_token_enabled(authed(
                        &secret,
                        SetTokenEnabledRequest {
                            id: id.clone(),
                            enabled: true,
                        },
                    ))
                    .await;
                let _ = tokens
                    .update_token(authed(
                        &secret,
                        UpdateTokenRequest {
                            token: Some(Token {
                                id: id.clone(),
                                description: format!("{a}-{}", Uuid::now_v7()),
                                ..Default::default()
                            }),
                            update_mask: Some(FieldMask {
                                paths: vec!["description".into()],
                            }),
                        },
                    ))
                    .await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..10 {
        let answer = app
            .tokens
            .clone()
            .set_token_enabled(authed(
                &app.admin,
                SetTokenEnabledRequest {
                    id: id.clone(),
                    enabled: false,
                },
            ))
            .await;
        match answer {
            Ok(token) => assert!(!token.into_inner().enabled),
            Err(status) => panic!(
                "the admin's disable failed ({:?}: {})",
                status.code(),
                status.message()
            ),
        }
    }
    stop.store(true, Ordering::SeqCst);
    for attacker in attackers {
        attacker.await.unwrap();
    }
    assert!(!enabled(&app, &id).await);
    let refused = app
        .tokens
        .clone()
        .set_token_enabled(authed(
            &leaked.secret,
            SetTokenEnabledRequest {
                id: id.clone(),
                enabled: true,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

/// Runbook step 2 while the leaked token's child keeps making children: a revocation of
/// the lineage that waited for the child's row (locked by a create in flight) must also
/// find the grandchild that create committed, which its first read could not see.
async fn grandchildren_made_during_the_revocation_do_not_survive_it(backend: Backend) {
    let app = spawn_app(backend).await;
    for round in 0..ROUNDS * 2 {
        let root = app
            .create(spec(
                &format!("root-{round}"),
                &["tokens:create", "domains:read"],
            ))
            .await;
        let root_id = root.token.unwrap().id;
        let child = app
            .tokens
            .clone()
            .create_token(authed(
                &root.secret,
                CreateTokenRequest {
                    token: Some(spec(
                        &format!("child-{round}"),
                        &["tokens:create", "domains:read"],
                    )),
                    ttl: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let stop = Arc::new(AtomicBool::new(false));
        let stolen = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut attackers = Vec::new();
        for a in 0..ATTACKERS {
            let (mut tokens, secret) = (app.tokens.clone(), child.secret.clone());
            let (stop, stolen) = (stop.clone(), stolen.clone());
            attackers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let made = tokens
                        .create_token(authed(
                            &secret,
                            CreateTokenRequest {
                                token: Some(spec(&format!("g-{round}-{a}-{i}"), &["domains:read"])),
                                ttl: None,
                            },
                        ))
                        .await;
                    match made {
                        Ok(made) => stolen.lock().unwrap().push(made.into_inner().secret),
                        // Once the child is revoked its calls fail; stop then.
                        Err(_) => break,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        disable(&app, &root_id).await;
        let revoked = app
            .tokens
            .clone()
            .revoke_tokens(authed(
                &app.admin,
                RevokeTokensRequest {
                    created_by: root_id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        stop.store(true, Ordering::SeqCst);
        for attacker in attackers {
            attacker.await.unwrap();
        }
        let stolen = stolen.lock().unwrap().clone();
        assert!(
            !stolen.is_empty(),
            "round {round}: the attack made children"
        );
        for secret in &stolen {
            assert_ne!(
                app.verify_perms(secret, &[]).await.result(),
                VerifyResult::Ok,
                "round {round}: a grandchild made during the revocation survived it \
                 ({} made, {} revoked)",
                stolen.len(),
                revoked.revoked_count
            );
        }
    }
}

/// A client that gives up on its disable (a deadline, a dropped connection) while the
/// store commits it: the commit lands, so the token must be refused from then on, also
/// by the replica that served the call and had it cached (on SQLite nothing but that
/// call evicts it). Timeouts spread over the call's duration land some cancellations
/// mid-commit.
async fn a_disable_whose_caller_hung_up_is_still_refused_everywhere(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut landed, mut abandoned_but_landed) = (0, 0);
    for trial in 0..120u64 {
        let made = app
            .create(spec(&format!("hung-{trial}"), &["domains:read"]))
            .await;
        let id = made.token.unwrap().id;
        assert_eq!(
            app.verify_perms(&made.secret, &[]).await.result(),
            VerifyResult::Ok
        );
        let mut tokens = app.tokens.clone();
        let request = authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: id.clone(),
                enabled: false,
            },
        );
        let wait = Duration::from_micros(200 + (trial % 40) * 150);
        let hung_up = tokio::time::timeout(wait, tokens.set_token_enabled(request))
            .await
            .is_err();
        // However the call ended, the store's answer is the truth; wait for the
        // abandoned call to finish on the server.
        tokio::time::sleep(Duration::from_millis(30)).await;
        if enabled(&app, &id).await {
            continue;
        }
        landed += 1;
        abandoned_but_landed += usize::from(hung_up);
        assert_ne!(
            app.verify_perms(&made.secret, &[]).await.result(),
            VerifyResult::Ok,
            "trial {trial}: a disabled token was accepted after its disable's caller hung up"
        );
    }
    assert!(landed > 0, "some disables landed");
    eprintln!("{landed} disables landed, {abandoned_but_landed} of them after the caller hung up");
}

/// Type writes lock and check their caller in their transaction, as token writes do: a
/// leaked `token-types:create` token's calls in flight when the administrator's disable
/// returns add no type after it.
async fn a_disabled_token_changes_no_type_with_calls_in_flight(backend: Backend) {
    use token_authority::pb::v1::{
        CreateTokenTypeRequest, ListTokenTypesRequest, TokenType,
        token_type_service_client::TokenTypeServiceClient,
    };
    let app = spawn_app(backend).await;
    let types = async || {
        let mut ids: Vec<String> = TokenTypeServiceClient::new(app.channel.clone())
            .list_token_types(authed(&app.admin, ListTokenTypesRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .token_types
            .into_iter()
            .map(|t| t.id)
            .collect();
        ids.sort();
        ids
    };
    for round in 0..ROUNDS {
        let leaked = app
            .create(spec(&format!("typer-{round}"), &["token-types:create"]))
            .await;
        let id = leaked.token.unwrap().id;
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let disabled = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut attackers = Vec::new();
        for a in 0..ATTACKERS {
            let mut client = TokenTypeServiceClient::new(app.channel.clone());
            let (secret, stop, made) = (leaked.secret.clone(), stop.clone(), made.clone());
            let (disabled, errors) = (disabled.clone(), errors.clone());
            attackers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let created = client
                        .create_token_type(authed(
                            &secret,
                            CreateTokenTypeRequest {
                                token_type: Some(TokenType {
                                    id: format!("t{round}-{a}-{i}"),
                                    display_name: "flood".into(),
                                    ..Default::default()
                                }),
                            },
                        ))
                        .await;
                    match created {
                        Ok(_) => {
                            made.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if !disabled.load(Ordering::SeqCst) => {
                            let mut errors = errors.lock().unwrap();
                            // The first few say why; a machine too slow to make a type
                            // could otherwise collect them for the whole 20 s.
                            if errors.len() < 10 {
                                errors.push(format!("{:?}: {}", e.code(), e.message()));
                            }
                        }
                        Err(_) => {}
                    }
                }
            }));
        }
        // The disable comes once the flood is making types, however slow the machine.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while made.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the flood made no type before the disable: {:?}",
                errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        disable(&app, &id).await;
        disabled.store(true, Ordering::SeqCst);
        let at_disable = types().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        for attacker in attackers {
            attacker.await.unwrap();
        }
        let after = types().await;
        let late: Vec<&String> = after.iter().filter(|t| !at_disable.contains(t)).collect();
        assert!(
            late.is_empty(),
            "round {round}: calls of the disabled token added types after the disable: {late:?}"
        );
    }
}

/// Creations judged by a template read before it was tightened must not commit after the
/// tightening was acknowledged: the write share-locks the type and checks its revision.
async fn no_token_escapes_a_template_tightened_while_it_was_made(backend: Backend) {
    use token_authority::pb::v1::{
        CreateTokenTypeRequest, Template, TokenType, UpdateTokenTypeRequest,
        token_type_service_client::TokenTypeServiceClient,
    };
    let app = spawn_app(backend).await;
    let mut types = TokenTypeServiceClient::new(app.channel.clone());
    for round in 0..ROUNDS {
        let kind = format!("svc-{round}");
        let template = |writable| Template {
            writable,
            ..Default::default()
        };
        types
            .create_token_type(authed(
                &app.admin,
                CreateTokenTypeRequest {
                    token_type: Some(TokenType {
                        id: kind.clone(),
                        display_name: "service".into(),
                        template: Some(template(true)),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut makers = Vec::new();
        for m in 0..ATTACKERS {
            let (mut tokens, admin, kind, stop) = (
                app.tokens.clone(),
                app.admin.clone(),
                kind.clone(),
                stop.clone(),
            );
            makers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let _ = tokens
                        .create_token(authed(
                            &admin,
                            CreateTokenRequest {
                                token: Some(Token {
                                    r#type: kind.clone(),
                                    read_only: false,
                                    ..spec(&format!("w-{m}-{i}"), &["domains:write"])
                                }),
                                ttl: None,
                            },
                        ))
                        .await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        types
            .update_token_type(authed(
                &app.admin,
                UpdateTokenTypeRequest {
                    token_type: Some(TokenType {
                        id: kind.clone(),
                        template: Some(template(false)),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["template".into()],
                    }),
                },
            ))
            .await
            .unwrap();
        let at_tightening: Vec<String> = app.all_tokens().await.into_iter().map(|t| t.id).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        for maker in makers {
            maker.await.unwrap();
        }
        let escaped: Vec<String> = app
            .all_tokens()
            .await
            .into_iter()
            .filter(|t| t.r#type == kind && !t.read_only && !at_tightening.contains(&t.id))
            .map(|t| t.name)
            .collect();
        assert!(
            escaped.is_empty(),
            "round {round}: writable tokens made after the template became read-only: {escaped:?}"
        );
    }
}
