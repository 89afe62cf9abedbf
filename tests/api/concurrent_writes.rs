//! Concurrent writers of every kind on one store: none of them fails. On SQLite every
//! transaction that may write takes the write lock when it begins (`BEGIN IMMEDIATE`), so
//! writers queue; a deferred transaction that read first failed with SQLITE_BUSY instead
//! when another connection wrote in between (issue 12; CI was red from it).

use std::time::Duration;

use prost_types::FieldMask;
use token_authority::pb::v1::{
    CreateTokenTypeRequest, DeleteTokenRequest, DeleteTokenTypeRequest, RevokeTokensRequest,
    RotateTokenRequest, SetTokenEnabledRequest, Template, Token, TokenType, UpdateTokenRequest,
    UpdateTokenTypeRequest, VerifyRequest, token_type_service_client::TokenTypeServiceClient,
};
use tonic::Status;

use crate::{
    both_backends,
    helpers::{Backend, TestApp, authed, spawn_app, spec},
};

both_backends!(concurrent_writers_of_every_kind_never_fail);

/// Writers at once, each through its own calls; rounds each.
const WRITERS: usize = 6;
const ROUNDS: usize = 12;

/// One round of every kind of write, on the writer's own owner and types (so that no
/// call may legitimately fail), with Verify calls between them for the usage flusher.
async fn round(app: &TestApp, writer: usize, round: usize) -> Result<(), (&'static str, Status)> {
    let admin = app.admin.as_str();
    let mut tokens = app.tokens.clone();
    let mut types = TokenTypeServiceClient::new(app.channel.clone());
    let owner = format!("team-{writer}");
    let kind = format!("kind-{writer}-{round}");
    let step = |name: &'static str| move |status: Status| (name, status);

    types
        .create_token_type(authed(
            admin,
            CreateTokenTypeRequest {
                token_type: Some(TokenType {
                    id: kind.clone(),
                    display_name: "Concurrent".into(),
                    template: Some(Template {
                        writable: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        ))
        .await
        .map_err(step("create type"))?;
    let created = app
        .create_as(
            admin,
            Token {
                owner: owner.clone(),
                r#type: kind.clone(),
                ..spec(&format!("t-{round}"), &["domains:read"])
            },
        )
        .await
        .map_err(step("create token"))?;
    let id = created.token.unwrap().id;
    let verify = |secret: String| {
        let mut client = app.verifier.clone();
        async move {
            client
                .verify(VerifyRequest {
                    token: secret,
                    ..Default::default()
                })
                .await
        }
    };
    verify(created.secret.clone())
        .await
        .map_err(step("verify"))?;
    tokens
        .update_token(authed(
            admin,
            UpdateTokenRequest {
                token: Some(Token {
                    id: id.clone(),
                    description: format!("round {round}"),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["description".into()],
                }),
            },
        ))
        .await
        .map_err(step("update token"))?;
    types
        .update_token_type(authed(
            admin,
            UpdateTokenTypeRequest {
                token_type: Some(TokenType {
                    id: kind.clone(),
                    display_name: format!("Concurrent {round}"),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
        ))
        .await
        .map_err(step("update type"))?;
    let rotated = tokens
        .rotate_token(authed(
            admin,
            RotateTokenRequest {
                id: id.clone(),
                grace_period: None,
            },
        ))
        .await
        .map_err(step("rotate"))?
        .into_inner();
    verify(rotated.secret).await.map_err(step("verify"))?;
    for enabled in [false, true] {
        tokens
            .set_token_enabled(authed(
                admin,
                SetTokenEnabledRequest {
                    id: id.clone(),
                    enabled,
                },
            ))
            .await
            .map_err(step("set enabled"))?;
    }
    tokens
        .revoke_tokens(authed(
            admin,
            RevokeTokensRequest {
                owner: owner.clone(),
                ..Default::default()
            },
        ))
        .await
        .map_err(step("revoke"))?;
    tokens
        .delete_token(authed(admin, DeleteTokenRequest { id }))
        .await
        .map_err(step("delete token"))?;
    // No token has the type any more, so deleting it must succeed: a spurious failure
    // here was the CI flake (UNAVAILABLE where the type's state decides the answer).
    types
        .delete_token_type(authed(admin, DeleteTokenTypeRequest { id: kind }))
        .await
        .map_err(step("delete type"))?;
    Ok(())
}

async fn concurrent_writers_of_every_kind_never_fail(backend: Backend) {
    // Arrange: one server (usage flushed every 100 ms), and a token verified all along so
    // that the flusher writes while the writers do.
    let app = spawn_app(backend).await;
    let busy = app.create(spec("busy", &[])).await.secret;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (stop, mut client) = (stop.clone(), app.verifier.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = client
                    .verify(VerifyRequest {
                        token: busy.clone(),
                        ..Default::default()
                    })
                    .await;
                if let Err(status) = answer {
                    failures.push(status);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        })
    };

    // Act: every writer runs its rounds at once.
    let app = std::sync::Arc::new(app);
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for r in 0..ROUNDS {
                    if let Err(failure) = round(&app, writer, r).await {
                        failures.push(failure);
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for writer in writers {
        failures.extend(writer.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let verify_failures = background.await.unwrap();

    // Assert: nothing failed.
    assert!(
        failures.is_empty(),
        "{} of {} rounds failed: {:?}",
        failures.len(),
        WRITERS * ROUNDS,
        failures
            .iter()
            .map(|(step, status)| format!("{step}: {:?} {}", status.code(), status.message()))
            .collect::<Vec<_>>()
    );
    assert!(verify_failures.is_empty(), "{verify_failures:?}");
}
