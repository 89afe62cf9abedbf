//! The whole gRPC API as JSON over HTTP, generated from the `google.api.http` rules in the
//! descriptor set: no code per RPC. A request is matched against the rules (method and
//! path template), its message built from the path, the query and the JSON body by the
//! message's descriptor, and sent through the gRPC port's own stack in process, so that
//! every check, limit, audit record and request id is the gRPC API's own. The answer is
//! protojson (lowerCamelCase, every scalar field present); an error is
//! `{"error": {"code", "status", "message"}}` with the standard gRPC to HTTP mapping.

pub mod call;
pub mod path;
pub mod query;
pub mod request;
pub mod rules;

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use super::{
    HttpState, Peer,
    api::{self, json_response, read_body, status_response},
};
use crate::error::Error;
pub use call::GrpcService;
use rules::Rule;

/// The JSON API: its rules, the in-process gRPC service, and the OpenAPI document.
pub struct Transcoder {
    rules: Vec<Rule>,
    grpc: GrpcService,
    max_body: usize,
    openapi: bytes::Bytes,
}

impl Transcoder {
    /// Reads the rules of every RPC in the service's descriptor set; `grpc` is the gRPC
    /// port's stack, `max_body` its largest request message.
    pub fn new(grpc: GrpcService, max_body: usize) -> Result<Self, String> {
        let pool = pool()?;
        let rules = rules::read(&pool)?;
        let openapi = super::openapi::document(&rules).to_string().into();
        Ok(Self {
            rules,
            grpc,
            max_body: max_body.min(api::MAX_JSON_BODY),
            openapi,
        })
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// The descriptors of our API, with the google.api.http rules in their options.
pub fn pool() -> Result<DescriptorPool, String> {
    DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())
}

/// Answers `GET /v1/openapi.json`.
pub async fn openapi(State(state): State<Arc<HttpState>>) -> Response {
    match &state.api {
        Some(api) => json_response(StatusCode::OK, api.openapi.clone()),
        None => super::not_found_response(),
    }
}

/// Answers a request on the JSON API, or 404 when no rule's path matches it.
pub async fn handle(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let Some(api) = &state.api else {
        return super::not_found_response();
    };
    let path = request.uri().path().to_owned();
    let mut allowed = Vec::new();
    let mut found = None;
    for rule in &api.rules {
        if let Some(bound) = rule.template.matches(&path) {
            if rule.method == request.method() {
                found = Some((rule, bound));
                break;
            }
            allowed.push(rule.method.as_str());
        }
    }
    let Some((rule, bound)) = found else {
        if allowed.is_empty() {
            return super::not_found_response();
        }
        return wrong_method(&allowed);
    };
    let Some(Peer(peer)) = request.extensions().get::<Peer>().copied() else {
        return status_response(&tonic::Status::internal("no peer address"));
    };
    let (parts, body) = request.into_parts();
    // Counted against the address's limit before the body is read or parsed (the call
    // then counts it no more): parsing JSON costs CPU, and it comes before authentication.
    let origin = api::origin(&state, &parts.headers, peer.ip());
    let admission = match rule.access() {
        rules::Access::Open => None,
        rules::Access::LeakReport => {
            Some(crate::leaks::report::admit(&state.app, origin.limit_key))
        }
        rules::Access::Management => Some(crate::grpc::auth::admit(&state.app, origin.limit_key)),
    };
    if let Some(Err(refused)) = admission {
        return status_response(&refused.into());
    }
    let admitted = admission.is_some();
    let body = match rule.body {
        rules::BodyRule::None => {
            let sent = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|l| l.as_bytes() != b"0")
                || parts.headers.contains_key(header::TRANSFER_ENCODING);
            if sent {
                let refused = Error::invalid("body", "this route takes no body");
                return status_response(&refused.into());
            }
            bytes::Bytes::new()
        }
        _ => match read_body(&state.bodies, origin.limit_key, body, api.max_body).await {
            Ok(body) => body,
            Err(response) => return response,
        },
    };
    let message = match request::build(rule, bound, parts.uri.query(), &body) {
        Ok(message) => message,
        Err(error) => return status_response(&error.into()),
    };
    let http_request = http::Request::from_parts(parts, ());
    let authority = crate::grpc::calls::authority_of(&http_request);
    let answer = call::call(
        &api.grpc,
        &rule.grpc_path(),
        message.encode_to_vec(),
        http_request.headers(),
        authority.as_deref(),
        peer,
        admitted,
    )
    .await;
    match answer.and_then(|bytes| encode(rule, bytes)) {
        Ok(json) => json_response(StatusCode::OK, json),
        Err(status) => status_response(&status),
    }
}

/// The answer's message (or its response_body field) as protojson.
fn encode(rule: &Rule, bytes: bytes::Bytes) -> Result<Vec<u8>, tonic::Status> {
    let message = DynamicMessage::decode(rule.rpc.output(), bytes)
        .map_err(|_| tonic::Status::internal("a malformed answer"))?;
    let options = SerializeOptions::new().skip_default_fields(false);
    let mut out = serde_json::Serializer::new(Vec::new());
    let written = match rule.response_body.as_ref().map(|f| message.get_field(f)) {
        // rules::read takes only message fields as a response_body.
        Some(value) => match value.as_ref() {
            prost_reflect::Value::Message(inner) => {
                inner.serialize_with_options(&mut out, &options)
            }
            _ => {
                return Err(tonic::Status::internal(
                    "a response_body that is no message",
                ));
            }
        },
        None => message.serialize_with_options(&mut out, &options),
    };
    written.map_err(|_| tonic::Status::internal("cannot encode the answer"))?;
    Ok(out.into_inner())
}

fn wrong_method(allowed: &[&str]) -> Response {
    let allow = allowed.join(", ");
    let mut response = api::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNIMPLEMENTED",
        &format!("use {allow} on this path"),
    );
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}
