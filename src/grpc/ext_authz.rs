//! Envoy's external authorization service (`envoy.service.auth.v3.Authorization/Check`):
//! service meshes ask it whether an HTTP request may reach its upstream. The answer is
//! always an ordinary CheckResponse, allowed or denied; gRPC errors are kept for requests
//! that are not Check requests at all, routes configured wrongly, and a store that fails.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use envoy_types::{
    ext_authz::v3::pb::{
        DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption, HttpStatus,
        HttpStatusCode, OkHttpResponse,
    },
    pb::google::{
        protobuf::{ListValue, Struct, Value, value::Kind},
        rpc,
    },
};
use prost::Message;
use tonic::{Code, Request, Response, Status};

use super::AppState;
use crate::{
    authz::{
        self, CheckSettings, Headers, Route,
        decision::{Decision, Denial, HttpRequest as Described},
    },
    encoded::{AllowedCheck, EncodedToken},
    error::Error,
    metrics::Endpoint,
    pb::ext_authz_wire::{CheckRequest, CheckResponse, HttpRequest},
};

pub use crate::pb::ext_authz_wire::authorization_server::{Authorization, AuthorizationServer};

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

/// A request field as text; a field that is not UTF-8 reads as empty.
fn text(bytes: &Bytes) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|addr| crate::domain::restrictions::canonical_ip(addr.ip()));
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
        let headers = headers(http);
        let extensions = attributes
            .context_extensions
            .iter()
            .map(|e| (text(&e.key), text(&e.value)));
        let route =
            Route::from_pairs(extensions).map_err(|bad| Error::invalid(bad.field, bad.message))?;
        let source = attributes
            .source
            .as_ref()
            .and_then(|peer| peer.address.as_ref())
            .and_then(|address| address.socket_address.as_ref())
            .map(|socket| text(&socket.address));
        let described = Described {
            method: text(&http.method),
            path: text(&http.path),
            host: Some(text(&http.host))
                .filter(|h| !h.is_empty())
                .or_else(|| headers.get(":authority"))
                .or_else(|| headers.get("host")),
            headers: &headers,
            client_ip: authz::client_ip(
                source,
                headers.get("x-forwarded-for"),
                &settings.trusted_proxies,
            ),
            peer,
            route: &route,
        };
        let (decision, verdict) = authz::authorize(&self.state.verifier, settings, &described)
            .await
            .map_err(Error::from)?;
        if let Some(verdict) = &verdict {
            tracing::debug!(
                result = verdict.outcome.as_str(),
                token_id = ?verdict.token.as_ref().map(|t| t.id),
                "checked"
            );
            self.state
                .metrics
                .record_verdict(Endpoint::Check, verdict.outcome);
        }
        Ok(Response::new(match decision {
            Decision::Allow { token, by_bearer } => allow(settings, &token, by_bearer),
            Decision::Deny(denial) => deny(settings, &denial),
        }))
    }
}

/// The request's headers: the `headers` map, or `header_map`'s entries when Envoy is
/// configured to send raw headers.
fn headers(http: &HttpRequest) -> Headers<'_> {
    let mut pairs: Vec<(&[u8], &[u8])> = http
        .headers
        .iter()
        .map(|e| (&e.key[..], &e.value[..]))
        .collect();
    if let Some(map) = &http.header_map {
        pairs.extend(map.headers.iter().map(|h| {
            let value = if h.raw_value.is_empty() {
                &h.value
            } else {
                &h.raw_value
            };
            (&h.key[..], &value[..])
        }));
    }
    Headers::from_bytes(pairs)
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

fn encoded(message: &impl Message) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

/// The OK status, encoded: no bytes, since every field of it is at its default
/// (`an_ok_status_encodes_as_no_bytes` checks it), so nothing is encoded per call.
fn ok_status() -> Bytes {
    Bytes::new()
}

/// Lets the request through with the token's identity for the upstream (overwriting any
/// header of those names the client sent) and without the credential. Encoded once per
/// cached token; later Checks of it send the same bytes.
fn allow(settings: &CheckSettings, token: &EncodedToken, by_bearer: bool) -> CheckResponse {
    let answer = token.allowed_check(|token| allowed_check(settings, token));
    CheckResponse {
        status: Some(ok_status()),
        denied_response: None,
        ok_response: Some(if by_bearer {
            answer.by_bearer.clone()
        } else {
            answer.by_api_key.clone()
        }),
        dynamic_metadata: Some(answer.metadata.clone()),
    }
}

/// Encodes what an allowed Check tells Envoy about `token`.
fn allowed_check(settings: &CheckSettings, token: &EncodedToken) -> AllowedCheck {
    let names = &settings.identity_headers;
    let id = token.id.to_string();
    let identity = [
        (names.id.as_str(), id.as_str()),
        (names.owner.as_str(), token.owner()),
        (names.name.as_str(), token.name()),
        (names.kind.as_str(), token.token_type()),
    ];
    let mut headers = Vec::with_capacity(identity.len());
    let mut removed = Vec::new();
    for (name, value) in identity {
        if value.is_empty() {
            // Nothing to say, and nothing the client said may stand in for it.
            removed.push(name.to_owned());
        } else {
            headers.push(header(name, value));
        }
    }
    let removing = |credential: Option<&str>| {
        let mut headers_to_remove = removed.clone();
        if let Some(credential) = credential.filter(|_| !settings.forward_credential) {
            headers_to_remove.push(credential.to_owned());
        }
        encoded(&OkHttpResponse {
            headers: headers.clone(),
            headers_to_remove,
            ..Default::default()
        })
    };
    let metadata = Struct {
        fields: HashMap::from([
            ("token_id".to_owned(), string(&id)),
            ("owner".to_owned(), string(token.owner())),
            (
                "permissions".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: token.permissions().map(string).collect(),
                    })),
                },
            ),
        ]),
    };
    AllowedCheck {
        by_bearer: removing(Some("authorization")),
        by_api_key: removing(settings.api_key_header.as_deref()),
        metadata: encoded(&metadata),
    }
}

/// Refuses the request: Envoy answers the client with this status, challenge and body.
fn deny(settings: &CheckSettings, denial: &Denial) -> CheckResponse {
    let code = match denial.status {
        401 => Code::Unauthenticated,
        429 => Code::ResourceExhausted,
        _ => Code::PermissionDenied,
    };
    let status = match denial.status {
        401 => HttpStatusCode::Unauthorized,
        429 => HttpStatusCode::TooManyRequests,
        _ => HttpStatusCode::Forbidden,
    };
    let mut headers = vec![
        header("content-type", "application/json"),
        header("cache-control", "no-store"),
    ];
    if let Some(challenge) = denial.challenge(&settings.realm) {
        headers.push(header("www-authenticate", &challenge));
    }
    CheckResponse {
        status: Some(encoded(&rpc::Status {
            code: code as i32,
            message: denial.reason.clone(),
            details: Vec::new(),
        })),
        denied_response: Some(encoded(&DeniedHttpResponse {
            status: Some(HttpStatus {
                code: status.into(),
            }),
            headers,
            body: denial.body(),
        })),
        ok_response: None,
        dynamic_metadata: None,
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::{
        config::core::v3::{
            Address, HeaderMap, SocketAddress, address, socket_address::PortSpecifier,
        },
        service::auth::v3 as envoy,
    };

    use super::*;
    use crate::{domain::verify::Outcome, pb::ext_authz_wire};

    #[test]
    fn an_ok_status_encodes_as_no_bytes() {
        let ok = rpc::Status {
            code: Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        };
        assert_eq!(encoded(&ok), ok_status());
        assert_eq!(rpc::Status::decode(ok_status()).unwrap(), ok);
    }

    fn full_request() -> envoy::CheckRequest {
        let peer = |ip: &str| envoy::attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    port_specifier: Some(PortSpecifier::PortValue(443)),
                    resolver_name: "r".into(),
                    ..Default::default()
                })),
            }),
            service: "svc".into(),
            principal: "spiffe://x".into(),
            ..Default::default()
        };
        envoy::CheckRequest {
            attributes: Some(envoy::AttributeContext {
                source: Some(peer("10.1.2.3")),
                destination: Some(peer("10.0.0.7")),
                request: Some(envoy::attribute_context::Request {
                    time: Some(Default::default()),
                    http: Some(envoy::attribute_context::HttpRequest {
                        id: "42".into(),
                        method: "PATCH".into(),
                        headers: HashMap::from([
                            ("authorization".into(), "Bearer ta_x".into()),
                            (":authority".into(), "api.example.com".into()),
                        ]),
                        header_map: Some(HeaderMap {
                            headers: vec![HeaderValue {
                                key: "x-api-key".into(),
                                value: String::new(),
                                raw_value: b"ta_raw".to_vec(),
                            }],
                        }),
                        path: "/reports/1?x=y".into(),
                        host: "api.example.com".into(),
                        scheme: "https".into(),
                        protocol: "HTTP/2".into(),
                        size: 12,
                        body: "{}".into(),
                        ..Default::default()
                    }),
                }),
                context_extensions: HashMap::from([("permission".into(), "a:b".into())]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_wire_view_reads_what_envoy_types_encodes() {
        let bytes = full_request().encode_to_vec();
        let wire = ext_authz_wire::CheckRequest::decode(Bytes::from(bytes)).unwrap();
        let attributes = wire.attributes.unwrap();
        let source = attributes.source.unwrap().address.unwrap();
        assert_eq!(text(&source.socket_address.unwrap().address), "10.1.2.3");
        let http = attributes.request.unwrap().http.unwrap();
        assert_eq!(text(&http.method), "PATCH");
        assert_eq!(text(&http.path), "/reports/1?x=y");
        assert_eq!(text(&http.host), "api.example.com");
        let headers = headers(&http);
        assert_eq!(headers.get("Authorization"), Some("Bearer ta_x"));
        assert_eq!(headers.get(":authority"), Some("api.example.com"));
        assert_eq!(headers.get("x-api-key"), Some("ta_raw"));
        let extensions: Vec<_> = attributes
            .context_extensions
            .iter()
            .map(|e| (text(&e.key), text(&e.value)))
            .collect();
        assert_eq!(extensions, [("permission", "a:b")]);
    }

    #[test]
    fn wire_answers_decode_as_envoy_types_answers() {
        let settings = CheckSettings::default();
        let token = crate::domain::verify::tests::token(&["reports:read"]);
        let cached = EncodedToken::new(&token);

        let allowed = allow(&settings, &cached, true).encode_to_vec();
        let allowed = envoy::CheckResponse::decode(allowed.as_slice()).unwrap();
        assert_eq!(allowed.status.unwrap().code, 0, "an OK status is present");
        let Some(envoy::check_response::HttpResponse::OkResponse(ok)) = allowed.http_response
        else {
            panic!("an ok response");
        };
        assert_eq!(ok.headers_to_remove, ["authorization"]);
        assert_eq!(ok.headers.len(), 4);
        let fields = allowed.dynamic_metadata.unwrap().fields;
        assert_eq!(
            fields["token_id"].kind,
            Some(Kind::StringValue(token.id.to_string()))
        );
        let by_key = allow(&settings, &cached, false).encode_to_vec();
        let by_key = envoy::CheckResponse::decode(by_key.as_slice()).unwrap();
        let Some(envoy::check_response::HttpResponse::OkResponse(ok)) = by_key.http_response else {
            panic!("an ok response");
        };
        assert_eq!(ok.headers_to_remove, ["x-api-key"]);

        let denied = deny(
            &settings,
            &Denial::invalid(Outcome::NotFound, "token not found".into()),
        );
        let denied = envoy::CheckResponse::decode(denied.encode_to_vec().as_slice()).unwrap();
        assert_eq!(denied.status.unwrap().code, Code::Unauthenticated as i32);
        let Some(envoy::check_response::HttpResponse::DeniedResponse(deny)) = denied.http_response
        else {
            panic!("a denied response");
        };
        assert_eq!(
            deny.status.unwrap().code,
            HttpStatusCode::Unauthorized as i32
        );
    }
}
