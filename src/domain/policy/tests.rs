//! The policy's unit tests: each rule of [`super::decide`] on hand-made tokens.

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
    me.rate_limit =
        Some(crate::domain::token::RateLimit::new(5, std::time::Duration::from_secs(1)).unwrap());
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
fn a_token_whose_current_secret_was_reported_is_enabled_only_after_a_rotation() {
    let admin = owned("a", &["*:*"]);
    let mut reported = owned("a", &["tokens:read"]);
    reported.enabled = false;
    reported.secret_reported_time = Some(Utc::now());
    let enable = |token: &Token| {
        decide(
            &admin,
            &Request::SetEnabled {
                token,
                enabled: true,
            },
        )
    };
    let refused = enable(&reported);
    assert!(
        matches!(&refused, Err(Refusal::FailedPrecondition(m))
            if m.starts_with("enabled: ") && m.contains("reported leaked") && m.contains("rotate")),
        "{refused:?}"
    );
    let disable = Request::SetEnabled {
        token: &reported,
        enabled: false,
    };
    assert_eq!(decide(&admin, &disable), Ok(()), "disabling stays allowed");
    let rotate = Request::Rotate {
        token: &reported,
        grace: false,
    };
    assert_eq!(decide(&admin, &rotate), Ok(()), "the way back");
    let mut rotated = reported.clone();
    rotated.secret_reported_time = None;
    assert_eq!(enable(&rotated), Ok(()));

    let weaker = owned("a", &["tokens:write"]);
    let hidden = owned("b", &["tokens:write"]);
    assert!(
        forbidden(decide(
            &weaker,
            &Request::SetEnabled {
                token: &reported,
                enabled: true
            }
        )),
        "a caller that may not enable it at all learns nothing more"
    );
    assert!(matches!(
        decide(
            &hidden,
            &Request::SetEnabled {
                token: &reported,
                enabled: true
            }
        ),
        Err(Refusal::NotFound(_))
    ));
}

#[test]
fn no_update_enables_a_reported_token() {
    let kind = personal();
    let admin = owned("a", &["*:*"]);
    let mut before = owned("a", &["tokens:read"]);
    before.enabled = false;
    before.secret_reported_time = Some(Utc::now());
    let update = |after: &Token| {
        decide(
            &admin,
            &Request::Update {
                before: &before,
                after,
                before_kind: Some(&kind),
                after_kind: Some(&kind),
            },
        )
    };
    let mut after = before.clone();
    after.description = "changed".into();
    assert_eq!(
        update(&after),
        Ok(()),
        "a disabled reported token may still be changed"
    );
    after.enabled = true;
    assert!(matches!(
        update(&after),
        Err(Refusal::FailedPrecondition(m)) if m.starts_with("enabled: ")
    ));
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
