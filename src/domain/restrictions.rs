//! Where a token may be used: client networks (CIDRs) and hosts.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

const MAX_HOST_LEN: usize = 253;

/// A client network, IPv4 or IPv6. A single address is a network of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address; rejects networks with
    /// host bits set, which are almost always a typo.
    pub fn parse(value: &str) -> Result<Self, String> {
        let net = match IpNet::from_str(value) {
            Ok(net) => net,
            Err(_) => match IpAddr::from_str(value) {
                Ok(addr) => IpNet::from(addr),
                Err(_) => {
                    return Err(format!(
                        "{:?} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32",
                        short(value)
                    ));
                }
            },
        };
        if net.trunc() != net {
            return Err(format!(
                "{value} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        Ok(Self(net))
    }

    /// Returns whether the address is inside this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.1.2.3`, as dual-stack sockets report IPv4 peers) count as IPv4.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&canonical_ip(addr))
    }

    /// Returns whether every address of `other` is inside this network.
    pub fn contains_net(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The key per-address limits count an address under: IPv4 as it is, IPv6 by its /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Maps IPv4-mapped IPv6 addresses to IPv4.
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Works out a client's address from the peer that connected and the `x-forwarded-for`
/// chain it sent: the peer itself, unless it is one of the `trusted` proxies; then the
/// rightmost entry of the chain that is not itself a trusted proxy. `None` when the chain
/// cannot be read (tokens limited to networks then fail closed). A client that is not a
/// trusted proxy cannot choose its address by sending the header.
pub fn client_address(
    peer: IpAddr,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = canonical_ip(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(chain) = forwarded_for else {
        return Some(peer);
    };
    let mut last = peer;
    for hop in chain.rsplit(',') {
        let ip = canonical_ip(parse_ip(hop.trim())?);
        if !is_trusted(&ip) {
            return Some(ip);
        }
        last = ip;
    }
    // Every hop is a trusted proxy: the leftmost is the nearest thing to a client.
    Some(last)
}

/// Parses an address as proxies write it: bare, bracketed IPv6, or with a port.
pub fn parse_ip(value: &str) -> Option<IpAddr> {
    if let Ok(ip) = value.parse() {
        return Some(ip);
    }
    if let Ok(addr) = value.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .and_then(|v| v.parse().ok())
}

/// A host a token may be used at: an exact name (`api.example.com`), any subdomain of a
/// name (`*.example.com`), or an IP address. Stored lowercase.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPattern(String);

impl HostPattern {
    /// Parses a host pattern.
    pub fn parse(value: &str) -> Result<Self, String> {
        let lower = value.to_ascii_lowercase();
        let unbracketed = lower
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(&lower);
        if let Ok(addr) = IpAddr::from_str(unbracketed) {
            return Ok(Self(addr.to_string()));
        }
        if !is_hostname(lower.strip_prefix("*.").unwrap_or(&lower)) {
            return Err(format!(
                "{:?} is not a host such as api.example.com or *.example.com",
                short(value)
            ));
        }
        Ok(Self(lower))
    }

    /// Returns whether a presented host (a port, if any, is ignored) matches.
    pub fn matches(&self, presented: &str) -> bool {
        host_pattern_matches(&self.0, &normalize_host(presented))
    }

    /// Returns whether everything this pattern matches is matched by `other`.
    pub fn within(&self, other: &HostPattern) -> bool {
        match self.0.strip_prefix("*.") {
            Some(parent) => match other.0.strip_prefix("*.") {
                Some(other_parent) => parent == other_parent || other.matches(parent),
                None => false,
            },
            None => other.matches(&self.0),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Returns whether a stored host pattern matches a host already passed through
/// [`normalize_host`].
pub fn host_pattern_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => {
            host.len() > parent.len() + 1
                && host.ends_with(parent)
                && host.as_bytes()[host.len() - parent.len() - 1] == b'.'
        }
        None => host == pattern,
    }
}

/// Lowercases a presented host and strips its port and IPv6 brackets.
pub fn normalize_host(presented: &str) -> String {
    let lower = presented.trim().trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix('[') {
        // [v6]:port or [v6]
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    match lower.rsplit_once(':') {
        // one colon: host:port; more: a bare IPv6 address
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.to_owned()
        }
        _ => lower,
    }
}

fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn short(value: &str) -> String {
    value.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(value: &str) -> IpAddr {
        value.parse().unwrap()
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let v4 = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(v4.contains(ip("10.200.3.4")));
        assert!(!v4.contains(ip("11.0.0.1")));
        assert!(
            v4.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped IPv6 counts as IPv4"
        );
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn a_single_address_is_a_network_of_one() {
        let one = Cidr::parse("192.168.1.7").unwrap();
        assert_eq!(one.to_string(), "192.168.1.7/32");
        assert!(one.contains(ip("192.168.1.7")));
        assert!(!one.contains(ip("192.168.1.8")));
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "example.com",
            "10.1.2.3/8",
            "::1/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            Cidr::parse("10.1.2.3/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
    }

    #[test]
    fn network_containment() {
        let wide = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(wide.contains_net(&Cidr::parse("10.1.0.0/16").unwrap()));
        assert!(wide.contains_net(&wide));
        assert!(!Cidr::parse("10.1.0.0/16").unwrap().contains_net(&wide));
    }

    #[test]
    fn exact_hosts_match_case_insensitively_and_ignore_ports() {
        let host = HostPattern::parse("API.example.com").unwrap();
        assert!(host.matches("api.example.com"));
        assert!(host.matches("Api.Example.COM:8443"));
        assert!(host.matches("api.example.com."));
        assert!(!host.matches("x.api.example.com"));
        assert!(!host.matches("example.com"));
        assert!(!host.matches(""));
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        let host = HostPattern::parse("*.example.com").unwrap();
        assert!(host.matches("api.example.com"));
        assert!(host.matches("a.b.example.com:80"));
        assert!(!host.matches("example.com"));
        assert!(!host.matches("badexample.com"));
    }

    #[test]
    fn ip_hosts_match_with_or_without_brackets() {
        let v6 = HostPattern::parse("[::1]").unwrap();
        assert!(v6.matches("[::1]:50051"));
        assert!(v6.matches("::1"));
        let v4 = HostPattern::parse("127.0.0.1").unwrap();
        assert!(v4.matches("127.0.0.1:80"));
    }

    #[test]
    fn bad_hosts_are_rejected() {
        for bad in [
            "",
            "exa mple.com",
            "-a.com",
            "a..com",
            "*",
            "*.",
            "a.*.com",
            "http://a.com",
            &"a".repeat(64),
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pattern_containment() {
        let any_sub = HostPattern::parse("*.example.com").unwrap();
        let deep = HostPattern::parse("*.eu.example.com").unwrap();
        let exact = HostPattern::parse("api.example.com").unwrap();
        assert!(exact.within(&any_sub));
        assert!(deep.within(&any_sub));
        assert!(any_sub.within(&any_sub));
        assert!(!any_sub.within(&deep));
        assert!(!any_sub.within(&exact));
        assert!(exact.within(&exact));
    }
}
