//! Management calls run to the end even when their caller goes away.
//!
//! tonic drops a handler's future when the client hangs up (a deadline, a reset stream, a
//! closed connection). A write dropped mid-way is worse than one that failed: its commit
//! may land with the cache eviction that follows it skipped (on the embedded SQLite store
//! nothing else evicts, so the replica would keep accepting a token it just disabled), and
//! sqlx leaves a connection whose `BEGIN` or `COMMIT` was cut off inside its transaction,
//! which on SQLite holds the database's write lock and fails every later write. So the
//! services that write (tokens, token types) run each call in a task of its own that the
//! hang-up cannot cancel; only the answer is dropped. LeakService, which disables tokens,
//! is wrapped alike. Their reads are detached too (the layer is per service), bounded by
//! the management and leak report rate limits. AuditService writes
//! nothing and keeps cancellation; Verify and Check, which write nothing but an
//! autocommit use count, are not wrapped: they keep their hot path free of a spawn.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{body::Body, server::NamedService};
use tower::Service;

/// A gRPC service whose calls are detached from their callers.
#[derive(Clone, Debug)]
pub struct Detached<S> {
    inner: S,
}

impl<S> Detached<S> {
    /// Wraps a tonic service.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for Detached<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Detached<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = tokio::spawn(crate::telemetry::call::carried(self.inner.call(request)));
        Box::pin(async move {
            match call.await {
                Ok(answer) => answer,
                Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
                // Only a runtime shutting down cancels the task.
                Err(_) => Ok(tonic::Status::unavailable("the server is shutting down").into_http()),
            }
        })
    }
}
