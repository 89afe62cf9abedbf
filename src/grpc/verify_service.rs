//! VerifyService: tells other services whether a bearer token is valid for a use.

use std::{net::IpAddr, sync::Arc};

use tonic::{Request, Response, Status};

use super::{
    AppState,
    convert::{parse_bindings, parse_permissions},
};
use crate::{
    domain::{
        restrictions::canonical_ip,
        token::limits,
        verify::{Outcome, Usage},
    },
    error::Error,
    metrics::Endpoint,
    pb::wire::{VerifyRequest, VerifyResponse, VerifyResult, verify_service_server::VerifyService},
    verifier::Payer,
};

/// The VerifyService implementation.
pub struct VerifyApi {
    state: Arc<AppState>,
}

impl VerifyApi {
    /// Builds the service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// Parses everything in a Verify request but the token, which the verifier judges.
fn parse_usage(request: &VerifyRequest) -> Result<Usage<'_>, Error> {
    let client_ip = match request.client_ip.as_str() {
        "" => None,
        ip => Some(canonical_ip(
            ip.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map_err(|_| Error::invalid("client_ip", "must be an IPv4 or IPv6 address"))?,
        )),
    };
    if request.host.len() > limits::PRESENTED_LEN {
        return Err(Error::invalid(
            "host",
            format!("is longer than {} bytes", limits::PRESENTED_LEN),
        ));
    }
    Ok(Usage {
        required: parse_permissions(
            &request.required_permissions,
            "required_permissions",
            limits::REQUIRED_PERMISSIONS,
        )?,
        client_ip,
        host: (!request.host.is_empty()).then(|| request.host.as_str().into()),
        bindings: parse_bindings(&request.bindings, "bindings")?,
        unsatisfiable: None,
        bound_key_required: false,
    })
}

/// Who pays for a Verify's store lookup. Behind a trusted proxy whose `x-forwarded-for`
/// cannot be read, who calls is unknown, and so is whether any `client_ip` it names is
/// real: the proxy's own client bucket pays, whatever the request names. Charging no one
/// would let such a flood past every per-address budget; charging the proxy as a caller
/// would let it drain the caller share the proxy's own Check calls live on.
fn payer(origin: super::auth::Origin, client_ip: Option<IpAddr>) -> Payer {
    match (origin.client, origin.limit_key) {
        (Some(caller), _) => Payer {
            client: client_ip,
            caller: Some(caller),
        },
        (None, Some(proxy)) => Payer {
            client: Some(proxy),
            caller: None,
        },
        (None, None) => Payer {
            client: client_ip,
            caller: None,
        },
    }
}

fn result_of(outcome: Outcome) -> VerifyResult {
    match outcome {
        Outcome::Ok => VerifyResult::Ok,
        Outcome::Malformed => VerifyResult::Malformed,
        Outcome::NotFound => VerifyResult::NotFound,
        Outcome::Disabled => VerifyResult::Disabled,
        Outcome::Expired => VerifyResult::Expired,
        Outcome::IpNotAllowed => VerifyResult::IpNotAllowed,
        Outcome::HostNotAllowed => VerifyResult::HostNotAllowed,
        Outcome::PermissionDenied => VerifyResult::PermissionDenied,
        Outcome::ReadOnly => VerifyResult::ReadOnly,
        Outcome::BindingMismatch => VerifyResult::BindingMismatch,
        Outcome::UsageExceeded => VerifyResult::UsageExceeded,
        Outcome::RateLimited => VerifyResult::RateLimited,
    }
}

#[tonic::async_trait]
impl VerifyService for VerifyApi {
    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let message = request.get_ref();
        if message.token.is_empty() {
            return Err(Error::invalid("token", "is required").into());
        }
        let usage = parse_usage(message)?;
        // Where the call came from matters only to a store lookup's budget: worked out on a
        // cache miss only.
        let payer = || payer(super::auth::origin(&self.state, &request), usage.client_ip);
        let verdict = self
            .state
            .verifier
            .verify(&message.token, &usage, payer)
            .await
            .map_err(Error::from)?;
        self.state
            .metrics
            .record_verdict(Endpoint::Verify, verdict.outcome);
        tracing::debug!(
            result = verdict.outcome.as_str(),
            token_id = ?verdict.token.as_ref().map(|t| t.id),
            "verified"
        );
        let valid = verdict.is_valid();
        Ok(Response::new(VerifyResponse {
            valid,
            result: result_of(verdict.outcome) as i32,
            // The token as encoded when it was cached: a hit encodes nothing again.
            token: match (&verdict.token, valid) {
                (Some(token), true) => token.encoded().clone(),
                _ => Default::default(),
            },
            reason: verdict.reason,
        }))
    }
}
