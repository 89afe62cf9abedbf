//! Who may do what: one pure decision for every management action, given the caller, the
//! action, and the token (or type) as it is and as it would be. No I/O: the gRPC layer
//! gathers the inputs, asks [`decide`], and carries out only what it allows.
//!
//! The rule, once: a caller acts on a token only if it covers the token as it is and as
//! it would be after the action ([`covers`]), within its own owner unless it holds `*:*`,
//! and only if it holds the action's permission. A token acting on itself is judged like
//! any other caller, so it cannot lift its own limits, and a token with less power cannot
//! rotate, re-enable, disable or delete one with more.

use super::{
    permission::{Permission, allows},
    power::{self, covers},
    token::Token,
    token_type::TokenType,
};

/// A management action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// GetToken, ListTokens.
    ReadTokens,
    /// CreateToken.
    CreateToken,
    /// UpdateToken.
    UpdateToken,
    /// SetTokenEnabled(true).
    EnableToken,
    /// SetTokenEnabled(false).
    DisableToken,
    /// DeleteToken.
    DeleteToken,
    /// RotateToken.
    RotateToken,
    /// RevokeTokens.
    RevokeTokens,
    /// ListTokenTypes, GetTokenType.
    ReadTypes,
    /// CreateTokenType.
    CreateType,
    /// UpdateTokenType.
    UpdateType,
    /// DeleteTokenType.
    DeleteType,
    /// ListAuditEvents.
    ReadAudit,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 13] = [
        Action::ReadTokens,
        Action::CreateToken,
        Action::UpdateToken,
        Action::EnableToken,
        Action::DisableToken,
        Action::DeleteToken,
        Action::RotateToken,
        Action::RevokeTokens,
        Action::ReadTypes,
        Action::CreateType,
        Action::UpdateType,
        Action::DeleteType,
        Action::ReadAudit,
    ];

    /// The permission the action needs; `None`: any valid token may.
    pub fn permission(self) -> Option<Permission> {
        let (resource, action) = match self {
            Action::ReadTokens => ("tokens", "read"),
            Action::CreateToken => ("tokens", "create"),
            Action::UpdateToken
            | Action::EnableToken
            | Action::DisableToken
            | Action::RotateToken
            | Action::RevokeTokens => ("tokens", "write"),
            Action::DeleteToken => ("tokens", "delete"),
            Action::ReadTypes => return None,
            Action::CreateType => ("token-types", "create"),
            Action::UpdateType => ("token-types", "write"),
            Action::DeleteType => ("token-types", "delete"),
            Action::ReadAudit => ("audit", "read"),
        };
        Some(Permission::new(resource, action))
    }

    /// The action's name in the audit trail.
    pub fn audit_name(self) -> &'static str {
        match self {
            Action::ReadTokens => "read",
            Action::CreateToken => "create",
            Action::UpdateToken => "update",
            Action::EnableToken => "enable",
            Action::DisableToken => "disable",
            Action::DeleteToken => "delete",
            Action::RotateToken => "rotate",
            Action::RevokeTokens => "bulk_revoke",
            Action::ReadTypes => "type_read",
            Action::CreateType => "type_create",
            Action::UpdateType => "type_update",
            Action::DeleteType => "type_delete",
            Action::ReadAudit => "audit_read",
        }
    }
}

/// What the caller asks to do, with the token or type as it is and as it would be.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// Read a token.
    GetToken(&'a Token),
    /// Read the token a presented secret belongs to (LookupToken). Refused as if no token
    /// had the secret, naming no id: the caller knows only the secret.
    LookupToken(&'a Token),
    /// List tokens, of `owner` if one is named (the store shows only the caller's owner's
    /// unless it holds `*:*`).
    ListTokens {
        /// The owner named, if any.
        owner: Option<&'a str>,
    },
    /// Create `token`, of the registered type `kind`.
    Create {
        /// The new token, defaults and inherited limits filled in.
        token: &'a Token,
        /// Its type.
        kind: &'a TokenType,
    },
    /// Change `before` into `after`.
    Update {
        /// The token as it is.
        before: &'a Token,
        /// The token as it would be.
        after: &'a Token,
        /// The registered type of `before`, if it still is registered.
        before_kind: Option<&'a TokenType>,
        /// The registered type of `after`, if it is registered.
        after_kind: Option<&'a TokenType>,
    },
    /// Enable or disable a token.
    SetEnabled {
        /// The token as it is.
        token: &'a Token,
        /// What it would be.
        enabled: bool,
    },
    /// Delete a token.
    Delete(&'a Token),
    /// Give a token a new secret, handed to the caller.
    Rotate {
        /// The token as it is.
        token: &'a Token,
        /// Whether the replaced secret is to keep working for a grace period.
        grace: bool,
    },
    /// Start a bulk revocation, of `owner`'s tokens if one is named; each token it
    /// matches is then judged by [`Request::RevokeOne`].
    Revoke {
        /// The owner named, if any.
        owner: Option<&'a str>,
    },
    /// Disable one token matched by a bulk revocation.
    RevokeOne {
        /// The token as it is.
        token: &'a Token,
        /// Whether the caller asked to include its own token.
        include_caller: bool,
    },
    /// Read the registered types.
    ReadTypes,
    /// Register a type.
    CreateType(&'a TokenType),
    /// Change a type.
    UpdateType {
        /// The type as it is.
        before: &'a TokenType,
        /// The type as it would be.
        after: &'a TokenType,
    },
    /// Delete a type.
    DeleteType(&'a TokenType),
    /// Read the audit trail (the store shows only events about the caller's owner's
    /// tokens unless it holds `*:*`).
    ReadAudit,
}

impl Request<'_> {
    /// The action asked for.
    pub fn action(&self) -> Action {
        match self {
            Request::GetToken(_) | Request::LookupToken(_) | Request::ListTokens { .. } => {
                Action::ReadTokens
            }
            Request::Create { .. } => Action::CreateToken,
            Request::Update { .. } => Action::UpdateToken,
            Request::SetEnabled { enabled: true, .. } => Action::EnableToken,
            Request::SetEnabled { enabled: false, .. } => Action::DisableToken,
            Request::Delete(_) => Action::DeleteToken,
            Request::Rotate { .. } => Action::RotateToken,
            Request::Revoke { .. } | Request::RevokeOne { .. } => Action::RevokeTokens,
            Request::ReadTypes => Action::ReadTypes,
            Request::CreateType(_) => Action::CreateType,
            Request::UpdateType { .. } => Action::UpdateType,
            Request::DeleteType(_) => Action::DeleteType,
            Request::ReadAudit => Action::ReadAudit,
        }
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The token is not the caller's to see: answered as if it did not exist.
    NotFound(String),
    /// The caller may not do this.
    Forbidden(String),
    /// The token as it would be breaks its type's template.
    Invalid {
        /// The field at fault, e.g. `token.read_only`.
        field: String,
        /// Why.
        message: String,
    },
    /// The thing is not in a state that allows this (a built-in type's deletion).
    FailedPrecondition(String),
    /// The caller's token is over its rate limit.
    RateLimited(String),
}

/// Decides whether `caller` may do what `request` asks. Pure: the same inputs always get
/// the same answer.
pub fn decide(caller: &Token, request: &Request<'_>) -> Result<(), Refusal> {
    if let Some(needed) = request.action().permission()
        && !holds(caller, &needed)
    {
        return Err(Refusal::Forbidden(format!("this call needs {needed}")));
    }
    match *request {
        Request::GetToken(token) => visible(caller, token),
        Request::LookupToken(token) => visible(caller, token)
            .map_err(|_| Refusal::NotFound(NO_TOKEN_HAS_THE_SECRET.to_owned())),
        Request::ListTokens { owner } => own_owner(caller, owner, "list"),
        Request::Revoke { owner } => own_owner(caller, owner, "revoke"),
        Request::Create { token, kind } => {
            if token.owner != caller.owner && !caller.is_admin() {
                return Err(Refusal::Forbidden(
                    "token.owner: only a caller with *:* may create tokens for another owner"
                        .into(),
                ));
            }
            fits(token, kind)?;
            covered(caller, token, "create")?;
            affordable(caller, None, token)
        }
        Request::Update {
            before,
            after,
            before_kind,
            after_kind,
        } => {
            visible(caller, before)?;
            covered(caller, before, "change")?;
            match after_kind {
                Some(kind) => fits(after, kind)?,
                None if after.token_type != before.token_type => {
                    return Err(Refusal::Invalid {
                        field: "token.type".into(),
                        message: format!("{:?} is not a registered token type", after.token_type),
                    });
                }
                None => {}
            }
            // A type change cannot escape the template the token had.
            if after.token_type != before.token_type
                && let Some(kind) = before_kind
            {
                fits(after, kind)?;
            }
            covered(caller, after, "give a token")?;
            // No update enables a token today (`enabled` is not settable); were one to,
            // the rule below would hold for it too.
            if after.enabled && !before.enabled {
                not_reported(before)?;
            }
            affordable(caller, Some(before), after)
        }
        Request::SetEnabled { token, enabled } => {
            visible(caller, token)?;
            covered(caller, token, if enabled { "enable" } else { "disable" })?;
            if enabled {
                not_reported(token)?;
            }
            Ok(())
        }
        Request::Delete(token) => {
            visible(caller, token)?;
            covered(caller, token, "delete")
        }
        Request::Rotate { token, grace } => {
            visible(caller, token)?;
            covered(caller, token, "rotate")?;
            // A disabled token's secret works nowhere (a reported leak disables the token
            // whose current secret it is). Kept as the previous secret, it would work again
            // the moment the token is enabled.
            if grace && !token.enabled {
                return Err(Refusal::FailedPrecondition(
                    "grace_period: the token is disabled, and a grace would make its current \
                     secret (perhaps reported leaked) work again once it is enabled; rotate \
                     without grace_period"
                        .into(),
                ));
            }
            Ok(())
        }
        Request::ReadTypes | Request::ReadAudit | Request::CreateType(_) => Ok(()),
        Request::RevokeOne {
            token,
            include_caller,
        } => {
            visible(caller, token)?;
            if token.id == caller.id && !include_caller {
                return Err(Refusal::Forbidden(
                    "the caller's own token is kept unless include_caller is set".into(),
                ));
            }
            covered(caller, token, "revoke")
        }
        Request::UpdateType { before, after } => {
            // Every token of a built-in type is held to its template: loosened, it lets
            // them be more; tightened, it freezes them (their every later update must fit
            // it). Either is an administrator's decision.
            if before.builtin && !caller.is_admin() && after.template != before.template {
                let how = after
                    .template
                    .loosens(&before.template)
                    .map_or_else(|| "tightened".to_owned(), |how| format!("loosened: {how}"));
                return Err(Refusal::Forbidden(format!(
                    "token_type.template: only a caller with *:* may change the template of built-in type {} ({how})",
                    before.id
                )));
            }
            Ok(())
        }
        Request::DeleteType(kind) => {
            if kind.builtin {
                Err(Refusal::FailedPrecondition(format!(
                    "token type {} is built in and cannot be deleted",
                    kind.id
                )))
            } else {
                Ok(())
            }
        }
    }
}

/// A token whose current secret was reported leaked is enabled only after a rotation has
/// replaced that secret: enabled as it is, it would accept the leaked secret again.
fn not_reported(token: &Token) -> Result<(), Refusal> {
    match token.secret_reported_time {
        Some(at) => Err(Refusal::FailedPrecondition(format!(
            "enabled: the token's current secret was reported leaked ({}); rotate the token \
             (RotateToken without grace_period) before enabling it",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))),
        None => Ok(()),
    }
}

/// Whether the caller's permissions satisfy `needed`, read-only tokens only reads.
fn holds(caller: &Token, needed: &Permission) -> bool {
    allows(&caller.permissions, needed) && (!caller.read_only || needed.is_read())
}

/// Only a caller with `*:*` may name another owner.
fn own_owner(caller: &Token, owner: Option<&str>, verb: &str) -> Result<(), Refusal> {
    match owner {
        Some(owner) if owner != caller.owner && !caller.is_admin() => Err(Refusal::Forbidden(
            format!("owner: only a caller with *:* may {verb} another owner's tokens"),
        )),
        _ => Ok(()),
    }
}

/// LookupToken's answer for a secret no token has, and for one of another owner's tokens.
pub const NO_TOKEN_HAS_THE_SECRET: &str = "no token has this secret";

/// Tokens of another owner exist, for a caller without `*:*`, no more than unknown ones.
fn visible(caller: &Token, token: &Token) -> Result<(), Refusal> {
    if token.owner == caller.owner || caller.is_admin() {
        Ok(())
    } else {
        Err(Refusal::NotFound(format!("token {} not found", token.id)))
    }
}

fn covered(caller: &Token, token: &Token, verb: &str) -> Result<(), Refusal> {
    covers(caller, token).map_err(|shortfall| {
        Refusal::Forbidden(format!(
            "cannot {verb} a token with more power than the caller's: {shortfall}"
        ))
    })
}

/// A usage-limited caller pays the call's own use and the uses it gives away from what it
/// has left; a call it cannot pay for is refused here, naming why, rather than by the
/// store's payment (which still guards against calls racing each other).
fn affordable(caller: &Token, before: Option<&Token>, after: &Token) -> Result<(), Refusal> {
    let Some(left) = power::remaining_uses(caller) else {
        return Ok(());
    };
    let cost = 1 + power::delegated_uses(caller, before, after);
    if cost > left {
        return Err(Refusal::Forbidden(format!(
            "max_uses: this call costs the caller {cost} uses (its own and the {} it gives \
             away) and the caller has {left} left",
            cost - 1
        )));
    }
    Ok(())
}

fn fits(token: &Token, kind: &TokenType) -> Result<(), Refusal> {
    kind.template
        .check(&kind.id, token)
        .map_err(|violation| Refusal::Invalid {
            field: format!("token.{}", violation.field),
            message: violation.message,
        })
}

#[cfg(test)]
mod tests;
