//! Bad input on every field: InvalidArgument naming the field, and nothing changes.

use prost_types::{FieldMask, Struct, Timestamp, Value, value::Kind};
use token_authority::pb::v1::{
    CreateTokenRequest, DeleteTokenRequest, GetTokenRequest, ListTokensRequest,
    SetTokenEnabledRequest, Token, UpdateTokenRequest, VerifyRequest,
};
use tonic::Code;

use crate::{
    both_backends,
    helpers::{Backend, authed, spawn_app, spec},
};

both_backends!(
    bad_create_fields_are_invalid_and_change_nothing,
    bad_update_fields_are_invalid_and_change_nothing,
    bad_grace_periods_are_invalid_and_change_nothing,
);

fn deep_struct(levels: usize) -> Struct {
    let mut value = Value {
        kind: Some(Kind::StringValue("leaf".into())),
    };
    for _ in 0..levels {
        value = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("k".to_owned(), value)].into(),
            })),
        };
    }
    Struct {
        fields: [("k".to_owned(), value)].into(),
    }
}

fn big_struct() -> Struct {
    Struct {
        fields: [(
            "blob".to_owned(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(9000))),
            },
        )]
        .into(),
    }
}

/// Each case: what to change on a valid spec, and the field the error must name.
/// A way to break a valid token spec.
type Breaker = Box<dyn Fn(&mut Token)>;

fn bad_specs() -> Vec<(&'static str, Breaker)> {
    vec![
        ("token.name", Box::new(|t| t.name = String::new())),
        ("token.name", Box::new(|t| t.name = "n".repeat(129))),
        ("token.name", Box::new(|t| t.name = "new\nline".into())),
        ("token.name", Box::new(|t| t.name = " padded".into())),
        ("token.owner", Box::new(|t| t.owner = "has space".into())),
        ("token.owner", Box::new(|t| t.owner = "o".repeat(129))),
        ("token.type", Box::new(|t| t.r#type = "Personal".into())),
        (
            "token.description",
            Box::new(|t| t.description = "d".repeat(1025)),
        ),
        (
            "token.permissions[1]",
            Box::new(|t| t.permissions = vec!["domains:read".into(), "Domains:Read".into()]),
        ),
        (
            "token.permissions[0]",
            Box::new(|t| t.permissions = vec!["domains".into()]),
        ),
        (
            "token.permissions",
            Box::new(|t| t.permissions = (0..65).map(|i| format!("r{i}:read")).collect()),
        ),
        (
            "token.allowed_cidrs[0]",
            Box::new(|t| t.allowed_cidrs = vec!["10.0.0.0/33".into()]),
        ),
        (
            "token.allowed_cidrs[0]",
            Box::new(|t| t.allowed_cidrs = vec!["10.1.2.3/8".into()]),
        ),
        (
            "token.allowed_cidrs",
            Box::new(|t| t.allowed_cidrs = (0..33).map(|i| format!("10.0.{i}.0/24")).collect()),
        ),
        (
            "token.allowed_hosts[0]",
            Box::new(|t| t.allowed_hosts = vec!["not a host".into()]),
        ),
        (
            "token.allowed_hosts",
            Box::new(|t| t.allowed_hosts = (0..33).map(|i| format!("h{i}.example.com")).collect()),
        ),
        (
            "token.bindings",
            Box::new(|t| t.bindings = [("bad key".to_owned(), "v".to_owned())].into()),
        ),
        (
            "token.bindings",
            Box::new(|t| t.bindings = [("k".to_owned(), String::new())].into()),
        ),
        (
            "token.bindings",
            Box::new(|t| t.bindings = (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect()),
        ),
        (
            "token.metadata",
            Box::new(|t| t.metadata = Some(deep_struct(10))),
        ),
        (
            "token.metadata",
            Box::new(|t| t.metadata = Some(big_struct())),
        ),
        (
            "token.metadata",
            Box::new(|t| {
                t.metadata = Some(Struct {
                    fields: [(
                        "n".to_owned(),
                        Value {
                            kind: Some(Kind::NumberValue(f64::NAN)),
                        },
                    )]
                    .into(),
                })
            }),
        ),
        (
            "token.expire_time",
            Box::new(|t| {
                t.expire_time = Some(Timestamp {
                    seconds: 1_000,
                    nanos: 0,
                })
            }),
        ),
        (
            "token.expire_time",
            Box::new(|t| {
                t.expire_time = Some(Timestamp {
                    seconds: 4_000_000_000,
                    nanos: -5,
                })
            }),
        ),
    ]
}

async fn bad_create_fields_are_invalid_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.snapshot().await;

    for (field, break_it) in bad_specs() {
        let mut token = spec("valid", &["domains:read"]);
        break_it(&mut token);
        let err = app.create_as(&app.admin, token).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "expected {field}, got {:?}",
            err.message()
        );
    }
    let mut tokens = app.tokens.clone();
    let requests = [
        (
            CreateTokenRequest {
                token: None,
                ttl: None,
            },
            "token:",
        ),
        (
            CreateTokenRequest {
                token: Some(spec("t", &[])),
                ttl: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
            },
            "ttl:",
        ),
        (
            CreateTokenRequest {
                token: Some(spec("t", &[])),
                ttl: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
            },
            "ttl:",
        ),
        (
            CreateTokenRequest {
                token: Some(spec("t", &[])),
                ttl: Some(prost_types::Duration {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
            },
            "ttl:",
        ),
        (
            CreateTokenRequest {
                token: Some(spec("t", &[])),
                ttl: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 1_000_000_000,
                }),
            },
            "ttl.nanos:",
        ),
        (
            CreateTokenRequest {
                token: Some(Token {
                    expire_time: Some(Timestamp {
                        seconds: 4_000_000_000,
                        nanos: 0,
                    }),
                    ..spec("t", &[])
                }),
                ttl: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            },
            "ttl:",
        ),
    ];
    for (request, field) in requests {
        let err = tokens
            .create_token(authed(&app.admin, request))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(field),
            "{field} {:?}",
            err.message()
        );
    }
    for (request, field) in [
        (
            ListTokensRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size:",
        ),
        (
            ListTokensRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size:",
        ),
        (
            ListTokensRequest {
                page_token: "garbage!".into(),
                ..Default::default()
            },
            "page_token:",
        ),
    ] {
        let err = tokens
            .list_tokens(authed(&app.admin, request))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(field),
            "{field} {:?}",
            err.message()
        );
    }
    for id in ["", "not-a-uuid", "123"] {
        let get = tokens
            .get_token(authed(&app.admin, GetTokenRequest { id: id.into() }))
            .await
            .unwrap_err();
        let set = tokens
            .set_token_enabled(authed(
                &app.admin,
                SetTokenEnabledRequest {
                    id: id.into(),
                    enabled: false,
                },
            ))
            .await
            .unwrap_err();
        let delete = tokens
            .delete_token(authed(&app.admin, DeleteTokenRequest { id: id.into() }))
            .await
            .unwrap_err();
        for status in [get, set, delete] {
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with("id:"),
                "{:?}",
                status.message()
            );
        }
    }
    let verify_cases = [
        (
            VerifyRequest {
                token: String::new(),
                ..Default::default()
            },
            "token:",
        ),
        (
            VerifyRequest {
                token: app.admin.clone(),
                required_permissions: vec!["nope".into()],
                ..Default::default()
            },
            "required_permissions[0]:",
        ),
        (
            VerifyRequest {
                token: app.admin.clone(),
                required_permissions: vec!["a:read".into(); 65],
                ..Default::default()
            },
            "required_permissions:",
        ),
        (
            VerifyRequest {
                token: app.admin.clone(),
                client_ip: "10.0.0.300".into(),
                ..Default::default()
            },
            "client_ip:",
        ),
        (
            VerifyRequest {
                token: app.admin.clone(),
                host: "h".repeat(600),
                ..Default::default()
            },
            "host:",
        ),
        (
            VerifyRequest {
                token: app.admin.clone(),
                bindings: [("bad key".to_owned(), "v".to_owned())].into(),
                ..Default::default()
            },
            "bindings:",
        ),
    ];
    for (request, field) in verify_cases {
        let err = app.verifier.clone().verify(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(field),
            "{field} {:?}",
            err.message()
        );
    }

    assert_eq!(
        app.snapshot().await,
        before,
        "nothing was created or changed"
    );
}

async fn bad_update_fields_are_invalid_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let target = app
        .create(spec("target", &["domains:read"]))
        .await
        .token
        .unwrap();
    let before = app.snapshot().await;
    let mut tokens = app.tokens.clone();

    for (field, break_it) in bad_specs() {
        let path = field
            .trim_start_matches("token.")
            .split('[')
            .next()
            .unwrap();
        if path == "owner" {
            continue; // not updatable; see below
        }
        let mut token = Token {
            id: target.id.clone(),
            ..spec("valid", &["domains:read"])
        };
        break_it(&mut token);
        let request = UpdateTokenRequest {
            token: Some(token),
            update_mask: Some(FieldMask {
                paths: vec![path.into()],
            }),
        };
        let err = tokens
            .update_token(authed(&app.admin, request))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "expected {field}, got {:?}",
            err.message()
        );
    }
    for (paths, field) in [
        (vec![], "update_mask:"),
        (vec!["owner"], "update_mask:"),
        (vec!["id"], "update_mask:"),
        (vec!["secret"], "update_mask:"),
        (vec!["name", "create_time"], "update_mask:"),
    ] {
        let request = UpdateTokenRequest {
            token: Some(Token {
                id: target.id.clone(),
                ..spec("renamed", &[])
            }),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        let err = tokens
            .update_token(authed(&app.admin, request))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{paths:?}");
        assert!(
            err.message().starts_with(field),
            "{paths:?} {:?}",
            err.message()
        );
    }
    let no_id = UpdateTokenRequest {
        token: Some(spec("x", &[])),
        update_mask: Some(FieldMask {
            paths: vec!["name".into()],
        }),
    };
    let err = tokens
        .update_token(authed(&app.admin, no_id))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("token.id:"),
        "{:?}",
        err.message()
    );

    assert_eq!(app.snapshot().await, before, "nothing changed");
}

async fn bad_grace_periods_are_invalid_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app
        .create(spec("rotated", &["domains:read"]))
        .await
        .token
        .unwrap()
        .id;
    let before = app.snapshot().await;
    const THIRTY_DAYS: i64 = 30 * 24 * 3600;
    for (seconds, nanos) in [
        (-1, 0),
        (0, -1),
        (1, 1_000_000_000),
        (THIRTY_DAYS, 1),
        (THIRTY_DAYS + 1, 0),
        (i64::MAX, 999_999_999),
    ] {
        let err = app
            .tokens
            .clone()
            .rotate_token(authed(
                &app.admin,
                token_authority::pb::v1::RotateTokenRequest {
                    id: id.clone(),
                    grace_period: Some(prost_types::Duration { seconds, nanos }),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{seconds}s {nanos}ns");
        assert!(err.message().starts_with("grace_period:"), "{err:?}");
    }
    assert_eq!(app.snapshot().await, before, "nothing changed");
    // The longest one is taken.
    app.tokens
        .clone()
        .rotate_token(authed(
            &app.admin,
            token_authority::pb::v1::RotateTokenRequest {
                id,
                grace_period: Some(prost_types::Duration {
                    seconds: THIRTY_DAYS,
                    nanos: 0,
                }),
            },
        ))
        .await
        .expect("30 days is the most");
}
