//! A token's power, defined once: what it may do, for how long, from where, at which hosts,
//! on which resources, how often and how many more times. One relation, [`covers`], says
//! whether one token's power includes another's; the management policy is built on it.

use std::fmt;

use super::{
    permission::allows,
    token::{RateLimit, Token},
};

/// One kind of power a token has. Every kind is compared by [`covers`]; the field table
/// (`fields::FIELDS`) names the kind each token field bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// Its permissions: what it may do.
    Permissions,
    /// Whether it can satisfy actions other than `read`.
    ReadOnly,
    /// How long it lives.
    Expiry,
    /// The client networks it may be used from.
    Networks,
    /// The hosts it may be used at.
    Hosts,
    /// The resources it is tied to.
    Bindings,
    /// How many more times it may be used (`max_uses` less `uses`).
    Uses,
    /// How often it may be used.
    RateLimit,
    /// What its type's template lets it be. Not compared between two tokens: the policy
    /// checks the token as it would be against its type's template instead.
    Template,
}

impl Power {
    /// Every kind of power.
    pub const ALL: [Power; 9] = [
        Power::Permissions,
        Power::ReadOnly,
        Power::Expiry,
        Power::Networks,
        Power::Hosts,
        Power::Bindings,
        Power::Uses,
        Power::RateLimit,
        Power::Template,
    ];
}

/// Why one token does not cover another: the first kind of power it falls short on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// The kind of power.
    pub power: Power,
    /// For people, naming the field.
    pub reason: String,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Returns how many more times a token may be used; `None` is without limit.
pub fn remaining_uses(token: &Token) -> Option<i64> {
    token.max_uses.map(|max| (max - token.uses).max(0))
}

/// Returns whether rate `inner` is no looser than `outer`: no larger a burst, and no more
/// requests per unit of time.
pub fn rate_within(inner: RateLimit, outer: RateLimit) -> bool {
    let per = |limit: RateLimit, other: RateLimit| {
        u128::from(limit.requests) * other.interval.as_millis()
    };
    inner.requests <= outer.requests && per(inner, outer) <= per(outer, inner)
}

/// Returns `Ok` when `holder`'s power includes `token`'s on every kind, else the first
/// kind it falls short on. `*:*` without restrictions covers every token; every token
/// covers itself.
pub fn covers(holder: &Token, token: &Token) -> Result<(), Shortfall> {
    for power in Power::ALL {
        if let Err(reason) = covers_on(holder, token, power) {
            return Err(Shortfall { power, reason });
        }
    }
    Ok(())
}

fn covers_on(holder: &Token, token: &Token, power: Power) -> Result<(), String> {
    match power {
        Power::Permissions => match token
            .permissions
            .iter()
            .find(|p| !allows(&holder.permissions, p) || (holder.read_only && !p.is_read()))
        {
            Some(p) => Err(format!("permissions: {p} is not held")),
            None => Ok(()),
        },
        Power::ReadOnly => {
            if holder.read_only && !token.read_only {
                Err("read_only: a read-only token covers only read-only tokens".into())
            } else {
                Ok(())
            }
        }
        Power::Expiry => match holder.expire_time {
            Some(limit) if token.expire_time.is_none_or(|at| at > limit) => Err(format!(
                "expire_time: must not outlive {}",
                limit.to_rfc3339()
            )),
            _ => Ok(()),
        },
        Power::Networks => {
            let within = !token.allowed_cidrs.is_empty()
                && token
                    .allowed_cidrs
                    .iter()
                    .all(|c| holder.allowed_cidrs.iter().any(|own| own.contains_net(c)));
            if holder.allowed_cidrs.is_empty() || within {
                Ok(())
            } else {
                Err("allowed_cidrs: must lie within the allowed networks".into())
            }
        }
        Power::Hosts => {
            let within = !token.allowed_hosts.is_empty()
                && token
                    .allowed_hosts
                    .iter()
                    .all(|h| holder.allowed_hosts.iter().any(|own| h.within(own)));
            if holder.allowed_hosts.is_empty() || within {
                Ok(())
            } else {
                Err("allowed_hosts: must lie within the allowed hosts".into())
            }
        }
        // A bound token reaches, at a gateway, only requests that name one of its keys, each
        // named key with its value. Adding a key widens that (a request naming only the new
        // key passes), and dropping one widens it too (a request naming the dropped key with
        // another value passes): a bound holder covers only tokens bound exactly as it is.
        Power::Bindings => {
            if holder.bindings.is_empty() || holder.bindings == token.bindings {
                Ok(())
            } else {
                let own: Vec<String> = holder
                    .bindings
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect();
                Err(format!(
                    "bindings: must be exactly {} (no key more or less)",
                    own.join(",")
                ))
            }
        }
        Power::Uses => match (remaining_uses(holder), remaining_uses(token)) {
            (Some(left), None) => Err(format!(
                "max_uses: must be limited to at most {left} more uses"
            )),
            (Some(left), Some(theirs)) if theirs > left => {
                Err(format!("max_uses: {theirs} more uses is more than {left}"))
            }
            _ => Ok(()),
        },
        Power::RateLimit => match (holder.rate_limit, token.rate_limit) {
            (Some(own), None) => Err(format!(
                "rate_limit: must be limited to at most {} requests per {:?}",
                own.requests, own.interval
            )),
            (Some(own), Some(theirs)) if !rate_within(theirs, own) => Err(format!(
                "rate_limit: must be no looser than {} requests per {:?}",
                own.requests, own.interval
            )),
            _ => Ok(()),
        },
        Power::Template => Ok(()),
    }
}

/// Returns the uses a usage-limited `holder` gives away by making `after` out of `before`
/// (`None` for a new token): the remaining uses it adds. The holder pays them from its own
/// budget, so that delegating never multiplies uses: a `max_uses: 3` token can hand out at
/// most 2 (one is the creating call's own), and two limited tokens cannot refill each
/// other.
pub fn delegated_uses(holder: &Token, before: Option<&Token>, after: &Token) -> i64 {
    if holder.max_uses.is_none() {
        return 0;
    }
    let had = before.map_or(Some(0), remaining_uses);
    match (had, remaining_uses(after)) {
        (Some(had), Some(now)) => (now - had).max(0),
        // Unlimited before: nothing is added. Unlimited after: `covers` refuses it.
        _ => 0,
    }
}

/// Fills in the creator's limits where a new token leaves them unset, so that omitting a
/// field cannot lift a limit: its expiry, networks, hosts and bindings, its remaining uses
/// and its rate limit.
pub fn inherit_limits(creator: &Token, token: &mut Token) {
    if token.expire_time.is_none() {
        token.expire_time = creator.expire_time;
    }
    if token.allowed_cidrs.is_empty() {
        token.allowed_cidrs.clone_from(&creator.allowed_cidrs);
    }
    if token.allowed_hosts.is_empty() {
        token.allowed_hosts.clone_from(&creator.allowed_hosts);
    }
    for (key, value) in &creator.bindings {
        token
            .bindings
            .entry(key.clone())
            .or_insert_with(|| value.clone());
    }
    if token.max_uses.is_none() {
        // What the creator has left after the creating call's own use.
        token.max_uses = remaining_uses(creator).map(|left| (left - 1).max(1));
    }
    if token.rate_limit.is_none() {
        token.rate_limit = creator.rate_limit;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use chrono::{Duration, Utc};

    use super::*;
    use crate::domain::{
        permission::Permission,
        restrictions::{Cidr, HostPattern},
        verify::tests::token,
    };

    fn short(holder: &Token, t: &Token) -> Option<Power> {
        covers(holder, t).err().map(|s| s.power)
    }

    fn rate(requests: i64, seconds: u64) -> RateLimit {
        RateLimit::new(requests, StdDuration::from_secs(seconds)).unwrap()
    }

    #[test]
    fn unrestricted_admin_covers_everything_and_every_token_covers_itself() {
        let admin = token(&["*:*"]);
        let mut strong = token(&["*:*", "domains:write"]);
        strong.max_uses = Some(5);
        strong.rate_limit = Some(rate(10, 1));
        strong.allowed_cidrs = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        assert_eq!(short(&admin, &strong), None);
        assert_eq!(short(&strong, &strong), None);
        assert_eq!(short(&strong, &admin), Some(Power::Networks));
    }

    #[test]
    fn permissions_must_be_held() {
        let holder = token(&["domains:*", "tokens:create"]);
        assert_eq!(short(&holder, &token(&["domains:read", "domains:*"])), None);
        let err = covers(&holder, &token(&["backends:read"])).unwrap_err();
        assert_eq!(err.power, Power::Permissions);
        assert!(err.reason.contains("backends:read"), "{err}");
        assert_eq!(short(&holder, &token(&["*:*"])), Some(Power::Permissions));
    }

    #[test]
    fn a_read_only_holder_covers_only_read_only_tokens_of_reads() {
        let mut holder = token(&["*:*"]);
        holder.read_only = true;
        let mut t = token(&["domains:read"]);
        assert_eq!(short(&holder, &t), Some(Power::ReadOnly));
        t.read_only = true;
        assert_eq!(short(&holder, &t), None);
        t.permissions
            .push(Permission::parse("domains:write").unwrap());
        assert_eq!(short(&holder, &t), Some(Power::Permissions));
    }

    #[test]
    fn a_token_cannot_outlive_its_holder() {
        let mut holder = token(&["*:*"]);
        holder.expire_time = Some(Utc::now() + Duration::hours(1));
        let mut t = token(&[]);
        assert_eq!(
            short(&holder, &t),
            Some(Power::Expiry),
            "no expiry outlives"
        );
        t.expire_time = Some(Utc::now() + Duration::hours(2));
        assert_eq!(short(&holder, &t), Some(Power::Expiry));
        t.expire_time = Some(Utc::now() + Duration::minutes(30));
        assert_eq!(short(&holder, &t), None);
    }

    #[test]
    fn networks_and_hosts_must_lie_within() {
        let mut holder = token(&["*:*"]);
        holder.allowed_cidrs = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        holder.allowed_hosts = vec![HostPattern::parse("*.example.com").unwrap()];
        let mut t = token(&[]);
        assert_eq!(short(&holder, &t), Some(Power::Networks));
        t.allowed_cidrs = vec![Cidr::parse("0.0.0.0/0").unwrap()];
        assert_eq!(short(&holder, &t), Some(Power::Networks));
        t.allowed_cidrs = vec![Cidr::parse("10.1.0.0/16").unwrap()];
        assert_eq!(short(&holder, &t), Some(Power::Hosts));
        t.allowed_hosts = vec![HostPattern::parse("api.example.com").unwrap()];
        assert_eq!(short(&holder, &t), None);
    }

    #[test]
    fn a_bound_holder_covers_only_tokens_bound_exactly_as_it_is() {
        let mut holder = token(&["*:*"]);
        holder.bindings.insert("reportId".into(), "r-1".into());
        let mut t = token(&[]);
        assert_eq!(short(&holder, &t), Some(Power::Bindings), "unbound is more");
        t.bindings.insert("reportId".into(), "r-2".into());
        assert_eq!(short(&holder, &t), Some(Power::Bindings), "another value");
        t.bindings.insert("reportId".into(), "r-1".into());
        assert_eq!(short(&holder, &t), None, "the same bindings");
        // At a gateway a request naming only datasourceId=d-1 reaches this token and not
        // the holder: an extra key is more power, not less.
        t.bindings.insert("datasourceId".into(), "d-1".into());
        assert_eq!(short(&holder, &t), Some(Power::Bindings), "an extra key");
        // And the other way: the holder with both keys does not cover one with only one.
        let mut wide = holder.clone();
        wide.bindings.insert("datasourceId".into(), "d-1".into());
        let mut narrow = token(&[]);
        narrow.bindings.insert("reportId".into(), "r-1".into());
        assert_eq!(short(&wide, &narrow), Some(Power::Bindings), "a key fewer");
        assert_eq!(short(&token(&["*:*"]), &t), None, "unbound covers any");
    }

    #[test]
    fn remaining_uses_are_power() {
        let mut holder = token(&["*:*"]);
        holder.max_uses = Some(3);
        holder.uses = 1;
        let mut t = token(&[]);
        assert_eq!(short(&holder, &t), Some(Power::Uses), "unlimited is more");
        t.max_uses = Some(3);
        assert_eq!(
            short(&holder, &t),
            Some(Power::Uses),
            "3 left is more than 2"
        );
        t.uses = 1;
        assert_eq!(short(&holder, &t), None);
        t.max_uses = Some(100);
        t.uses = 99;
        assert_eq!(short(&holder, &t), None, "what counts is what is left");
    }

    #[test]
    fn rate_limits_are_power() {
        let mut holder = token(&["*:*"]);
        holder.rate_limit = Some(rate(10, 1));
        let mut t = token(&[]);
        assert_eq!(short(&holder, &t), Some(Power::RateLimit));
        t.rate_limit = Some(rate(20, 1));
        assert_eq!(short(&holder, &t), Some(Power::RateLimit), "a larger burst");
        t.rate_limit = Some(rate(10, 1));
        assert_eq!(short(&holder, &t), None);
        t.rate_limit = Some(rate(5, 1));
        assert_eq!(short(&holder, &t), None);
        t.rate_limit = Some(rate(10, 2));
        assert_eq!(short(&holder, &t), None, "the same burst, slower");
        holder.rate_limit = Some(rate(10, 60));
        t.rate_limit = Some(rate(5, 1));
        assert_eq!(
            short(&holder, &t),
            Some(Power::RateLimit),
            "a smaller burst, but 300 a minute against 10"
        );
    }

    #[test]
    fn delegated_uses_are_the_remaining_uses_added() {
        let mut holder = token(&["*:*"]);
        holder.max_uses = Some(10);
        let mut child = token(&[]);
        child.max_uses = Some(4);
        assert_eq!(delegated_uses(&holder, None, &child), 4);
        let mut before = child.clone();
        before.uses = 3;
        let mut after = before.clone();
        after.max_uses = Some(6);
        assert_eq!(
            delegated_uses(&holder, Some(&before), &after),
            2,
            "from 1 left to 3"
        );
        assert_eq!(
            delegated_uses(&holder, Some(&after), &before),
            0,
            "lowering costs nothing"
        );
        before.max_uses = None;
        assert_eq!(delegated_uses(&holder, Some(&before), &after), 0);
        holder.max_uses = None;
        assert_eq!(
            delegated_uses(&holder, None, &child),
            0,
            "an unlimited holder pays none"
        );
    }

    #[test]
    fn inherited_limits_are_covered() {
        let mut holder = token(&["*:*"]);
        holder.expire_time = Some(Utc::now() + Duration::hours(1));
        holder.allowed_cidrs = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        holder.allowed_hosts = vec![HostPattern::parse("api.example.com").unwrap()];
        holder.bindings.insert("reportId".into(), "r-1".into());
        holder.max_uses = Some(10);
        holder.uses = 4;
        holder.rate_limit = Some(rate(10, 1));
        let mut t = token(&["domains:read"]);
        inherit_limits(&holder, &mut t);
        assert_eq!(t.expire_time, holder.expire_time);
        assert_eq!(
            t.max_uses,
            Some(5),
            "what the holder has left after this call"
        );
        assert_eq!(t.rate_limit, holder.rate_limit);
        assert_eq!(short(&holder, &t), None);
    }
}
