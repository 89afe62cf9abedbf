//! What the HTTP port's API routes share: where a request came from, bodies read within
//! bounds, work that outlives a client who hangs up, and errors as JSON in the shape
//! grpc-gateway gives them, `{"error": {"code", "status", "message"}}`, with the standard
//! gRPC to HTTP status mapping.

use std::{future::Future, net::IpAddr, time::Duration};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::sync::Semaphore;

use super::HttpState;
use crate::{error::Error, grpc::auth::Origin};

/// How long a client has to send a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many request bodies are read at once, over every API route: with the largest body
/// of 1 MiB, a bound on the memory that slow or stalled senders can hold.
pub const BODIES_AT_ONCE: usize = 64;
/// How many of those one client address (an IPv6 /64) may hold: a few slow senders cannot
/// take every slot and lock everyone else out of the API.
pub const BODIES_PER_ADDRESS: u32 = 8;
/// The largest JSON request body. JSON costs far more to parse than protobuf (a 4 MiB
/// body of empty strings took about 460 ms of CPU and 125 MiB), and it is parsed before
/// the caller is authenticated; the largest real request (a leak report of 1,000 secrets)
/// is under 64 KiB.
pub const MAX_JSON_BODY: usize = 256 * 1024;

/// The slots for request bodies being read: [`BODIES_AT_ONCE`] in all, at most
/// [`BODIES_PER_ADDRESS`] per client address.
#[derive(Debug)]
pub struct BodySlots {
    total: Semaphore,
    by_address: dashmap::DashMap<IpAddr, u32>,
}

impl Default for BodySlots {
    fn default() -> Self {
        Self::new(BODIES_AT_ONCE)
    }
}

/// A body slot, given back when dropped.
struct Slot<'a> {
    slots: &'a BodySlots,
    key: Option<IpAddr>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl BodySlots {
    /// Slots for `total` bodies at once.
    pub fn new(total: usize) -> Self {
        Self {
            total: Semaphore::new(total),
            by_address: dashmap::DashMap::new(),
        }
    }

    fn take(&self, key: Option<IpAddr>) -> Option<Slot<'_>> {
        let permit = self.total.try_acquire().ok()?;
        if let Some(key) = key {
            let mut held = self.by_address.entry(key).or_insert(0);
            if *held >= BODIES_PER_ADDRESS {
                return None;
            }
            *held += 1;
        }
        Some(Slot {
            slots: self,
            key,
            _permit: permit,
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.slots.by_address.remove_if_mut(&key, |_, held| {
                *held -= 1;
                *held == 0
            });
        }
    }
}

/// Where a request came from: its peer, or the client a trusted proxy
/// (`--trusted-proxies`, as for the management API) names in `X-Forwarded-For`.
pub fn origin(state: &HttpState, headers: &HeaderMap, peer: IpAddr) -> Origin {
    let values = headers.get_all("x-forwarded-for");
    crate::grpc::auth::origin_of(
        peer,
        values.iter().map(|v| v.to_str().ok()),
        &state.app.trusted_proxies,
    )
}

/// Reads a request's body: at most `limit` bytes, within [`BODY_TIMEOUT`], while a body
/// slot is free for the client address `key` ([`BodySlots`]). A larger body is answered
/// 413 after reading (and dropping) up to four times the limit for at most a second more,
/// so that the client, still sending, reads the answer instead of a reset connection.
pub async fn read_body(
    bodies: &BodySlots,
    key: Option<IpAddr>,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, Response> {
    let Some(_slot) = bodies.take(key) else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "too many requests are sending their bodies; try again shortly",
        ));
    };
    match tokio::time::timeout(BODY_TIMEOUT, read_within(body, limit)).await {
        Ok(read) => read,
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "DEADLINE_EXCEEDED",
            "the request body did not arrive in time",
        )),
    }
}

async fn read_within(body: Body, limit: usize) -> Result<bytes::Bytes, Response> {
    use tokio_stream::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "the request body could not be read",
            ));
        };
        if read.len() + chunk.len() > limit {
            let mut dropped = read.len() + chunk.len();
            let linger = async {
                while let Some(Ok(chunk)) = stream.next().await {
                    dropped += chunk.len();
                    if dropped > 4 * limit {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "OUT_OF_RANGE",
                &format!("the request body must be at most {limit} bytes"),
            ));
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read.freeze())
}

/// Runs work that writes in a task of its own, which a client hanging up cannot cancel:
/// hyper drops a handler's future then, and a report dropped between its commit and its
/// cache eviction would leave this replica accepting a token it just disabled (the gRPC
/// services that write are wrapped alike, in `grpc::detach`). A panic in it is an
/// internal error.
pub async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Response> {
    match tokio::spawn(crate::telemetry::call::carried(work)).await {
        Ok(done) => done.map_err(|e| status_response(&e.into())),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error",
        )),
    }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.into(),
    )
        .into_response()
}

/// The answer to a method the route does not take.
pub fn method_not_allowed(allow: &'static str, message: &str) -> Response {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "UNIMPLEMENTED", message);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// A gRPC status as JSON, with the HTTP status of the standard gRPC to HTTP mapping.
pub fn status_response(status: &tonic::Status) -> Response {
    use tonic::Code;
    let http = match status.code() {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(
        http,
        &screaming_snake(&format!("{:?}", status.code())),
        status.message(),
    )
}

/// An error answer: `{"error": {"code": <HTTP status>, "status": <gRPC code name>, "message"}}`.
/// Any secret of ours in the message is cut down to its display hint, whatever put it
/// there: no message is meant to quote one, and this is the last place to make sure.
pub fn error(http: StatusCode, status: &str, message: &str) -> Response {
    let message = redacted(message);
    let body =
        serde_json::json!({"error": {"code": http.as_u16(), "status": status, "message": message}});
    json_response(http, body.to_string())
}

/// `text` with every secret it holds (a well-formed one: prefix, body and checksum) replaced
/// by its display hint and `…`.
pub fn redacted(text: &str) -> std::borrow::Cow<'_, str> {
    let found = crate::scan::find_secrets(text.as_bytes());
    if found.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for finding in found {
        let start = usize::try_from(finding.offset).unwrap_or(text.len());
        let end = start + finding.secret.expose().len();
        if start < at || end > text.len() {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(&finding.hint());
        out.push('…');
        at = end;
    }
    out.push_str(&text[at..]);
    std::borrow::Cow::Owned(out)
}

/// `InvalidArgument` → `INVALID_ARGUMENT`.
fn screaming_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_never_carry_a_secret() {
        let prefix = crate::domain::secret::TokenPrefix::default();
        let secret = crate::domain::secret::TokenSecret::generate(&prefix);
        let text = format!("bad value \"{}\" here", secret.expose());
        let shown = redacted(&text);
        assert!(!shown.contains(secret.expose()), "{shown}");
        assert!(shown.contains(&secret.display_hint()), "{shown}");
        assert_eq!(redacted("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn statuses_map_as_grpc_gateway_maps_them() {
        for (code, http, name) in [
            (tonic::Code::InvalidArgument, 400, "INVALID_ARGUMENT"),
            (tonic::Code::Unauthenticated, 401, "UNAUTHENTICATED"),
            (tonic::Code::PermissionDenied, 403, "PERMISSION_DENIED"),
            (tonic::Code::NotFound, 404, "NOT_FOUND"),
            (tonic::Code::AlreadyExists, 409, "ALREADY_EXISTS"),
            (tonic::Code::ResourceExhausted, 429, "RESOURCE_EXHAUSTED"),
            (tonic::Code::Unavailable, 503, "UNAVAILABLE"),
        ] {
            let response = status_response(&tonic::Status::new(code, "m"));
            assert_eq!(response.status().as_u16(), http);
            assert_eq!(screaming_snake(&format!("{code:?}")), name);
        }
    }

    #[tokio::test]
    async fn a_panic_in_detached_work_is_an_internal_error() {
        let answer = detached::<()>(async { panic!("boom") }).await.unwrap_err();
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn bodies_past_the_limit_or_past_the_concurrency_are_refused() {
        let bodies = BodySlots::new(BODIES_PER_ADDRESS as usize + 2);
        let small = read_body(&bodies, None, Body::from("{}"), 10)
            .await
            .unwrap();
        assert_eq!(&small[..], b"{}");
        let large = read_body(&bodies, None, Body::from(vec![b'x'; 11]), 10)
            .await
            .unwrap_err();
        assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // One address holding its share cannot take more; another still can.
        let (one, two) = (Some([10, 0, 0, 1].into()), Some([10, 0, 0, 2].into()));
        let held: Vec<_> = (0..BODIES_PER_ADDRESS)
            .map(|_| bodies.take(one).unwrap())
            .collect();
        let busy = read_body(&bodies, one, Body::from("{}"), 10)
            .await
            .unwrap_err();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(read_body(&bodies, two, Body::from("{}"), 10).await.is_ok());
        // And every slot taken refuses everyone.
        let _more = [bodies.take(two).unwrap(), bodies.take(None).unwrap()];
        let full = read_body(&bodies, two, Body::from("{}"), 10)
            .await
            .unwrap_err();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert!(bodies.by_address.get(&one.unwrap()).is_none(), "given back");
        assert!(read_body(&bodies, one, Body::from("{}"), 10).await.is_ok());
    }
}
