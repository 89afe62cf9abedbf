//! What an Envoy ext_authz `Check` asks for, worked out from the HTTP request it describes:
//! the credential, the permissions the route needs, the bindings it touches, and where the
//! request came from. Pure: the gRPC service in `grpc::ext_authz` feeds it and answers.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use ipnet::IpNet;
use serde::Deserialize;

use crate::domain::{
    permission::Permission,
    restrictions::{client_address, parse_ip},
    token::limits,
};

/// The `context_extensions` key that names the permissions a route needs.
pub const PERMISSION_KEY: &str = "permission";
/// The prefix of `context_extensions` keys that name bindings (`binding.reportId`).
pub const BINDING_PREFIX: &str = "binding.";

/// How Check reads requests and what it tells the upstream.
#[derive(Clone, Debug)]
pub struct CheckSettings {
    /// A header that may carry the secret instead of `Authorization: Bearer` (lowercase).
    pub api_key_header: Option<String>,
    /// A path prefix skipped before the default mapping takes the resource, as segments.
    pub path_prefix: Vec<String>,
    /// Method and path rules, tried in order before the default mapping.
    pub rules: Rules,
    /// Proxies whose `x-forwarded-for` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Names of the headers that tell the upstream whose token it was.
    pub identity_headers: IdentityHeaders,
    /// Whether the credential header goes on to the upstream (by default it is removed).
    pub forward_credential: bool,
    /// The realm in `WWW-Authenticate` challenges.
    pub realm: String,
}

impl Default for CheckSettings {
    fn default() -> Self {
        Self {
            api_key_header: Some("x-api-key".into()),
            path_prefix: Vec::new(),
            rules: Rules::default(),
            trusted_proxies: Vec::new(),
            identity_headers: IdentityHeaders::default(),
            forward_credential: false,
            realm: "token-authority".into(),
        }
    }
}

/// Names of the identity headers set on allowed requests (lowercase).
#[derive(Clone, Debug)]
pub struct IdentityHeaders {
    /// The token's id.
    pub id: String,
    /// The token's owner.
    pub owner: String,
    /// The token's name.
    pub name: String,
    /// The token's type.
    pub kind: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            id: "x-token-id".into(),
            owner: "x-token-owner".into(),
            name: "x-token-name".into(),
            kind: "x-token-type".into(),
        }
    }
}

/// Checks a header name given in configuration and returns it in lowercase.
pub fn header_name(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(format!("{value:?} is not an HTTP header name"))
    }
}

/// Parses a path prefix such as `/api/v1` into its segments.
pub fn path_prefix(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if value.is_empty() || value == "/" {
        return Ok(Vec::new());
    }
    if !value.starts_with('/') || value.contains(['?', '#', '*', '{']) {
        return Err(format!("{value:?} is not a path prefix such as /api/v1"));
    }
    Ok(segments(value)
        .map_err(|e| format!("{value:?}: {e}"))?
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect())
}

/// A request's headers as Envoy sends them (the `headers` map, or `header_map` when Envoy
/// is configured to send raw headers). Names are matched case-insensitively.
pub struct Headers<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Headers<'a> {
    /// Wraps a request's header names and values.
    pub fn new(pairs: Vec<(&'a str, &'a str)>) -> Self {
        Self(pairs)
    }

    /// Returns the value of a header; repeated headers come joined with `,` by Envoy.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| *value)
    }
}

/// A presented credential and the header it came in.
#[derive(Debug, PartialEq, Eq)]
pub struct Credential<'a> {
    /// The header's name, lowercase, so that it can be removed before the upstream.
    pub header: &'a str,
    /// What was presented (not yet known to be a secret of ours).
    pub presented: &'a str,
}

/// Finds the credential: `Authorization: Bearer <secret>` (scheme in any case), else the
/// configured API-key header. Another `Authorization` scheme is left alone for the upstream.
pub fn credential<'a>(
    headers: &Headers<'a>,
    settings: &'a CheckSettings,
) -> Option<Credential<'a>> {
    if let Some(value) = headers.get("authorization") {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(Credential {
                header: "authorization",
                presented: rest.trim(),
            });
        }
    }
    let header = settings.api_key_header.as_deref()?;
    headers.get(header).map(|value| Credential {
        header,
        presented: value.trim(),
    })
}

/// Works out the client's address: the peer Envoy saw, or, when that peer is a trusted
/// proxy, the rightmost `x-forwarded-for` entry that is not itself a trusted proxy.
/// `None` when it cannot be told (tokens limited to networks then fail closed).
pub fn client_ip(
    source: Option<&str>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    client_address(parse_ip(source?)?, forwarded_for, trusted)
}

/// What a request needs of a token.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requirement {
    /// Every one of these permissions.
    pub permissions: Vec<Permission>,
    /// Resources the request touches, from the route or the path.
    pub bindings: BTreeMap<String, String>,
}

/// Why no requirement could be worked out for a request: it is refused (403).
#[derive(Debug, PartialEq, Eq)]
pub struct Unmapped(pub String);

/// Why a route's configuration is unusable: a gRPC error naming the field.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRoute {
    /// The CheckRequest field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// Works out what a request needs: the route's `context_extensions` first, then the
/// configured rules, then the default mapping from method and path.
pub fn requirement(
    settings: &CheckSettings,
    method: &str,
    path: &str,
    extensions: &[(&str, &str)],
) -> Result<Result<Requirement, Unmapped>, BadRoute> {
    let route_bindings = route_bindings(extensions)?;
    let segments = match segments(path) {
        Ok(segments) => segments,
        Err(e) => return Ok(Err(Unmapped(e))),
    };
    let permission = extensions
        .iter()
        .find(|(key, _)| *key == PERMISSION_KEY)
        .map(|(_, value)| *value);
    let mut requirement = if let Some(listed) = permission {
        Requirement {
            permissions: parse_list(listed).map_err(|message| BadRoute {
                field: "attributes.context_extensions.permission",
                message,
            })?,
            bindings: BTreeMap::new(),
        }
    } else if let Some((rule, bindings)) = settings.rules.find(method, &segments) {
        Requirement {
            permissions: rule.permissions.clone(),
            bindings,
        }
    } else {
        match default_permission(&settings.path_prefix, method, &segments) {
            Ok(permission) => Requirement {
                permissions: vec![permission],
                bindings: BTreeMap::new(),
            },
            Err(unmapped) => return Ok(Err(unmapped)),
        }
    };
    // The route's bindings are the operator's word; they win over path captures.
    requirement.bindings.extend(route_bindings);
    Ok(Ok(requirement))
}

/// The default mapping: the resource is the first segment after the prefix, the action
/// follows the method.
fn default_permission(
    prefix: &[String],
    method: &str,
    segments: &[String],
) -> Result<Permission, Unmapped> {
    let action = match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" => "read",
        "POST" => "create",
        "PUT" | "PATCH" => "write",
        "DELETE" => "delete",
        other => {
            return Err(Unmapped(format!(
                "no permission is mapped for method {}; add a rule",
                truncate(other)
            )));
        }
    };
    let rest = match segments.len() >= prefix.len()
        && segments
            .iter()
            .zip(prefix)
            .all(|(s, p)| s.eq_ignore_ascii_case(p))
    {
        true => &segments[prefix.len()..],
        false => segments,
    };
    let Some(resource) = rest.first() else {
        return Err(Unmapped("no resource in the path; add a rule".into()));
    };
    Permission::parse(&format!("{}:{action}", resource.to_ascii_lowercase()))
        .map_err(|_| Unmapped("the path does not name a resource; add a rule".into()))
}

fn route_bindings(extensions: &[(&str, &str)]) -> Result<BTreeMap<String, String>, BadRoute> {
    let mut bindings = BTreeMap::new();
    for (key, value) in extensions {
        if let Some(name) = key.strip_prefix(BINDING_PREFIX) {
            crate::domain::token::check_binding(name, value).map_err(|message| BadRoute {
                field: "attributes.context_extensions",
                message,
            })?;
            bindings.insert(name.to_owned(), (*value).to_owned());
        }
    }
    if bindings.len() > limits::BINDINGS {
        return Err(BadRoute {
            field: "attributes.context_extensions",
            message: format!("names more than {} bindings", limits::BINDINGS),
        });
    }
    Ok(bindings)
}

/// Parses a comma-separated permission list; an empty list asks only for a valid token.
fn parse_list(listed: &str) -> Result<Vec<Permission>, String> {
    let permissions = listed
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Permission::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if permissions.len() > limits::REQUIRED_PERMISSIONS {
        return Err(format!(
            "names more than {} permissions",
            limits::REQUIRED_PERMISSIONS
        ));
    }
    Ok(permissions)
}

/// Splits a request target into its path segments: the query and fragment are dropped,
/// empty segments skipped, percent-encoded unreserved characters decoded (so `%65xport`
/// cannot slip past a rule for `export`). Dot segments are refused: Envoy's
/// `normalize_path` resolves them before we see the path.
fn segments(target: &str) -> Result<Vec<String>, String> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path.len() > 4096 {
        return Err("the path is too long".into());
    }
    let mut out = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let segment = decode_unreserved(raw);
        if segment == "." || segment == ".." {
            return Err("the path has dot segments; enable normalize_path in Envoy".into());
        }
        out.push(segment);
    }
    Ok(out)
}

/// Decodes `%XX` escapes of unreserved characters (letters, digits, `-._~`); every other
/// escape stays as it is, since decoding it could change what the path means.
fn decode_unreserved(segment: &str) -> String {
    if !segment.contains('%') {
        return segment.to_owned();
    }
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = segment.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
            && (byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
        {
            out.push(byte as char);
            i += 3;
            continue;
        }
        let ch = segment[i..].chars().next().expect("inside the string");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn truncate(value: &str) -> String {
    value.chars().take(32).collect()
}

/// Method and path rules from the rules file, tried in order; the first match wins.
#[derive(Clone, Debug, Default)]
pub struct Rules(Vec<Rule>);

/// One rule: which requests it matches and what they need.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Upper-case methods; empty matches any.
    methods: Vec<String>,
    pattern: Vec<Piece>,
    permissions: Vec<Permission>,
}

#[derive(Clone, Debug)]
enum Piece {
    /// This segment, compared without regard to ASCII case.
    Literal(String),
    /// Any one segment.
    One,
    /// Any one segment, captured as a binding of this name.
    Capture(String),
    /// Whatever remains, including nothing.
    Rest,
}

/// The rules file, TOML:
///
/// ```toml
/// [[rule]]
/// methods = ["POST"]
/// path = "/reports/{reportId}/export"
/// permissions = ["reports:export"]
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    methods: Vec<String>,
    path: String,
    permissions: Vec<String>,
}

impl Rules {
    /// Reads a rules file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of a rules file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RulesFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        file.rule
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Rule::parse(spec).map_err(|e| format!("rule {}: {e}", i + 1)))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Returns the number of rules.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Finds the first rule matching a request, with the bindings its pattern captured.
    fn find(&self, method: &str, segments: &[String]) -> Option<(&Rule, BTreeMap<String, String>)> {
        self.0.iter().find_map(|rule| {
            let method_ok = rule.methods.is_empty()
                || rule.methods.iter().any(|m| m.eq_ignore_ascii_case(method));
            if !method_ok {
                return None;
            }
            rule.capture(segments).map(|bindings| (rule, bindings))
        })
    }
}

impl Rule {
    fn parse(spec: RuleSpec) -> Result<Self, String> {
        let methods = spec
            .methods
            .iter()
            .map(|m| {
                let valid =
                    !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_alphabetic());
                valid
                    .then(|| m.to_ascii_uppercase())
                    .ok_or_else(|| format!("methods: {m:?} is not an HTTP method"))
            })
            .collect::<Result<_, _>>()?;
        if !spec.path.starts_with('/') || spec.path.contains(['?', '#']) {
            return Err(format!(
                "path: {:?} must be a path starting with /",
                spec.path
            ));
        }
        let raw: Vec<&str> = spec.path.split('/').filter(|s| !s.is_empty()).collect();
        let mut pattern = Vec::with_capacity(raw.len());
        for (i, piece) in raw.iter().enumerate() {
            pattern.push(match *piece {
                "**" if i + 1 == raw.len() => Piece::Rest,
                "**" => return Err("path: ** may only end a pattern".into()),
                "*" => Piece::One,
                "." | ".." => return Err("path: dot segments are not allowed".into()),
                capture if capture.starts_with('{') && capture.ends_with('}') => {
                    let name = &capture[1..capture.len() - 1];
                    crate::domain::token::check_binding(name, "x")
                        .map_err(|e| format!("path: binding {e}"))?;
                    Piece::Capture(name.to_owned())
                }
                literal if literal.contains(['*', '{', '}']) => {
                    return Err(format!("path: {literal:?} mixes a wildcard with text"));
                }
                literal => Piece::Literal(decode_unreserved(literal)),
            });
        }
        let permissions =
            parse_list(&spec.permissions.join(",")).map_err(|e| format!("permissions: {e}"))?;
        Ok(Self {
            methods,
            pattern,
            permissions,
        })
    }

    fn capture(&self, segments: &[String]) -> Option<BTreeMap<String, String>> {
        let mut bindings = BTreeMap::new();
        let mut rest = segments.iter();
        for piece in &self.pattern {
            match piece {
                Piece::Rest => return Some(bindings),
                Piece::One => {
                    rest.next()?;
                }
                Piece::Literal(literal) => {
                    if !rest.next()?.eq_ignore_ascii_case(literal) {
                        return None;
                    }
                }
                Piece::Capture(name) => {
                    let value = rest.next()?;
                    bindings.insert(name.clone(), value.clone());
                }
            }
        }
        rest.next().is_none().then_some(bindings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(list: &[&str]) -> Vec<Permission> {
        list.iter().map(|p| Permission::parse(p).unwrap()).collect()
    }

    fn need(settings: &CheckSettings, method: &str, path: &str) -> Result<Requirement, Unmapped> {
        requirement(settings, method, path, &[]).unwrap()
    }

    #[test]
    fn the_default_mapping_takes_the_first_segment_and_the_method() {
        let settings = CheckSettings::default();
        for (method, action) in [
            ("GET", "read"),
            ("HEAD", "read"),
            ("POST", "create"),
            ("PUT", "write"),
            ("PATCH", "write"),
            ("DELETE", "delete"),
            ("get", "read"),
        ] {
            assert_eq!(
                need(&settings, method, "/domains/17?x=1")
                    .unwrap()
                    .permissions,
                perms(&[&format!("domains:{action}")]),
                "{method}"
            );
        }
        assert_eq!(
            need(&settings, "GET", "/Domains").unwrap().permissions,
            perms(&["domains:read"]),
            "the resource is lowercased"
        );
        assert!(need(&settings, "OPTIONS", "/domains").is_err());
        assert!(need(&settings, "GET", "/").is_err());
        assert!(
            need(&settings, "GET", "/%2Fx").is_err(),
            "not a resource name"
        );
    }

    #[test]
    fn a_configured_prefix_is_skipped() {
        let settings = CheckSettings {
            path_prefix: path_prefix("/api/v1").unwrap(),
            ..CheckSettings::default()
        };
        assert_eq!(
            need(&settings, "DELETE", "/api/v1/reports/9")
                .unwrap()
                .permissions,
            perms(&["reports:delete"])
        );
        assert_eq!(
            need(&settings, "GET", "/healthz").unwrap().permissions,
            perms(&["healthz:read"]),
            "a path outside the prefix maps from its own first segment"
        );
        assert!(need(&settings, "GET", "/api/v1").is_err());
        assert!(path_prefix("api").is_err());
        assert_eq!(path_prefix("/").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn context_extensions_name_the_permissions_and_bindings() {
        let settings = CheckSettings::default();
        let extensions = [
            ("permission", "reports:read, datasources:read"),
            ("binding.tenant", "acme"),
        ];
        let need = requirement(&settings, "POST", "/anything", &extensions)
            .unwrap()
            .unwrap();
        assert_eq!(
            need.permissions,
            perms(&["reports:read", "datasources:read"])
        );
        assert_eq!(
            need.bindings,
            BTreeMap::from([("tenant".into(), "acme".into())])
        );

        let only_authenticated = [("permission", " ")];
        let need = requirement(&settings, "POST", "/", &only_authenticated)
            .unwrap()
            .unwrap();
        assert!(need.permissions.is_empty());

        let bad = [("permission", "Reports")];
        let error = requirement(&settings, "GET", "/", &bad).unwrap_err();
        assert_eq!(error.field, "attributes.context_extensions.permission");
        let bad = [("binding.a b", "x")];
        assert!(requirement(&settings, "GET", "/x", &bad).is_err());
    }

    #[test]
    fn rules_match_in_order_and_capture_bindings() {
        let rules = Rules::parse(
            r#"
            [[rule]]
            methods = ["post"]
            path = "/reports/{reportId}/export"
            permissions = ["reports:export"]

            [[rule]]
            path = "/reports/*/comments/**"
            permissions = ["comments:read", "reports:read"]

            [[rule]]
            path = "/public/**"
            permissions = []
            "#,
        )
        .unwrap();
        assert_eq!(rules.len(), 3);
        let settings = CheckSettings {
            rules,
            ..CheckSettings::default()
        };
        let need_export = need(&settings, "POST", "/reports/R-17/export").unwrap();
        assert_eq!(need_export.permissions, perms(&["reports:export"]));
        assert_eq!(
            need_export.bindings,
            BTreeMap::from([("reportId".into(), "R-17".into())]),
            "a capture keeps its case"
        );
        assert_eq!(
            need(&settings, "POST", "/reports/R-17/%65xport")
                .unwrap()
                .permissions,
            perms(&["reports:export"]),
            "escaped unreserved characters cannot dodge a rule"
        );
        assert_eq!(
            need(&settings, "POST", "/REPORTS/R-17/Export")
                .unwrap()
                .permissions,
            perms(&["reports:export"]),
            "literals match in any case"
        );
        assert_eq!(
            need(&settings, "GET", "/reports/R-17/export")
                .unwrap()
                .permissions,
            perms(&["reports:read"]),
            "another method falls through to the default mapping"
        );
        assert_eq!(
            need(&settings, "GET", "/reports/1/comments")
                .unwrap()
                .permissions,
            perms(&["comments:read", "reports:read"]),
            "** matches nothing too"
        );
        assert_eq!(
            need(&settings, "GET", "/reports/1/comments/2/3")
                .unwrap()
                .permissions,
            perms(&["comments:read", "reports:read"])
        );
        assert!(
            need(&settings, "GET", "/public/x")
                .unwrap()
                .permissions
                .is_empty()
        );
        assert!(
            need(&settings, "GET", "/reports/../admin").is_err(),
            "dot segments"
        );
    }

    #[test]
    fn the_example_rules_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/rules.toml");
        let settings = CheckSettings {
            rules: Rules::load(&path).unwrap(),
            ..CheckSettings::default()
        };
        assert_eq!(settings.rules.len(), 3);
        let export = need(&settings, "POST", "/reports/r-1/export").unwrap();
        assert_eq!(export.permissions, perms(&["reports:export"]));
        assert!(
            need(&settings, "GET", "/catalogue/a/b")
                .unwrap()
                .permissions
                .is_empty()
        );
        assert!(Rules::load(Path::new("/no/such/file")).is_err());
    }

    #[test]
    fn bad_rules_files_name_the_rule_and_field() {
        for (text, expected) in [
            ("[[rule]]\npath = \"x\"\npermissions = []", "rule 1: path"),
            (
                "[[rule]]\npath = \"/**/x\"\npermissions = []",
                "rule 1: path",
            ),
            ("[[rule]]\npath = \"/a*\"\npermissions = []", "rule 1: path"),
            (
                "[[rule]]\npath = \"/{a b}\"\npermissions = []",
                "rule 1: path",
            ),
            (
                "[[rule]]\npath = \"/a\"\npermissions = [\"A\"]",
                "rule 1: permissions",
            ),
            (
                "[[rule]]\npath = \"/a\"\nmethods = [\"G T\"]\npermissions = []",
                "rule 1: methods",
            ),
            ("[[rule]]\npath = \"/a\"\npermission = []", "unknown field"),
            ("[[rule]]\npermissions = []", "missing field"),
        ] {
            let error = Rules::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(Rules::parse("").unwrap().is_empty());
    }

    #[test]
    fn the_credential_is_a_bearer_token_or_the_api_key_header() {
        let settings = CheckSettings::default();
        let find = |pairs: &[(&str, &str)]| {
            credential(&Headers::new(pairs.to_vec()), &settings)
                .map(|c| (c.header.to_owned(), c.presented.to_owned()))
        };
        assert_eq!(
            find(&[("authorization", "Bearer ta_x")]),
            Some(("authorization".into(), "ta_x".into()))
        );
        assert_eq!(
            find(&[("Authorization", "bEaReR   ta_x ")]),
            Some(("authorization".into(), "ta_x".into())),
            "scheme and header name in any case"
        );
        assert_eq!(
            find(&[("authorization", "Bearer")]),
            Some(("authorization".into(), "".into()))
        );
        assert_eq!(
            find(&[("authorization", "Basic dXNlcg=="), ("X-Api-Key", "ta_y")]),
            Some(("x-api-key".into(), "ta_y".into())),
            "another scheme is not ours; the api key is"
        );
        assert_eq!(find(&[("authorization", "Basic dXNlcg==")]), None);
        assert_eq!(find(&[]), None);

        assert_eq!(
            find(&[("X-API-KEY", "ta_z")]),
            Some(("x-api-key".into(), "ta_z".into()))
        );
        let no_key = CheckSettings {
            api_key_header: None,
            ..CheckSettings::default()
        };
        let headers = Headers::new(vec![("x-api-key", "ta_y")]);
        assert_eq!(credential(&headers, &no_key), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            client_ip(Some("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(Some("10.0.0.2"), Some("1.2.3.4"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(
                Some("10.0.0.2"),
                Some("6.6.6.6, 1.2.3.4, 10.0.0.7"),
                &trusted
            ),
            ip("1.2.3.4"),
            "the rightmost untrusted hop, not the client-written leftmost"
        );
        assert_eq!(
            client_ip(Some("10.0.0.2"), Some("10.0.0.9"), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(client_ip(Some("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(Some("10.0.0.2"), Some("garbage"), &trusted), None);
        assert_eq!(
            client_ip(Some("::1"), Some("[2001:db8::1]:443"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(Some("::ffff:192.0.2.1"), None, &[]),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_ip(Some("10.0.0.2"), Some("1.2.3.4"), &[]),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(None, Some("1.2.3.4"), &trusted), None);
        assert_eq!(client_ip(Some("/tmp/socket"), None, &trusted), None);
    }

    #[test]
    fn header_names_are_checked_and_lowercased() {
        assert_eq!(header_name("X-Token-Id").unwrap(), "x-token-id");
        assert!(header_name("").is_err());
        assert!(header_name("x token").is_err());
        assert!(header_name("x:y").is_err());
    }
}
