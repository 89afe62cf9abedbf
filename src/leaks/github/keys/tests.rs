use std::sync::{
    Arc, Mutex as StdMutex,
    atomic::{AtomicUsize, Ordering},
};

use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::{SignatureError::*, *};

// GitHub's own signed sample requests and the keys of the meta API, from its partner
// program documentation (the older sample is from its earlier Python example).
const NEW_ID: &str = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c";
const NEW_PAYLOAD: &[u8] = br#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#;
const NEW_SIGNATURE: &str = "MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg==";
const OLD_ID: &str = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";
const OLD_PAYLOAD: &[u8] = br#"[{"token":"some_token","type":"some_type","url":"some_url"}]"#;
const OLD_SIGNATURE: &str = "MEUCIQDKZokqnCjrRtw0tni+2Ltvl/uiMJ1EGumEsp1BsNr32AIgQY1YXD2nlj+XNfGK4rBfkMJ1JDOQcYXxa2sY8FNkrKc=";
const GITHUB_KEYS: &str = r#"{"public_keys":[
  {"key_identifier":"90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a",
   "key":"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\nkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n-----END PUBLIC KEY-----\n",
   "is_current":false},
  {"key_identifier":"bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
   "key":"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\nAjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n-----END PUBLIC KEY-----\n",
   "is_current":true}
]}"#;

/// A key made for the test: its PEM by rcgen, its signatures by ring.
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

    fn sign(&self, body: &[u8]) -> String {
        STANDARD.encode(self.pair.sign(&SystemRandom::new(), body).unwrap())
    }
}

fn key_list(signers: &[&Signer]) -> String {
    let keys: Vec<_> = signers
        .iter()
        .map(|s| serde_json::json!({"key_identifier": s.id, "key": s.pem, "is_current": true}))
        .collect();
    serde_json::json!({ "public_keys": keys }).to_string()
}

fn key_file(json: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), json).unwrap();
    file
}

/// A key server on 127.0.0.1:0 that counts the requests it answers.
struct KeyServer {
    url: String,
    requests: Arc<AtomicUsize>,
    heads: Arc<StdMutex<Vec<String>>>,
    answer: Arc<StdMutex<(u16, String)>>,
}

impl KeyServer {
    async fn start(status: u16, body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/meta/public_keys/secret_scanning",
            listener.local_addr().unwrap()
        );
        let server = Self {
            url,
            requests: Arc::default(),
            heads: Arc::default(),
            answer: Arc::new(StdMutex::new((status, body))),
        };
        let (requests, heads, answer) = (
            server.requests.clone(),
            server.heads.clone(),
            server.answer.clone(),
        );
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
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                requests.fetch_add(1, Ordering::SeqCst);
                let (status, body) = answer.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        server
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }
}

/// The signature with `s` replaced by `n - s`: as valid, in the other half of the order.
fn s_twin(der: &[u8]) -> Vec<u8> {
    const P256_ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let r = &der[4..4 + usize::from(der[3])];
    let s_at = 4 + r.len();
    let s = &der[s_at + 2..s_at + 2 + usize::from(der[s_at + 1])];
    let s = &s[s.len().saturating_sub(32)..];
    let mut padded = [0u8; 32];
    padded[32 - s.len()..].copy_from_slice(s);
    let (mut twin, mut borrow) = ([0u8; 32], 0i16);
    for i in (0..32).rev() {
        let digit = i16::from(P256_ORDER[i]) - i16::from(padded[i]) - borrow;
        borrow = i16::from(digit < 0);
        twin[i] = digit.rem_euclid(256) as u8;
    }
    let integer = |value: &[u8]| {
        let start = value
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(value.len() - 1);
        let value = &value[start..];
        let pad = value[0] & 0x80 != 0;
        let mut out = vec![0x02, (value.len() + usize::from(pad)) as u8];
        if pad {
            out.push(0);
        }
        out.extend_from_slice(value);
        out
    };
    let mut body = integer(r);
    body.extend(integer(&twin));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[tokio::test]
async fn githubs_documented_signatures_verify_whichever_half_their_s_is_in() {
    let file = key_file(GITHUB_KEYS);
    let keys = GithubKeys::from_file(file.path());
    keys.verify(NEW_ID, NEW_SIGNATURE, NEW_PAYLOAD)
        .await
        .unwrap();
    keys.verify(OLD_ID, OLD_SIGNATURE, OLD_PAYLOAD)
        .await
        .unwrap();
    // GitHub promises no low s, and its sample verifiers (Go, OpenSSL) take either half.
    for (id, signature, payload) in [
        (NEW_ID, NEW_SIGNATURE, NEW_PAYLOAD),
        (OLD_ID, OLD_SIGNATURE, OLD_PAYLOAD),
    ] {
        let twin = STANDARD.encode(s_twin(&STANDARD.decode(signature).unwrap()));
        assert_ne!(twin, signature);
        keys.verify(id, &twin, payload).await.unwrap();
    }
    assert_eq!(
        keys.verify(OLD_ID, NEW_SIGNATURE, NEW_PAYLOAD).await,
        Err(BadSignature)
    );
}

#[tokio::test]
async fn only_the_named_keys_signature_of_this_very_body_verifies() {
    let (ours, other) = (Signer::new("k1"), Signer::new("k2"));
    let file = key_file(&key_list(&[&ours, &other]));
    let keys = GithubKeys::from_file(file.path());
    let body = br#"[{"token":"t","type":"x"}]"#;
    keys.verify("k1", &ours.sign(body), body).await.unwrap();
    keys.verify("k2", &other.sign(body), body).await.unwrap();
    assert_eq!(
        keys.verify("k1", &other.sign(body), body).await,
        Err(BadSignature)
    );
    let changed = br#"[{"token":"t","type":"y"}]"#;
    assert_eq!(
        keys.verify("k1", &ours.sign(body), changed).await,
        Err(BadSignature)
    );
    let respaced = br#"[{"token": "t", "type": "x"}]"#;
    assert_eq!(
        keys.verify("k1", &ours.sign(body), respaced).await,
        Err(BadSignature)
    );
}

#[tokio::test]
async fn missing_or_malformed_headers_fail_before_any_load() {
    let signer = Signer::new("k1");
    let body = b"[]";
    let signature = signer.sign(body);
    // Any load would answer KeysUnavailable: these fail on the headers alone.
    let keys = GithubKeys::from_file("/nonexistent/github-keys.json");
    assert_eq!(
        keys.verify("", &signature, body).await,
        Err(MissingHeader(KEY_ID_HEADER))
    );
    assert_eq!(
        keys.verify("k1", "", body).await,
        Err(MissingHeader(SIGNATURE_HEADER))
    );
    let malformed = |result: Result<(), SignatureError>, header: &str| {
        assert!(
            matches!(result, Err(MalformedHeader(h, _)) if h == header),
            "{result:?}"
        );
    };
    malformed(keys.verify("k 1", &signature, body).await, KEY_ID_HEADER);
    malformed(
        keys.verify(&"k".repeat(257), &signature, body).await,
        KEY_ID_HEADER,
    );
    malformed(
        keys.verify("k1", "not base64!", body).await,
        SIGNATURE_HEADER,
    );
    let cut = &signature[..signature.len() - 3];
    malformed(keys.verify("k1", cut, body).await, SIGNATURE_HEADER);
    malformed(
        keys.verify("k1", &"A".repeat(200), body).await,
        SIGNATURE_HEADER,
    );

    let mut headers = HeaderMap::new();
    headers.insert(KEY_ID_HEADER, "k1".parse().unwrap());
    assert_eq!(
        keys.verify_request(&headers, body).await,
        Err(MissingHeader(SIGNATURE_HEADER))
    );
    headers.insert(
        SIGNATURE_HEADER,
        http::HeaderValue::from_bytes(b"\xff").unwrap(),
    );
    malformed(keys.verify_request(&headers, body).await, SIGNATURE_HEADER);
}

#[tokio::test]
async fn truncated_or_garbled_signatures_fail() {
    let signer = Signer::new("k1");
    let file = key_file(&key_list(&[&signer]));
    let keys = GithubKeys::from_file(file.path());
    let body = b"[]";
    let signature = signer.sign(body);
    let mut headers = HeaderMap::new();
    headers.insert(KEY_ID_HEADER, "k1".parse().unwrap());
    headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
    keys.verify_request(&headers, body).await.unwrap();

    let mut der = STANDARD.decode(&signature).unwrap();
    let whole = STANDARD.encode(&der[..der.len() - 3]);
    assert_eq!(keys.verify("k1", &whole, body).await, Err(BadSignature));
    der[12] ^= 0x01;
    assert_eq!(
        keys.verify("k1", &STANDARD.encode(&der), body).await,
        Err(BadSignature)
    );
    assert_eq!(keys.verify("k1", "AAAA", body).await, Err(BadSignature));
}

#[tokio::test]
async fn keys_are_fetched_on_first_use_and_an_unknown_id_refetches_once_a_minute() {
    let signer = Signer::new("k1");
    let server = KeyServer::start(200, key_list(&[&signer])).await;
    let keys = GithubKeys::from_url(&server.url).unwrap();
    let body = b"[]";
    assert_eq!(server.requests(), 0);
    keys.verify("k1", &signer.sign(body), body).await.unwrap();
    keys.verify("k1", &signer.sign(body), body).await.unwrap();
    assert_eq!(server.requests(), 1);
    let head = server.heads.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("get /meta/public_keys/secret_scanning "),
        "{head}"
    );
    assert!(head.contains("user-agent: token-authority/"), "{head}");

    assert_eq!(
        keys.verify("k9", &signer.sign(body), body).await,
        Err(UnknownKey)
    );
    assert_eq!(server.requests(), 2);
    assert_eq!(
        keys.verify("k8", &signer.sign(body), body).await,
        Err(KeysUnavailable)
    );
    assert_eq!(server.requests(), 2);
    keys.verify("k1", &signer.sign(body), body).await.unwrap();
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_key_github_rotated_in_is_found_by_the_refetch() {
    let (old, new) = (Signer::new("old"), Signer::new("new"));
    let server = KeyServer::start(200, key_list(&[&old])).await;
    let keys = GithubKeys::from_url(&server.url).unwrap();
    let body = b"[]";
    keys.verify("old", &old.sign(body), body).await.unwrap();
    server.serve(200, key_list(&[&old, &new]));
    keys.verify("new", &new.sign(body), body).await.unwrap();
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn concurrent_first_verifications_share_one_fetch() {
    let signer = Signer::new("k1");
    let server = KeyServer::start(200, key_list(&[&signer])).await;
    let keys = GithubKeys::from_url(&server.url).unwrap();
    let body = b"[]";
    let signature = signer.sign(body);
    let results =
        futures::future::join_all((0..8).map(|_| keys.verify("k1", &signature, body))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_failed_fetch_fails_verification_and_is_retried_at_most_once_a_minute() {
    let signer = Signer::new("k1");
    let server = KeyServer::start(500, "oops".into()).await;
    let keys = GithubKeys::from_url(&server.url).unwrap();
    let body = b"[]";
    for expected_requests in [1, 2, 2] {
        assert_eq!(
            keys.verify("k1", &signer.sign(body), body).await,
            Err(KeysUnavailable)
        );
        assert_eq!(server.requests(), expected_requests);
    }
}

#[tokio::test]
async fn a_load_cancelled_with_its_request_still_counts_against_the_limit() {
    // A server that accepts and never answers: every load hangs until cancelled.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let signer = Signer::new("k1");
    let keys = GithubKeys::from_url(&url).unwrap();
    let body = b"[]";
    let signature = signer.sign(body);
    let cancel = Duration::from_millis(200);
    // The first load and one more may start; a third is refused without a request, so it
    // answers on its first poll, before any timeout could fire.
    for _ in 0..2 {
        let hung = tokio::time::timeout(cancel, keys.verify("k1", &signature, body)).await;
        assert!(hung.is_err(), "{hung:?}");
    }
    let refused = tokio::time::timeout(cancel, keys.verify("k1", &signature, body)).await;
    assert_eq!(refused.ok(), Some(Err(KeysUnavailable)));
}

#[tokio::test]
async fn unusable_key_lists_leave_the_keys_unavailable() {
    let signer = Signer::new("k1");
    let body = b"[]";
    let answers = [
        (200, "not json".to_owned()),
        (200, r#"{"public_keys":[]}"#.to_owned()),
        (
            200,
            r#"{"public_keys":[{"key_identifier":"k1","key":"x"}]}"#.to_owned(),
        ),
        (200, " ".repeat(MAX_KEYS_SIZE + 1)),
        (404, key_list(&[&signer])),
        (302, key_list(&[&signer])),
    ];
    for (status, answer) in answers {
        let server = KeyServer::start(status, answer).await;
        let keys = GithubKeys::from_url(&server.url).unwrap();
        let result = keys.verify("k1", &signer.sign(body), body).await;
        assert_eq!(result, Err(KeysUnavailable), "{status}");
    }
    let refused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", refused.local_addr().unwrap());
    drop(refused);
    let keys = GithubKeys::from_url(&url).unwrap();
    let result = keys.verify("k1", &signer.sign(body), body).await;
    assert_eq!(result, Err(KeysUnavailable));
}

#[tokio::test]
async fn an_unreadable_key_is_skipped_and_the_others_kept() {
    let signer = Signer::new("k1");
    let list = serde_json::json!({"public_keys": [
        {"key_identifier": "bad", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
        {"key_identifier": "k1", "key": signer.pem},
    ]});
    let file = key_file(&list.to_string());
    let keys = GithubKeys::from_file(file.path());
    let body = b"[]";
    keys.verify("k1", &signer.sign(body), body).await.unwrap();
    assert_eq!(
        keys.verify("bad", &signer.sign(body), body).await,
        Err(UnknownKey)
    );
}

#[tokio::test]
async fn the_key_file_is_read_on_first_use_and_again_for_an_unknown_id() {
    let (first, second) = (Signer::new("first"), Signer::new("second"));
    let file = tempfile::NamedTempFile::new().unwrap();
    let keys = GithubKeys::from_file(file.path());
    std::fs::write(file.path(), key_list(&[&first])).unwrap();
    let body = b"[]";
    keys.verify("first", &first.sign(body), body).await.unwrap();
    std::fs::write(file.path(), key_list(&[&first, &second])).unwrap();
    keys.verify("second", &second.sign(body), body)
        .await
        .unwrap();

    let keys = GithubKeys::from_file("/nonexistent/github-keys.json");
    let result = keys.verify("first", &first.sign(body), body).await;
    assert_eq!(result, Err(KeysUnavailable));
}

#[test]
fn only_http_or_https_urls_without_credentials_are_taken() {
    assert!(GithubKeys::from_url(KEYS_URL).is_ok());
    assert!(GithubKeys::from_url("http://127.0.0.1:8081/keys.json").is_ok());
    for url in [
        "ftp://example.com/keys",
        "https://user:pw@api.github.com/",
        "/keys",
        "not a url",
    ] {
        assert!(GithubKeys::from_url(url).is_err(), "{url}");
    }
}

#[test]
fn only_uncompressed_p256_pem_keys_are_read() {
    assert_eq!(parse_pem(&Signer::new("k").pem).unwrap().len(), 65);
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    assert!(parse_pem(&p384.public_key_pem()).is_err());
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert!(parse_pem(&ed25519.public_key_pem()).is_err());
    assert!(parse_pem("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----").is_err());
    assert!(parse_pem("").is_err());
}

#[test]
fn verification_can_run_in_a_spawned_task() {
    fn send_and_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let keys = GithubKeys::from_file("/nonexistent/github-keys.json");
    send_and_sync(&keys);
    send(keys.verify("k1", "AAAA", b"[]"));
    send(keys.verify_request(&HeaderMap::new(), b"[]"));
}
