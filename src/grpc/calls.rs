//! The one tower layer around every gRPC service: what each call gets before it reaches a
//! service, in one pass over the request and one wrapper around the answer.
//!
//! - its method, looked up once among `metrics::rpc::KNOWN_METHODS`;
//! - its `:authority`, as an [`Authority`] (host-restricted tokens on management calls;
//!   not for Verify and Check, which never authenticate their caller);
//! - its request id (the caller's `x-request-id` when usable, else a counter), carried by
//!   its log lines ([`call::scope`], a task-local: no tracing span is built per call) and
//!   returned in the response's metadata when the caller sent it, on every management call,
//!   and on a Verify or Check that logged a line ([`Call::answer_header`]);
//! - its latency and status in the metrics, recorded when the status is known (the
//!   headers of a trailers-only answer, else the trailers) or as `Canceled` if dropped.
//!
//! These were three layers, each with its own future and its own lookups; one layer
//! costs one future and one response body wrapper.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tonic::Code;
use tower::{Layer, Service};

use super::{Authority, request_id};
use crate::{
    metrics::{
        Metrics,
        rpc::{InFlight, MeteredBody, Method, status_of},
    },
    telemetry::call::{self, Call, Kind, RequestId},
};

/// The layer; see the module documentation.
#[derive(Clone, Debug)]
pub struct CallLayer {
    metrics: Arc<Metrics>,
}

impl CallLayer {
    /// Builds the layer over the service's metrics.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service wrapped by [`CallLayer`].
#[derive(Clone, Debug)]
pub struct CallService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, ResBody> Service<http::Request<B>> for CallService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = Method::of(request.uri().path());
        let in_flight = InFlight::start(self.metrics.clone(), method);
        // Management calls check a host-restricted caller's `:authority`; Verify and Check
        // judge the token in their request, so they skip the copy.
        if !method.is_verification()
            && let Some(authority) = authority_of(&request)
        {
            request.extensions_mut().insert(Authority(authority));
        }
        let id =
            RequestId::from_caller(crate::headers::get(request.headers(), &request_id::HEADER));
        let call = Call::new(id, Kind::Rpc, method.name());
        // (The service's `call` only builds the handler's future; the handler runs, and
        // logs, when polled inside the scope.)
        let future = call::scope(call, self.inner.call(request));
        ResponseFuture {
            inner: future,
            management: !method.is_verification(),
            call: Some(in_flight),
        }
    }
}

/// The `:authority` a request was sent to, or its `Host` header.
pub fn authority_of<B>(request: &http::Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

pin_project! {
    /// The response future of [`CallService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: tokio::task::futures::TaskLocalFuture<Call, F>,
        // Whether the answer always carries the request id (see `Call::answer_header`).
        management: bool,
        call: Option<InFlight>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut response = match this.inner.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(error)) => {
                if let Some(mut call) = this.call.take() {
                    call.finish(Code::Unknown);
                }
                return Poll::Ready(Err(error));
            }
        };
        // The handler is done: the call is back, with whether a line logged its id.
        if let Some(header) = this
            .inner
            .take_value()
            .and_then(|call| call.answer_header(*this.management))
        {
            response.headers_mut().insert(request_id::HEADER, header);
        }
        // A call that failed before any message ("trailers-only") carries its status in
        // the headers; any other carries it in the trailers, at the end of the body.
        let call = match (status_of(response.headers()), this.call.take()) {
            (Some(code), Some(mut call)) => {
                call.finish(code);
                None
            }
            (_, call) => call,
        };
        Poll::Ready(Ok(response.map(|inner| MeteredBody::new(inner, call))))
    }
}
