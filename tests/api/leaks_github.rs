//! GitHub's secret scanning partner endpoint, `POST /v1/leaks/github`, through the real
//! server and curl, against a key server started here that serves GitHub's documented
//! key list with keys made here: only a report signed by the named key over the very body
//! revokes anything; an unknown key id loads the list again, once.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use token_authority::{
    domain::secret::{TokenPrefix, TokenSecret},
    pb::v1::VerifyResult,
    startup::GithubKeySource,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    both_backends,
    helpers::{Backend, TestApp, TestDb, curl, metered_settings, sample, scrape, spawn_with, spec},
};

both_backends!(
    a_report_signed_by_github_revokes_ours_and_answers_with_feedback,
    reports_not_signed_by_githubs_named_key_over_this_body_revoke_nothing,
);

/// A key made for the test: its PEM (SubjectPublicKeyInfo) by rcgen, signatures by ring.
struct Signer {
    id: &'static str,
    pem: String,
    pair: EcdsaKeyPair,
}

impl Signer {
    fn new(id: &'static str) -> Self {
        let generated = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &generated.serialize_der(),
            &SystemRandom::new(),
        )
        .unwrap();
        Self {
            id,
            pem: generated.public_key_pem(),
            pair,
        }
    }

    /// The headers GitHub sends with `body`, signed by this key under `id`.
    fn headers(&self, id: &str, body: &[u8]) -> [String; 2] {
        let signature = STANDARD.encode(self.pair.sign(&SystemRandom::new(), body).unwrap());
        [
            format!("Github-Public-Key-Identifier: {id}"),
            format!("Github-Public-Key-Signature: {signature}"),
        ]
    }
}

/// GitHub's key list (`GET /meta/public_keys/secret_scanning`), as it documents it.
fn key_list(signers: &[&Signer]) -> String {
    let keys: Vec<Value> = signers
        .iter()
        .map(|s| json!({"key_identifier": s.id, "key": s.pem, "is_current": true}))
        .collect();
    json!({ "public_keys": keys }).to_string()
}

/// Serves `body` as the key list on 127.0.0.1:0, counting requests.
async fn key_server(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/meta/public_keys/secret_scanning",
        listener.local_addr().unwrap()
    );
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    (url, requests)
}

async fn app_with_keys(backend: Backend, keys_url: String) -> TestApp {
    let db = TestDb::fresh(backend).await;
    let mut settings = metered_settings(&db);
    settings.http_addr = Some("127.0.0.1:0".parse().unwrap());
    settings.github_keys = GithubKeySource::Url(keys_url);
    spawn_with(db, settings, None).await
}

fn endpoint(app: &TestApp) -> String {
    format!(
        "http://127.0.0.1:{}/v1/leaks/github",
        app.http_port.unwrap()
    )
}

fn post(app: &TestApp, headers: &[String], body: &[u8]) -> (u16, Value) {
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let (status, text) = curl(&endpoint(app), &headers, Some(body));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn matches(tokens: &[&str]) -> Vec<u8> {
    let found: Vec<Value> = tokens
        .iter()
        .map(|token| {
            json!({"token": token, "type": "token_authority_secret",
                "url": "https://github.com/octo/repo/blob/main/.env", "source": "content"})
        })
        .collect();
    serde_json::to_vec(&found).unwrap()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn a_report_signed_by_github_revokes_ours_and_answers_with_feedback(backend: Backend) {
    let github = Signer::new("github-key-1");
    let (keys_url, fetches) = key_server(key_list(&[&github])).await;
    let app = app_with_keys(backend, keys_url).await;
    let ours = app.create(spec("pushed-to-github", &[])).await;
    let bystander = app.create(spec("bystander", &[])).await;
    assert!(app.verify_perms(&ours.secret, &[]).await.valid, "cached");
    let unknown = TokenSecret::generate(&TokenPrefix::default());
    assert_eq!(fetches.load(Ordering::SeqCst), 0, "keys load on first use");

    let body = matches(&[&ours.secret, unknown.expose(), "ghp_notoneofours"]);
    let (status, feedback) = post(&app, &github.headers(github.id, &body), &body);

    assert_eq!(status, 200, "{feedback}");
    assert_eq!(
        feedback,
        json!([
            {"token_hash": sha256_hex(&ours.secret), "token_type": "token_authority_secret",
                "label": "true_positive"},
            {"token_hash": sha256_hex(unknown.expose()), "token_type": "token_authority_secret",
                "label": "false_positive"},
            {"token_hash": sha256_hex("ghp_notoneofours"), "token_type": "token_authority_secret",
                "label": "false_positive"},
        ])
    );
    assert_eq!(
        app.verify_perms(&ours.secret, &[]).await.result(),
        VerifyResult::Disabled,
        "refused at once"
    );
    assert!(app.verify_perms(&bystander.secret, &[]).await.valid);
    let event = app
        .audit_events()
        .await
        .into_iter()
        .find(|e| e.action == "leak_reported")
        .expect("audited");
    let changes = format!("{:?}", event.changes);
    assert!(
        changes.contains("github") && changes.contains("octo/repo"),
        "{changes}"
    );
    assert!(!format!("{:?}", app.audit_events().await).contains(&ours.secret[3..]));
    let metrics = scrape(app.metrics_port.unwrap()).await;
    let revoked = r#"token_authority_leaked_secrets_total{source="github",outcome="revoked"}"#;
    assert_eq!(sample(&metrics, revoked), Some(1.0), "{metrics}");
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one load");
}

async fn reports_not_signed_by_githubs_named_key_over_this_body_revoke_nothing(backend: Backend) {
    let (github, forger) = (Signer::new("github-key-1"), Signer::new("forger"));
    let (keys_url, fetches) = key_server(key_list(&[&github])).await;
    let app = app_with_keys(backend, keys_url).await;
    let ours = app.create(spec("pushed-to-github", &[])).await;
    let body = matches(&[&ours.secret]);
    let before = app.state().await;

    // GitHub's own signature, over another body: the first load of the keys.
    let other = matches(&[&ours.secret, "ghp_x"]);
    let over_other = github.headers(github.id, &other);
    let [key_id, signature] = github.headers(github.id, &body);
    let attempts: Vec<(&str, Vec<String>)> = vec![
        ("signed over another body", over_other.to_vec()),
        ("no signature at all", vec![]),
        ("no key id", vec![signature.clone()]),
        ("no signature", vec![key_id.clone()]),
        (
            "another key's signature under GitHub's key id",
            forger.headers(github.id, &body).to_vec(),
        ),
        (
            "a garbled signature",
            vec![
                key_id.clone(),
                "Github-Public-Key-Signature: !!notbase64!!".into(),
            ],
        ),
        (
            "a truncated signature",
            vec![key_id.clone(), signature[..signature.len() - 8].to_owned()],
        ),
    ];
    for (what, headers) in &attempts {
        let (status, answer) = post(&app, headers, &body);
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(
            answer["error"]["status"], "INVALID_ARGUMENT",
            "{what}: {answer}"
        );
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "the first check loaded the keys"
    );

    // An identifier GitHub's list lacks loads the list again, once; the next one does not.
    let (status, _) = post(&app, &forger.headers("rotated-in", &body), &body);
    assert_eq!(status, 400);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "one reload for an unknown key id"
    );
    let (status, _) = post(&app, &forger.headers("another-one", &body), &body);
    assert_eq!(
        status, 503,
        "unknown and not checked again yet: GitHub retries a 503"
    );
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "at most one reload a minute"
    );

    assert_eq!(app.state().await, before, "nothing changed");
    assert!(
        app.verify_perms(&ours.secret, &[]).await.valid,
        "still works"
    );
    let metrics = scrape(app.metrics_port.unwrap()).await;
    assert!(
        !metrics.contains(r#"source="github",outcome="revoked"} 1"#),
        "{metrics}"
    );

    // And the same body, signed by GitHub's key: revoked.
    let (status, _) = post(&app, &[key_id, signature], &body);
    assert_eq!(status, 200);
    assert!(!app.verify_perms(&ours.secret, &[]).await.valid);
}
