//! Nothing lost, nothing leaked: restarts keep every token, the secret never reaches the
//! store or the logs, and the binary's own commands (serve, migrate, bootstrap) work.

use std::process::Command;

use prost_types::FieldMask;
use sha2::{Digest, Sha256};
use sqlx::Connection;
use token_authority::pb::v1::{
    CreateTokenRequest, DeleteTokenRequest, GetTokenRequest, SetTokenEnabledRequest, Token,
    UpdateTokenRequest, VerifyRequest, VerifyResult, token_service_client::TokenServiceClient,
    verify_service_client::VerifyServiceClient,
};

use crate::{
    both_backends,
    helpers::{
        BINARY, Backend, Process, TestDb, authed, spawn_app, spawn_with, spec, test_settings,
    },
};

both_backends!(
    a_restart_keeps_every_token,
    the_secret_never_reaches_the_store,
    a_bootstrap_file_is_private_and_written_once
);

async fn a_restart_keeps_every_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut secrets = Vec::new();
    for i in 0..5 {
        let mut request = spec(&format!("t{i}"), &["domains:read"]);
        request.owner = format!("owner-{}", i % 2);
        request.bindings = [("reportId".to_owned(), format!("r-{i}"))].into();
        let created = app.create(request).await;
        secrets.push((created.secret, created.token.unwrap().id));
    }
    let mut tokens = app.tokens.clone();
    tokens
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: secrets[1].1.clone(),
                enabled: false,
            },
        ))
        .await
        .unwrap();
    tokens
        .delete_token(authed(
            &app.admin,
            DeleteTokenRequest {
                id: secrets[2].1.clone(),
            },
        ))
        .await
        .unwrap();
    tokens
        .update_token(authed(
            &app.admin,
            UpdateTokenRequest {
                token: Some(Token {
                    id: secrets[3].1.clone(),
                    description: "changed".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["description".into()],
                }),
            },
        ))
        .await
        .unwrap();
    let before = app.snapshot().await;

    let (db, admin) = app.stop().await;
    let settings = test_settings(&db);
    let app = spawn_with(db, settings, Some(admin)).await;

    assert_eq!(
        app.snapshot().await,
        before,
        "every acknowledged write survived"
    );
    let results: Vec<_> = futures::future::join_all(
        secrets
            .iter()
            .map(|(s, _)| app.verify_perms(s, &["domains:read"])),
    )
    .await
    .into_iter()
    .map(|r| r.result())
    .collect();
    use VerifyResult::*;
    assert_eq!(results, [Ok, Disabled, NotFound, Ok, Ok]);
}

async fn the_secret_never_reaches_the_store(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create(spec("secret-keeper", &["domains:read"])).await;
    let random_part = created.secret[3..].to_owned();
    let expected_hash = hex(&Sha256::digest(created.secret.as_bytes()));
    assert!(app.verify_perms(&created.secret, &[]).await.valid);
    let (db, _) = app.stop().await;

    let (dump, stored_hash) = match db.backend {
        Backend::Sqlite => {
            let path = db.sqlite_path().unwrap();
            let mut bytes = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                let file = format!("{}{suffix}", path.display());
                bytes.extend(std::fs::read(&file).unwrap_or_default());
            }
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            let hash: Vec<u8> =
                sqlx::query_scalar("SELECT secret_hash FROM tokens WHERE name = 'secret-keeper'")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            (String::from_utf8_lossy(&bytes).into_owned(), hex(&hash))
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let dump: String = sqlx::query_scalar(
                "SELECT string_agg(t::text, E'\\n') FROM (SELECT tokens::text AS t FROM tokens \
                 UNION ALL SELECT system_state::text FROM system_state) AS rows",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            let hash: String = sqlx::query_scalar(
                "SELECT encode(secret_hash, 'hex') FROM tokens WHERE name = 'secret-keeper'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            (dump, hash)
        }
    };

    assert!(
        dump.contains("secret-keeper"),
        "the dump holds the table's contents"
    );
    assert!(
        !dump.contains(&random_part),
        "the plaintext secret is not stored"
    );
    assert!(!dump.contains(&random_part[..20]), "not even part of it");
    assert_eq!(stored_hash, expected_hash, "only its SHA-256 is stored");
}

async fn a_bootstrap_file_is_private_and_written_once(backend: Backend) {
    let db = TestDb::fresh(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.secret");
    let mut settings = test_settings(&db);
    settings.bootstrap_token_file = Some(file.clone());

    let app = spawn_with(db, settings.clone(), None).await;
    assert!(
        app.admin.is_empty(),
        "with a file, the secret is not handed back for stderr"
    );
    let secret = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let answer = app.verify_perms(&secret, &["anything:delete"]).await;
    assert!(answer.valid, "the bootstrap token is an admin: {answer:?}");
    assert_eq!(answer.token.unwrap().permissions, ["*:*"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let (db, _) = app.stop().await;
    std::fs::remove_file(&file).unwrap();
    let app = spawn_with(db, settings, Some(secret)).await;
    assert!(!file.exists(), "the second start makes no new admin token");
    assert_eq!(app.all_tokens().await.len(), 1);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_binary_runs_on_the_embedded_default_and_never_logs_a_secret() {
    // Arrange: a fresh folder and no configuration at all, at the most verbose level of
    // our own logs and debug for every library.
    let cwd = tempfile::tempdir().unwrap();
    let server = Process::start(
        cwd.path(),
        &[],
        &[("RUST_LOG", "debug,token_authority=trace")],
    );
    let bootstrap_secret = server
        .seen
        .iter()
        .map(|line| line.trim())
        .find(|line| line.starts_with("ta_"))
        .expect("the first start shows the bootstrap secret on stderr")
        .to_owned();
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let mut tokens = TokenServiceClient::connect(endpoint.clone()).await.unwrap();
    let mut verifier = VerifyServiceClient::connect(endpoint).await.unwrap();

    // Act: create, use and manage a token; fail some calls too.
    let created = tokens
        .create_token(authed(
            &bootstrap_secret,
            CreateTokenRequest {
                token: Some(spec("app", &["a:read"])),
                ttl: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret.clone();
    let id = created.token.unwrap().id;
    for required in [vec!["a:read".to_owned()], vec!["a:write".to_owned()]] {
        let request = VerifyRequest {
            token: secret.clone(),
            required_permissions: required,
            ..Default::default()
        };
        verifier.verify(request).await.unwrap();
    }
    let mut typo = secret.clone();
    typo.replace_range(5..6, if &secret[5..6] == "x" { "y" } else { "x" });
    verifier
        .verify(VerifyRequest {
            token: typo.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = tokens
        .get_token(authed(&typo, GetTokenRequest { id: id.clone() }))
        .await
        .unwrap_err();
    tokens
        .get_token(authed(&secret, GetTokenRequest { id: id.clone() }))
        .await
        .unwrap_err();
    tokens
        .delete_token(authed(&bootstrap_secret, DeleteTokenRequest { id }))
        .await
        .unwrap();
    let (exited_cleanly, stdout, stderr) = server.terminate().await;

    // Assert
    assert!(
        exited_cleanly,
        "SIGTERM is a clean shutdown:\n{stdout}\n{stderr}"
    );
    assert!(
        cwd.path().join("data/token-authority.db").exists(),
        "the embedded store is under ./data"
    );
    assert!(
        stdout.is_empty(),
        "serving prints nothing on stdout: {stdout}"
    );
    assert!(
        stderr.contains("token created") && stderr.contains("token deleted"),
        "management actions are logged"
    );
    assert!(stderr.contains("stopped"), "the shutdown completed");
    for (name, plaintext) in [("created", &secret), ("mistyped", &typo)] {
        assert!(
            !stderr.contains(&plaintext[3..]),
            "the {name} secret is in the logs"
        );
    }
    assert_eq!(
        stderr.matches(&bootstrap_secret[3..]).count(),
        1,
        "the bootstrap secret is shown once, in its banner"
    );
}

#[tokio::test]
async fn migrate_and_bootstrap_subcommands_work_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ops.db").display());

    let migrate = Command::new(BINARY)
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(tables.contains(&"tokens".to_owned()), "{tables:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tokens")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 0, "migrate makes no token");
    conn.close().await.unwrap();

    let bootstrap = Command::new(BINARY)
        .args(["bootstrap", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        bootstrap.status.success(),
        "{}",
        String::from_utf8_lossy(&bootstrap.stderr)
    );
    let secret = String::from_utf8(bootstrap.stdout)
        .unwrap()
        .trim()
        .to_owned();
    assert!(secret.starts_with("ta_"));

    let db = TestDb {
        backend: Backend::Sqlite,
        url: url.clone(),
        dir: None,
    };
    let settings = test_settings(&db);
    let app = spawn_with(db, settings, Some(secret.clone())).await;
    assert!(app.verify_perms(&secret, &["tokens:delete"]).await.valid);
    assert_eq!(
        app.all_tokens().await.len(),
        1,
        "the first start after a manual bootstrap makes no second admin"
    );
}
