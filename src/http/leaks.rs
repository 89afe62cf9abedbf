//! `POST /v1/leaks/github`, GitHub's secret scanning partner endpoint, on the HTTP port.
//! Its format is GitHub's, not ours, so it is written by hand; `POST /v1/leaks`
//! (ReportLeakedTokens as JSON) is served by the generic JSON API (`super::transcode`).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode},
    response::Response,
};

use super::{
    HttpState, Peer,
    api::{self, detached, json_response, method_not_allowed, read_body, status_response},
};
use crate::{
    domain::leak::Report,
    grpc::auth::Origin,
    leaks::{
        github::{self, SignatureError},
        report::{self, Channel},
    },
};

/// The largest body GitHub's secret scanning may send: 1,000 matches of a secret, its
/// type, URL and source fit well within it.
pub const MAX_GITHUB_BODY: usize = 1024 * 1024;

/// What GitHub's route does before reading a report: take only POST, count the request
/// against the per-address limit of leak reports, and only then read the body (bounded).
async fn accept(
    state: &HttpState,
    request: Request,
    wrong_method: &str,
    limit: usize,
) -> Result<(Origin, HeaderMap, bytes::Bytes), Response> {
    let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() else {
        return Err(status_response(&tonic::Status::internal("no peer address")));
    };
    if request.method() != Method::POST {
        return Err(method_not_allowed("POST", wrong_method));
    }
    let origin = api::origin(state, request.headers(), peer.ip());
    report::admit(&state.app, origin.limit_key).map_err(|e| status_response(&e.into()))?;
    let (parts, body) = request.into_parts();
    let body = read_body(&state.bodies, origin.limit_key, body, limit).await?;
    Ok((origin, parts.headers, body))
}

/// Answers `POST /v1/leaks/github`: GitHub's secret scanning partner endpoint. The raw
/// body's signature is checked against GitHub's published key before the body is parsed;
/// a missing or bad one is 400 and revokes nothing (503 when the keys cannot be loaded,
/// so that GitHub retries). A good one is reported as ReportLeakedTokens reports, each
/// match with its URL, and answered with GitHub's feedback: `true_positive` for ours.
pub async fn github(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let wrong_method = "GitHub's secret scanning POSTs its matches here";
    let (origin, headers, body) = match accept(&state, request, wrong_method, MAX_GITHUB_BODY).await
    {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    // Detached from the start: a client hanging up must not cancel a load of GitHub's
    // keys half-way (it would count against the reload limit and load nothing).
    let answered = detached(async move {
        if let Err(error) = state.github_keys.verify_request(&headers, &body).await {
            tracing::warn!(%error, client = ?origin.client, "refused a leak report not signed by GitHub");
            return Ok(match error {
                SignatureError::KeysUnavailable => {
                    api::error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &error.to_string())
                }
                _ => api::error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &error.to_string()),
            });
        }
        let matches = match github::parse_matches(&body) {
            Ok(matches) => matches,
            Err(message) => {
                return Ok(api::error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &message));
            }
        };
        // On an error, those reported so far stay revoked; GitHub retries the whole batch.
        let mut ours = Vec::with_capacity(matches.len());
        for found in &matches {
            let from = Report::github(found.url());
            let outcomes =
                report::report(&state.app, &[found.token()], &from, Channel::Github, origin)
                    .await?;
            ours.push(outcomes.first().is_some_and(|o| o.ours));
        }
        Ok(json_response(
            StatusCode::OK,
            github::feedback(&matches, |i| ours[i]),
        ))
    })
    .await;
    answered.unwrap_or_else(|response| response)
}
