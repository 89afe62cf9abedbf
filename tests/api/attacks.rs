//! The management API tried as an attacker would: a weaker token against a stronger one,
//! a token against its own limits, a rotated-out secret, a forged client address, a
//! request Check refuses. Each attack is refused and leaves every token and the audit
//! trail as they were; a positive control beside each shows the refusal is the policy's.

use envoy_types::pb::envoy::service::auth::v3::{
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use prost_types::FieldMask;
use token_authority::pb::v1::{
    DeleteTokenRequest, GetTokenRequest, ListTokensRequest, RateLimit, RevokeTokensRequest,
    RotateTokenRequest, SetTokenEnabledRequest, Token, TokenType, UpdateTokenRequest,
    UpdateTokenTypeRequest, VerifyResult, token_type_service_client::TokenTypeServiceClient,
};
use tonic::{Code, Status};

use crate::{
    both_backends,
    ext_authz::{request, request_from},
    helpers::{Backend, TestApp, TestDb, authed, spawn_app, spawn_with, spec, test_settings},
};

both_backends!(
    a_writer_cannot_rotate_the_admin_and_take_its_secret,
    a_writer_cannot_seize_or_loosen_a_stronger_token_of_its_owner,
    a_weaker_token_cannot_lock_out_a_stronger_one,
    a_rotated_out_secret_authenticates_no_management_call,
    a_limited_creator_delegates_at_most_what_it_has,
    delegated_uses_are_paid_for_so_they_never_multiply,
    a_token_cannot_lift_its_own_limits,
    a_type_change_cannot_escape_a_template,
    built_in_templates_are_changed_only_by_admins,
    check_spends_uses_and_rate_only_on_requests_it_allows,
    the_management_callers_address_comes_from_trusted_proxies_only,
    an_unreadable_forwarded_for_fails_closed_and_is_still_rate_limited,
    allowed_fields_bind_permissions_other_than_the_defaults,
    a_leaked_creator_and_everything_it_made_are_revoked_in_one_call,
    a_bound_token_cannot_widen_its_reach_with_another_binding,
    bulk_revocations_count_against_the_callers_rate_limit,
);

/// Creates a token as the admin and returns its secret and record.
async fn make(app: &TestApp, token: Token) -> (String, Token) {
    let created = app.create(token).await;
    (created.secret, created.token.unwrap())
}

fn rate(requests: i64, seconds: i64) -> Option<RateLimit> {
    Some(RateLimit {
        requests,
        interval: Some(prost_types::Duration { seconds, nanos: 0 }),
    })
}

async fn rotate(app: &TestApp, secret: &str, id: &str) -> Result<String, Status> {
    app.tokens
        .clone()
        .rotate_token(authed(
            secret,
            RotateTokenRequest {
                id: id.into(),
                grace_period: None,
            },
        ))
        .await
        .map(|r| r.into_inner().secret)
}

async fn update(
    app: &TestApp,
    secret: &str,
    token: Token,
    paths: &[&str],
) -> Result<Token, Status> {
    app.tokens
        .clone()
        .update_token(authed(
            secret,
            UpdateTokenRequest {
                token: Some(token),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn set_enabled(
    app: &TestApp,
    secret: &str,
    id: &str,
    enabled: bool,
) -> Result<Token, Status> {
    app.tokens
        .clone()
        .set_token_enabled(authed(
            secret,
            SetTokenEnabledRequest {
                id: id.into(),
                enabled,
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn get(app: &TestApp, secret: &str, id: &str) -> Result<Token, Status> {
    app.tokens
        .clone()
        .get_token(authed(secret, GetTokenRequest { id: id.into() }))
        .await
        .map(|r| r.into_inner())
}

fn denied<T: std::fmt::Debug>(result: Result<T, Status>) -> Status {
    let status = result.expect_err("the attack is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    status
}

async fn result(app: &TestApp, secret: &str) -> VerifyResult {
    app.verify_perms(secret, &[]).await.result()
}

/// A `tokens:read` + `tokens:write` token made by the bootstrap admin, so of its owner:
/// a CI token, say, that leaks.
async fn writer(app: &TestApp) -> (String, Token) {
    make(app, spec("ci", &["tokens:read", "tokens:write"])).await
}

async fn a_writer_cannot_rotate_the_admin_and_take_its_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let (writer, _) = writer(&app).await;
    let admin = app.admin_token().await;
    let before = app.state().await;

    let status = denied(rotate(&app, &writer, &admin.id).await);
    assert!(status.message().contains("*:*"), "{status:?}");

    assert_eq!(app.state().await, before, "nothing changed");
    assert_eq!(
        result(&app, &app.admin).await,
        VerifyResult::Ok,
        "the admin keeps its secret"
    );
    // Control: the writer may rotate what it covers, itself included.
    let (_, weak) = make(&app, spec("weak", &["tokens:read"])).await;
    assert!(rotate(&app, &writer, &weak.id).await.is_ok());
}

async fn a_writer_cannot_seize_or_loosen_a_stronger_token_of_its_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let (writer, _) = writer(&app).await;
    let (strong_secret, strong) = make(&app, spec("deploy", &["domains:*"])).await;
    let (_, read_only) = make(
        &app,
        Token {
            read_only: true,
            ..spec("viewer", &["domains:*"])
        },
    )
    .await;
    let (_, fenced) = make(
        &app,
        Token {
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..spec("fenced", &["domains:*"])
        },
    )
    .await;
    let (leaked_secret, leaked) = make(&app, spec("leaked", &["domains:*"])).await;
    set_enabled(&app, &app.admin, &leaked.id, false)
        .await
        .unwrap();
    let before = app.state().await;

    denied(rotate(&app, &writer, &strong.id).await);
    denied(
        update(
            &app,
            &writer,
            Token {
                id: read_only.id.clone(),
                read_only: false,
                ..Default::default()
            },
            &["read_only"],
        )
        .await,
    );
    denied(
        update(
            &app,
            &writer,
            Token {
                id: fenced.id.clone(),
                ..Default::default()
            },
            &["allowed_cidrs"],
        )
        .await,
    );
    denied(
        update(
            &app,
            &writer,
            Token {
                id: strong.id.clone(),
                description: "harmless".into(),
                ..Default::default()
            },
            &["description"],
        )
        .await,
    );
    denied(set_enabled(&app, &writer, &leaked.id, true).await);

    assert_eq!(app.state().await, before, "nothing changed");
    assert_eq!(result(&app, &strong_secret).await, VerifyResult::Ok);
    assert_eq!(result(&app, &leaked_secret).await, VerifyResult::Disabled);
    // Control: the admin may do each of these.
    assert!(
        set_enabled(&app, &app.admin, &leaked.id, true)
            .await
            .is_ok()
    );
}

async fn a_weaker_token_cannot_lock_out_a_stronger_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let (killer, _) = make(&app, spec("janitor", &["tokens:*"])).await;
    let admin = app.admin_token().await;
    let (_, other_admin) = make(&app, spec("second-admin", &["*:*"])).await;
    let before = app.state().await;

    denied(set_enabled(&app, &killer, &admin.id, false).await);
    denied(
        app.tokens
            .clone()
            .delete_token(authed(
                &killer,
                DeleteTokenRequest {
                    id: other_admin.id.clone(),
                },
            ))
            .await,
    );
    // A bulk revocation of the owner skips what it does not cover, and the caller itself.
    let revoked = app
        .tokens
        .clone()
        .revoke_tokens(authed(
            &killer,
            RevokeTokensRequest {
                owner: "admin".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((revoked.revoked_count, revoked.skipped_count), (0, 3));
    let events = app.audit_events().await;
    assert_eq!(events[0].action, "bulk_revoke");
    let mut before_tokens = before;
    before_tokens.1.insert(0, events[0].clone());
    assert_eq!(
        app.state().await,
        before_tokens,
        "only the audit event is new"
    );
    assert_eq!(result(&app, &app.admin).await, VerifyResult::Ok);
    assert_eq!(
        result(&app, &killer).await,
        VerifyResult::Ok,
        "its own token is kept"
    );
}

async fn a_rotated_out_secret_authenticates_no_management_call(backend: Backend) {
    let app = spawn_app(backend).await;
    let (old, token) = make(&app, spec("rotating", &["tokens:*"])).await;
    app.tokens
        .clone()
        .rotate_token(authed(
            &app.admin,
            RotateTokenRequest {
                id: token.id.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            },
        ))
        .await
        .unwrap();
    let before = app.state().await;

    for status in [
        rotate(&app, &old, &token.id).await.unwrap_err(),
        get(&app, &old, &token.id).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("rotated"), "{status:?}");
    }

    assert_eq!(app.state().await, before, "nothing changed");
    assert_eq!(
        result(&app, &old).await,
        VerifyResult::Ok,
        "the old secret still verifies during its grace period"
    );
    let failure = app
        .audit_events()
        .await
        .into_iter()
        .find(|e| e.action == "authentication_failed")
        .expect("the attempt is audited");
    assert_eq!(failure.actor_id, token.id, "with the token it names");
    assert!(failure.detail.contains("rotated"), "{failure:?}");
}

async fn a_limited_creator_delegates_at_most_what_it_has(backend: Backend) {
    let app = spawn_app(backend).await;
    let (limited, limited_token) = make(
        &app,
        Token {
            max_uses: 3,
            rate_limit: rate(100, 60),
            ..spec("limited", &["tokens:create", "domains:read"])
        },
    )
    .await;
    let before = app.state().await;

    denied(
        app.create_as(
            &limited,
            Token {
                max_uses: 10,
                ..spec("more-uses", &["domains:read"])
            },
        )
        .await,
    );
    denied(
        app.create_as(
            &limited,
            Token {
                max_uses: 3,
                rate_limit: rate(1000, 60),
                ..spec("faster", &["domains:read"])
            },
        )
        .await,
    );
    assert_eq!(app.state().await, before, "nothing changed");
    assert_eq!(
        get(&app, &app.admin, &limited_token.id).await.unwrap().uses,
        0,
        "refused calls spend no use of their caller"
    );

    // Unset, the limits are inherited: the uses the creator has left after this call,
    // paid from its own budget, and no looser a rate. The creator then has none left.
    let child = app
        .create_as(&limited, spec("child", &["domains:read"]))
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(child.max_uses, 2);
    assert_eq!(child.rate_limit, rate(100, 60));
    assert_eq!(
        get(&app, &app.admin, &limited_token.id).await.unwrap().uses,
        3
    );
    let spent = app
        .create_as(&limited, spec("one-more", &["domains:read"]))
        .await
        .unwrap_err();
    assert_eq!(spent.code(), Code::Unauthenticated, "{spent:?}");
}

async fn delegated_uses_are_paid_for_so_they_never_multiply(backend: Backend) {
    let app = spawn_app(backend).await;
    // A chain of creators, each handing its child what it has left: the whole lineage
    // can never be accepted more often than the root's max_uses allows.
    let (root, _) = make(
        &app,
        Token {
            max_uses: 6,
            ..spec("root", &["tokens:create", "domains:read"])
        },
    )
    .await;
    let mut holders = vec![root.clone()];
    let mut current = root;
    for level in 0..10 {
        match app
            .create_as(
                &current,
                spec(&format!("c{level}"), &["tokens:create", "domains:read"]),
            )
            .await
        {
            Ok(child) => {
                current = child.secret.clone();
                holders.push(child.secret);
            }
            Err(status) => {
                // Used up (unauthenticated), or one use left: the call itself, with none
                // for a child (refused, naming max_uses).
                let why = status.message();
                assert!(
                    status.code() == Code::Unauthenticated
                        || (status.code() == Code::PermissionDenied && why.contains("max_uses")),
                    "{status:?}"
                );
                break;
            }
        }
    }
    let mut accepted = holders.len() - 1; // each create was one use of its creator
    for secret in &holders {
        while result(&app, secret).await == VerifyResult::Ok {
            accepted += 1;
        }
    }
    assert!(accepted <= 6, "{accepted} uses from a max_uses: 6 root");

    // Two limited writers cannot refill each other: what one adds, it pays for.
    let (a, a_token) = make(
        &app,
        Token {
            max_uses: 3,
            ..spec("a", &["tokens:write", "domains:read"])
        },
    )
    .await;
    let (_, b_token) = make(
        &app,
        Token {
            max_uses: 1,
            ..spec("b", &["tokens:write", "domains:read"])
        },
    )
    .await;
    let refill = |max_uses| Token {
        id: b_token.id.clone(),
        max_uses,
        ..Default::default()
    };
    denied(update(&app, &a, refill(10), &["max_uses"]).await);
    update(&app, &a, refill(2), &["max_uses"])
        .await
        .expect("one more use for b costs a two (its call and the use)");
    assert_eq!(get(&app, &app.admin, &a_token.id).await.unwrap().uses, 2);
    denied(update(&app, &a, refill(3), &["max_uses"]).await);
    assert_eq!(
        get(&app, &app.admin, &a_token.id).await.unwrap().uses,
        2,
        "a refused refill costs nothing"
    );
}

async fn a_token_cannot_lift_its_own_limits(backend: Backend) {
    let app = spawn_app(backend).await;
    let (me, token) = make(
        &app,
        Token {
            max_uses: 10,
            rate_limit: rate(100, 1),
            allowed_hosts: vec![],
            ..spec("self", &["tokens:read", "tokens:write"])
        },
    )
    .await;
    let before = app.state().await;

    for (change, paths) in [
        (
            Token {
                id: token.id.clone(),
                max_uses: 0,
                rate_limit: rate(100, 1),
                ..Default::default()
            },
            &["max_uses"][..],
        ),
        (
            Token {
                id: token.id.clone(),
                max_uses: 1000,
                ..Default::default()
            },
            &["max_uses"][..],
        ),
        (
            Token {
                id: token.id.clone(),
                rate_limit: None,
                ..Default::default()
            },
            &["rate_limit"][..],
        ),
        (
            Token {
                id: token.id.clone(),
                permissions: vec!["*:*".into()],
                ..Default::default()
            },
            &["permissions"][..],
        ),
    ] {
        denied(update(&app, &me, change, paths).await);
    }
    assert_eq!(app.state().await, before, "nothing changed");

    // Control: tightening itself is fine.
    let tighter = update(
        &app,
        &me,
        Token {
            id: token.id.clone(),
            max_uses: 5,
            ..Default::default()
        },
        &["max_uses"],
    )
    .await
    .unwrap();
    assert_eq!(tighter.max_uses, 5);
}

async fn a_type_change_cannot_escape_a_template(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, assistant) = make(
        &app,
        Token {
            r#type: "assistant".into(),
            bindings: [("assistantId".to_owned(), "a-1".to_owned())].into(),
            ..spec("helper", &[])
        },
    )
    .await;
    assert!(assistant.read_only);
    let before = app.state().await;

    let status = update(
        &app,
        &app.admin,
        Token {
            id: assistant.id.clone(),
            r#type: "personal".into(),
            read_only: false,
            ..Default::default()
        },
        &["type", "read_only"],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("token.read_only:"),
        "{status:?}"
    );
    assert_eq!(app.state().await, before, "nothing changed");

    // Control: a change that keeps the old template's rules is allowed.
    let moved = update(
        &app,
        &app.admin,
        Token {
            id: assistant.id.clone(),
            r#type: "personal".into(),
            ..Default::default()
        },
        &["type"],
    )
    .await
    .unwrap();
    assert_eq!((moved.r#type.as_str(), moved.read_only), ("personal", true));
}

async fn built_in_templates_are_changed_only_by_admins(backend: Backend) {
    let app = spawn_app(backend).await;
    let (types_admin, _) = make(&app, spec("types", &["token-types:*"])).await;
    let mut client = TokenTypeServiceClient::new(app.channel.clone());
    let assistant = client
        .get_token_type(authed(
            &types_admin,
            token_authority::pb::v1::GetTokenTypeRequest {
                id: "assistant".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let loosen = |secret: &str, template| {
        authed(
            secret,
            UpdateTokenTypeRequest {
                token_type: Some(TokenType {
                    template: Some(template),
                    ..assistant.clone()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["template".into()],
                }),
            },
        )
    };
    let mut writable = assistant.template.clone().unwrap();
    writable.writable = true;
    let before = app.state().await;

    denied(
        client
            .update_token_type(loosen(&types_admin, writable.clone()))
            .await,
    );
    assert_eq!(app.state().await, before, "nothing changed");

    let mut tighter = assistant.template.clone().unwrap();
    tighter.max_lifetime = Some(prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    });
    // Tightening would freeze every token of the type (each later update must fit it):
    // an administrator's decision too.
    denied(
        client
            .update_token_type(loosen(&types_admin, tighter.clone()))
            .await,
    );
    assert_eq!(app.state().await, before, "nothing changed");
    assert!(
        client
            .update_token_type(loosen(&app.admin, tighter))
            .await
            .is_ok()
    );
    assert!(
        client
            .update_token_type(loosen(&app.admin, writable))
            .await
            .is_ok()
    );
}

async fn check_spends_uses_and_rate_only_on_requests_it_allows(backend: Backend) {
    let app = spawn_app(backend).await;
    let (secret, token) = make(
        &app,
        Token {
            max_uses: 5,
            rate_limit: rate(2, 3600),
            ..spec("gateway-user", &["reports:read"])
        },
    )
    .await;
    let auth = format!("Bearer {secret}");
    let mut check = AuthorizationClient::new(app.channel.clone());
    let refused = |response: envoy_types::pb::envoy::service::auth::v3::CheckResponse| {
        matches!(
            response.http_response,
            Some(HttpResponse::DeniedResponse(_))
        )
    };

    for _ in 0..4 {
        let unmapped = check
            .check(request("OPTIONS", "/reports", &[("authorization", &auth)]))
            .await
            .unwrap()
            .into_inner();
        assert!(refused(unmapped));
    }
    let uses = get(&app, &app.admin, &token.id).await.unwrap().uses;
    assert_eq!(uses, 0, "no use spent on a request Check refused");

    // The whole rate-limit burst is still there: two allowed, then limited.
    for _ in 0..2 {
        let allowed = check
            .check(request("GET", "/reports", &[("authorization", &auth)]))
            .await
            .unwrap()
            .into_inner();
        assert!(!refused(allowed), "allowed");
    }
    let limited = check
        .check(request("GET", "/reports", &[("authorization", &auth)]))
        .await
        .unwrap()
        .into_inner();
    assert!(refused(limited));
    assert_eq!(get(&app, &app.admin, &token.id).await.unwrap().uses, 2);
}

async fn the_management_callers_address_comes_from_trusted_proxies_only(backend: Backend) {
    let db = TestDb::fresh(backend).await;
    let mut settings = test_settings(&db);
    settings.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    settings.management_rate_limit = 3;
    let app = spawn_with(db, settings, None).await;
    let (office, _) = make(
        &app,
        Token {
            allowed_cidrs: vec!["203.0.113.0/24".into()],
            ..spec("office", &["tokens:read"])
        },
    )
    .await;
    let list = |forwarded: Option<&str>| {
        let mut request = authed(&office, ListTokensRequest::default());
        if let Some(chain) = forwarded {
            request
                .metadata_mut()
                .insert("x-forwarded-for", chain.parse().unwrap());
        }
        request
    };
    let mut tokens = app.tokens.clone();

    assert!(tokens.list_tokens(list(Some("203.0.113.7"))).await.is_ok());
    denied(tokens.list_tokens(list(None)).await);
    denied(tokens.list_tokens(list(Some("198.51.100.1"))).await);
    // The limit counts the forwarded address: a third call from it, then it is spent.
    assert!(tokens.list_tokens(list(Some("203.0.113.7"))).await.is_ok());
    assert!(tokens.list_tokens(list(Some("203.0.113.7"))).await.is_ok());
    let limited = tokens
        .list_tokens(list(Some("203.0.113.7")))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(tokens.list_tokens(list(Some("203.0.113.8"))).await.is_ok());

    // Where the peer is not a trusted proxy, the header is the client's own word.
    let db = TestDb::fresh(backend).await;
    let settings = test_settings(&db);
    let app = spawn_with(db, settings, None).await;
    let (office, _) = make(
        &app,
        Token {
            allowed_cidrs: vec!["203.0.113.0/24".into()],
            ..spec("office", &["tokens:read"])
        },
    )
    .await;
    let mut forged = authed(&office, ListTokensRequest::default());
    forged
        .metadata_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    denied(app.tokens.clone().list_tokens(forged).await);
}

async fn a_leaked_creator_and_everything_it_made_are_revoked_in_one_call(backend: Backend) {
    let app = spawn_app(backend).await;
    let (leaked, leaked_token) = make(
        &app,
        spec("leaked-ci", &["tokens:create", "tokens:read", "domains:*"]),
    )
    .await;
    let child = app
        .create_as(&leaked, spec("child", &["tokens:create", "domains:read"]))
        .await
        .unwrap();
    let sibling = app
        .create_as(&leaked, spec("sibling", &["domains:read"]))
        .await
        .unwrap();
    let grandchild = app
        .create_as(&child.secret, spec("grandchild", &["domains:read"]))
        .await
        .unwrap();
    // A child deleted since: what it made is still reached.
    let middle = app
        .create_as(&leaked, spec("middle", &["tokens:create", "domains:read"]))
        .await
        .unwrap();
    let orphan = app
        .create_as(&middle.secret, spec("orphan", &["domains:read"]))
        .await
        .unwrap();
    app.tokens
        .clone()
        .delete_token(authed(
            &app.admin,
            DeleteTokenRequest {
                id: middle.token.unwrap().id,
            },
        ))
        .await
        .unwrap();
    let (bystander, _) = make(&app, spec("bystander", &["domains:read"])).await;

    let made = app
        .tokens
        .clone()
        .list_tokens(authed(
            &app.admin,
            ListTokensRequest {
                created_by: leaked_token.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<_> = made.tokens.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["child", "sibling"], "created_by lists what it made");

    // The runbook: disable the leaked token, then everything it made, all the way down.
    set_enabled(&app, &app.admin, &leaked_token.id, false)
        .await
        .unwrap();
    let revoked = app
        .tokens
        .clone()
        .revoke_tokens(authed(
            &app.admin,
            RevokeTokensRequest {
                created_by: leaked_token.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((revoked.revoked_count, revoked.skipped_count), (4, 0));
    for secret in [
        &leaked,
        &child.secret,
        &sibling.secret,
        &grandchild.secret,
        &orphan.secret,
    ] {
        assert_eq!(result(&app, secret).await, VerifyResult::Disabled);
    }
    assert_eq!(result(&app, &bystander).await, VerifyResult::Ok);
    let event = &app.audit_events().await[0];
    assert_eq!(event.action, "bulk_revoke");
    assert_eq!(event.target, format!("token/{}", leaked_token.id));
    let count = &event.changes.as_ref().unwrap().fields["revoked_count"];
    assert_eq!(
        count.kind,
        Some(prost_types::value::Kind::NumberValue(4.0)),
        "{event:?}"
    );
    let ids = &event.changes.as_ref().unwrap().fields["revoked_ids"];
    let Some(prost_types::value::Kind::ListValue(ids)) = &ids.kind else {
        panic!("revoked ids are listed: {event:?}");
    };
    assert_eq!(ids.values.len(), 4);

    // Nothing in the request is optional or ambiguous.
    for request in [
        RevokeTokensRequest {
            created_by: "not-an-id".into(),
            ..Default::default()
        },
        RevokeTokensRequest {
            created_by: leaked_token.id.clone(),
            owner: "admin".into(),
            ..Default::default()
        },
    ] {
        let status = app
            .tokens
            .clone()
            .revoke_tokens(authed(&app.admin, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
}

async fn an_unreadable_forwarded_for_fails_closed_and_is_still_rate_limited(backend: Backend) {
    let db = TestDb::fresh(backend).await;
    let mut settings = test_settings(&db);
    settings.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    settings.management_rate_limit = 3;
    let app = spawn_with(db, settings, None).await;
    // Limited to the balancer's own network: a client behind it must not pass for it.
    let (internal, _) = make(
        &app,
        Token {
            allowed_cidrs: vec!["127.0.0.0/8".into()],
            ..spec("internal", &["tokens:read"])
        },
    )
    .await;
    let call = |secret: &str, value: &[u8]| {
        let mut request = authed(secret, ListTokensRequest::default());
        request.metadata_mut().insert(
            "x-forwarded-for",
            tonic::metadata::MetadataValue::try_from(value).unwrap(),
        );
        request
    };
    let mut tokens = app.tokens.clone();
    // A balancer that appends the client to a header the client sent with a byte that is
    // not visible ASCII: the chain cannot be read, so the client is unknown.
    denied(
        tokens
            .list_tokens(call(&internal, b"\xff, 203.0.113.5"))
            .await,
    );
    denied(
        tokens
            .list_tokens(call(&internal, b"198.51.100.1, 203.0.113.5"))
            .await,
    );

    // Unknown addresses are counted under the peer, IPv6 ones by their /64: neither
    // garbage nor a walk through one /64 escapes the management rate limit.
    let (reader, _) = make(&app, spec("reader", &["tokens:read"])).await;
    let limited = |answers: Vec<Result<tonic::Response<_>, Status>>| {
        answers
            .into_iter()
            .filter(
                |a: &Result<
                    tonic::Response<token_authority::pb::v1::ListTokensResponse>,
                    Status,
                >| { matches!(a, Err(s) if s.code() == Code::ResourceExhausted) },
            )
            .count()
    };
    let mut garbage = Vec::new();
    for i in 0..6 {
        garbage.push(
            tokens
                .list_tokens(call(&reader, format!("garbage{i}").as_bytes()))
                .await,
        );
    }
    assert!(
        limited(garbage) >= 3,
        "unparseable addresses share the peer's limit"
    );
    let mut walk = Vec::new();
    for i in 0..6 {
        walk.push(
            tokens
                .list_tokens(call(&reader, format!("2001:db8:1:2::{i:x}").as_bytes()))
                .await,
        );
    }
    assert!(limited(walk) >= 3, "one /64 is one address to the limit");
}

async fn allowed_fields_bind_permissions_other_than_the_defaults(backend: Backend) {
    let app = spawn_app(backend).await;
    TokenTypeServiceClient::new(app.channel.clone())
        .create_token_type(authed(
            &app.admin,
            token_authority::pb::v1::CreateTokenTypeRequest {
                token_type: Some(TokenType {
                    id: "report".into(),
                    display_name: "Report viewer".into(),
                    template: Some(token_authority::pb::v1::Template {
                        allowed_fields: vec!["bindings".into()],
                        required_bindings: vec!["reportId".into()],
                        default_permissions: vec!["reports:read".into()],
                        writable: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();
    let bound = || [("reportId".to_owned(), "r-1".to_owned())].into();
    let before = app.state().await;
    let status = app
        .create_as(
            &app.admin,
            Token {
                r#type: "report".into(),
                bindings: bound(),
                ..spec("r1", &["domains:write", "domains:delete"])
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("token.permissions:"),
        "{status:?}"
    );
    assert_eq!(app.state().await, before, "nothing changed");
    // Control: the type's own defaults are what such a token gets.
    let made = app
        .create_as(
            &app.admin,
            Token {
                r#type: "report".into(),
                bindings: bound(),
                ..spec("r2", &[])
            },
        )
        .await
        .unwrap();
    assert_eq!(made.token.unwrap().permissions, ["reports:read"]);
}

/// At a gateway a bound token reaches only requests that name one of its bound keys. A
/// token bound to `reportId=r-1` that could add `datasetId=d-9` to itself, or give it to a
/// child, would reach `/datasets/d-9`, which it is refused today: a key more is more power.
async fn a_bound_token_cannot_widen_its_reach_with_another_binding(backend: Backend) {
    let app = spawn_app(backend).await;
    let (secret, token) = make(
        &app,
        Token {
            bindings: [("reportId".to_owned(), "r-1".to_owned())].into(),
            ..spec(
                "bound",
                &[
                    "datasets:read",
                    "tokens:read",
                    "tokens:write",
                    "tokens:create",
                ],
            )
        },
    )
    .await;
    let check = AuthorizationClient::new(app.channel.clone());
    let reaches = async |secret: &str| {
        let auth = format!("Bearer {secret}");
        let response = AuthorizationClient::check(
            &mut check.clone(),
            request_from(
                "127.0.0.1",
                "GET",
                "/datasets/d-9",
                &[("authorization", &auth)],
                &[("binding.datasetId", "d-9")],
            ),
        )
        .await
        .unwrap()
        .into_inner();
        matches!(response.http_response, Some(HttpResponse::OkResponse(_)))
    };
    assert!(!reaches(&secret).await, "bound elsewhere: refused");
    let before = app.state().await;

    let widened: std::collections::HashMap<String, String> = [
        ("reportId".to_owned(), "r-1".to_owned()),
        ("datasetId".to_owned(), "d-9".to_owned()),
    ]
    .into();
    let status = denied(
        update(
            &app,
            &secret,
            Token {
                id: token.id.clone(),
                bindings: widened.clone(),
                ..Default::default()
            },
            &["bindings"],
        )
        .await,
    );
    assert!(status.message().contains("bindings"), "{status:?}");
    let child = app
        .tokens
        .clone()
        .create_token(authed(
            &secret,
            token_authority::pb::v1::CreateTokenRequest {
                token: Some(Token {
                    bindings: widened,
                    ..spec("child", &["datasets:read"])
                }),
                ttl: None,
            },
        ))
        .await;
    denied(child);
    // Nor by dropping the key it is bound by: that reaches every report.
    denied(
        update(
            &app,
            &secret,
            Token {
                id: token.id.clone(),
                bindings: [("datasetId".to_owned(), "d-9".to_owned())].into(),
                ..Default::default()
            },
            &["bindings"],
        )
        .await,
    );
    assert_eq!(app.state().await, before, "nothing changed");
    assert!(!reaches(&secret).await, "still refused");

    // Control: a child bound exactly as its creator is made, and an unbound admin may add
    // the key (and the widened token then reaches the route, so the refusals above were
    // the bindings rule's).
    let same = app
        .tokens
        .clone()
        .create_token(authed(
            &secret,
            token_authority::pb::v1::CreateTokenRequest {
                token: Some(spec("same", &["datasets:read"])),
                ttl: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        same.token.unwrap().bindings,
        [("reportId".to_owned(), "r-1".to_owned())].into()
    );
    update(
        &app,
        &app.admin,
        Token {
            id: token.id.clone(),
            bindings: [
                ("reportId".to_owned(), "r-1".to_owned()),
                ("datasetId".to_owned(), "d-9".to_owned()),
            ]
            .into(),
            ..Default::default()
        },
        &["bindings"],
    )
    .await
    .unwrap();
    assert!(reaches(&secret).await, "the admin's widening reaches it");
}

/// A rate-limited token's bulk revocations are limited like its other calls.
async fn bulk_revocations_count_against_the_callers_rate_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    let (secret, token) = make(
        &app,
        Token {
            rate_limit: rate(2, 3600),
            ..spec("limited-revoker", &["tokens:write"])
        },
    )
    .await;
    let revoke = async || {
        app.tokens
            .clone()
            .revoke_tokens(authed(
                &secret,
                RevokeTokensRequest {
                    owner: token.owner.clone(),
                    ..Default::default()
                },
            ))
            .await
    };
    revoke().await.expect("the first is within the limit");
    revoke().await.expect("the second too");
    let status = revoke().await.expect_err("the third is over it");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}
