//! Envoy's external authorization service (`envoy.service.auth.v3.Authorization/Check`):
//! service meshes ask it whether an HTTP request may reach its upstream. The answer is
//! always an ordinary CheckResponse, allowed or denied; gRPC errors are kept for requests
//! that are not Check requests at all, routes configured wrongly, and a store that fails.

use std::{collections::HashMap, sync::Arc};

use envoy_types::{
    ext_authz::v3::pb::{
        CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
        HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
    },
    pb::{
        envoy::service::auth::v3::attribute_context::HttpRequest,
        google::{
            protobuf::{ListValue, Struct, Value, value::Kind},
            rpc,
        },
    },
};
use tonic::{Code, Request, Response, Status};

use super::AppState;
use crate::{
    check::{self, CheckSettings, Headers, Requirement},
    domain::verify::{Outcome, Usage},
    encoded::EncodedToken,
    error::Error,
};

pub use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer};

/// The ext_authz Check implementation.
pub struct ExtAuthzApi {
    state: Arc<AppState>,
    settings: Arc<CheckSettings>,
}

impl ExtAuthzApi {
    /// Builds the service over shared state and its own settings.
    pub fn new(state: Arc<AppState>, settings: Arc<CheckSettings>) -> Self {
        Self { state, settings }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let attributes = request
            .attributes
            .as_ref()
            .ok_or_else(|| Error::invalid("attributes", "is required"))?;
        let http = attributes
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .ok_or_else(|| Error::invalid("attributes.request.http", "is required"))?;
        let settings = self.settings.as_ref();

        let raw_headers = raw_headers(http);
        let headers = Headers::new(&http.headers, &raw_headers);
        let Some(credential) = check::credential(&headers, settings) else {
            return Ok(Response::new(deny(
                settings,
                Denial::unauthenticated("no bearer token was presented"),
            )));
        };
        let requirement = check::requirement(
            settings,
            &http.method,
            &http.path,
            &attributes.context_extensions,
        )
        .map_err(|bad| Error::invalid(bad.field, bad.message))?;
        let (unmapped, requirement) = match requirement {
            Ok(requirement) => (None, requirement),
            // The token is still judged, so that a bad one is told it is bad (401).
            Err(unmapped) => (Some(unmapped), Requirement::default()),
        };
        let source = attributes
            .source
            .as_ref()
            .and_then(|peer| peer.address.as_ref())
            .and_then(|address| match address.address.as_ref()? {
                envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                    socket,
                ) => Some(socket.address.as_str()),
                _ => None,
            });
        let usage = Usage {
            required: requirement.permissions,
            client_ip: check::client_ip(
                source,
                headers.get("x-forwarded-for"),
                &settings.trusted_proxies,
            ),
            host: Some(http.host.as_str())
                .filter(|h| !h.is_empty())
                .or_else(|| headers.get(":authority"))
                .or_else(|| headers.get("host"))
                .map(str::to_owned),
            bindings: requirement.bindings,
        };
        let verdict = self
            .state
            .verifier
            .verify(credential.presented, &usage)
            .await
            .map_err(Error::from)?;
        tracing::debug!(
            result = verdict.outcome.as_str(),
            token_id = ?verdict.token.as_ref().map(|t| t.id),
            "checked"
        );
        let response = match (verdict.outcome, verdict.token, unmapped) {
            (Outcome::Ok, Some(_), Some(unmapped)) => deny(
                settings,
                Denial::forbidden(Outcome::PermissionDenied, unmapped.0, &[]),
            ),
            (Outcome::Ok, Some(token), None) => allow(settings, &token, credential.header),
            (outcome, _, _) => deny(
                settings,
                match outcome {
                    Outcome::Malformed
                    | Outcome::NotFound
                    | Outcome::Disabled
                    | Outcome::Expired => Denial::invalid(outcome, verdict.reason),
                    _ => Denial::forbidden(outcome, verdict.reason, &usage.required),
                },
            ),
        };
        Ok(Response::new(response))
    }
}

/// `header_map`'s entries, for an Envoy configured to send raw headers.
fn raw_headers(http: &HttpRequest) -> Vec<(String, String)> {
    let Some(map) = &http.header_map else {
        return Vec::new();
    };
    map.headers
        .iter()
        .map(|h| {
            let value = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            (h.key.clone(), value)
        })
        .collect()
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    }
}

fn string(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

/// Lets the request through with the token's identity for the upstream, which overwrites
/// any header of those names the client sent, and without the credential.
fn allow(settings: &CheckSettings, token: &EncodedToken, credential_header: &str) -> CheckResponse {
    let names = &settings.identity_headers;
    let id = token.id.to_string();
    let identity = [
        (names.id.as_str(), id.as_str()),
        (names.owner.as_str(), token.owner()),
        (names.name.as_str(), token.name()),
        (names.kind.as_str(), token.token_type()),
    ];
    let mut headers = Vec::with_capacity(identity.len());
    let mut headers_to_remove = Vec::with_capacity(2);
    for (name, value) in identity {
        if value.is_empty() {
            // Nothing to say, and nothing the client said may stand in for it.
            headers_to_remove.push(name.to_owned());
        } else {
            headers.push(header(name, value));
        }
    }
    if !settings.forward_credential {
        headers_to_remove.push(credential_header.to_owned());
    }
    let permissions = token.permissions().map(string).collect();
    let metadata = Struct {
        fields: HashMap::from([
            ("token_id".to_owned(), string(&id)),
            ("owner".to_owned(), string(token.owner())),
            ("name".to_owned(), string(token.name())),
            ("type".to_owned(), string(token.token_type())),
            (
                "permissions".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: permissions,
                    })),
                },
            ),
        ]),
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..Default::default()
        })),
        dynamic_metadata: Some(metadata),
    }
}

/// Why a request is refused, in RFC 6750's terms.
struct Denial {
    status: HttpStatusCode,
    code: Code,
    /// `invalid_token` (401) or `insufficient_scope` (403).
    error: &'static str,
    result: &'static str,
    reason: String,
    /// The permissions the request needed, for a 403's `scope`.
    scope: String,
}

impl Denial {
    fn unauthenticated(reason: &str) -> Self {
        Self::invalid(Outcome::Malformed, reason.to_owned()).with_result("MISSING")
    }

    fn invalid(outcome: Outcome, reason: String) -> Self {
        Self {
            status: HttpStatusCode::Unauthorized,
            code: Code::Unauthenticated,
            error: "invalid_token",
            result: result_name(outcome),
            reason,
            scope: String::new(),
        }
    }

    fn forbidden(
        outcome: Outcome,
        reason: String,
        required: &[crate::domain::permission::Permission],
    ) -> Self {
        Self {
            status: HttpStatusCode::Forbidden,
            code: Code::PermissionDenied,
            error: "insufficient_scope",
            result: result_name(outcome),
            reason,
            scope: required
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn with_result(mut self, result: &'static str) -> Self {
        self.result = result;
        self
    }
}

/// The names VerifyService uses for the same outcomes.
fn result_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "OK",
        Outcome::Malformed => "MALFORMED",
        Outcome::NotFound => "NOT_FOUND",
        Outcome::Disabled => "DISABLED",
        Outcome::Expired => "EXPIRED",
        Outcome::IpNotAllowed => "IP_NOT_ALLOWED",
        Outcome::HostNotAllowed => "HOST_NOT_ALLOWED",
        Outcome::PermissionDenied => "PERMISSION_DENIED",
        Outcome::ReadOnly => "READ_ONLY",
        Outcome::BindingMismatch => "BINDING_MISMATCH",
    }
}

/// Makes a value safe inside a quoted-string of a challenge (RFC 6750 allows no `"` or `\`).
fn quoted(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii() && !c.is_ascii_control() => c,
            _ => '?',
        })
        .collect()
}

/// Refuses the request: Envoy answers the client with this status, challenge and body.
fn deny(settings: &CheckSettings, denial: Denial) -> CheckResponse {
    let mut challenge = format!(
        "Bearer realm=\"{}\", error=\"{}\", error_description=\"{}\"",
        quoted(&settings.realm),
        denial.error,
        quoted(&denial.reason)
    );
    if !denial.scope.is_empty() {
        challenge.push_str(&format!(", scope=\"{}\"", quoted(&denial.scope)));
    }
    let body = serde_json::json!({
        "error": denial.error,
        "result": denial.result,
        "reason": denial.reason,
    })
    .to_string();
    CheckResponse {
        status: Some(rpc::Status {
            code: denial.code as i32,
            message: denial.reason.clone(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: denial.status.into(),
            }),
            headers: vec![
                header("www-authenticate", &challenge),
                header("content-type", "application/json"),
                header("cache-control", "no-store"),
            ],
            body,
        })),
        dynamic_metadata: None,
    }
}
