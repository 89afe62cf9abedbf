//! The no-op VerifyService: the production transport stack answering every Verify with a
//! prepared reply, so that its throughput is the ceiling of what Verify's bytes cost over
//! gRPC on this machine, with no verification work at all.

use std::{net::SocketAddr, thread::JoinHandle, time::Duration};

use anyhow::Context;
use token_authority::{
    grpc::authority_layer,
    pb::v1::{
        VerifyRequest, VerifyResponse,
        verify_service_server::{VerifyService, VerifyServiceServer},
    },
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    Request, Response, Status,
    transport::{Server, server::TcpIncoming},
};

/// Answers every Verify with a clone of one reply.
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
    pub async fn start(reply: VerifyResponse) -> anyhow::Result<Self> {
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
