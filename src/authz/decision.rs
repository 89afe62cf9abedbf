//! The one decision both gateway front ends ask for: may this HTTP request reach its
//! upstream? Envoy's ext_authz `Check` (gRPC) and forward auth (HTTP) describe the request;
//! this judges it, through the same verification path as Verify, and says how to answer in
//! HTTP's terms. No rule is written in a front end.

use std::{net::IpAddr, sync::Arc};

use super::{
    request::{Headers, credential},
    requirement::{Requirement, Route, requirement},
    settings::CheckSettings,
};
use crate::{
    domain::{
        permission::Permission,
        verify::{Outcome, Usage},
    },
    encoded::EncodedToken,
    store::StoreError,
    verifier::{Payer, Verdict, Verifier},
};

/// An HTTP request to authorize, as a gateway describes it.
pub struct HttpRequest<'a> {
    /// The original request's method.
    pub method: &'a str,
    /// The original request's target (path and query).
    pub path: &'a str,
    /// The host it was sent to, when known.
    pub host: Option<&'a str>,
    /// Its headers.
    pub headers: &'a Headers<'a>,
    /// The client's address, as the front end worked it out from what it may believe.
    pub client_ip: Option<IpAddr>,
    /// The gateway's own address (the budget of lookups of unknown secrets counts it
    /// when the client is unknown).
    pub peer: Option<IpAddr>,
    /// What the gateway's configuration says of the route.
    pub route: &'a Route,
}

/// May the request through?
pub enum Decision {
    /// Yes: the token it carried, and which header carried it (to be removed before the
    /// upstream unless the credential is forwarded).
    Allow {
        /// The token.
        token: Arc<EncodedToken>,
        /// Whether it came as `Authorization: Bearer`; otherwise in the API-key header.
        by_bearer: bool,
    },
    /// No, and how to say so.
    Deny(Denial),
}

/// Why a request is refused, in HTTP's and RFC 6750's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// 401, 403 or 429.
    pub status: u16,
    /// `invalid_token` (401), `insufficient_scope` (403) or `rate_limited` (429).
    pub error: &'static str,
    /// The Verify result name, e.g. `PERMISSION_DENIED`.
    pub result: &'static str,
    /// For people; never the secret.
    pub reason: String,
    /// The permissions the request needed, for a 403's `scope`.
    pub scope: String,
}

impl Denial {
    /// No credential at all.
    pub fn missing() -> Self {
        Self {
            result: "MISSING",
            ..Self::invalid(Outcome::Malformed, "no bearer token was presented".into())
        }
    }

    /// A credential that is not a valid token: 401.
    pub fn invalid(outcome: Outcome, reason: String) -> Self {
        Self {
            status: 401,
            error: "invalid_token",
            result: result_name(outcome),
            reason,
            scope: String::new(),
        }
    }

    /// A valid token that may not do this: 403.
    pub fn forbidden(outcome: Outcome, reason: String, required: &[Permission]) -> Self {
        Self {
            status: 403,
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

    /// A valid token over its rate: 429.
    pub fn rate_limited(reason: String) -> Self {
        Self {
            status: 429,
            error: "rate_limited",
            result: result_name(Outcome::RateLimited),
            reason,
            scope: String::new(),
        }
    }

    /// A client over its budget of lookups of unknown secrets: 429, and no verdict on the
    /// token (it may be a real one).
    pub fn over_budget() -> Self {
        Self {
            status: 429,
            error: "rate_limited",
            result: "LOOKUPS_EXHAUSTED",
            reason: StoreError::OverBudget.to_string(),
            scope: String::new(),
        }
    }

    /// Refuses a verdict that is not OK.
    fn of(outcome: Outcome, reason: String, required: &[Permission]) -> Self {
        match outcome {
            Outcome::Malformed
            | Outcome::NotFound
            | Outcome::Disabled
            | Outcome::Expired
            | Outcome::UsageExceeded => Self::invalid(outcome, reason),
            Outcome::RateLimited => Self::rate_limited(reason),
            _ => Self::forbidden(outcome, reason, required),
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 or 403 (RFC 6750); none for a 429, which
    /// only asks to slow down.
    pub fn challenge(&self, realm: &str) -> Option<String> {
        if self.status == 429 {
            return None;
        }
        let mut challenge = format!(
            "Bearer realm=\"{}\", error=\"{}\", error_description=\"{}\"",
            quoted(realm),
            self.error,
            quoted(&self.reason)
        );
        if !self.scope.is_empty() {
            challenge.push_str(&format!(", scope=\"{}\"", quoted(&self.scope)));
        }
        Some(challenge)
    }

    /// The small JSON body of the refusal.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": self.error,
            "result": self.result,
            "reason": self.reason,
        })
        .to_string()
    }
}

/// The names VerifyService uses for the same outcomes.
pub fn result_name(outcome: Outcome) -> &'static str {
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
        Outcome::UsageExceeded => "USAGE_EXCEEDED",
        Outcome::RateLimited => "RATE_LIMITED",
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

/// Decides whether `request` may reach its upstream: the credential it carries, what its
/// route needs (the route's settings, the rules, the default mapping), and the token judged
/// for that use. A request no rule maps is refused after its token is judged (so a bad
/// token is still told it is bad) and spends nothing; so does every other refusal.
pub async fn authorize(
    verifier: &Verifier,
    settings: &CheckSettings,
    request: &HttpRequest<'_>,
) -> Result<(Decision, Option<Verdict<EncodedToken>>), StoreError> {
    let Some(credential) = credential(request.headers, settings) else {
        return Ok((Decision::Deny(Denial::missing()), None));
    };
    let (unsatisfiable, requirement) =
        match requirement(settings, request.method, request.path, request.route) {
            Ok(requirement) => (None, requirement),
            Err(unmapped) => (Some(unmapped.0), Requirement::default()),
        };
    let usage = Usage {
        required: requirement.permissions,
        client_ip: request.client_ip,
        host: request.host.map(std::borrow::Cow::Borrowed),
        bindings: requirement.bindings,
        unsatisfiable,
        bound_key_required: !requirement.ignore_bindings,
    };
    let verdict = match verifier
        .verify(credential.presented, &usage, || Payer {
            client: request.client_ip,
            caller: request.peer,
        })
        .await
    {
        Ok(verdict) => verdict,
        Err(StoreError::OverBudget) => return Ok((Decision::Deny(Denial::over_budget()), None)),
        Err(error) => return Err(error),
    };
    let decision = match (&verdict.outcome, &verdict.token) {
        (Outcome::Ok, Some(token)) => Decision::Allow {
            token: token.clone(),
            by_bearer: credential.header == "authorization",
        },
        (outcome, _) => Decision::Deny(Denial::of(
            *outcome,
            verdict.reason.clone(),
            &usage.required,
        )),
    };
    Ok((decision, Some(verdict)))
}
