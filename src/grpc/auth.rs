//! Who is calling the management API: the bearer token in `authorization`, verified by the
//! same path as Verify, and the `tokens:<action>` permission each call needs.

use std::sync::Arc;

use tonic::Request;

use super::{AppState, Authority};
use crate::{
    domain::{
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
    fn permission(self) -> Permission {
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
}

/// Authenticates the caller of a management call and checks it may do `action`.
pub async fn authorize<T>(
    state: &AppState,
    request: &Request<T>,
    action: Action,
) -> Result<Caller, Error> {
    let presented = bearer(request)?;
    let usage = Usage {
        required: vec![action.permission()],
        client_ip: request.remote_addr().map(|addr| canonical_ip(addr.ip())),
        host: request.extensions().get::<Authority>().map(|a| a.0.clone()),
        bindings: Default::default(),
    };
    let verdict = state.verifier.authenticate(presented, &usage).await?;
    match verdict.outcome {
        Outcome::Ok => Ok(Caller {
            token: verdict.token.expect("a valid verdict carries its token"),
        }),
        Outcome::Malformed | Outcome::NotFound | Outcome::Disabled | Outcome::Expired => Err(
            Error::Unauthenticated(format!("invalid bearer token: {}", verdict.reason)),
        ),
        Outcome::PermissionDenied | Outcome::ReadOnly => Err(Error::PermissionDenied(format!(
            "this call needs {}: {}",
            action.permission(),
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
