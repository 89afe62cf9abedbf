//! Who may manage tokens: authentication, the tokens:<action> permissions, owner scoping,
//! and every privilege escalation attempt refused.

use prost_types::FieldMask;
use token_authority::pb::v1::{
    CreateTokenRequest, DeleteTokenRequest, GetTokenRequest, ListTokensRequest,
    SetTokenEnabledRequest, Token, UpdateTokenRequest,
};
use tonic::{Code, Request};

use crate::{
    both_backends,
    helpers::{Backend, TestApp, authed, spawn_app, spec},
};

both_backends!(
    calls_without_valid_credentials_are_unauthenticated,
    each_call_needs_its_tokens_permission,
    callers_see_and_manage_only_their_own_owner,
    admins_manage_every_owner,
    permissions_the_caller_lacks_cannot_be_granted,
    tokens_cannot_outlive_their_creator,
    read_only_callers_cannot_write_or_create_writable_tokens,
    restrictions_are_inherited_and_cannot_be_widened,
    updates_cannot_escalate,
    a_disabled_caller_is_refused_at_once,
);

/// Creates a token of `owner` with `permissions` and returns its secret.
async fn make(app: &TestApp, owner: &str, name: &str, permissions: &[&str]) -> (String, Token) {
    let mut request = spec(name, permissions);
    request.owner = owner.into();
    let created = app.create(request).await;
    (created.secret, created.token.unwrap())
}

fn get(id: &str) -> GetTokenRequest {
    GetTokenRequest { id: id.into() }
}

async fn calls_without_valid_credentials_are_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, target) = make(&app, "a", "target", &[]).await;
    let mut tokens = app.tokens.clone();
    let unknown = token_authority::domain::secret::TokenSecret::generate(&Default::default());

    let missing = tokens
        .get_token(Request::new(get(&target.id)))
        .await
        .unwrap_err();
    let garbage = tokens
        .get_token(authed("not-a-token", get(&target.id)))
        .await
        .unwrap_err();
    let not_ours = tokens
        .get_token(authed(unknown.expose(), get(&target.id)))
        .await
        .unwrap_err();
    let mut basic = Request::new(get(&target.id));
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {}", app.admin).parse().unwrap(),
    );
    let wrong_scheme = tokens.get_token(basic).await.unwrap_err();
    let mut lower = Request::new(get(&target.id));
    lower.metadata_mut().insert(
        "authorization",
        format!("bearer {}", app.admin).parse().unwrap(),
    );

    for status in [&missing, &garbage, &not_ours, &wrong_scheme] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(!status.message().contains(&app.admin[3..]));
    }
    assert!(
        tokens.get_token(lower).await.is_ok(),
        "the scheme is case-insensitive"
    );
}

async fn each_call_needs_its_tokens_permission(backend: Backend) {
    let app = spawn_app(backend).await;
    let (reader, _) = make(&app, "a", "reader", &["tokens:read"]).await;
    let (creator, _) = make(&app, "a", "creator", &["tokens:create"]).await;
    let (_, target) = make(&app, "a", "target", &[]).await;
    let mut tokens = app.tokens.clone();

    assert!(
        tokens
            .get_token(authed(&reader, get(&target.id)))
            .await
            .is_ok()
    );
    assert!(
        tokens
            .list_tokens(authed(&reader, ListTokensRequest::default()))
            .await
            .is_ok()
    );
    let denied = [
        tokens
            .get_token(authed(&creator, get(&target.id)))
            .await
            .unwrap_err(),
        tokens
            .list_tokens(authed(&creator, ListTokensRequest::default()))
            .await
            .unwrap_err(),
        tokens
            .create_token(authed(
                &reader,
                CreateTokenRequest {
                    token: Some(spec("x", &[])),
                    ttl: None,
                },
            ))
            .await
            .unwrap_err(),
        tokens
            .set_token_enabled(authed(
                &reader,
                SetTokenEnabledRequest {
                    id: target.id.clone(),
                    enabled: false,
                },
            ))
            .await
            .unwrap_err(),
        tokens
            .update_token(authed(
                &reader,
                UpdateTokenRequest {
                    token: Some(Token {
                        id: target.id.clone(),
                        description: "x".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["description".into()],
                    }),
                },
            ))
            .await
            .unwrap_err(),
        tokens
            .delete_token(authed(
                &reader,
                DeleteTokenRequest {
                    id: target.id.clone(),
                },
            ))
            .await
            .unwrap_err(),
    ];
    for status in &denied {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("tokens:"),
            "names the permission: {}",
            status.message()
        );
    }
    assert!(app.create_as(&creator, spec("made", &[])).await.is_ok());
    assert!(
        app.verify_perms(&app.create(spec("still", &[])).await.secret, &[])
            .await
            .valid
    );
    let target_now = tokens
        .get_token(authed(&app.admin, get(&target.id)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        target_now.enabled && target_now.description.is_empty(),
        "refused calls changed nothing"
    );
}

async fn callers_see_and_manage_only_their_own_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let (alice, _) = make(&app, "alice", "alice-admin", &["tokens:*"]).await;
    let (_, bobs) = make(&app, "bob", "bob-token", &[]).await;
    let (_, alices) = make(&app, "alice", "alice-token", &[]).await;
    let mut tokens = app.tokens.clone();

    let listed = tokens
        .list_tokens(authed(&alice, ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tokens.iter().all(|t| t.owner == "alice"));
    assert_eq!(listed.tokens.len(), 2);
    let other_list = tokens
        .list_tokens(authed(
            &alice,
            ListTokensRequest {
                owner: "bob".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(other_list.code(), Code::PermissionDenied);

    let hidden = [
        tokens
            .get_token(authed(&alice, get(&bobs.id)))
            .await
            .unwrap_err(),
        tokens
            .set_token_enabled(authed(
                &alice,
                SetTokenEnabledRequest {
                    id: bobs.id.clone(),
                    enabled: false,
                },
            ))
            .await
            .unwrap_err(),
        tokens
            .update_token(authed(
                &alice,
                UpdateTokenRequest {
                    token: Some(Token {
                        id: bobs.id.clone(),
                        name: "pwned".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["name".into()],
                    }),
                },
            ))
            .await
            .unwrap_err(),
        tokens
            .delete_token(authed(
                &alice,
                DeleteTokenRequest {
                    id: bobs.id.clone(),
                },
            ))
            .await
            .unwrap_err(),
    ];
    for status in &hidden {
        assert_eq!(
            status.code(),
            Code::NotFound,
            "another owner's token does not exist for alice: {status:?}"
        );
    }
    let mut for_bob = spec("sneaky", &[]);
    for_bob.owner = "bob".into();
    assert_eq!(
        app.create_as(&alice, for_bob).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let bob_now = tokens
        .get_token(authed(&app.admin, get(&bobs.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob_now, bobs, "bob's token is untouched");

    let own = app
        .create_as(&alice, spec("alice-new", &[]))
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(own.owner, "alice", "the owner defaults to the caller's");
    assert!(
        tokens
            .get_token(authed(&alice, get(&alices.id)))
            .await
            .is_ok()
    );
}

async fn admins_manage_every_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    make(&app, "alice", "a1", &[]).await;
    make(&app, "bob", "b1", &[]).await;
    let mut tokens = app.tokens.clone();

    let all = tokens
        .list_tokens(authed(&app.admin, ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let bobs = tokens
        .list_tokens(authed(
            &app.admin,
            ListTokensRequest {
                owner: "bob".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();

    let mut owners: Vec<_> = all.tokens.iter().map(|t| t.owner.as_str()).collect();
    owners.sort();
    assert_eq!(owners, ["admin", "alice", "bob"]);
    assert_eq!(bobs.tokens.len(), 1);
    assert_eq!(bobs.tokens[0].owner, "bob");
}

async fn permissions_the_caller_lacks_cannot_be_granted(backend: Backend) {
    let app = spawn_app(backend).await;
    let (caller, _) = make(&app, "a", "limited", &["tokens:create", "domains:*"]).await;

    assert!(
        app.create_as(&caller, spec("ok", &["domains:read", "domains:*"]))
            .await
            .is_ok()
    );
    for escalation in [
        &["backends:read"][..],
        &["*:*"],
        &["*:read"],
        &["tokens:delete"],
    ] {
        let err = app
            .create_as(&caller, spec("esc", escalation))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{escalation:?}");
        assert!(err.message().contains("permissions"), "{}", err.message());
    }
    assert_eq!(
        app.all_tokens()
            .await
            .iter()
            .filter(|t| t.name == "esc")
            .count(),
        0
    );
}

async fn tokens_cannot_outlive_their_creator(backend: Backend) {
    let app = spawn_app(backend).await;
    let caller = app
        .create_with_ttl(&app.admin, spec("expiring", &["tokens:create"]), 3600)
        .await
        .unwrap();
    let caller_expiry = caller.token.unwrap().expire_time.unwrap();

    let err = app
        .create_with_ttl(&caller.secret, spec("longer", &[]), 7200)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("expire_time"));

    let inherited = app
        .create_as(&caller.secret, spec("inherits", &[]))
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(
        inherited.expire_time,
        Some(caller_expiry),
        "an unset expiry inherits the creator's"
    );
}

async fn read_only_callers_cannot_write_or_create_writable_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut viewer = spec("viewer", &["*:*"]);
    viewer.read_only = true;
    let viewer = app.create(viewer).await.secret;

    let create = app
        .create_as(&viewer, spec("writable", &[]))
        .await
        .unwrap_err();
    let mut read_only_spec = spec("read-only-too", &["domains:read"]);
    read_only_spec.read_only = true;
    let create_read_only = app.create_as(&viewer, read_only_spec).await.unwrap_err();

    assert_eq!(create.code(), Code::PermissionDenied);
    assert_eq!(
        create_read_only.code(),
        Code::PermissionDenied,
        "creating is not a read"
    );
    assert!(
        app.tokens
            .clone()
            .list_tokens(authed(&viewer, ListTokensRequest::default()))
            .await
            .is_ok()
    );
}

async fn restrictions_are_inherited_and_cannot_be_widened(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut caller = spec("fenced", &["tokens:create", "domains:read"]);
    caller.allowed_cidrs = vec!["127.0.0.0/8".into()];
    caller.bindings = [("reportId".to_owned(), "r-1".to_owned())].into();
    let caller = app.create(caller).await.secret;

    let inherited = app
        .create_as(&caller, spec("child", &["domains:read"]))
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(inherited.allowed_cidrs, ["127.0.0.0/8"]);
    assert_eq!(inherited.bindings["reportId"], "r-1");

    let mut wider = spec("wider", &[]);
    wider.allowed_cidrs = vec!["0.0.0.0/0".into()];
    let err = app.create_as(&caller, wider).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("allowed_cidrs"));
    let mut rebound = spec("rebound", &[]);
    rebound.bindings = [("reportId".to_owned(), "r-2".to_owned())].into();
    assert_eq!(
        app.create_as(&caller, rebound).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

async fn updates_cannot_escalate(backend: Backend) {
    let app = spawn_app(backend).await;
    let (caller, me) = make(&app, "a", "writer", &["tokens:write", "domains:read"]).await;
    let (_, target) = make(&app, "a", "target", &["domains:read"]).await;
    let update = |id: &str, token: Token, paths: &[&str]| {
        let mut tokens = app.tokens.clone();
        let request = authed(
            &caller,
            UpdateTokenRequest {
                token: Some(Token {
                    id: id.into(),
                    ..token
                }),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
        );
        async move { tokens.update_token(request).await }
    };

    let grant = update(
        &target.id,
        Token {
            permissions: vec!["domains:write".into()],
            ..Default::default()
        },
        &["permissions"],
    )
    .await;
    let self_grant = update(
        &me.id,
        Token {
            permissions: vec!["*:*".into()],
            ..Default::default()
        },
        &["permissions"],
    )
    .await;
    let unfence = update(
        &target.id,
        Token {
            allowed_cidrs: vec![],
            ..Default::default()
        },
        &["allowed_cidrs"],
    )
    .await;
    let fine = update(
        &target.id,
        Token {
            description: "ok".into(),
            ..Default::default()
        },
        &["description"],
    )
    .await;

    assert_eq!(grant.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(self_grant.unwrap_err().code(), Code::PermissionDenied);
    assert!(unfence.is_ok(), "the caller has no network limit to keep");
    assert_eq!(fine.unwrap().into_inner().description, "ok");
    let me_now = app
        .tokens
        .clone()
        .get_token(authed(&app.admin, get(&me.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me_now.permissions, ["tokens:write", "domains:read"]);
}

async fn a_disabled_caller_is_refused_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (caller, me) = make(&app, "a", "manager", &["tokens:*"]).await;
    assert!(
        app.tokens
            .clone()
            .list_tokens(authed(&caller, ListTokensRequest::default()))
            .await
            .is_ok()
    );

    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: me.id,
                enabled: false,
            },
        ))
        .await
        .unwrap();

    let err = app
        .tokens
        .clone()
        .list_tokens(authed(&caller, ListTokensRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("disabled"));
}
