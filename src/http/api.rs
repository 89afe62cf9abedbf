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

/// Reads a request's body: at most `limit` bytes, within [`BODY_TIMEOUT`], while fewer
/// than [`BODIES_AT_ONCE`] others are being read. A larger body is answered 413 after
/// reading (and dropping) up to four times the limit for at most a second more, so that
/// the client, still sending, reads the answer instead of a reset connection.
pub async fn read_body(
    bodies: &Semaphore,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, Response> {
    let Ok(_permit) = bodies.try_acquire() else {
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
pub fn error(http: StatusCode, status: &str, message: &str) -> Response {
    let body =
        serde_json::json!({"error": {"code": http.as_u16(), "status": status, "message": message}});
    json_response(http, body.to_string())
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
        let bodies = Semaphore::new(1);
        let small = read_body(&bodies, Body::from("{}"), 10).await.unwrap();
        assert_eq!(&small[..], b"{}");
        let large = read_body(&bodies, Body::from(vec![b'x'; 11]), 10)
            .await
            .unwrap_err();
        assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let _held = bodies.try_acquire().unwrap();
        let busy = read_body(&bodies, Body::from("{}"), 10).await.unwrap_err();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
