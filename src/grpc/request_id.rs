//! A request id per call: the caller's `x-request-id` when it sent a usable one, else a new
//! one. Every log line of the call carries it (a tracing span around the call), and the
//! response's metadata returns it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderName, HeaderValue};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::{Instrument, instrument::Instrumented};

use crate::metrics::rpc::Method;

/// The metadata key of the request id, in requests and responses.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller; longer ones are replaced.
pub const MAX_LEN: usize = 128;

/// Returns whether a caller's request id may be used: 1 to [`MAX_LEN`] visible ASCII
/// characters, so that it cannot break a log line or a header.
pub fn usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(u8::is_ascii_graphic)
}

/// Returns a new request id: 128 random bits in hex.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random();
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((bits >> (4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
}

/// The tower layer that gives each call its request id and span.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// A service wrapped by [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, ResBody> Service<http::Request<B>> for RequestIdService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut id = match request.headers().get(&HEADER) {
            Some(id) if usable(id) => id.clone(),
            _ => generate(),
        };
        // Unique per call, so not worth a slot in either side's HPACK table: sent as a
        // never-indexed literal instead of churning the table on every response.
        id.set_sensitive(true);
        // Plain strings, which telemetry writes into the span without the formatter's
        // field visitor (see `telemetry::PlainSpanFields`).
        let span = tracing::info_span!(
            "rpc",
            request_id = id.to_str().unwrap_or_default(),
            rpc = Method::of(request.uri().path()).name(),
        );
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner: inner.instrument(span),
            id: Some(id),
        }
    }
}

pin_project! {
    /// The response future of [`RequestIdService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        id: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut output = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(id)) = (&mut output, this.id.take()) {
            response.headers_mut().insert(HEADER, id);
        }
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_ids_are_used_only_when_short_and_printable() {
        assert!(usable(&HeaderValue::from_static("req-42_a.b:c")));
        assert!(!usable(&HeaderValue::from_static("")));
        assert!(!usable(&HeaderValue::from_static("two words")));
        assert!(!usable(&HeaderValue::from_bytes(b"tab\there").unwrap()));
        assert!(!usable(&HeaderValue::from_bytes(&[0xc3, 0xa9]).unwrap()));
        assert!(usable(
            &HeaderValue::from_str(&"a".repeat(MAX_LEN)).unwrap()
        ));
        assert!(!usable(
            &HeaderValue::from_str(&"a".repeat(MAX_LEN + 1)).unwrap()
        ));
    }

    #[test]
    fn generated_ids_are_distinct_hex() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }
}
