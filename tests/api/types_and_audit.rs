//! Token types and templates, ListTokens filters, and the audit trail, on both stores.

use prost_types::{FieldMask, Timestamp};
use token_authority::pb::v1::{
    AuditEvent, CreateTokenTypeRequest, DeleteTokenTypeRequest, GetTokenTypeRequest,
    ListAuditEventsRequest, ListTokenTypesRequest, ListTokensRequest, ListTokensResponse,
    RotateTokenRequest, SetTokenEnabledRequest, Template, Token, TokenType, UpdateTokenRequest,
    UpdateTokenTypeRequest, audit_service_client::AuditServiceClient,
    token_type_service_client::TokenTypeServiceClient,
};
use tonic::{Code, Status, transport::Channel};

use crate::{
    both_backends,
    helpers::{Backend, TestApp, authed, spawn_app, spec},
};

both_backends!(
    two_builtin_types_exist_and_anyone_may_read_them,
    admins_manage_types_with_token_types_permissions,
    create_token_checks_the_template_and_fills_its_defaults,
    list_filters_by_owner_type_state_name_expiry_and_binding,
    name_prefixes_match_literally_and_case_sensitively,
    every_management_action_is_audited_with_its_changes,
    audit_filters_pages_and_scopes_by_owner,
    failed_authentications_are_audited_but_not_without_limit,
    a_failed_change_leaves_no_audit_event,
);

fn types(app: &TestApp) -> TokenTypeServiceClient<Channel> {
    TokenTypeServiceClient::new(app.channel.clone())
}

fn audit(app: &TestApp) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(app.channel.clone())
}

async fn events(app: &TestApp, request: ListAuditEventsRequest) -> Vec<AuditEvent> {
    audit(app)
        .list_audit_events(authed(&app.admin, request))
        .await
        .unwrap()
        .into_inner()
        .events
}

async fn create_type(
    app: &TestApp,
    secret: &str,
    token_type: TokenType,
) -> Result<TokenType, Status> {
    types(app)
        .create_token_type(authed(
            secret,
            CreateTokenTypeRequest {
                token_type: Some(token_type),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn two_builtin_types_exist_and_anyone_may_read_them(backend: Backend) {
    let app = spawn_app(backend).await;
    let nobody = app.create(spec("no-permissions", &[])).await.secret;
    let listed = types(&app)
        .list_token_types(authed(&nobody, ListTokenTypesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed.token_types.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["assistant", "personal"]);
    assert_eq!(listed.total_size, 2);
    assert!(listed.token_types.iter().all(|t| t.builtin));
    let assistant = types(&app)
        .get_token_type(authed(
            &nobody,
            GetTokenTypeRequest {
                id: "assistant".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(assistant.display_name, "Assistant Token");
    let template = assistant.template.unwrap();
    assert_eq!(template.required_bindings, ["assistantId"]);
    assert!(!template.writable);

    let error = types(&app)
        .get_token_type(authed(&nobody, GetTokenTypeRequest { id: "nope".into() }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = types(&app)
        .list_token_types(ListTokenTypesRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
}

async fn admins_manage_types_with_token_types_permissions(backend: Backend) {
    let app = spawn_app(backend).await;
    let plain = app.create(spec("plain", &["tokens:*"])).await.secret;
    let service = TokenType {
        id: "service".into(),
        display_name: "Service Token".into(),
        description: "machine to machine".into(),
        template: Some(Template {
            required_fields: vec!["description".into()],
            writable: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let error = create_type(&app, &plain, service.clone())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert!(
        error.message().contains("token-types:create"),
        "{}",
        error.message()
    );

    let made = create_type(&app, &app.admin, service.clone())
        .await
        .unwrap();
    assert!(!made.builtin);
    let error = create_type(&app, &app.admin, service.clone())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    for (bad, field) in [
        (
            TokenType {
                id: "Bad Id".into(),
                ..service.clone()
            },
            "token_type.id",
        ),
        (
            TokenType {
                id: "x".into(),
                template: Some(Template {
                    required_fields: vec!["secret".into()],
                    ..Default::default()
                }),
                ..service.clone()
            },
            "token_type.template.required_fields",
        ),
        (
            TokenType {
                id: "y".into(),
                template: Some(Template {
                    default_permissions: vec!["NOPE".into()],
                    ..Default::default()
                }),
                ..service.clone()
            },
            "token_type.template.default_permissions",
        ),
    ] {
        let error = create_type(&app, &app.admin, bad).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().starts_with(field), "{}", error.message());
    }

    let updated = types(&app)
        .update_token_type(authed(
            &app.admin,
            UpdateTokenTypeRequest {
                token_type: Some(TokenType {
                    id: "service".into(),
                    display_name: "Service Account Token".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Service Account Token");
    assert_eq!(updated.template, made.template, "unmasked fields stay");

    // In use: cannot be deleted; built-in: never.
    app.create(Token {
        r#type: "service".into(),
        description: "ci".into(),
        ..spec("svc", &[])
    })
    .await;
    let delete = |id: &str| {
        let mut client = types(&app);
        let request = authed(&app.admin, DeleteTokenTypeRequest { id: id.into() });
        async move { client.delete_token_type(request).await }
    };
    assert_eq!(
        delete("service").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        delete("personal").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(delete("missing").await.unwrap_err().code(), Code::NotFound);
    create_type(
        &app,
        &app.admin,
        TokenType {
            id: "unused".into(),
            ..service
        },
    )
    .await
    .unwrap();
    delete("unused").await.unwrap();
}

async fn create_token_checks_the_template_and_fills_its_defaults(backend: Backend) {
    let app = spawn_app(backend).await;
    let assistant = app
        .create(Token {
            r#type: "assistant".into(),
            bindings: [("assistantId".to_owned(), "a-9".to_owned())].into(),
            ..spec("helper", &[])
        })
        .await
        .token
        .unwrap();
    assert_eq!(
        assistant.permissions,
        ["assistants:read"],
        "default permissions"
    );
    assert!(assistant.read_only, "assistant tokens are read-only");
    let lifetime = assistant.expire_time.unwrap().seconds - assistant.create_time.unwrap().seconds;
    assert!(
        (90 * 86400 - 5..=90 * 86400).contains(&lifetime),
        "{lifetime}"
    );

    let refused = |token: Token| {
        let app = &app;
        async move {
            let error = app.create_as(&app.admin.clone(), token).await.unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument);
            error.message().to_owned()
        }
    };
    let unbound = refused(Token {
        r#type: "assistant".into(),
        ..spec("unbound", &[])
    })
    .await;
    assert!(unbound.starts_with("token.bindings"), "{unbound}");
    let unknown = refused(Token {
        r#type: "robot".into(),
        ..spec("robot", &[])
    })
    .await;
    assert!(unknown.starts_with("token.type"), "{unknown}");
    let too_long = app
        .create_with_ttl(
            &app.admin,
            Token {
                r#type: "assistant".into(),
                bindings: [("assistantId".to_owned(), "a-9".to_owned())].into(),
                ..spec("forever", &[])
            },
            365 * 86400,
        )
        .await
        .unwrap_err();
    assert!(
        too_long.message().starts_with("token.expire_time"),
        "{}",
        too_long.message()
    );

    // Updates are held to the template too.
    let error = app
        .tokens
        .clone()
        .update_token(authed(
            &app.admin,
            UpdateTokenRequest {
                token: Some(Token {
                    id: assistant.id.clone(),
                    read_only: false,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["read_only".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("token.read_only"),
        "{}",
        error.message()
    );
}

async fn list(app: &TestApp, request: ListTokensRequest) -> ListTokensResponse {
    app.tokens
        .clone()
        .list_tokens(authed(&app.admin, request))
        .await
        .unwrap()
        .into_inner()
}

fn names(response: &ListTokensResponse) -> Vec<&str> {
    response.tokens.iter().map(|t| t.name.as_str()).collect()
}

async fn name_prefixes_match_literally_and_case_sensitively(backend: Backend) {
    // Names are case-sensitive (unique per owner as written), so their prefixes are too,
    // on both backends alike: SQLite's LIKE ignored ASCII case where Postgres's did not.
    let app = spawn_app(backend).await;
    for name in [
        "ci-lower", "CI-upper", "Ci-mixed", "ĉi-hat", "ci%lit", "ci_under",
    ] {
        app.create(spec(name, &[])).await;
    }
    for (prefix, want) in [
        ("ci", &["ci-lower", "ci%lit", "ci_under"][..]),
        ("CI", &["CI-upper"]),
        ("Ci-", &["Ci-mixed"]),
        ("cI", &[]),
        ("ĉi", &["ĉi-hat"]),
        ("Ĉi", &[]),
        ("ci%", &["ci%lit"]),
        ("ci_", &["ci_under"]),
        ("ci-lower", &["ci-lower"]),
        ("ci-lowerx", &[]),
    ] {
        let listed = list(
            &app,
            ListTokensRequest {
                name_prefix: prefix.into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(names(&listed), want, "prefix {prefix:?}");
        assert_eq!(listed.total_size, want.len() as i64, "prefix {prefix:?}");
    }
}

async fn list_filters_by_owner_type_state_name_expiry_and_binding(backend: Backend) {
    let app = spawn_app(backend).await;
    for (name, owner, bound) in [
        ("ci-a", "team-x", Some("r-1")),
        ("ci-b", "team-x", Some("r-2")),
        ("ci_c", "team-y", Some("r-1")),
        ("deploy", "team-x", None),
    ] {
        app.create(Token {
            owner: owner.into(),
            bindings: bound
                .map(|r| [("reportId".to_owned(), r.to_owned())].into())
                .unwrap_or_default(),
            ..spec(name, &[])
        })
        .await;
    }
    let helper = app
        .create(Token {
            owner: "team-x".into(),
            r#type: "assistant".into(),
            bindings: [("assistantId".to_owned(), "a-1".to_owned())].into(),
            ..spec("helper", &[])
        })
        .await
        .token
        .unwrap();
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: helper.id,
                enabled: false,
            },
        ))
        .await
        .unwrap();
    app.create_with_ttl(
        &app.admin,
        Token {
            owner: "team-x".into(),
            ..spec("brief", &[])
        },
        1,
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let team_x = ListTokensRequest {
        owner: "team-x".into(),
        ..Default::default()
    };
    let all = list(&app, team_x.clone()).await;
    assert_eq!(all.total_size, 5);
    let prefix = list(
        &app,
        ListTokensRequest {
            name_prefix: "ci".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&prefix), ["ci-a", "ci-b", "ci_c"]);
    let literal = list(
        &app,
        ListTokensRequest {
            name_prefix: "ci_".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&literal), ["ci_c"], "_ is not a wildcard");
    let assistants = list(
        &app,
        ListTokensRequest {
            r#type: "assistant".into(),
            ..team_x.clone()
        },
    )
    .await;
    assert_eq!(names(&assistants), ["helper"]);
    let disabled = list(
        &app,
        ListTokensRequest {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&disabled), ["helper"]);
    let expired = list(
        &app,
        ListTokensRequest {
            expired: Some(true),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&expired), ["brief"]);
    let live = list(
        &app,
        ListTokensRequest {
            expired: Some(false),
            ..team_x.clone()
        },
    )
    .await;
    assert_eq!(live.total_size, 4);
    let bound = list(
        &app,
        ListTokensRequest {
            bindings: [("reportId".to_owned(), "r-1".to_owned())].into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&bound), ["ci-a", "ci_c"]);

    // Pages keep the filters; the total counts every page.
    let first = list(
        &app,
        ListTokensRequest {
            page_size: 1,
            name_prefix: "ci".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((names(&first), first.total_size), (vec!["ci-a"], 3));
    let second = list(
        &app,
        ListTokensRequest {
            page_size: 1,
            page_token: first.next_page_token,
            name_prefix: "ci".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&second), ["ci-b"]);

    for (request, field) in [
        (
            ListTokensRequest {
                r#type: "Bad Type".into(),
                ..Default::default()
            },
            "type",
        ),
        (
            ListTokensRequest {
                bindings: [("bad key".to_owned(), "x".to_owned())].into(),
                ..Default::default()
            },
            "bindings",
        ),
    ] {
        let error = app
            .tokens
            .clone()
            .list_tokens(authed(&app.admin, request))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().starts_with(field), "{}", error.message());
    }
}

async fn every_management_action_is_audited_with_its_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin_id = app.verify_perms(&app.admin, &[]).await.token.unwrap().id;
    let created = app.create(spec("audited", &["domains:read"])).await;
    let id = created.token.unwrap().id;
    let target = format!("token/{id}");
    app.tokens
        .clone()
        .update_token(authed(
            &app.admin,
            UpdateTokenRequest {
                token: Some(Token {
                    id: id.clone(),
                    description: "now described".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["description".into()],
                }),
            },
        ))
        .await
        .unwrap();
    for enabled in [false, true] {
        app.tokens
            .clone()
            .set_token_enabled(authed(
                &app.admin,
                SetTokenEnabledRequest {
                    id: id.clone(),
                    enabled,
                },
            ))
            .await
            .unwrap();
    }
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
        .delete_token(authed(
            &app.admin,
            token_authority::pb::v1::DeleteTokenRequest { id: id.clone() },
        ))
        .await
        .unwrap();

    let trail = events(
        &app,
        ListAuditEventsRequest {
            target: target.clone(),
            ..Default::default()
        },
    )
    .await;
    let actions: Vec<_> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["delete", "rotate", "enable", "disable", "update", "create"],
        "newest first"
    );
    for event in &trail {
        assert_eq!(event.actor_id, admin_id);
        assert_eq!(event.actor_owner, "admin");
        assert_eq!(event.target_owner, "admin");
        assert_eq!(event.client_ip, "127.0.0.1");
        assert!(event.time.is_some());
    }
    let changes = |i: usize| format!("{:?}", trail[i].changes);
    assert!(changes(4).contains("now described"), "{}", changes(4));
    assert!(changes(5).contains("domains:read"), "{}", changes(5));
    let printed = format!("{trail:?}");
    assert!(!printed.contains(&created.secret) && !printed.contains(&rotated.secret));

    let bootstrap = events(
        &app,
        ListAuditEventsRequest {
            action: "bootstrap".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(bootstrap.len(), 1);
    assert_eq!(bootstrap[0].target, format!("token/{admin_id}"));
}

async fn audit_filters_pages_and_scopes_by_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    for i in 0..3 {
        app.create(Token {
            owner: "team-a".into(),
            ..spec(&format!("a-{i}"), &[])
        })
        .await;
    }
    app.create(Token {
        owner: "team-b".into(),
        ..spec("b", &[])
    })
    .await;
    let auditor = app
        .create(Token {
            owner: "team-a".into(),
            ..spec("auditor", &["audit:read"])
        })
        .await
        .secret;

    let own = audit(&app)
        .list_audit_events(authed(
            &auditor,
            ListAuditEventsRequest {
                action: "create".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(own.len(), 4, "team-a's three tokens and the auditor itself");
    assert!(own.iter().all(|e| e.target_owner == "team-a"));

    let no_permission = app.create(spec("curious", &["tokens:read"])).await.secret;
    let error = audit(&app)
        .list_audit_events(authed(&no_permission, ListAuditEventsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);

    let page = audit(&app)
        .list_audit_events(authed(
            &app.admin,
            ListAuditEventsRequest {
                page_size: 2,
                action: "create".into(),
                start_time: Some(Timestamp {
                    seconds: before.as_secs() as i64,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 2);
    let rest = events(
        &app,
        ListAuditEventsRequest {
            page_size: 10,
            page_token: page.next_page_token,
            action: "create".into(),
            start_time: Some(Timestamp {
                seconds: before.as_secs() as i64,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(rest.len(), 4, "six creates after the start time");
    let future = events(
        &app,
        ListAuditEventsRequest {
            end_time: Some(Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    assert!(future.is_empty());
    let error = audit(&app)
        .list_audit_events(authed(
            &app.admin,
            ListAuditEventsRequest {
                actor_id: "nope".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("actor_id"));
}

async fn failed_authentications_are_audited_but_not_without_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    let revoked = app.create(spec("revoked", &["tokens:read"])).await;
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: revoked.token.as_ref().unwrap().id.clone(),
                enabled: false,
            },
        ))
        .await
        .unwrap();
    for _ in 0..30 {
        let error = app
            .tokens
            .clone()
            .list_tokens(authed(&revoked.secret, ListTokensRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
    }
    let failures = events(
        &app,
        ListAuditEventsRequest {
            action: "authentication_failed".into(),
            page_size: 100,
            ..Default::default()
        },
    )
    .await;
    assert!(
        (1..=10).contains(&failures.len()),
        "{} recorded of 30",
        failures.len()
    );
    let failure = &failures[0];
    assert_eq!(failure.actor_id, revoked.token.unwrap().id);
    assert!(failure.detail.contains("disabled"), "{}", failure.detail);
    assert_eq!(failure.client_ip, "127.0.0.1");
    assert!(!format!("{failures:?}").contains(&revoked.secret));
}

async fn a_failed_change_leaves_no_audit_event(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create(spec("taken", &[])).await;
    let other = app.create(spec("other", &[])).await.token.unwrap().id;
    let error = app
        .tokens
        .clone()
        .update_token(authed(
            &app.admin,
            UpdateTokenRequest {
                token: Some(Token {
                    id: other.clone(),
                    name: "taken".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    let error = app
        .create_as(&app.admin.clone(), spec("taken", &[]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    let trail = events(&app, ListAuditEventsRequest::default()).await;
    assert!(
        trail.iter().all(|e| e.action != "update"),
        "the refused rename is not recorded"
    );
    assert_eq!(
        trail.iter().filter(|e| e.action == "create").count(),
        2,
        "only the two creates that happened"
    );
}
