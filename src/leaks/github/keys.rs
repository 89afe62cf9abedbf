//! GitHub's secret scanning signing keys, and the check of a request's signature.
//!
//! The keys come from GitHub's meta API (`{"public_keys": [{"key_identifier", "key",
//! "is_current"}]}`, each key a PEM SubjectPublicKeyInfo of a P-256 key) or, for
//! installations that cannot reach GitHub, from a file of the same shape. They are loaded
//! lazily, by the first verification. A signature by a key not in the list makes us load
//! the list again, since GitHub rotates keys; a list older than a day is loaded again too,
//! so that a key GitHub withdrew stops being trusted. Loads are serialised (one in flight)
//! and, after the first, at most one per [`REFETCH_INTERVAL`] whatever asks for them: random
//! key identifiers cannot make us hammer GitHub. A failed load keeps the keys we had and
//! never lets a signature through.

use std::{
    collections::HashMap,
    error::Error as _,
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_rustls::rustls;
use tracing::{info, warn};

/// GitHub's list of secret scanning keys, the default key source.
pub const KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";
/// The header naming the key that signed the request (`Github-Public-Key-Identifier`).
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// The header carrying the signature (`Github-Public-Key-Signature`): base64 of an ASN.1
/// DER ECDSA P-256 signature of the raw body's SHA-256.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
/// The least time between two loads of the key list, the first load excepted.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// How long one load of the key list may take, connection and body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest key list we read.
pub const MAX_KEYS_SIZE: usize = 1 << 20;

/// How old a key list may grow before a verification loads it again.
const REFRESH_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_KEY_ID_LEN: usize = 256;
/// Base64 of the longest DER P-256 signature (72 bytes) is 96 characters.
const MAX_SIGNATURE_LEN: usize = 128;
const USER_AGENT: &str = concat!("token-authority/", env!("CARGO_PKG_VERSION"));
/// The DER of a SubjectPublicKeyInfo for id-ecPublicKey on prime256v1, up to its
/// uncompressed point: GitHub's keys are all of this one shape.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a request's signature was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request lacks the header (a client error: 400).
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// The header is not of the form GitHub sends (a client error: 400).
    #[error("the {0} header {1}")]
    MalformedHeader(&'static str, &'static str),
    /// No key of GitHub's list, loaded just now, has this identifier (a client error: 400).
    #[error("no GitHub secret scanning key has this identifier")]
    UnknownKey,
    /// The signature is not the named key's over this body (a client error: 400).
    #[error("the signature does not match the body")]
    BadSignature,
    /// The key list could not be loaded, or the key is unknown and the list was loaded too
    /// lately to load it again, so the signature could not be checked; a failed load's
    /// cause is logged (ours: 503, so that GitHub retries).
    #[error("GitHub's secret scanning keys are unavailable")]
    KeysUnavailable,
}

type Keys = HashMap<String, UnparsedPublicKey<Vec<u8>>>;
type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Where the key list comes from.
enum Source {
    Url {
        uri: Uri,
        // Boxed: the client is large beside a path.
        client: Box<HttpClient>,
    },
    File(PathBuf),
}

/// What the last loads left: read by every verification, written only under the gate.
#[derive(Default)]
struct Loaded {
    keys: Option<Arc<Keys>>,
    loaded_at: Option<Instant>,
    /// Loads finished so far, so that a caller that waited on the gate sees one happened.
    attempts: u64,
    last_failed: bool,
}

impl Loaded {
    fn key(&self, key_id: &str) -> Option<UnparsedPublicKey<Vec<u8>>> {
        self.keys.as_ref()?.get(key_id).cloned()
    }

    fn stale(&self, now: Instant) -> bool {
        self.loaded_at
            .is_some_and(|at| now.duration_since(at) >= REFRESH_AFTER)
    }

    /// The error for a key it does not have: unknown only if the list was had and is current.
    fn missing(&self) -> SignatureError {
        if self.keys.is_none() || self.last_failed {
            SignatureError::KeysUnavailable
        } else {
            SignatureError::UnknownKey
        }
    }
}

/// Held for a whole load, so that one is in flight at most.
#[derive(Default)]
struct Gate {
    /// Loads started, finished or not: one cancelled with its request still counts.
    started: u64,
    /// When the last load that the rate limit applies to started.
    limited_since: Option<Instant>,
}

/// GitHub's secret scanning keys, cached by identifier; see the module's documentation.
pub struct GithubKeys {
    source: Source,
    loaded: RwLock<Loaded>,
    gate: Mutex<Gate>,
}

impl std::fmt::Debug for GithubKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Url { uri, .. } => write!(f, "GithubKeys({uri})"),
            Source::File(path) => write!(f, "GithubKeys({})", path.display()),
        }
    }
}

impl GithubKeys {
    /// Returns keys loaded from `url` (`http://` or `https://`, e.g. [`KEYS_URL`]); the error
    /// says what is wrong with the URL.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| "the GitHub keys URL is not a URL".to_owned())?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err("the GitHub keys URL must be an http:// or https:// URL".into());
        }
        // The URL is logged with every failed load.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("the GitHub keys URL must not carry credentials".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connector = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| format!("cannot set up TLS for the GitHub keys URL: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Box::new(Client::builder(TokioExecutor::new()).build(connector));
        Ok(Self::new(Source::Url { uri, client }))
    }

    /// Returns keys loaded from a file of the meta API's shape, read again as from a URL.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self::new(Source::File(path.into()))
    }

    fn new(source: Source) -> Self {
        Self {
            source,
            loaded: RwLock::default(),
            gate: Mutex::default(),
        }
    }

    /// Checks a request's signature from its headers ([`KEY_ID_HEADER`],
    /// [`SIGNATURE_HEADER`]) and its raw body, as [`GithubKeys::verify`].
    pub async fn verify_request(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let text = |name: &'static str| match headers.get(name) {
            None => Err(SignatureError::MissingHeader(name)),
            Some(value) => value
                .to_str()
                .map_err(|_| SignatureError::MalformedHeader(name, "is not ASCII")),
        };
        self.verify(text(KEY_ID_HEADER)?, text(SIGNATURE_HEADER)?, body)
            .await
    }

    /// Checks that `signature_b64` is the signature of `body` (the raw bytes, as received)
    /// by GitHub's key `key_id`, loading the key list if need be. An empty value counts as
    /// a missing header.
    pub async fn verify(
        &self,
        key_id: &str,
        signature_b64: &str,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        check_key_id(key_id)?;
        let signature = decode_signature(signature_b64)?;
        let key = self.key(key_id).await?;
        key.verify(body, &signature)
            .map_err(|_| SignatureError::BadSignature)
    }

    fn loaded(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(PoisonError::into_inner)
    }

    async fn key(&self, key_id: &str) -> Result<UnparsedPublicKey<Vec<u8>>, SignatureError> {
        let (attempts, known) = {
            let loaded = self.loaded();
            let known = loaded.key(key_id);
            if let Some(key) = &known
                && !loaded.stale(Instant::now())
            {
                return Ok(key.clone());
            }
            (loaded.attempts, known)
        };
        let mut gate = self.gate.lock().await;
        {
            // A load finished while we waited: its answer is as fresh as ours would be.
            let loaded = self.loaded();
            if loaded.attempts != attempts {
                return loaded.key(key_id).ok_or_else(|| loaded.missing());
            }
        }
        let now = Instant::now();
        if gate
            .limited_since
            .is_some_and(|since| now.duration_since(since) < REFETCH_INTERVAL)
        {
            // Not "unknown": the list may have gained the key since the last load (GitHub
            // rotated it in), and GitHub retries a 503, not a 400.
            return known.ok_or(SignatureError::KeysUnavailable);
        }
        // Counted before it runs: a request that goes away mid-load must not reset the limit.
        gate.started += 1;
        if gate.started > 1 {
            gate.limited_since = Some(now);
        }
        let result = self.load().await;
        let mut loaded = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
        loaded.attempts += 1;
        match result {
            Ok(keys) => {
                info!(keys = keys.len(), "github secret scanning keys loaded");
                loaded.keys = Some(Arc::new(keys));
                loaded.loaded_at = Some(now);
                loaded.last_failed = false;
            }
            Err(error) => {
                match &self.source {
                    Source::Url { uri, .. } => {
                        warn!(url = %uri, %error, "github secret scanning keys not loaded");
                    }
                    Source::File(path) => {
                        warn!(path = %path.display(), %error, "github secret scanning keys not loaded");
                    }
                }
                loaded.last_failed = true;
                // A stale list still beats none: its keys were GitHub's a day ago.
                if let Some(key) = known {
                    return Ok(key);
                }
            }
        }
        loaded.key(key_id).ok_or_else(|| loaded.missing())
    }

    /// Loads and parses the key list once; the error is for the log.
    async fn load(&self) -> Result<Keys, String> {
        let body = match &self.source {
            Source::Url { uri, client } => tokio::time::timeout(FETCH_TIMEOUT, fetch(client, uri))
                .await
                .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??,
            Source::File(path) => tokio::time::timeout(FETCH_TIMEOUT, read(path))
                .await
                .map_err(|_| format!("not read within {FETCH_TIMEOUT:?}"))??,
        };
        parse_keys(&body)
    }
}

async fn fetch(client: &HttpClient, uri: &Uri) -> Result<Bytes, String> {
    let request = Request::get(uri.clone())
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| format!("cannot make the request: {e}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| match e.source() {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        })?;
    if response.status() != StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_KEYS_SIZE)
        .collect()
        .await
        .map_err(|e| format!("cannot read the answer (at most {MAX_KEYS_SIZE} bytes): {e}"))?;
    Ok(body.to_bytes())
}

async fn read(path: &std::path::Path) -> Result<Bytes, String> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| e.to_string())?
        .len();
    if size > MAX_KEYS_SIZE as u64 {
        return Err(format!("larger than {MAX_KEYS_SIZE} bytes"));
    }
    let body = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    Ok(body.into())
}

#[derive(Deserialize)]
struct KeyList {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
}

/// Parses the meta API's key list. A key we cannot read is skipped (and logged), so that
/// one odd key does not take the others with it; a list with no usable key is an error.
fn parse_keys(json: &[u8]) -> Result<Keys, String> {
    let list: KeyList =
        serde_json::from_slice(json).map_err(|e| format!("not a GitHub key list: {e}"))?;
    let mut keys = Keys::new();
    for entry in list.public_keys {
        match parse_pem(&entry.key) {
            Ok(point) => {
                let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point);
                keys.insert(entry.key_identifier, key);
            }
            Err(error) => {
                warn!(key_identifier = %entry.key_identifier, error, "github key skipped");
            }
        }
    }
    if keys.is_empty() {
        return Err("the list has no usable key".into());
    }
    Ok(keys)
}

/// Returns the uncompressed point of a PEM SubjectPublicKeyInfo of a P-256 key, which is
/// what ring verifies with; ring checks the point is on the curve when it verifies.
fn parse_pem(pem: &str) -> Result<Vec<u8>, &'static str> {
    let base64: String = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|rest| rest.strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or("is not a PEM public key")?
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(base64).map_err(|_| "is not base64")?;
    match der.strip_prefix(&P256_SPKI_PREFIX) {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err("is not an uncompressed P-256 public key"),
    }
}

fn check_key_id(key_id: &str) -> Result<(), SignatureError> {
    if key_id.is_empty() {
        return Err(SignatureError::MissingHeader(KEY_ID_HEADER));
    }
    if key_id.len() > MAX_KEY_ID_LEN || !key_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SignatureError::MalformedHeader(
            KEY_ID_HEADER,
            "must be 1 to 256 printable ASCII characters",
        ));
    }
    Ok(())
}

fn decode_signature(value: &str) -> Result<Vec<u8>, SignatureError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(SignatureError::MissingHeader(SIGNATURE_HEADER));
    }
    if value.len() > MAX_SIGNATURE_LEN {
        return Err(SignatureError::MalformedHeader(
            SIGNATURE_HEADER,
            "is too long",
        ));
    }
    STANDARD
        .decode(value)
        .map_err(|_| SignatureError::MalformedHeader(SIGNATURE_HEADER, "is not base64"))
}

#[cfg(test)]
mod tests;
