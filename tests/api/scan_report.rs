//! `token-authority scan --report`, the real binary against the real server: the secrets
//! it finds in files are sent to LeakService/ReportLeakedTokens and stop working at once;
//! a secret that is well formed but no token's is answered unknown and changes nothing;
//! an https server that requires client certificates is reached with --ca-cert and
//! --client-cert.

use token_authority::{
    domain::secret::{TokenPrefix, TokenSecret},
    pb::v1::{
        CreateTokenRequest, VerifyRequest, VerifyResult, token_service_client::TokenServiceClient,
        verify_service_client::VerifyServiceClient,
    },
    tls::TlsFiles,
};

use crate::{
    both_backends,
    helpers::{BINARY, Backend, TestDb, authed, spawn_app, spawn_with, spec, test_settings},
    tls::{Pki, tls_channel},
};

both_backends!(secrets_found_by_a_scan_report_are_revoked);

async fn secrets_found_by_a_scan_report_are_revoked(backend: Backend) {
    // Arrange: a token whose secret is in a file twice, one that is not leaked, and a
    // secret with a good checksum that no token has.
    let app = spawn_app(backend).await;
    let leaked = app.create(spec("leaked", &["a:read"])).await;
    let kept = app.create(spec("kept", &["a:read"])).await;
    let stranger = TokenSecret::generate(&TokenPrefix::default());
    // Verified once before, so that the Verify cache holds it: a report must evict it.
    assert!(app.verify_perms(&leaked.secret, &["a:read"]).await.valid);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deploy.env"),
        format!("TOKEN={}\nTOKEN_AGAIN={}\n", leaked.secret, leaked.secret),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("notes.md"),
        format!("an old one: `{}`\n", stranger.expose()),
    )
    .unwrap();
    let hint = |secret: &str| TokenSecret::parse(secret).unwrap().display_hint();
    let (leaked_hint, stranger_hint) = (hint(&leaked.secret), stranger.display_hint());

    // Act
    let output = tokio::process::Command::new(BINARY)
        .current_dir(dir.path())
        .args(["scan", "--report", "--source", "ci", "--url"])
        .args(["https://ci.example/jobs/16", "--server"])
        .arg(format!("http://{}", app.target))
        .arg(".")
        .output()
        .await
        .expect("the binary runs");

    // Assert: found (exit 1 even though now revoked: the secret is still in the files),
    // reported once each, and only the leaked token is disabled.
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("./deploy.env:1: {leaked_hint}… (token-authority secret)"),
            format!("./deploy.env:2: {leaked_hint}… (token-authority secret)"),
            format!("./notes.md:1: {stranger_hint}… (token-authority secret)"),
            format!("reported {leaked_hint}…: revoked"),
            format!("reported {stranger_hint}…: unknown"),
        ],
        "{stderr}"
    );
    assert!(
        stderr.contains("reported 2 secrets to http://") && stderr.contains("1 revoked, 1 unknown"),
        "{stderr}"
    );
    for secret in [leaked.secret.as_str(), stranger.expose()] {
        let tail = &secret[hint(secret).len()..];
        assert!(
            !stdout.contains(tail) && !stderr.contains(tail),
            "a secret was printed"
        );
    }

    let after = app.verify_perms(&leaked.secret, &["a:read"]).await;
    assert!(!after.valid);
    assert_eq!(after.result(), VerifyResult::Disabled);
    assert!(app.verify_perms(&kept.secret, &["a:read"]).await.valid);
    let tokens = app.all_tokens().await;
    let enabled = |name: &str| tokens.iter().find(|t| t.name == name).unwrap().enabled;
    assert!(!enabled("leaked"), "kept for forensics, disabled");
    assert!(enabled("kept"));
    let events = app.audit_events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.action == "leak_reported")
            .count(),
        1,
        "one audit event, for the one token that was ours"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_reports_to_a_server_that_requires_mutual_tls() {
    // Arrange: a server that serves only clients with a certificate of the test CA.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let db = TestDb::fresh(Backend::Sqlite).await;
    let mut settings = test_settings(&db);
    settings.tls = Some(TlsFiles {
        client_ca: Some(pki.client_ca()),
        ..pki.server.clone()
    });
    let app = spawn_with(db, settings, None).await;
    let port: u16 = app.target.rsplit(':').next().unwrap().parse().unwrap();
    let channel = tls_channel(port, Some(&pki.ca.pem), Some(&pki.client))
        .await
        .unwrap();
    let created = TokenServiceClient::new(channel.clone())
        .create_token(authed(
            &app.admin,
            CreateTokenRequest {
                token: Some(spec("leaked", &["a:read"])),
                ttl: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&cert, &pki.client.0).unwrap();
    std::fs::write(&key, &pki.client.1).unwrap();
    std::fs::create_dir(dir.path().join("scanned")).unwrap();
    std::fs::write(dir.path().join("scanned/leak.txt"), &created.secret).unwrap();

    // Act
    let output = tokio::process::Command::new(BINARY)
        .current_dir(dir.path())
        .args(["scan", "--report", "--server"])
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--ca-cert")
        .arg(pki.client_ca())
        .args(["--client-cert", "client.pem", "--client-key", "client.key"])
        .arg("scanned")
        .output()
        .await
        .expect("the binary runs");

    // Assert
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let hint = TokenSecret::parse(&created.secret).unwrap().display_hint();
    assert!(
        stdout.contains(&format!("reported {hint}…: revoked")),
        "{stdout}\n{stderr}"
    );
    let verdict = VerifyServiceClient::new(channel)
        .verify(VerifyRequest {
            token: created.secret,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict.result(), VerifyResult::Disabled);
}
