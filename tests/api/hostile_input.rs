//! Hostile input over the wire: oversized messages and deeply nested metadata are refused
//! with a clear code, and the server keeps serving everyone else.

use prost_types::{Struct, Value, value::Kind};
use token_authority::pb::v1::VerifyRequest;
use tonic::Code;

use crate::{
    both_backends,
    helpers::{Backend, TestApp, TestDb, spawn_app, spawn_with, spec, test_settings},
};

both_backends!(
    an_oversized_verify_request_is_refused_and_the_server_keeps_serving,
    messages_over_the_configured_size_are_refused_and_change_nothing,
    deeply_nested_metadata_is_invalid_and_creates_nothing
);

/// Metadata nested `levels` structs deep.
fn nested(levels: usize) -> Struct {
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

async fn still_serves(app: &TestApp) {
    let made = app.create(spec("after", &["reports:read"])).await;
    let answer = app.verify_perms(&made.secret, &["reports:read"]).await;
    assert!(answer.valid, "{answer:?}");
}

async fn an_oversized_verify_request_is_refused_and_the_server_keeps_serving(backend: Backend) {
    // Arrange: 5 MiB, past the default --max-message-size of 4 MiB.
    let app = spawn_app(backend).await;
    let huge = VerifyRequest {
        token: "ta_".to_owned() + &"x".repeat(5 * 1024 * 1024),
        ..Default::default()
    };

    // Act
    let refused = app.verifier.clone().verify(huge).await.unwrap_err();

    // Assert
    assert!(
        matches!(refused.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{refused:?}"
    );
    still_serves(&app).await;
}

async fn messages_over_the_configured_size_are_refused_and_change_nothing(backend: Backend) {
    // Arrange: a server that takes at most 16 KiB per message.
    let db = TestDb::fresh(backend).await;
    let mut settings = test_settings(&db);
    settings.max_message_size = 16 << 10;
    let app = spawn_with(db, settings, None).await;
    let before = app.all_tokens().await.len();
    let big_value = Value {
        kind: Some(Kind::StringValue("x".repeat(20 << 10))),
    };

    // Act: a 20 KiB Verify and a CreateToken carrying 20 KiB of metadata.
    let verify = VerifyRequest {
        token: "ta_".to_owned() + &"x".repeat(20 << 10),
        ..Default::default()
    };
    let refused_verify = app.verifier.clone().verify(verify).await.unwrap_err();
    let mut token = spec("big", &["reports:read"]);
    token.metadata = Some(Struct {
        fields: [("k".to_owned(), big_value)].into(),
    });
    let refused_create = app.create_as(&app.admin, token).await.unwrap_err();

    // Assert: both refused before decoding (tonic says OUT_OF_RANGE); nothing made; the
    // server still serves ordinary calls.
    for refused in [&refused_verify, &refused_create] {
        assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    }
    assert_eq!(app.all_tokens().await.len(), before);
    still_serves(&app).await;
}

async fn deeply_nested_metadata_is_invalid_and_creates_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.all_tokens().await.len();

    // Past METADATA_DEPTH, up to what protobuf decoding accepts (about 30 levels).
    for levels in [9, 25] {
        let mut token = spec(&format!("deep-{levels}"), &["reports:read"]);
        token.metadata = Some(nested(levels));
        let refused = app.create_as(&app.admin, token).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{levels}: {refused:?}"
        );
        assert!(refused.message().contains("token.metadata"), "{refused:?}");
    }
    // Deeper than prost's recursion limit (100 messages; each level is three): refused
    // while decoding, before the service runs, as the caller's fault (tonic's own codec
    // would say INTERNAL), naming where decoding stopped; the request changes nothing.
    for levels in [40, 1000] {
        let mut token = spec(&format!("deeper-{levels}"), &["reports:read"]);
        token.metadata = Some(nested(levels));
        let refused = app.create_as(&app.admin, token).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{levels}: {refused:?}"
        );
        assert!(
            refused.message().contains("recursion limit"),
            "{levels}: {refused:?}"
        );
    }

    assert_eq!(app.all_tokens().await.len(), before);
    still_serves(&app).await;
}
