//! The verification rules: whether a found token is valid for one use. Pure, no I/O.

use std::{borrow::Cow, collections::BTreeMap, net::IpAddr};

use chrono::{DateTime, Utc};

use super::{
    permission::{Permission, allows},
    token::{RateLimit, Token},
};

/// Why a verification succeeded or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Valid for this use.
    Ok,
    /// Not shaped like one of our tokens, or a bad checksum; no lookup was made.
    Malformed,
    /// Unknown: never issued, or deleted.
    NotFound,
    /// Disabled.
    Disabled,
    /// Past its expire time.
    Expired,
    /// The client address is missing or not allowed.
    IpNotAllowed,
    /// The host is missing or not allowed.
    HostNotAllowed,
    /// A required permission is missing.
    PermissionDenied,
    /// Read-only, and a required permission is not a read.
    ReadOnly,
    /// A requested binding differs from the token's.
    BindingMismatch,
    /// The token's `max_uses` are used up.
    UsageExceeded,
    /// The token's rate limit is exceeded on this replica.
    RateLimited,
}

impl Outcome {
    /// Every outcome, in declaration order (so `ALL[o as usize] == o`).
    pub const ALL: [Outcome; 12] = [
        Outcome::Ok,
        Outcome::Malformed,
        Outcome::NotFound,
        Outcome::Disabled,
        Outcome::Expired,
        Outcome::IpNotAllowed,
        Outcome::HostNotAllowed,
        Outcome::PermissionDenied,
        Outcome::ReadOnly,
        Outcome::BindingMismatch,
        Outcome::UsageExceeded,
        Outcome::RateLimited,
    ];

    /// Returns a stable lowercase name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Malformed => "malformed",
            Outcome::NotFound => "not_found",
            Outcome::Disabled => "disabled",
            Outcome::Expired => "expired",
            Outcome::IpNotAllowed => "ip_not_allowed",
            Outcome::HostNotAllowed => "host_not_allowed",
            Outcome::PermissionDenied => "permission_denied",
            Outcome::ReadOnly => "read_only",
            Outcome::BindingMismatch => "binding_mismatch",
            Outcome::UsageExceeded => "usage_exceeded",
            Outcome::RateLimited => "rate_limited",
        }
    }
}

/// What a token is being used for.
#[derive(Clone, Debug, Default)]
pub struct Usage<'a> {
    /// Permissions the use needs; all must be satisfied.
    pub required: Vec<Permission>,
    /// The client's address, when known.
    pub client_ip: Option<IpAddr>,
    /// The host the token was presented at, when known; borrowed from the request where
    /// it can be.
    pub host: Option<Cow<'a, str>>,
    /// Resources the use touches.
    pub bindings: BTreeMap<String, String>,
    /// Why no token is valid for this use (e.g. no rule maps the request), if so. Judged
    /// after the token's own state, so that a bad token is still told it is bad, and such
    /// a use never spends a token's uses or rate.
    pub unsatisfiable: Option<String>,
    /// Whether a bound token must have at least one of its bound keys named by the use
    /// (gateways: a request that names none of them is refused, rather than let through
    /// unrestricted).
    pub bound_key_required: bool,
}

/// What the rules need to know of a token. Implemented by the stored [`Token`] and by the
/// cache's compact, encoded form, so that both are judged by the same code.
pub trait Subject {
    /// Whether the token is enabled.
    fn enabled(&self) -> bool;
    /// Whether only reads are satisfied.
    fn read_only(&self) -> bool;
    /// When the token expires.
    fn expire_time(&self) -> Option<DateTime<Utc>>;
    /// Whether the token is limited to some networks.
    fn restricts_networks(&self) -> bool;
    /// Whether a client address is inside the token's networks.
    fn network_allows(&self, ip: IpAddr) -> bool;
    /// Whether the token is limited to some hosts.
    fn restricts_hosts(&self) -> bool;
    /// Whether a presented host matches one of the token's hosts.
    fn host_allows(&self, host: &str) -> bool;
    /// The token's binding on `key`, if it has one.
    fn binding(&self, key: &str) -> Option<&str>;
    /// Whether the token is bound to any resource.
    fn has_bindings(&self) -> bool;
    /// Whether the token's permissions cover `required`.
    fn allows(&self, required: &Permission) -> bool;
    /// The token's id.
    fn id(&self) -> uuid::Uuid;
    /// Whether each successful use is counted against a `max_uses`.
    fn usage_limited(&self) -> bool;
    /// The token's rate limit, if it has one.
    fn rate_limit(&self) -> Option<RateLimit>;
}

impl Subject for Token {
    fn enabled(&self) -> bool {
        self.enabled
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn expire_time(&self) -> Option<DateTime<Utc>> {
        self.expire_time
    }
    fn restricts_networks(&self) -> bool {
        !self.allowed_cidrs.is_empty()
    }
    fn network_allows(&self, ip: IpAddr) -> bool {
        self.allowed_cidrs.iter().any(|c| c.contains(ip))
    }
    fn restricts_hosts(&self) -> bool {
        !self.allowed_hosts.is_empty()
    }
    fn host_allows(&self, host: &str) -> bool {
        self.allowed_hosts.iter().any(|h| h.matches(host))
    }
    fn binding(&self, key: &str) -> Option<&str> {
        self.bindings.get(key).map(String::as_str)
    }
    fn has_bindings(&self) -> bool {
        !self.bindings.is_empty()
    }
    fn allows(&self, required: &Permission) -> bool {
        allows(&self.permissions, required)
    }
    fn id(&self) -> uuid::Uuid {
        self.id
    }
    fn usage_limited(&self) -> bool {
        self.max_uses.is_some()
    }
    fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }
}

/// Decides whether `token` is valid for `usage` at `now`, with a reason for people.
///
/// The checks run from the most to the least fundamental, so a disabled token is reported
/// as disabled even if it also lacks a permission.
pub fn evaluate<S: Subject + ?Sized>(
    token: &S,
    usage: &Usage,
    now: DateTime<Utc>,
) -> (Outcome, String) {
    if !token.enabled() {
        return (Outcome::Disabled, "token is disabled".into());
    }
    if token.expire_time().is_some_and(|at| at <= now) {
        return (Outcome::Expired, "token has expired".into());
    }
    if token.restricts_networks() {
        match usage.client_ip {
            None => {
                return (
                    Outcome::IpNotAllowed,
                    "token is restricted to networks and no client_ip was given".into(),
                );
            }
            Some(ip) if !token.network_allows(ip) => {
                return (
                    Outcome::IpNotAllowed,
                    format!("client {ip} is not in the token's allowed networks"),
                );
            }
            Some(_) => {}
        }
    }
    if token.restricts_hosts() {
        match usage.host.as_deref() {
            None | Some("") => {
                return (
                    Outcome::HostNotAllowed,
                    "token is restricted to hosts and no host was given".into(),
                );
            }
            Some(host) if !token.host_allows(host) => {
                return (
                    Outcome::HostNotAllowed,
                    "host is not among the token's allowed hosts".into(),
                );
            }
            Some(_) => {}
        }
    }
    for (key, value) in &usage.bindings {
        if token.binding(key).is_some_and(|bound| bound != value) {
            return (
                Outcome::BindingMismatch,
                format!("token is bound to a different {key}"),
            );
        }
    }
    if usage.bound_key_required
        && token.has_bindings()
        && !usage
            .bindings
            .keys()
            .any(|key| token.binding(key).is_some())
    {
        return (
            Outcome::BindingMismatch,
            "token is bound to resources and the request names none of them".into(),
        );
    }
    if token.read_only()
        && let Some(write) = usage.required.iter().find(|p| !p.is_read())
    {
        return (
            Outcome::ReadOnly,
            format!("token is read-only and {write} is not a read"),
        );
    }
    if let Some(reason) = &usage.unsatisfiable {
        return (Outcome::PermissionDenied, reason.clone());
    }
    if let Some(missing) = usage.required.iter().find(|p| !token.allows(p)) {
        return (
            Outcome::PermissionDenied,
            format!("token lacks permission {missing}"),
        );
    }
    (Outcome::Ok, String::new())
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::{
        restrictions::{Cidr, HostPattern},
        secret::{TokenPrefix, TokenSecret},
    };

    #[test]
    fn outcomes_are_listed_in_declaration_order() {
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{outcome:?}");
        }
    }

    pub(crate) fn token(permissions: &[&str]) -> Token {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        Token {
            name: "t".into(),
            permissions: permissions
                .iter()
                .map(|p| Permission::parse(p).unwrap())
                .collect(),
            ..Token::new("o".into(), &secret, None, Utc::now())
        }
    }

    fn needs(permissions: &[&str]) -> Usage<'static> {
        Usage {
            required: permissions
                .iter()
                .map(|p| Permission::parse(p).unwrap())
                .collect(),
            ..Usage::default()
        }
    }

    fn outcome(token: &Token, usage: &Usage) -> Outcome {
        evaluate(token, usage, Utc::now()).0
    }

    #[test]
    fn a_plain_token_with_the_permission_is_ok() {
        assert_eq!(
            outcome(&token(&["domains:read"]), &needs(&["domains:read"])),
            Outcome::Ok
        );
        assert_eq!(outcome(&token(&[]), &needs(&[])), Outcome::Ok);
    }

    #[test]
    fn a_missing_permission_is_denied_and_named() {
        let (result, reason) = evaluate(
            &token(&["domains:read"]),
            &needs(&["domains:read", "domains:write"]),
            Utc::now(),
        );
        assert_eq!(result, Outcome::PermissionDenied);
        assert!(reason.contains("domains:write"));
    }

    #[test]
    fn disabled_and_expired_come_first() {
        let mut t = token(&[]);
        t.enabled = false;
        t.expire_time = Some(Utc::now() - Duration::seconds(1));
        assert_eq!(outcome(&t, &needs(&["x:read"])), Outcome::Disabled);
        t.enabled = true;
        assert_eq!(outcome(&t, &needs(&["x:read"])), Outcome::Expired);
        t.expire_time = Some(Utc::now() + Duration::hours(1));
        assert_eq!(outcome(&t, &needs(&[])), Outcome::Ok);
    }

    #[test]
    fn read_only_satisfies_only_reads() {
        let mut t = token(&["*:*"]);
        t.read_only = true;
        assert_eq!(outcome(&t, &needs(&["domains:read"])), Outcome::Ok);
        assert_eq!(outcome(&t, &needs(&["domains:write"])), Outcome::ReadOnly);
        assert_eq!(outcome(&t, &needs(&["domains:*"])), Outcome::ReadOnly);
    }

    #[test]
    fn cidrs_restrict_the_client() {
        let mut t = token(&[]);
        t.allowed_cidrs = vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("2001:db8::/32").unwrap(),
        ];
        let mut usage = needs(&[]);
        assert_eq!(
            outcome(&t, &usage),
            Outcome::IpNotAllowed,
            "no client ip fails closed"
        );
        usage.client_ip = Some("10.1.2.3".parse().unwrap());
        assert_eq!(outcome(&t, &usage), Outcome::Ok);
        usage.client_ip = Some("2001:db8::7".parse().unwrap());
        assert_eq!(outcome(&t, &usage), Outcome::Ok);
        usage.client_ip = Some("192.168.0.1".parse().unwrap());
        assert_eq!(outcome(&t, &usage), Outcome::IpNotAllowed);
    }

    #[test]
    fn hosts_restrict_where_the_token_is_presented() {
        let mut t = token(&[]);
        t.allowed_hosts = vec![HostPattern::parse("*.example.com").unwrap()];
        let mut usage = needs(&[]);
        assert_eq!(outcome(&t, &usage), Outcome::HostNotAllowed);
        usage.host = Some("api.example.com:443".into());
        assert_eq!(outcome(&t, &usage), Outcome::Ok);
        usage.host = Some("evil.com".into());
        assert_eq!(outcome(&t, &usage), Outcome::HostNotAllowed);
    }

    #[test]
    fn an_unsatisfiable_use_is_denied_after_the_tokens_own_state() {
        let mut usage = needs(&[]);
        usage.unsatisfiable = Some("no rule maps this request".into());
        let (result, reason) = evaluate(&token(&["*:*"]), &usage, Utc::now());
        assert_eq!(result, Outcome::PermissionDenied);
        assert_eq!(reason, "no rule maps this request");
        let mut disabled = token(&["*:*"]);
        disabled.enabled = false;
        assert_eq!(outcome(&disabled, &usage), Outcome::Disabled);
    }

    #[test]
    fn at_a_gateway_a_bound_token_needs_a_request_naming_its_keys() {
        let mut t = token(&[]);
        t.bindings.insert("reportId".into(), "r-17".into());
        let mut usage = needs(&[]);
        usage.bound_key_required = true;
        assert_eq!(outcome(&t, &usage), Outcome::BindingMismatch, "names none");
        usage.bindings.insert("tenant".into(), "acme".into());
        assert_eq!(
            outcome(&t, &usage),
            Outcome::BindingMismatch,
            "names others"
        );
        usage.bindings.insert("reportId".into(), "r-17".into());
        assert_eq!(outcome(&t, &usage), Outcome::Ok);
        assert_eq!(
            outcome(&token(&[]), &needs(&[])),
            Outcome::Ok,
            "unbound tokens pass"
        );
    }

    #[test]
    fn bindings_restrict_only_bound_keys() {
        let mut t = token(&[]);
        t.bindings.insert("reportId".into(), "r-17".into());
        let mut usage = needs(&[]);
        assert_eq!(
            outcome(&t, &usage),
            Outcome::Ok,
            "naming no key is not restricted"
        );
        usage.bindings.insert("datasourceId".into(), "d-1".into());
        assert_eq!(
            outcome(&t, &usage),
            Outcome::Ok,
            "unbound keys are not restricted"
        );
        usage.bindings.insert("reportId".into(), "r-17".into());
        assert_eq!(outcome(&t, &usage), Outcome::Ok);
        usage.bindings.insert("reportId".into(), "r-18".into());
        assert_eq!(outcome(&t, &usage), Outcome::BindingMismatch);
    }
}
