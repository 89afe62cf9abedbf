//! Leak reports on the HTTP port: `POST /v1/leaks`, ReportLeakedTokens as JSON (for curl,
//! scripts and support desks), answered as the gRPC call is, with the same checks, limit
//! and audit; and `POST /v1/leaks/github`, GitHub's secret scanning partner endpoint.

use std::{net::IpAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::{HttpState, Peer};
use crate::{
    domain::{leak::Report, restrictions::client_address},
    error::Error,
    grpc::{auth::Origin, leak_service},
    leaks::{
        github::{self, SignatureError},
        report::{self, Channel},
    },
    pb::v1::{LeakOutcome, ReportLeakedTokensRequest, ReportLeakedTokensResponse},
};

/// The largest request body a leak report may have: 1,000 secrets and a URL fit well
/// within it.
pub const MAX_BODY: usize = 256 * 1024;

/// ReportLeakedTokensRequest in protojson: lowerCamelCase names, snake_case accepted,
/// unknown fields refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReport {
    secrets: Vec<String>,
    #[serde(default)]
    source: String,
    #[serde(default)]
    url: String,
}

/// Where a request on the HTTP port came from: its peer, or the client a trusted proxy
/// (`--trusted-proxies`, as for the management API) names in `X-Forwarded-For`.
pub fn origin(state: &HttpState, headers: &HeaderMap, peer: IpAddr) -> Origin {
    let peer = crate::domain::restrictions::canonical_ip(peer);
    let chain: Option<Vec<&str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect();
    let trusted = &state.app.trusted_proxies;
    let client = match chain {
        Some(chain) if chain.is_empty() => Some(peer),
        Some(chain) => client_address(peer, Some(&chain.join(",")), trusted),
        None if trusted.iter().any(|net| net.contains(&peer)) => None,
        None => Some(peer),
    };
    Origin {
        client,
        limit_key: Some(crate::grpc::auth::limit_key(client.unwrap_or(peer))),
    }
}

/// Reads a request's body, at most `limit` bytes. A larger one is answered 413, after
/// reading (and dropping) up to four times the limit for at most a second more, so that
/// the client, still sending, reads the answer instead of a reset connection.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, Response> {
    use tokio_stream::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = bytes::BytesMut::new();
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID_ARGUMENT",
            &format!("the request body must be at most {limit} bytes"),
        )
    };
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Err(error_response(
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
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), linger).await;
            return Err(too_large());
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read.freeze())
}

/// Answers `POST /v1/leaks`.
pub async fn report(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() else {
        return status_response(&tonic::Status::internal("no peer address"));
    };
    if request.method() != axum::http::Method::POST {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNIMPLEMENTED",
            "use POST with a JSON body",
        );
    }
    let origin = origin(&state, request.headers(), peer.ip());
    let body = match read_body(request.into_body(), MAX_BODY).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let parsed: JsonReport = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(error) => {
            // serde's message names the field and position, never a value.
            let message = format!("the body is not a leak report: {}", error_kind(&error));
            return status_response(&Error::invalid("body", message).into());
        }
    };
    let request = ReportLeakedTokensRequest {
        secrets: parsed.secrets,
        source: parsed.source,
        url: parsed.url,
    };
    let reported =
        detached(
            async move { leak_service::report_leaked_tokens(&state.app, &request, origin).await },
        )
        .await;
    match reported {
        Ok(answer) => json_response(StatusCode::OK, &encode(&answer)),
        Err(error) => status_response(&error.into()),
    }
}

/// The largest body GitHub's secret scanning may send: 1,000 matches of a secret, its
/// type, URL and source fit well within it.
pub const MAX_GITHUB_BODY: usize = 1024 * 1024;

/// Answers `POST /v1/leaks/github`: GitHub's secret scanning partner endpoint. The raw
/// body's signature is checked against GitHub's published key before anything else is
/// read; a missing or bad one is 400 and revokes nothing (503 when the keys cannot be
/// loaded, so that GitHub retries). A good one is reported as ReportLeakedTokens reports,
/// each match with its URL, and answered with GitHub's feedback: `true_positive` for ours.
pub async fn github(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() else {
        return status_response(&tonic::Status::internal("no peer address"));
    };
    if request.method() != axum::http::Method::POST {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNIMPLEMENTED",
            "GitHub's secret scanning POSTs its matches here",
        );
    }
    let origin = origin(&state, request.headers(), peer.ip());
    if let Err(error) = report::admit(&state.app, origin.limit_key) {
        return status_response(&error.into());
    }
    let headers = request.headers().clone();
    let body = match read_body(request.into_body(), MAX_GITHUB_BODY).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if let Err(error) = state.github_keys.verify_request(&headers, &body).await {
        tracing::warn!(%error, client = ?origin.client, "refused a leak report not signed by GitHub");
        return match error {
            SignatureError::KeysUnavailable => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                &error.to_string(),
            ),
            _ => error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &error.to_string(),
            ),
        };
    }
    let matches = match github::parse_matches(&body) {
        Ok(matches) => matches,
        Err(message) => {
            return error_response(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &message);
        }
    };
    let reported = detached(async move {
        let mut ours = Vec::with_capacity(matches.len());
        for found in &matches {
            let from = Report::github(found.url());
            let outcomes =
                report::report(&state.app, &[found.token()], &from, Channel::Github, origin)
                    .await?;
            ours.push(outcomes.first().is_some_and(|o| o.ours));
        }
        Ok((matches, ours))
    })
    .await;
    // On an error, those reported so far stay revoked; GitHub retries the whole batch.
    let (matches, ours) = match reported {
        Ok(reported) => reported,
        Err(error) => return status_response(&error.into()),
    };
    let feedback = github::feedback(&matches, |i| ours[i]);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        feedback,
    )
        .into_response()
}

/// Runs a report in a task of its own, which a client hanging up cannot cancel: hyper
/// drops a handler's future then, and a report dropped between its commit and its cache
/// eviction would leave this replica accepting a token it just disabled (see
/// `grpc::detach`, which does the same for the gRPC services that write).
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    use tracing::Instrument;
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Aborted(
                "the report was interrupted; send it again".into(),
            ))
        })
}

/// What is wrong with a JSON body, without quoting any of it (serde_json's messages quote
/// unknown field names and string values, which could be a secret).
fn error_kind(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => "not valid JSON",
        Category::Data => {
            "expected {\"secrets\": [\"...\"], \"source\": \"...\", \"url\": \"...\"} and no other fields"
        }
    };
    format!("{what} (line {}, column {})", error.line(), error.column())
}

/// ReportLeakedTokensResponse in protojson, every field present.
fn encode(answer: &ReportLeakedTokensResponse) -> serde_json::Value {
    let results: Vec<serde_json::Value> = answer
        .results
        .iter()
        .map(|r| {
            let outcome = LeakOutcome::try_from(r.outcome).unwrap_or(LeakOutcome::Unspecified);
            json!({"displayHint": r.display_hint, "outcome": outcome.as_str_name()})
        })
        .collect();
    json!({"results": results, "revoked": answer.revoked, "unknown": answer.unknown})
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A gRPC status as JSON, `{"error": {"code", "status", "message"}}`, with the HTTP status
/// of the standard gRPC to HTTP mapping.
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
    let name = format!("{:?}", status.code());
    error_response(http, &screaming_snake(&name), status.message())
}

fn error_response(http: StatusCode, status: &str, message: &str) -> Response {
    let body = json!({"error": {"code": http.as_u16(), "status": status, "message": message}});
    json_response(http, &body)
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

    #[test]
    fn a_body_error_quotes_nothing_of_the_body() {
        let secret = "ta_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL";
        for body in [
            format!("{{\"secretz\": [\"{secret}\"]}}"),
            format!("{{\"secrets\": \"{secret}\"}}"),
            format!("{{\"secrets\": [\"{secret}\""),
        ] {
            let error = serde_json::from_str::<JsonReport>(&body).err().unwrap();
            assert!(!error_kind(&error).contains("0123456789"), "{body}");
        }
    }
}
