//! Who is calling the management API: the bearer token in `authorization`, verified by the
//! same path as Verify, and the `tokens:<action>` permission each call needs.

use std::{net::IpAddr, sync::Arc};

use chrono::{DateTime, Utc};
use tonic::Request;

use super::{AppState, Authority};
use crate::{
    domain::{
        audit::AuditEvent,
        permission::Permission,
        restrictions::canonical_ip,
        token::Token,
        verify::{Outcome, Usage},
    },
    error::Error,
    store::Scope,
};

/// The management action a call needs, as the `tokens:<action>` permission.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// GetToken, ListTokens.
    Read,
    /// CreateToken.
    Create,
    /// UpdateToken, SetTokenEnabled.
    Write,
    /// DeleteToken.
    Delete,
}

impl Action {
    /// The permission the action needs.
    pub fn permission(self) -> Permission {
        let action = match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Write => "write",
            Action::Delete => "delete",
        };
        Permission::new("tokens", action)
    }
}

/// An authenticated caller of the management API.
#[derive(Debug)]
pub struct Caller {
    /// The caller's own token.
    pub token: Arc<Token>,
    /// Where the call came from, when known.
    pub client_ip: Option<IpAddr>,
}

impl Caller {
    /// Returns which tokens the caller may see and manage: all with `*:*`, else its owner's.
    pub fn scope(&self) -> Scope<'_> {
        if self.token.is_admin() {
            Scope::All
        } else {
            Scope::Owner(&self.token.owner)
        }
    }

    /// Starts the audit event of an action by this caller.
    pub fn event(&self, action: &str, target: String, now: DateTime<Utc>) -> AuditEvent {
        let mut event = AuditEvent::new(action, target, Some(&self.token), now);
        event.client_ip = self.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        event
    }
}

/// Authenticates the caller of a management call and checks it holds every `required`
/// permission (none: any valid token will do). Calls past the per-address management rate
/// limit are refused first; failed authentications are audited (rate-limited).
pub async fn authorize<T>(
    state: &AppState,
    request: &Request<T>,
    required: &[Permission],
) -> Result<Caller, Error> {
    let client_ip = request.remote_addr().map(|addr| canonical_ip(addr.ip()));
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
        required: required.to_vec(),
        client_ip,
        host: request.extensions().get::<Authority>().map(|a| a.0.clone()),
        bindings: Default::default(),
    };
    let verdict = state.verifier.authenticate(presented, &usage).await?;
    let needs = || {
        required
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match verdict.outcome {
        Outcome::Ok => Ok(Caller {
            token: verdict.token.expect("a valid verdict carries its token"),
            client_ip,
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
        Outcome::PermissionDenied | Outcome::ReadOnly => Err(Error::PermissionDenied(format!(
            "this call needs {}: {}",
            needs(),
            verdict.reason
        ))),
        Outcome::IpNotAllowed | Outcome::HostNotAllowed | Outcome::BindingMismatch => {
            Err(Error::PermissionDenied(verdict.reason))
        }
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
