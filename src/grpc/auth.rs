//! Who is calling the management API, and whether it may: the bearer token in
//! `authorization`, verified by the same rules as Verify, then the domain policy
//! (`domain::policy`) for every action. Handlers only gather the policy's inputs.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use chrono::{DateTime, Utc};
use tonic::Request;

use super::{AppState, Authority};
use crate::{
    domain::{
        audit::AuditEvent,
        policy::{self, Action},
        restrictions::client_address,
        token::{Token, now},
        verify::{Outcome, Usage},
    },
    error::Error,
    store::Scope,
};

/// An authenticated caller of the management API.
#[derive(Debug)]
pub struct Caller {
    /// The caller's own token, as the store had it when the call arrived.
    pub token: Arc<Token>,
    /// Where the call came from, when known.
    pub client_ip: Option<IpAddr>,
    /// The use the call makes of the caller's token, spent once the call is allowed.
    usage: Usage,
    spent: AtomicBool,
}

impl Caller {
    /// Returns which tokens the caller may see: all with `*:*`, else its owner's. The
    /// policy decides the rest; this only narrows what the store reads.
    pub fn scope(&self) -> Scope<'_> {
        if self.token.is_admin() {
            Scope::All
        } else {
            Scope::Owner(&self.token.owner)
        }
    }

    /// Starts the audit event of an action by this caller.
    pub fn event(&self, action: Action, target: String, now: DateTime<Utc>) -> AuditEvent {
        let mut event = AuditEvent::new(action.audit_name(), target, Some(&self.token), now);
        event.client_ip = self.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        event
    }

    /// Asks the policy whether the caller may do what `request` asks; if so, spends one
    /// use of the caller's token (once per call, however often the call asks). A refused
    /// call spends nothing and changes nothing.
    pub async fn authorize(
        &self,
        state: &AppState,
        request: &policy::Request<'_>,
    ) -> Result<(), Error> {
        self.decide(request)?;
        if self.spent.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (outcome, reason) = state
            .verifier
            .spend(self.token.as_ref(), &self.usage, now())
            .await?;
        match outcome {
            Outcome::Ok => Ok(()),
            Outcome::RateLimited => {
                Err(Error::ResourceExhausted(format!("bearer token: {reason}")))
            }
            _ => Err(Error::Unauthenticated(format!(
                "invalid bearer token: {reason}"
            ))),
        }
    }

    /// The policy's answer alone, spending nothing: for the tokens of a bulk revocation.
    pub fn decide(&self, request: &policy::Request<'_>) -> Result<(), Error> {
        policy::decide(&self.token, request).map_err(Error::from)
    }
}

/// Authenticates the caller of a management call: a valid, current secret (not one in
/// its rotation grace period) holding the permission `action` needs. Calls past the
/// per-address management rate limit are refused first; failed authentications are
/// audited (rate-limited). Nothing is spent yet: see [`Caller::authorize`].
pub async fn authenticate<T>(
    state: &AppState,
    request: &Request<T>,
    action: Action,
) -> Result<Caller, Error> {
    let client_ip = client_ip(state, request);
    if !state.management_rate.allow(client_ip) {
        return Err(Error::ResourceExhausted(
            "too many management requests from this address; retry in a minute".into(),
        ));
    }
    let presented = match bearer(request) {
        Ok(presented) => presented,
        Err(error) => {
            state
                .audit_failed_authentication(client_ip, None, &error.to_string())
                .await;
            return Err(error);
        }
    };
    let usage = Usage {
        required: action.permission().into_iter().collect(),
        client_ip,
        host: request.extensions().get::<Authority>().map(|a| a.0.clone()),
        bindings: Default::default(),
        unsatisfiable: None,
    };
    let verdict = state.verifier.authenticate(presented, &usage).await?;
    match verdict.outcome {
        Outcome::Ok => Ok(Caller {
            token: verdict.token.expect("a valid verdict carries its token"),
            client_ip,
            usage,
            spent: AtomicBool::new(false),
        }),
        Outcome::RateLimited => Err(Error::ResourceExhausted(format!(
            "bearer token: {}",
            verdict.reason
        ))),
        Outcome::Malformed
        | Outcome::NotFound
        | Outcome::Disabled
        | Outcome::Expired
        | Outcome::UsageExceeded => {
            state
                .audit_failed_authentication(client_ip, verdict.token.as_deref(), &verdict.reason)
                .await;
            Err(Error::Unauthenticated(format!(
                "invalid bearer token: {}",
                verdict.reason
            )))
        }
        Outcome::PermissionDenied | Outcome::ReadOnly => {
            let needs = action
                .permission()
                .map_or_else(String::new, |p| p.to_string());
            Err(Error::PermissionDenied(format!(
                "this call needs {needs}: {}",
                verdict.reason
            )))
        }
        Outcome::IpNotAllowed | Outcome::HostNotAllowed | Outcome::BindingMismatch => {
            Err(Error::PermissionDenied(verdict.reason))
        }
    }
}

/// The caller's address: the peer, or, when the peer is a trusted proxy (a load balancer
/// in front of the service), the client it names in `x-forwarded-for`. A client that is
/// not a trusted proxy cannot choose its address with the header.
fn client_ip<T>(state: &AppState, request: &Request<T>) -> Option<IpAddr> {
    let peer = request.remote_addr()?.ip();
    let chain: Vec<&str> = request
        .metadata()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let chain = (!chain.is_empty()).then(|| chain.join(","));
    client_address(peer, chain.as_deref(), &state.trusted_proxies)
}

fn bearer<T>(request: &Request<T>) -> Result<&str, Error> {
    let missing =
        || Error::Unauthenticated("missing credentials: send authorization: Bearer <token>".into());
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, secret) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    Ok(secret.trim())
}
