//! The no-op VerifyService: the production transport stack answering every Verify with a
//! prepared reply, so that its throughput is the ceiling of what Verify's bytes cost over
//! gRPC on this machine, with no verification work at all.
//!
//! It is served, like the real VerifyService, through `pb::wire`: the same messages on the
//! wire, with the reply's token as bytes encoded once, as a cache hit answers it. A no-op
//! that re-encoded a `Token` on every call would do more work than the real Verify and
//! would be no ceiling.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    process::Stdio,
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use prost::Message;
use token_authority::{
    grpc::{
        authority_layer,
        ext_authz::{Authorization, AuthorizationServer},
    },
    pb::{
        ext_authz_wire, v1,
        wire::{
            VerifyRequest, VerifyResponse,
            verify_service_server::{VerifyService, VerifyServiceServer},
        },
    },
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    process::{Child, ChildStdin, Command},
    sync::oneshot,
};
use tonic::{
    Request, Response, Status,
    transport::{Server, server::TcpIncoming},
};

/// Answers every Verify with a clone of one reply (its token is one shared buffer).
struct NoopVerify {
    reply: VerifyResponse,
}

#[tonic::async_trait]
impl VerifyService for NoopVerify {
    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        // tonic has decoded the request already, as for the real service.
        drop(request);
        Ok(Response::new(self.reply.clone()))
    }
}

/// Answers every ext_authz Check with one prepared answer, decoding each request into the
/// server's own zero-copy view, as the real service does.
struct NoopCheck {
    reply: ext_authz_wire::CheckResponse,
}

#[tonic::async_trait]
impl Authorization for NoopCheck {
    async fn check(
        &self,
        request: Request<ext_authz_wire::CheckRequest>,
    ) -> Result<Response<ext_authz_wire::CheckResponse>, Status> {
        drop(request);
        Ok(Response::new(self.reply.clone()))
    }
}

/// The reply as the real server sends it: the same bytes, the token encoded once.
fn to_wire(reply: &v1::VerifyResponse) -> anyhow::Result<VerifyResponse> {
    let encoded = reply.encode_to_vec();
    let wire = VerifyResponse::decode(encoded.as_slice()).context("re-decoding the reply")?;
    anyhow::ensure!(
        wire.encode_to_vec() == encoded,
        "the wire form of the reply encodes differently"
    );
    Ok(wire)
}

/// A no-op server running on its own tokio runtime and threads.
pub struct NoopServer {
    /// Where it listens, on loopback.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl NoopServer {
    /// Binds 127.0.0.1 on a free port and serves `reply` to every Verify, with the same
    /// tonic settings as the production server (see `src/startup.rs`): the same
    /// `:authority` layer, `serve_with_incoming` over a `TcpIncoming` with TCP_NODELAY,
    /// and a multi-threaded runtime with a worker per core, as `#[tokio::main]` gives it.
    pub async fn start(
        reply: &v1::VerifyResponse,
        check: Option<ext_authz_wire::CheckResponse>,
    ) -> anyhow::Result<Self> {
        let reply = to_wire(reply)?;
        let (bound_tx, bound_rx) = oneshot::channel::<std::io::Result<SocketAddr>>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("noop-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .thread_name("noop-server")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = bound_tx.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::bind("127.0.0.1:0").await {
                        Ok(listener) => listener,
                        Err(error) => {
                            let _ = bound_tx.send(Err(error));
                            return;
                        }
                    };
                    let _ = bound_tx.send(listener.local_addr());
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    let served = Server::builder()
                        .layer(authority_layer())
                        .add_service(VerifyServiceServer::new(NoopVerify { reply }))
                        .add_optional_service(
                            check.map(|reply| AuthorizationServer::new(NoopCheck { reply })),
                        )
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(error) = served {
                        eprintln!("no-op server failed: {error}");
                    }
                });
            })
            .context("cannot start the no-op server's thread")?;
        let addr = bound_rx
            .await
            .context("the no-op server's thread ended before binding")?
            .context("the no-op server cannot bind 127.0.0.1:0")?;
        Ok(Self { addr, stop, thread })
    }

    /// Stops the server, waiting a few seconds at most for its connections to close.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let joined = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await;
        if joined.is_err() {
            eprintln!("note: the no-op server did not stop within 5 s; leaving it behind");
        }
    }
}

/// A no-op server in this process or in a child process.
pub struct Noop {
    /// Where it listens, on loopback.
    pub addr: SocketAddr,
    host: Host,
}

enum Host {
    InProcess(NoopServer),
    /// The child stops when its stdin closes.
    Child {
        child: Child,
        stdin: ChildStdin,
    },
}

impl Noop {
    /// Starts a no-op server answering `reply`, here or in a child process (this program
    /// run again with `--serve-noop`).
    pub async fn start(reply: &v1::VerifyResponse, in_child: bool) -> anyhow::Result<Self> {
        Self::start_serving(reply, None, in_child).await
    }

    /// Starts a no-op server answering `reply` to Verify and, if given, `check` to every
    /// ext_authz Check, here or in a child process.
    pub async fn start_serving(
        reply: &v1::VerifyResponse,
        check: Option<ext_authz_wire::CheckResponse>,
        in_child: bool,
    ) -> anyhow::Result<Self> {
        if !in_child {
            let server = NoopServer::start(reply, check).await?;
            return Ok(Self {
                addr: server.addr,
                host: Host::InProcess(server),
            });
        }
        let exe = std::env::current_exe().context("cannot find this program to re-run")?;
        // TA_BENCH_NOOP_WRAPPER runs the child under a tool (scripts/callgrind-calls.sh
        // counts the no-op's instructions with `valgrind --tool=callgrind …`).
        let wrapper = std::env::var("TA_BENCH_NOOP_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(tool) => {
                let mut command = Command::new(tool);
                command.args(words).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let mut child = command
            .arg("--serve-noop")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the no-op server's process")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let encoded = reply.encode_to_vec();
        stdin
            .write_all(&u32::try_from(encoded.len())?.to_be_bytes())
            .await?;
        stdin.write_all(&encoded).await?;
        let check = check.map(|c| c.encode_to_vec()).unwrap_or_default();
        stdin
            .write_all(&u32::try_from(check.len())?.to_be_bytes())
            .await?;
        stdin.write_all(&check).await?;
        stdin.flush().await?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .await?;
        let addr = line.trim().parse().with_context(|| {
            format!("the no-op server's process said {line:?}, not its address")
        })?;
        Ok(Self {
            addr,
            host: Host::Child { child, stdin },
        })
    }

    /// Starts, in this process, a no-op server that also answers every ext_authz Check
    /// with `check`, a real Check answer.
    pub async fn start_with_check(
        reply: &v1::VerifyResponse,
        check: ext_authz_wire::CheckResponse,
    ) -> anyhow::Result<Self> {
        let server = NoopServer::start(reply, Some(check)).await?;
        Ok(Self {
            addr: server.addr,
            host: Host::InProcess(server),
        })
    }

    /// The child's process id, when it runs in a child.
    pub fn pid(&self) -> Option<u32> {
        match &self.host {
            Host::InProcess(_) => None,
            Host::Child { child, .. } => child.id(),
        }
    }

    /// Stops the server.
    pub async fn stop(self) {
        match self.host {
            Host::InProcess(server) => server.stop().await,
            Host::Child { mut child, stdin } => {
                drop(stdin);
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    eprintln!(
                        "note: the no-op server's process did not stop within 5 s; killing it"
                    );
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// The child side of [`Noop::start`]: reads the reply (a 4-byte big-endian length, then
/// the encoded VerifyResponse) and the Check answer (the same; length 0 for none) from stdin, serves it, prints the address on stdout, and
/// stops when stdin closes (also when the parent dies).
pub fn serve_child() -> anyhow::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut len = [0u8; 4];
    stdin.read_exact(&mut len)?;
    let mut encoded = vec![0u8; u32::from_be_bytes(len) as usize];
    stdin.read_exact(&mut encoded)?;
    let reply =
        v1::VerifyResponse::decode(encoded.as_slice()).context("the reply does not decode")?;
    stdin.read_exact(&mut len)?;
    let mut check = vec![0u8; u32::from_be_bytes(len) as usize];
    stdin.read_exact(&mut check)?;
    let check = (!check.is_empty())
        .then(|| ext_authz_wire::CheckResponse::decode(check.as_slice()))
        .transpose()
        .context("the Check answer does not decode")?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = control.block_on(NoopServer::start(&reply, check))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", server.addr)?;
    stdout.flush()?;
    let mut rest = Vec::new();
    let _ = stdin.read_to_end(&mut rest);
    control.block_on(server.stop());
    Ok(())
}
