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
            affordable(caller, Some(before), after)
        }
        Request::SetEnabled { token, enabled } => {
            visible(caller, token)?;
            covered(caller, token, if enabled { "enable" } else { "disable" })
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
mod tests {
    use chrono::{Duration, Utc};

    use super::*;
    use crate::domain::{restrictions::Cidr, token_type::builtin_types, verify::tests::token};

    fn personal() -> TokenType {
        builtin_types(Utc::now()).remove(0)
    }

    fn assistant() -> TokenType {
        builtin_types(Utc::now()).remove(1)
    }

    fn owned(owner: &str, permissions: &[&str]) -> Token {
        Token {
            owner: owner.into(),
            ..token(permissions)
        }
    }

    fn forbidden(result: Result<(), Refusal>) -> bool {
        matches!(result, Err(Refusal::Forbidden(_)))
    }

    #[test]
    fn a_limited_creator_is_told_when_it_cannot_pay_for_a_child() {
        let mut creator = owned("acme", &["tokens:create", "domains:read"]);
        creator.max_uses = Some(3);
        creator.uses = 2;
        let mut child = owned("acme", &["domains:read"]);
        power::inherit_limits(&creator, &mut child);
        let kind = personal();
        let create = |creator: &Token, child: &Token| {
            decide(
                creator,
                &Request::Create {
                    token: child,
                    kind: &kind,
                },
            )
        };
        match create(&creator, &child) {
            Err(Refusal::Forbidden(why)) => assert!(why.starts_with("max_uses:"), "{why}"),
            other => panic!("one use left pays for no child: {other:?}"),
        }
        creator.uses = 1;
        let mut child = owned("acme", &["domains:read"]);
        power::inherit_limits(&creator, &mut child);
        assert_eq!(child.max_uses, Some(1));
        assert_eq!(
            create(&creator, &child),
            Ok(()),
            "two left: the call and one for the child"
        );
    }

    #[test]
    fn every_action_but_reading_types_needs_a_permission() {
        for action in Action::ALL {
            assert_eq!(
                action.permission().is_none(),
                action == Action::ReadTypes,
                "{action:?}"
            );
        }
    }

    #[test]
    fn a_weaker_caller_cannot_rotate_enable_disable_or_delete_a_stronger_token() {
        let writer = owned("admin", &["tokens:read", "tokens:write", "tokens:delete"]);
        let admin = owned("admin", &["*:*"]);
        let root = owned("admin", &["*:*"]);
        for request in [
            Request::Rotate {
                token: &admin,
                grace: false,
            },
            Request::SetEnabled {
                token: &admin,
                enabled: false,
            },
            Request::SetEnabled {
                token: &admin,
                enabled: true,
            },
            Request::Delete(&admin),
            Request::RevokeOne {
                token: &admin,
                include_caller: false,
            },
        ] {
            assert!(forbidden(decide(&writer, &request)), "{request:?}");
            assert_eq!(decide(&root, &request), Ok(()), "{request:?}");
        }
    }

    #[test]
    fn updates_are_judged_on_the_whole_token_before_and_after() {
        let kind = personal();
        let writer = owned("a", &["tokens:write", "domains:*"]);
        let mut before = owned("a", &["domains:*"]);
        before.read_only = true;
        let mut after = before.clone();
        after.read_only = false;
        let update = |before, after| Request::Update {
            before,
            after,
            before_kind: Some(&kind),
            after_kind: Some(&kind),
        };
        assert_eq!(decide(&writer, &update(&before, &after)), Ok(()));
        let mut limited = writer.clone();
        limited.allowed_cidrs = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        assert!(
            forbidden(decide(&limited, &update(&before, &before))),
            "a no-op change is refused on a token the caller does not cover"
        );
        let mut expiring = writer.clone();
        expiring.expire_time = Some(Utc::now() + Duration::hours(1));
        assert!(forbidden(decide(&expiring, &update(&before, &before))));
        let mut reader = writer.clone();
        reader.read_only = true;
        assert!(forbidden(decide(&reader, &update(&before, &before))));
    }

    #[test]
    fn a_token_cannot_lift_its_own_limits() {
        let mut me = owned("a", &["tokens:write"]);
        me.max_uses = Some(3);
        me.rate_limit = Some(
            crate::domain::token::RateLimit::new(5, std::time::Duration::from_secs(1)).unwrap(),
        );
        let mut lifted = me.clone();
        lifted.max_uses = None;
        let kind = personal();
        let request = Request::Update {
            before: &me,
            after: &lifted,
            before_kind: Some(&kind),
            after_kind: Some(&kind),
        };
        assert!(forbidden(decide(&me, &request)));
        lifted.max_uses = me.max_uses;
        lifted.rate_limit = None;
        let request = Request::Update {
            before: &me,
            after: &lifted,
            before_kind: Some(&kind),
            after_kind: Some(&kind),
        };
        assert!(forbidden(decide(&me, &request)));
        assert_eq!(
            decide(
                &me,
                &Request::Rotate {
                    token: &me,
                    grace: true
                }
            ),
            Ok(()),
            "rotating itself is fine"
        );
    }

    #[test]
    fn a_disabled_token_rotates_only_without_grace() {
        let admin = owned("a", &["*:*"]);
        let mut reported = owned("a", &["tokens:read"]);
        reported.enabled = false;
        let refused = decide(
            &admin,
            &Request::Rotate {
                token: &reported,
                grace: true,
            },
        );
        assert!(
            matches!(&refused, Err(Refusal::FailedPrecondition(m)) if m.starts_with("grace_period:")),
            "{refused:?}"
        );
        let without = Request::Rotate {
            token: &reported,
            grace: false,
        };
        assert_eq!(decide(&admin, &without), Ok(()));
        reported.enabled = true;
        let enabled = Request::Rotate {
            token: &reported,
            grace: true,
        };
        assert_eq!(decide(&admin, &enabled), Ok(()));
    }

    #[test]
    fn a_type_change_cannot_escape_the_old_template() {
        let admin = owned("a", &["*:*"]);
        let (personal, assistant) = (personal(), assistant());
        let mut before = owned("a", &["assistants:read"]);
        before.token_type = "assistant".into();
        before.read_only = true;
        before.bindings.insert("assistantId".into(), "x".into());
        before.expire_time = Some(before.create_time + Duration::days(1));
        let mut after = before.clone();
        after.token_type = "personal".into();
        after.read_only = false;
        let request = Request::Update {
            before: &before,
            after: &after,
            before_kind: Some(&assistant),
            after_kind: Some(&personal),
        };
        assert!(matches!(
            decide(&admin, &request),
            Err(Refusal::Invalid { field, .. }) if field == "token.read_only"
        ));
        after.read_only = true;
        let request = Request::Update {
            before: &before,
            after: &after,
            before_kind: Some(&assistant),
            after_kind: Some(&personal),
        };
        assert_eq!(decide(&admin, &request), Ok(()));
    }

    #[test]
    fn other_owners_tokens_are_not_found_without_admin() {
        let reader = owned("a", &["tokens:*"]);
        let theirs = owned("b", &[]);
        assert!(matches!(
            decide(&reader, &Request::GetToken(&theirs)),
            Err(Refusal::NotFound(_))
        ));
        assert!(matches!(
            decide(&reader, &Request::Delete(&theirs)),
            Err(Refusal::NotFound(_))
        ));
        assert_eq!(
            decide(&reader, &Request::LookupToken(&theirs)),
            Err(Refusal::NotFound(NO_TOKEN_HAS_THE_SECRET.into())),
            "a lookup names no id"
        );
        assert!(forbidden(decide(
            &reader,
            &Request::ListTokens { owner: Some("b") }
        )));
        assert!(forbidden(decide(
            &reader,
            &Request::Revoke { owner: Some("b") }
        )));
        assert_eq!(
            decide(&reader, &Request::Revoke { owner: Some("a") }),
            Ok(())
        );
        let kind = personal();
        assert!(forbidden(decide(
            &reader,
            &Request::Create {
                token: &theirs,
                kind: &kind
            }
        )));
    }

    #[test]
    fn a_bulk_revocation_keeps_the_callers_own_token_unless_asked() {
        let me = owned("a", &["tokens:write"]);
        let keep = Request::RevokeOne {
            token: &me,
            include_caller: false,
        };
        assert!(forbidden(decide(&me, &keep)));
        let include = Request::RevokeOne {
            token: &me,
            include_caller: true,
        };
        assert_eq!(decide(&me, &include), Ok(()));
    }

    #[test]
    fn only_admins_change_built_in_templates() {
        let types_admin = owned("a", &["token-types:*"]);
        let admin = owned("a", &["*:*"]);
        let before = assistant();
        let mut after = before.clone();
        after.template.writable = true;
        let request = Request::UpdateType {
            before: &before,
            after: &after,
        };
        assert!(forbidden(decide(&types_admin, &request)));
        assert_eq!(decide(&admin, &request), Ok(()));
        after.template.writable = false;
        after.template.max_lifetime_seconds = Some(3600);
        let tighter = Request::UpdateType {
            before: &before,
            after: &after,
        };
        assert!(
            forbidden(decide(&types_admin, &tighter)),
            "tightening freezes tokens"
        );
        assert_eq!(decide(&admin, &tighter), Ok(()));
        let mut renamed = before.clone();
        renamed.display_name = "Assistants".into();
        let rename = Request::UpdateType {
            before: &before,
            after: &renamed,
        };
        assert_eq!(
            decide(&types_admin, &rename),
            Ok(()),
            "display fields are free"
        );
        assert!(matches!(
            decide(&admin, &Request::DeleteType(&before)),
            Err(Refusal::FailedPrecondition(_))
        ));
    }

    #[test]
    fn read_only_callers_hold_only_read_permissions() {
        let mut reader = owned("a", &["tokens:*"]);
        reader.read_only = true;
        assert_eq!(
            decide(&reader, &Request::ListTokens { owner: None }),
            Ok(())
        );
        assert!(forbidden(decide(&reader, &Request::Revoke { owner: None })));
    }
}
