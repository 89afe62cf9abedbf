//! No privilege escalation: a token never gets more power than the token that creates or
//! updates it. Tokens inherit the limits of whoever made them.

use super::{permission::allows, token::Token};

/// One kind of power a token has, checked separately so that an update is judged only on
/// what it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// Its permissions.
    Permissions,
    /// Whether it can satisfy non-read actions.
    ReadOnly,
    /// How long it lives.
    Expiry,
    /// Where it may be used from.
    Cidrs,
    /// Where it may be used at.
    Hosts,
    /// Which resources it may touch.
    Bindings,
}

impl Power {
    /// Every kind of power.
    pub const ALL: [Power; 6] = [
        Power::Permissions,
        Power::ReadOnly,
        Power::Expiry,
        Power::Cidrs,
        Power::Hosts,
        Power::Bindings,
    ];
}

/// Fills in the caller's limits where a new token leaves them unset, so that omitting a
/// field cannot lift a limit: no expiry, no network, host or binding restriction.
pub fn inherit_limits(caller: &Token, token: &mut Token) {
    if token.expire_time.is_none() {
        token.expire_time = caller.expire_time;
    }
    if token.allowed_cidrs.is_empty() {
        token.allowed_cidrs.clone_from(&caller.allowed_cidrs);
    }
    if token.allowed_hosts.is_empty() {
        token.allowed_hosts.clone_from(&caller.allowed_hosts);
    }
    for (key, value) in &caller.bindings {
        token
            .bindings
            .entry(key.clone())
            .or_insert_with(|| value.clone());
    }
}

/// Returns why `token` would hold more of the given powers than `caller`, if it would.
pub fn check(caller: &Token, token: &Token, powers: &[Power]) -> Result<(), String> {
    for power in powers {
        match power {
            Power::Permissions => {
                if let Some(p) = token
                    .permissions
                    .iter()
                    .find(|p| !allows(&caller.permissions, p) || (caller.read_only && !p.is_read()))
                {
                    return Err(format!(
                        "permissions: cannot grant {p}, which the caller does not hold"
                    ));
                }
            }
            Power::ReadOnly => {
                if caller.read_only && !token.read_only {
                    return Err("read_only: a read-only caller cannot make a writable token".into());
                }
            }
            Power::Expiry => {
                if let Some(limit) = caller.expire_time
                    && token.expire_time.is_none_or(|at| at > limit)
                {
                    return Err(format!(
                        "expire_time: cannot outlive the caller, which expires at {}",
                        limit.to_rfc3339()
                    ));
                }
            }
            Power::Cidrs => {
                if !caller.allowed_cidrs.is_empty()
                    && (token.allowed_cidrs.is_empty()
                        || !token
                            .allowed_cidrs
                            .iter()
                            .all(|c| caller.allowed_cidrs.iter().any(|mine| mine.contains_net(c))))
                {
                    return Err(
                        "allowed_cidrs: must lie within the caller's allowed networks".into(),
                    );
                }
            }
            Power::Hosts => {
                if !caller.allowed_hosts.is_empty()
                    && (token.allowed_hosts.is_empty()
                        || !token
                            .allowed_hosts
                            .iter()
                            .all(|h| caller.allowed_hosts.iter().any(|mine| h.within(mine))))
                {
                    return Err("allowed_hosts: must lie within the caller's allowed hosts".into());
                }
            }
            Power::Bindings => {
                if let Some((key, _)) = caller
                    .bindings
                    .iter()
                    .find(|(key, value)| token.bindings.get(*key) != Some(value))
                {
                    return Err(format!("bindings: must keep the caller's binding on {key}"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::*;
    use crate::domain::{
        permission::Permission,
        restrictions::{Cidr, HostPattern},
        verify::tests::token,
    };

    fn all(caller: &Token, t: &Token) -> Result<(), String> {
        check(caller, t, &Power::ALL)
    }

    #[test]
    fn permissions_must_be_held_by_the_caller() {
        let caller = token(&["domains:*", "tokens:create"]);
        assert!(all(&caller, &token(&["domains:read", "domains:*"])).is_ok());
        let err = all(&caller, &token(&["backends:read"])).unwrap_err();
        assert!(err.contains("backends:read"), "{err}");
        assert!(all(&caller, &token(&["*:*"])).is_err());
        assert!(all(&token(&["*:*"]), &token(&["*:*"])).is_ok());
    }

    #[test]
    fn a_read_only_caller_grants_only_reads_and_read_only_tokens() {
        let mut caller = token(&["*:*"]);
        caller.read_only = true;
        let mut t = token(&["domains:read"]);
        assert!(all(&caller, &t).unwrap_err().contains("read_only"));
        t.read_only = true;
        assert!(all(&caller, &t).is_ok());
        t.permissions
            .push(Permission::parse("domains:write").unwrap());
        assert!(all(&caller, &t).is_err());
    }

    #[test]
    fn a_token_cannot_outlive_its_caller() {
        let mut caller = token(&["*:*"]);
        caller.expire_time = Some(Utc::now() + Duration::hours(1));
        let mut t = token(&[]);
        assert!(
            all(&caller, &t).unwrap_err().contains("expire_time"),
            "no expiry outlives"
        );
        t.expire_time = Some(Utc::now() + Duration::hours(2));
        assert!(all(&caller, &t).is_err());
        t.expire_time = Some(Utc::now() + Duration::minutes(30));
        assert!(all(&caller, &t).is_ok());
    }

    #[test]
    fn network_and_host_limits_are_kept() {
        let mut caller = token(&["*:*"]);
        caller.allowed_cidrs = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        caller.allowed_hosts = vec![HostPattern::parse("*.example.com").unwrap()];
        let mut t = token(&[]);
        assert!(all(&caller, &t).unwrap_err().contains("allowed_cidrs"));
        t.allowed_cidrs = vec![Cidr::parse("0.0.0.0/0").unwrap()];
        assert!(all(&caller, &t).is_err());
        t.allowed_cidrs = vec![Cidr::parse("10.1.0.0/16").unwrap()];
        assert!(all(&caller, &t).unwrap_err().contains("allowed_hosts"));
        t.allowed_hosts = vec![HostPattern::parse("api.example.com").unwrap()];
        assert!(all(&caller, &t).is_ok());
    }

    #[test]
    fn bindings_are_kept() {
        let mut caller = token(&["*:*"]);
        caller.bindings.insert("reportId".into(), "r-1".into());
        let mut t = token(&[]);
        assert!(all(&caller, &t).unwrap_err().contains("reportId"));
        t.bindings.insert("reportId".into(), "r-2".into());
        assert!(all(&caller, &t).is_err());
        t.bindings.insert("reportId".into(), "r-1".into());
        t.bindings.insert("datasourceId".into(), "d-1".into());
        assert!(all(&caller, &t).is_ok());
    }

    #[test]
    fn inherited_limits_pass_the_check() {
        let mut caller = token(&["*:*"]);
        caller.expire_time = Some(Utc::now() + Duration::hours(1));
        caller.allowed_cidrs = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        caller.allowed_hosts = vec![HostPattern::parse("api.example.com").unwrap()];
        caller.bindings.insert("reportId".into(), "r-1".into());
        let mut t = token(&["domains:read"]);
        inherit_limits(&caller, &mut t);
        assert_eq!(t.expire_time, caller.expire_time);
        assert!(all(&caller, &t).is_ok());
    }

    #[test]
    fn only_the_named_powers_are_checked() {
        let caller = token(&["domains:read"]);
        let t = token(&["*:*"]);
        assert!(check(&caller, &t, &[Power::Hosts, Power::Expiry]).is_ok());
        assert!(check(&caller, &t, &[Power::Permissions]).is_err());
    }
}
