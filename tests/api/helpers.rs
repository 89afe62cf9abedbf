//! Starts the real server (real store, real gRPC on a free port) for each test.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;
use token_authority::{
    domain::secret::TokenPrefix,
    pb::v1::{
        CreateTokenRequest, CreateTokenResponse, Token, VerifyRequest, VerifyResponse,
        token_service_client::TokenServiceClient, verify_service_client::VerifyServiceClient,
    },
    startup::{Application, Settings},
    store::StoreOptions,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Request, Status, transport::Channel};
use uuid::Uuid;

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of one test, kept across restarts of the server.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    /// The SQLite file's folder, removed when the test ends.
    pub dir: Option<TempDir>,
}

impl TestDb {
    /// Makes a fresh, empty database: a new SQLite file, or a new Postgres database on
    /// the server DATABASE_URL names (scripts/test starts one).
    pub async fn fresh(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("tokens.db").display());
                Self {
                    backend,
                    url,
                    dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin_url = std::env::var("DATABASE_URL").expect(
                    "the Postgres tests need DATABASE_URL; run scripts/test, which starts a throwaway Postgres",
                );
                Self::fresh_postgres(&admin_url).await
            }
        }
    }

    /// Like [`TestDb::fresh`], with a SQLite file on tmpfs where the machine has one: for
    /// tests of many short-lived stores, whose durability is not what they test.
    pub async fn fresh_on_tmpfs(backend: Backend) -> Self {
        let shm = std::path::Path::new("/dev/shm");
        if backend != Backend::Sqlite || !shm.is_dir() {
            return Self::fresh(backend).await;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let url = format!("sqlite://{}", dir.path().join("tokens.db").display());
        Self {
            backend,
            url,
            dir: Some(dir),
        }
    }

    /// Makes a fresh, empty database on the Postgres server of `admin_url`.
    pub async fn fresh_postgres(admin_url: &str) -> Self {
        let name = format!("ta_test_{}", Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(admin_url)
            .await
            .expect("cannot reach the Postgres server");
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap();
        conn.close().await.unwrap();
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("the URL names a database");
        Self {
            backend: Backend::Postgres,
            url: format!("{base}/{name}"),
            dir: None,
        }
    }

    /// The SQLite file, for SQLite databases.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("tokens.db"))
    }
}

/// Settings for a test server: a free port, short intervals.
pub fn test_settings(db: &TestDb) -> Settings {
    Settings {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        metrics_addr: None,
        http_addr: None,
        http_api: true,
        forward_auth_trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        // No test reaches GitHub: those that need keys serve their own.
        github_keys: token_authority::startup::GithubKeySource::Url(
            "http://127.0.0.1:9/no-github-in-tests".into(),
        ),
        store: StoreOptions {
            url: db.url.clone(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            feed_heartbeat: Duration::from_secs(1),
        },
        token_prefix: TokenPrefix::default(),
        bootstrap: true,
        bootstrap_owner: "admin".into(),
        bootstrap_token_file: None,
        usage_flush_interval: Duration::from_millis(100),
        health_check_interval: Duration::from_millis(100),
        shutdown_drain: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(10),
        cache: token_authority::cache::CacheSettings {
            max_entries: 10_000,
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(3600),
        },
        // Tests verify many made-up secrets from one address; the budget has its own tests.
        lookups: token_authority::verifier::LookupSettings {
            unknown_per_address: 0,
            unknown_overall: 0,
            ..Default::default()
        },
        ext_authz: token_authority::authz::CheckSettings::default(),
        // Tests make many calls from one address; the limit has its own test.
        management_rate_limit: 0,
        leak_report_rate_limit: 0,
        max_message_size: 4 << 20,
        trusted_proxies: Vec::new(),
    }
}

/// A running server and clients of it.
pub struct TestApp {
    /// `127.0.0.1:<port>`.
    pub target: String,
    /// The port of `/metrics`, when the settings asked for it.
    pub metrics_port: Option<u16>,
    /// The HTTP port, when the settings asked for it.
    pub http_port: Option<u16>,
    /// The bootstrap admin's secret (`*:*`).
    pub admin: String,
    pub tokens: TokenServiceClient<Channel>,
    pub verifier: VerifyServiceClient<Channel>,
    pub channel: Channel,
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts a server on a fresh database.
pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = TestDb::fresh(backend).await;
    let settings = test_settings(&db);
    spawn_with(db, settings, None).await
}

/// Starts a server with these settings; `admin` is the admin secret of an earlier start
/// on the same database (a restart makes no new one).
pub async fn spawn_with(db: TestDb, settings: Settings, admin: Option<String>) -> TestApp {
    let tls = settings.tls.is_some();
    let app = Application::build(settings).await.expect("server starts");
    let addr: SocketAddr = format!("127.0.0.1:{}", app.port()).parse().unwrap();
    let metrics_port = app.metrics_port();
    let http_port = app.http_port();
    let admin = app
        .bootstrap_secret()
        .map(|s| s.expose().to_owned())
        .or(admin)
        .unwrap_or_default();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    // A TLS port refuses this plain client; TLS tests make their own.
    let channel = if tls {
        endpoint.connect_lazy()
    } else {
        endpoint.connect().await.expect("client connects")
    };
    TestApp {
        target: addr.to_string(),
        metrics_port,
        http_port,
        admin,
        tokens: TokenServiceClient::new(channel.clone()),
        verifier: VerifyServiceClient::new(channel.clone()),
        channel,
        db,
        stop: Some(stop),
        server: Some(server),
    }
}

/// Settings for a test server that also serves `/metrics`, on a free port.
pub fn metered_settings(db: &TestDb) -> Settings {
    Settings {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..test_settings(db)
    }
}

/// Fetches `/metrics` over plain HTTP/1.1, as Prometheus does, and returns the body.
pub async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the metrics port accepts");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    body.to_owned()
}

/// Returns the value of one series (`name{labels}`) in a scrape, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a sample value"))
}

/// Wraps a message with `authorization: Bearer <secret>`.
pub fn authed<T>(secret: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

/// A token spec with a name and permissions; the rest default.
pub fn spec(name: &str, permissions: &[&str]) -> Token {
    Token {
        name: name.into(),
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

impl TestApp {
    /// Returns `host:port`, as command-line clients take it.
    pub fn channel_target(&self) -> &str {
        &self.target
    }

    /// Creates a token as the caller with `secret`.
    pub async fn create_as(
        &self,
        secret: &str,
        token: Token,
    ) -> Result<CreateTokenResponse, Status> {
        self.tokens
            .clone()
            .create_token(authed(
                secret,
                CreateTokenRequest {
                    token: Some(token),
                    ttl: None,
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    /// Creates a token with a `ttl` of `seconds`, as the caller with `secret`.
    pub async fn create_with_ttl(
        &self,
        secret: &str,
        token: Token,
        seconds: i64,
    ) -> Result<CreateTokenResponse, Status> {
        let ttl = Some(prost_types::Duration { seconds, nanos: 0 });
        self.tokens
            .clone()
            .create_token(authed(
                secret,
                CreateTokenRequest {
                    token: Some(token),
                    ttl,
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    /// Creates a token as the admin, which must succeed.
    pub async fn create(&self, token: Token) -> CreateTokenResponse {
        self.create_as(&self.admin.clone(), token)
            .await
            .expect("admin creates a token")
    }

    /// Verifies a secret for a use.
    pub async fn verify(&self, request: VerifyRequest) -> VerifyResponse {
        self.verifier
            .clone()
            .verify(request)
            .await
            .expect("verify answers")
            .into_inner()
    }

    /// Verifies a secret needing these permissions, from nowhere in particular.
    pub async fn verify_perms(&self, secret: &str, required: &[&str]) -> VerifyResponse {
        self.verify(VerifyRequest {
            token: secret.into(),
            required_permissions: required.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    /// Lists every token visible to the admin.
    pub async fn all_tokens(&self) -> Vec<Token> {
        let mut tokens = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .tokens
                .clone()
                .list_tokens(authed(
                    &self.admin,
                    token_authority::pb::v1::ListTokensRequest {
                        page_size: 1000,
                        page_token: page_token.clone(),
                        owner: String::new(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("admin lists tokens")
                .into_inner();
            tokens.extend(page.tokens);
            if page.next_page_token.is_empty() {
                return tokens;
            }
            page_token = page.next_page_token;
        }
    }

    /// Lists every token with the usage fields cleared, which the listing itself changes
    /// (the admin's own use); for comparing the store's state before and after.
    pub async fn snapshot(&self) -> Vec<Token> {
        let mut tokens = self.all_tokens().await;
        for token in &mut tokens {
            token.use_count = 0;
            token.last_used_time = None;
            token.last_used_ip = String::new();
        }
        tokens
    }

    /// Every audit event, newest first, as the admin sees them.
    pub async fn audit_events(&self) -> Vec<token_authority::pb::v1::AuditEvent> {
        use token_authority::pb::v1::{
            ListAuditEventsRequest, audit_service_client::AuditServiceClient,
        };
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = AuditServiceClient::new(self.channel.clone())
                .list_audit_events(authed(
                    &self.admin,
                    ListAuditEventsRequest {
                        page_size: 1000,
                        page_token: page_token.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("admin lists audit events")
                .into_inner();
            events.extend(page.events);
            if page.next_page_token.is_empty() {
                return events;
            }
            page_token = page.next_page_token;
        }
    }

    /// What a refused call must leave as it was: every token (usage bookkeeping aside)
    /// and every audit event but failed authentications, which are audited by design.
    pub async fn state(&self) -> (Vec<Token>, Vec<token_authority::pb::v1::AuditEvent>) {
        let events = self
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.action != "authentication_failed")
            .collect();
        (self.snapshot().await, events)
    }

    /// The bootstrap admin token.
    pub async fn admin_token(&self) -> Token {
        self.all_tokens()
            .await
            .into_iter()
            .find(|t| t.name == "bootstrap-admin")
            .expect("the bootstrap admin exists")
    }

    /// Stops the server gracefully and returns its database, for a restart.
    pub async fn stop(mut self) -> (TestDb, String) {
        self.shutdown().await;
        let TestApp { db, admin, .. } = self;
        (db, admin)
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

/// The server binary, for tests of whole processes.
pub const BINARY: &str = env!("CARGO_BIN_EXE_token-authority");

/// A server process of the real binary, with its output collected.
pub struct Process {
    child: Child,
    pub port: u16,
    /// The port of `/metrics`.
    pub metrics_port: u16,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::mpsc::Receiver<String>,
    /// The stderr lines read so far.
    pub seen: Vec<String>,
}

impl Process {
    /// Starts the binary in `cwd` with a clean environment plus `env`, waiting until it
    /// logs (on stderr, as JSON) the address it serves on.
    pub fn start(cwd: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BINARY);
        command
            .current_dir(cwd)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TA_LISTEN_ADDR", "127.0.0.1:0")
            .env("TA_METRICS_ADDR", "127.0.0.1:0")
            .env("TA_HTTP_ADDR", "127.0.0.1:0")
            .env("TA_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the binary starts");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let mut process = Self {
            child,
            port: 0,
            metrics_port: 0,
            stdout,
            stderr,
            seen: Vec::new(),
        };
        let serving = loop {
            let line = process
                .stderr
                .recv_timeout(Duration::from_secs(30))
                .expect("the server logs its address in time");
            process.seen.push(line.clone());
            if line.contains("token-authority serving") {
                break line;
            }
        };
        let value: serde_json::Value = serde_json::from_str(&serving).unwrap();
        let port = |field: &str| {
            let addr: std::net::SocketAddr = value[field].as_str().unwrap().parse().unwrap();
            addr.port()
        };
        process.port = port("addr");
        process.metrics_port = port("metrics_addr");
        process
    }

    /// Sends SIGTERM and returns (exit success, stdout, stderr), waiting at most 10 s.
    /// Async, so that the test's own clients keep running and answer the server's
    /// graceful GOAWAY.
    pub async fn terminate(self) -> (bool, String, String) {
        self.sigterm();
        self.wait_for_exit(Duration::from_secs(10)).await
    }

    /// Sends SIGTERM (once: a second one makes the server exit at once).
    pub fn sigterm(&self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits at most `within` for the process to exit; returns (exit success, stdout,
    /// stderr).
    pub async fn wait_for_exit(mut self, within: Duration) -> (bool, String, String) {
        let deadline = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let mut log = self.seen.join("\n");
                while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(1)) {
                    log.push_str(&line);
                    log.push('\n');
                }
                panic!("the server did not exit within {within:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let drain = |rx: &std::sync::mpsc::Receiver<String>, mut all: String| {
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
                all.push_str(&line);
                all.push('\n');
            }
            all
        };
        let stdout = drain(&self.stdout, String::new());
        let stderr = drain(&self.stderr, self.seen.join("\n") + "\n");
        (status.success(), stdout, stderr)
    }
}

impl Process {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connected channel to the process's gRPC port.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The warnings and errors the process logged so far (JSON lines), without waiting.
    pub fn problems_logged(&mut self) -> Vec<String> {
        while let Ok(line) = self.stderr.try_recv() {
            self.seen.push(line);
        }
        self.seen
            .iter()
            .filter(|line| {
                line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#)
            })
            .cloned()
            .collect()
    }

    /// The resident memory of the process (VmRSS), in bytes; 0 once it has exited.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    }

    /// Kills the process with SIGKILL, as a crash or the OOM killer would, and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("the server can be killed");
        self.child.wait().expect("the killed server is reaped");
    }
}

impl Drop for Process {
    /// Kills the server if a failed test left it running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Creates a token through a TokenService client (of a server process, say) as `secret`.
pub async fn create_via(
    tokens: &mut TokenServiceClient<Channel>,
    secret: &str,
    token: Token,
) -> Result<CreateTokenResponse, Status> {
    let request = CreateTokenRequest {
        token: Some(token),
        ttl: None,
    };
    tokens
        .create_token(authed(secret, request))
        .await
        .map(|r| r.into_inner())
}

/// One call a test's client made: its kind, when it was sent and answered, and how it
/// failed, if it did.
pub type Call = (
    &'static str,
    std::time::Instant,
    std::time::Instant,
    Option<(tonic::Code, String)>,
);

/// Every call a test's clients made, for judging afterwards.
#[derive(Default)]
pub struct CallLog {
    calls: std::sync::Mutex<Vec<Call>>,
}

impl CallLog {
    /// Notes a call of `kind` sent at `sent` and answered now with `result`.
    pub fn note<T>(
        &self,
        kind: &'static str,
        sent: std::time::Instant,
        result: &Result<T, Status>,
    ) {
        let failure = result
            .as_ref()
            .err()
            .map(|status| (status.code(), status.message().to_owned()));
        let call = (kind, sent, std::time::Instant::now(), failure);
        self.calls.lock().unwrap().push(call);
    }

    /// Returns the calls noted so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

/// Runs each named test, `async fn name(backend: Backend)`, once per backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Two server processes of the real binary on one fresh Postgres database; A made the
/// bootstrap admin.
pub struct Replicas {
    pub db: TestDb,
    pub a: Process,
    pub b: Process,
    pub admin: String,
    pub _dir: tempfile::TempDir,
}

impl Replicas {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Both started with these extra flags.
    pub async fn start_with(args: &[&str]) -> Self {
        Self::start_on(TestDb::fresh(Backend::Postgres).await, args)
    }

    /// Both started on this database with these extra flags.
    pub fn start_on(db: TestDb, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let admin_file = dir.path().join("admin.secret");
        let admin_file_str = admin_file.display().to_string();
        let env = [("DATABASE_URL", db.url.as_str()), ("RUST_LOG", "info")];
        let a = Process::start(
            dir.path(),
            args,
            &[env[0], env[1], ("TA_BOOTSTRAP_TOKEN_FILE", &admin_file_str)],
        );
        let b = Process::start(dir.path(), args, &env);
        let admin = std::fs::read_to_string(&admin_file)
            .unwrap()
            .trim()
            .to_owned();
        Self {
            db,
            a,
            b,
            admin,
            _dir: dir,
        }
    }
}

/// An HTTP answer: status, headers (lowercase names; the last of repeated ones) and body.
pub type HttpAnswer = (
    hyper::StatusCode,
    std::collections::HashMap<String, String>,
    String,
);

/// One HTTP/1.1 request on a new connection: its status, headers (lowercase names) and
/// body. `host: api.example.com` unless the headers name a host.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpAnswer, String> {
    http_request_from(None, addr, method, path, headers).await
}

/// [`http_request`] from a chosen local address (e.g. 127.0.0.2, a client that is not the
/// loopback address the proxies connect from).
pub async fn http_request_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpAnswer, String> {
    use http_body_util::{BodyExt, Empty};
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| e.to_string())?;
    }
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", "api.example.com");
    }
    for (key, value) in headers {
        builder = builder.header(*key, *value);
    }
    let response = sender
        .send_request(builder.body(Empty::<bytes::Bytes>::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// curl, as a user would run it: extra `headers` ("name: value"), and `body` (sent as
/// JSON, byte for byte, on stdin: `--data-binary @-`). Returns the status and the body.
pub fn curl(url: &str, headers: &[&str], body: Option<&[u8]>) -> (u16, String) {
    use std::io::Write;
    let mut command = std::process::Command::new("curl");
    command.args(["-sS", "-w", "\n%{http_code}"]);
    for header in headers {
        command.args(["-H", header]);
    }
    if body.is_some() {
        command.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = command
        .arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl is installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.unwrap_or_default()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}
