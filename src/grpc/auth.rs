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
        policy::{self, Action, Refusal},
        restrictions::{canonical_ip, client_address, limit_key},
        token::{Token, now},
        verify::{Outcome, Usage},
    },
    error::Error,
    store::{Actor, Scope},
};

/// An authenticated caller of the management API.
#[derive(Debug)]
pub struct Caller {
    /// The caller's own token, as the store had it when the call arrived.
    pub token: Arc<Token>,
    /// Where the call came from, when known.
    pub client_ip: Option<IpAddr>,
    /// The use the call makes of the caller's token, spent once the call is allowed.
    usage: Usage<'static>,
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
    /// call spends nothing and changes nothing. For reads; a write decides in its
    /// transaction with [`Caller::allow`].
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

    /// The decision of a write, made inside its transaction: the policy, then the caller's
    /// rate limit (taken once per call). Its uses are spent by the store, in the same
    /// transaction as the write.
    pub fn allow(&self, state: &AppState, request: &policy::Request<'_>) -> Result<(), Refusal> {
        policy::decide(&self.token, request)?;
        if !self.spent.swap(true, Ordering::AcqRel) {
            state
                .verifier
                .take_rate(self.token.as_ref())
                .map_err(|reason| Refusal::RateLimited(format!("bearer token: {reason}")))?;
        }
        Ok(())
    }

    /// The caller as a write's transaction checks it again.
    pub fn actor(&self) -> Actor {
        Actor {
            id: self.token.id,
            revision: self.token.revision,
        }
    }

    /// Records the caller's use for the last-used bookkeeping, once a write is done.
    pub fn used(&self, state: &AppState) {
        state.verifier.record(self.token.id, now(), &self.usage);
    }
}

/// Put by the HTTP port's JSON API into the in-process call it makes, once it has counted
/// the request against its address's limit with [`admit`] (or the leak reports' limit),
/// before reading the body: so that the call is not counted twice. Only code in this
/// process can put an extension on a request; no client can.
#[derive(Clone, Copy, Debug)]
pub struct Admitted;

/// Counts a management request against its address's `--management-rate-limit`.
pub fn admit(state: &AppState, limit_key: Option<std::net::IpAddr>) -> Result<(), Error> {
    if state.management_rate.allow(limit_key) {
        Ok(())
    } else {
        Err(Error::ResourceExhausted(
            "too many management requests from this address; retry in a minute".into(),
        ))
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
    let Origin { client, limit_key } = origin(state, request);
    let client_ip = client;
    if request.extensions().get::<Admitted>().is_none() {
        admit(state, limit_key)?;
    }
    let presented = match bearer(request) {
        Ok(presented) => presented,
        Err(error) => {
            state
                .audit_failed_authentication(client_ip, limit_key, None, &error.to_string())
                .await;
            return Err(error);
        }
    };
    let usage = Usage {
        required: action.permission().into_iter().collect(),
        client_ip,
        host: request
            .extensions()
            .get::<Authority>()
            .map(|a| a.0.clone().into()),
        bindings: Default::default(),
        unsatisfiable: None,
        bound_key_required: false,
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
                .audit_failed_authentication(
                    client_ip,
                    limit_key,
                    verdict.token.as_deref(),
                    &verdict.reason,
                )
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

/// Where a call came from.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    /// The client: the peer, or, when the peer is a trusted proxy (a load balancer in
    /// front of the service), the client it names in `x-forwarded-for`; `None` when that
    /// cannot be read (tokens limited to networks then fail closed).
    pub client: Option<IpAddr>,
    /// What the per-address limits count: the client, or the peer when the client is
    /// unknown, IPv6 addresses by their /64 (one host's usual share), so that neither an
    /// unreadable header nor a walk through a /64 escapes them.
    pub limit_key: Option<IpAddr>,
}

/// Works out where a call came from: its peer, or the client a trusted proxy names.
pub fn origin<T>(state: &AppState, request: &Request<T>) -> Origin {
    let Some(peer) = request.remote_addr().map(|addr| canonical_ip(addr.ip())) else {
        return Origin {
            client: None,
            limit_key: None,
        };
    };
    let values = request.metadata().get_all("x-forwarded-for");
    origin_of(
        peer,
        values.iter().map(|v| v.to_str().ok()),
        &state.trusted_proxies,
    )
}

/// Where a call from `peer` came from, given the values of its `x-forwarded-for` headers
/// (`None` for one that is not visible ASCII) and the proxies whose header is believed:
/// the one rule of the gRPC port and the HTTP port's API routes.
pub fn origin_of<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = Option<&'a str>>,
    trusted: &[ipnet::IpNet],
) -> Origin {
    let peer = canonical_ip(peer);
    // A value that is not visible ASCII makes the whole chain unreadable, rather than
    // dropping out of it: else "<junk>, <client>" would read as no chain at all, and the
    // trusted proxy itself would pass for the client.
    let chain: Option<Vec<&str>> = forwarded_for.collect();
    let client = match chain {
        Some(chain) if chain.is_empty() => Some(peer),
        Some(chain) => client_address(peer, Some(&chain.join(",")), trusted),
        None if trusted.iter().any(|net| net.contains(&peer)) => None,
        None => Some(peer),
    };
    Origin {
        client,
        limit_key: Some(limit_key(client.unwrap_or(peer))),
    }
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

/// The answer to a write whose transaction found its caller disabled, deleted or changed
/// since the call authenticated.
pub fn caller_changed() -> Error {
    Error::Aborted("the calling token changed while the call ran; retry".into())
}

/// The answer to a usage-limited caller with no use left for its write.
pub fn out_of_uses() -> Error {
    Error::Unauthenticated("invalid bearer token: token has no uses left".into())
}
