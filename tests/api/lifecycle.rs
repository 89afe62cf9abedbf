//! Every TokenService RPC, names and their uniqueness.

use prost_types::{FieldMask, Struct, Value, value::Kind};
use token_authority::pb::v1::{
    CreateTokenRequest, DeleteTokenRequest, GetTokenRequest, ListTokensRequest,
    SetTokenEnabledRequest, Token, UpdateTokenRequest, VerifyResult,
};
use tonic::Code;

use crate::{
    both_backends,
    helpers::{Backend, authed, spawn_app, spec},
};

both_backends!(
    create_returns_the_secret_once_and_stores_the_token,
    get_returns_the_token_without_its_secret,
    list_pages_through_every_token_in_creation_order,
    update_changes_only_the_masked_fields,
    disable_and_enable_toggle_verification,
    delete_makes_the_secret_unknown,
    duplicate_name_for_the_same_owner_is_already_exists,
    racing_creates_of_one_name_have_exactly_one_winner,
    renaming_onto_a_taken_name_is_already_exists,
    ttl_sets_the_expire_time,
);

fn metadata(key: &str, value: &str) -> Struct {
    Struct {
        fields: [(
            key.to_owned(),
            Value {
                kind: Some(Kind::StringValue(value.to_owned())),
            },
        )]
        .into(),
    }
}

async fn create_returns_the_secret_once_and_stores_the_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut request = spec("ci deploy", &["domains:read", "domains:write"]);
    request.owner = "team-blue".into();
    request.r#type = "personal".into();
    request.description = "used by the deploy pipeline".into();
    request.allowed_cidrs = vec!["10.0.0.0/8".into()];
    request.allowed_hosts = vec!["api.example.com".into()];
    request.bindings = [("reportId".to_owned(), "r-17".to_owned())].into();
    request.metadata = Some(metadata("ticket", "OPS-1"));

    let created = app.create(request).await;

    let token = created.token.unwrap();
    assert!(created.secret.starts_with("ta_"), "default prefix");
    assert!(created.secret.starts_with(&token.display_hint));
    assert_eq!(token.name, "ci deploy");
    assert_eq!(token.owner, "team-blue");
    assert_eq!(token.r#type, "personal");
    assert_eq!(token.permissions, ["domains:read", "domains:write"]);
    assert_eq!(token.allowed_cidrs, ["10.0.0.0/8"]);
    assert_eq!(token.allowed_hosts, ["api.example.com"]);
    assert_eq!(token.bindings["reportId"], "r-17");
    assert_eq!(token.metadata, Some(metadata("ticket", "OPS-1")));
    assert!(token.enabled);
    assert!(token.create_time.is_some() && token.update_time.is_some());
    assert!(token.last_used_time.is_none());
    assert!(uuid::Uuid::parse_str(&token.id).is_ok());
    let admin_id = app.verify_perms(&app.admin, &[]).await.token.unwrap().id;
    assert_eq!(token.created_by, admin_id);
}

async fn get_returns_the_token_without_its_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create(spec("reader", &["domains:read"])).await;
    let id = created.token.as_ref().unwrap().id.clone();

    let got = app
        .tokens
        .clone()
        .get_token(authed(&app.admin, GetTokenRequest { id: id.clone() }))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(Some(&got), created.token.as_ref());
    let printed = format!("{got:?}");
    assert!(
        !printed.contains(&created.secret[3..]),
        "no part of the secret past the hint"
    );
    let missing = app
        .tokens
        .clone()
        .get_token(authed(
            &app.admin,
            GetTokenRequest {
                id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

async fn list_pages_through_every_token_in_creation_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ids = vec![app.verify_perms(&app.admin, &[]).await.token.unwrap().id];
    for i in 0..7 {
        ids.push(
            app.create(spec(&format!("t{i}"), &[]))
                .await
                .token
                .unwrap()
                .id,
        );
    }

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .tokens
            .clone()
            .list_tokens(authed(
                &app.admin,
                ListTokensRequest {
                    page_size: 3,
                    page_token,
                    owner: String::new(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.tokens.len() <= 3);
        pages += 1;
        seen.extend(page.tokens.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    assert_eq!(seen, ids, "every token once, oldest first");
    assert_eq!(pages, 3);
    let only_admin = app
        .tokens
        .clone()
        .list_tokens(authed(
            &app.admin,
            ListTokensRequest {
                page_size: 0,
                page_token: String::new(),
                owner: "nobody".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(only_admin.tokens.is_empty() && only_admin.next_page_token.is_empty());
}

async fn update_changes_only_the_masked_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create(spec("before", &["domains:read"])).await;
    let original = created.token.unwrap();

    let updated = app
        .tokens
        .clone()
        .update_token(authed(
            &app.admin,
            UpdateTokenRequest {
                token: Some(Token {
                    id: original.id.clone(),
                    name: "after".into(),
                    description: "ignored: not in the mask".into(),
                    permissions: vec!["domains:write".into()],
                    metadata: Some(metadata("k", "v")),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into(), "permissions".into(), "metadata".into()],
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(updated.name, "after");
    assert_eq!(updated.permissions, ["domains:write"]);
    assert_eq!(updated.metadata, Some(metadata("k", "v")));
    assert_eq!(updated.description, original.description);
    assert_eq!(updated.create_time, original.create_time);
    let (u, o) = (updated.update_time.unwrap(), original.update_time.unwrap());
    assert!((u.seconds, u.nanos) > (o.seconds, o.nanos));
    let check = app.verify_perms(&created.secret, &["domains:write"]).await;
    assert!(check.valid, "the new permission applies at once: {check:?}");
    let old = app.verify_perms(&created.secret, &["domains:read"]).await;
    assert_eq!(old.result(), VerifyResult::PermissionDenied);
}

async fn disable_and_enable_toggle_verification(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create(spec("toggle", &[])).await;
    let id = created.token.unwrap().id;
    let set = |enabled| {
        let mut tokens = app.tokens.clone();
        let request = authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: id.clone(),
                enabled,
            },
        );
        async move {
            tokens
                .set_token_enabled(request)
                .await
                .unwrap()
                .into_inner()
        }
    };

    assert!(!set(false).await.enabled);
    let disabled = app.verify_perms(&created.secret, &[]).await;
    assert_eq!(disabled.result(), VerifyResult::Disabled);
    assert!(!disabled.valid && disabled.token.is_none());

    assert!(set(true).await.enabled);
    assert!(app.verify_perms(&created.secret, &[]).await.valid);
}

async fn delete_makes_the_secret_unknown(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create(spec("doomed", &[])).await;
    let id = created.token.unwrap().id;
    assert!(app.verify_perms(&created.secret, &[]).await.valid);

    app.tokens
        .clone()
        .delete_token(authed(&app.admin, DeleteTokenRequest { id: id.clone() }))
        .await
        .unwrap();

    assert_eq!(
        app.verify_perms(&created.secret, &[]).await.result(),
        VerifyResult::NotFound
    );
    let again = app
        .tokens
        .clone()
        .delete_token(authed(&app.admin, DeleteTokenRequest { id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let get = app
        .tokens
        .clone()
        .get_token(authed(&app.admin, GetTokenRequest { id }))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
}

async fn duplicate_name_for_the_same_owner_is_already_exists(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create(spec("dup", &[])).await;

    let err = app
        .create_as(&app.admin, spec("dup", &[]))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("token.name"), "{}", err.message());
    let mut other_owner = spec("dup", &[]);
    other_owner.owner = "someone-else".into();
    app.create(other_owner).await;
    assert_eq!(
        app.all_tokens().await.len(),
        3,
        "bootstrap admin + two dups of different owners"
    );
}

async fn racing_creates_of_one_name_have_exactly_one_winner(backend: Backend) {
    let app = spawn_app(backend).await;
    let attempts = 8;

    let results = futures::future::join_all((0..attempts).map(|_| {
        let mut tokens = app.tokens.clone();
        let request = authed(
            &app.admin,
            CreateTokenRequest {
                token: Some(spec("contested", &[])),
                ttl: None,
            },
        );
        async move { tokens.create_token(request).await }
    }))
    .await;

    let winners = results.iter().filter(|r| r.is_ok()).count();
    let losers: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(winners, 1, "{results:?}");
    assert!(
        losers.iter().all(|s| s.code() == Code::AlreadyExists),
        "{losers:?}"
    );
    let named: Vec<_> = app
        .all_tokens()
        .await
        .into_iter()
        .filter(|t| t.name == "contested")
        .collect();
    assert_eq!(named.len(), 1);
}

async fn renaming_onto_a_taken_name_is_already_exists(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create(spec("taken", &[])).await;
    let other = app.create(spec("other", &[])).await.token.unwrap();

    let err = app
        .tokens
        .clone()
        .update_token(authed(
            &app.admin,
            UpdateTokenRequest {
                token: Some(Token {
                    id: other.id.clone(),
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

    assert_eq!(err.code(), Code::AlreadyExists);
    let unchanged = app
        .tokens
        .clone()
        .get_token(authed(&app.admin, GetTokenRequest { id: other.id }))
        .await
        .unwrap();
    assert_eq!(unchanged.into_inner().name, "other");
}

async fn ttl_sets_the_expire_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = chrono::Utc::now().timestamp();

    let created = app
        .create_with_ttl(&app.admin, spec("short-lived", &[]), 3600)
        .await
        .unwrap();

    let expires = created.token.unwrap().expire_time.unwrap().seconds;
    assert!(
        (before + 3600..=before + 3602).contains(&expires),
        "{expires} vs {before}"
    );
}
