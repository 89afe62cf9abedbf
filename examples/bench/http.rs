//! Forward auth over HTTP/1.1 keep-alive: the request nginx's `auth_request` sends, one
//! connection per task (HTTP/1.1 carries one request at a time), and the no-op HTTP server
//! that answers it with the real answer's head over the same stack (hyper's server with an
//! axum router, as the HTTP port serves it), without judging anything: the ceiling for
//! forward auth's bytes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use axum::{Router, response::Response, routing::any};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The auth subrequest nginx sends for `GET /domains/1` from 10.1.2.3 with this token.
pub fn request(secret: &str) -> hyper::Request<Empty<Bytes>> {
    let mut builder = hyper::Request::builder()
        .method("GET")
        .uri("/v1/forward-auth");
    for (name, value) in [
        ("host", "api.example.com"),
        ("x-original-uri", "/domains/1"),
        ("x-original-method", "GET"),
        ("x-forwarded-for", "10.1.2.3"),
        ("x-real-ip", "10.1.2.3"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("authorization", &format!("Bearer {secret}")),
    ] {
        builder = builder.header(name, value);
    }
    builder.body(Empty::new()).expect("a valid request")
}

/// Opens one HTTP/1.1 keep-alive connection.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends one request and reads its answer; anything but 200 is an error.
pub async fn call(
    sender: &mut SendRequest<Empty<Bytes>>,
    request: &hyper::Request<Empty<Bytes>>,
) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let mut copy = hyper::Request::new(Empty::new());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    let response = sender.send_request(copy).await.map_err(|e| e.to_string())?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if status == hyper::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// The real server's answer to `request`: its status must be 200; its head is what the
/// no-op server answers.
pub async fn real_answer(
    addr: SocketAddr,
    request: &hyper::Request<Empty<Bytes>>,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut sender = connect(addr).await?;
    let mut copy = hyper::Request::new(Empty::new());
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    let response = sender.send_request(copy).await?;
    if response.status() != hyper::StatusCode::OK {
        bail!(
            "forward auth of the bench token answered {}",
            response.status()
        );
    }
    Ok(response
        .headers()
        .iter()
        // The server adds these itself, as it would for any answer.
        .filter(|(name, _)| !matches!(name.as_str(), "date" | "content-length"))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect())
}

/// A no-op forward-auth server on a free loopback port, answering every request with one
/// prepared head.
pub struct NoopHttp {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

impl NoopHttp {
    /// Starts it with the head of a real answer.
    pub async fn start(headers: Vec<(String, Vec<u8>)>) -> anyhow::Result<Self> {
        let headers = Arc::new(headers);
        let answer = move || {
            let headers = headers.clone();
            async move {
                let mut response = Response::new(axum::body::Body::empty());
                for (name, value) in headers.iter() {
                    response.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                        axum::http::HeaderValue::from_bytes(value).expect("a header value"),
                    );
                }
                response
            }
        };
        let router = Router::new().route("/v1/forward-auth", any(answer));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(token_authority::http::serve(
            listener,
            None,
            router,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        Ok(Self { addr, stop, served })
    }

    /// Stops it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.served.await;
    }
}

/// A no-op forward-auth server in this process (on the load generator's runtime) or in a
/// child process of its own, as the real server is (this program run again with
/// `--serve-noop-http`; it stops when its stdin closes).
pub enum NoopHttpHost {
    /// On this process's runtime.
    InProcess(NoopHttp),
    /// In a child process.
    Child {
        /// Where it listens.
        addr: SocketAddr,
        child: Box<tokio::process::Child>,
        stdin: tokio::process::ChildStdin,
    },
}

impl NoopHttpHost {
    /// Starts it with the head of a real answer.
    pub async fn start(headers: Vec<(String, Vec<u8>)>, in_child: bool) -> anyhow::Result<Self> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        if !in_child {
            return Ok(Self::InProcess(NoopHttp::start(headers).await?));
        }
        let exe = std::env::current_exe().context("cannot find this program to re-run")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("--serve-noop-http")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the no-op HTTP server's process")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let encoded = serde_json::to_vec(&headers)?;
        stdin.write_all(&encoded).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .await?;
        let addr = line.trim().parse().with_context(|| {
            format!("the no-op HTTP server's process said {line:?}, not its address")
        })?;
        Ok(Self::Child {
            addr,
            child: Box::new(child),
            stdin,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::InProcess(server) => server.addr,
            Self::Child { addr, .. } => *addr,
        }
    }

    /// Stops it.
    pub async fn stop(self) {
        match self {
            Self::InProcess(server) => server.stop().await,
            Self::Child {
                mut child, stdin, ..
            } => {
                drop(stdin);
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// The child side of [`NoopHttpHost::start`]: reads the head (one JSON line) from stdin,
/// serves it on a multi-threaded runtime with a worker per core (as the server's
/// `#[tokio::main]`), prints the address, and stops when stdin closes.
pub fn serve_child() -> anyhow::Result<()> {
    use std::io::{BufRead, Read, Write};
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let headers: Vec<(String, Vec<u8>)> =
        serde_json::from_str(&line).context("the head does not parse")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let server = runtime.block_on(NoopHttp::start(headers))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", server.addr)?;
    stdout.flush()?;
    let mut rest = Vec::new();
    let _ = stdin.read_to_end(&mut rest);
    runtime.block_on(server.stop());
    Ok(())
}
