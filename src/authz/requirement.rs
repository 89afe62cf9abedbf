//! What a request needs of a token: the permissions and bindings its route names, its
//! rules give, or the default mapping from method and path derives.

use std::{borrow::Cow, collections::BTreeMap};

use super::settings::CheckSettings;
use crate::domain::{permission::Permission, token::limits};

/// The `context_extensions` key that names the permissions a route needs.
pub const PERMISSION_KEY: &str = "permission";
/// The prefix of `context_extensions` keys that name bindings (`binding.reportId`).
pub const BINDING_PREFIX: &str = "binding.";
/// The `context_extensions` key that, set to `ignore`, lets bound tokens use a route whose
/// requests name none of their bound keys.
pub const BINDINGS_KEY: &str = "bindings";

/// What a request needs of a token.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requirement {
    /// Every one of these permissions.
    pub permissions: Vec<Permission>,
    /// Resources the request touches, from the route or the path.
    pub bindings: BTreeMap<String, String>,
    /// Whether a bound token may be used without the request naming any of its bound
    /// keys; by default it may not (bindings fail closed at the gateway).
    pub ignore_bindings: bool,
}

/// Why no requirement could be worked out for a request: it is refused (403).
#[derive(Debug, PartialEq, Eq)]
pub struct Unmapped(pub String);

/// Why a route's configuration is unusable: an error naming the field.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRoute {
    /// The field at fault (a CheckRequest field, or the forward-auth path).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// What the gateway's own configuration says of a route (Envoy's `context_extensions`,
/// or the path of a forward-auth URL), never anything the client sends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The permissions it needs, when it names them (empty: any valid token).
    pub permissions: Option<Vec<Permission>>,
    /// Resources it touches; a path capturing one of these keys must agree.
    pub bindings: BTreeMap<String, String>,
    /// Whether bound tokens may use it without naming their bound keys.
    pub ignore_bindings: bool,
}

impl Route {
    /// Reads Envoy's `context_extensions`: `permission` (comma-separated), `binding.<key>`,
    /// and `bindings: ignore`.
    pub fn from_extensions(extensions: &[(&str, &str)]) -> Result<Self, BadRoute> {
        Self::from_pairs(extensions.iter().copied())
    }

    /// [`Route::from_extensions`] over the pairs as they are read, with nothing collected.
    pub fn from_pairs<'a>(
        extensions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, BadRoute> {
        let field = "attributes.context_extensions";
        let mut route = Route::default();
        for (key, value) in extensions {
            if key == PERMISSION_KEY {
                route.permissions = Some(parse_list(value).map_err(|message| BadRoute {
                    field: "attributes.context_extensions.permission",
                    message,
                })?);
            } else if key == BINDINGS_KEY {
                if value != "ignore" {
                    return Err(BadRoute {
                        field,
                        message: format!("bindings: {value:?} is not \"ignore\""),
                    });
                }
                route.ignore_bindings = true;
            } else if let Some(name) = key.strip_prefix(BINDING_PREFIX) {
                route
                    .bind(name, value)
                    .map_err(|message| BadRoute { field, message })?;
            }
        }
        Ok(route)
    }

    /// Adds a binding the route touches, checked as a token's bindings are.
    pub fn bind(&mut self, key: &str, value: &str) -> Result<(), String> {
        crate::domain::token::check_binding(key, value)?;
        self.bindings.insert(key.to_owned(), value.to_owned());
        if self.bindings.len() > limits::BINDINGS {
            return Err(format!("names more than {} bindings", limits::BINDINGS));
        }
        Ok(())
    }
}

/// Works out what a request needs: the route's own settings first, then the configured
/// rules, then the default mapping from method and path.
pub fn requirement(
    settings: &CheckSettings,
    method: &str,
    path: &str,
    route: &Route,
) -> Result<Requirement, Unmapped> {
    let segments = segments(path).map_err(Unmapped)?;
    let mut requirement = if let Some(listed) = &route.permissions {
        Requirement {
            permissions: listed.clone(),
            ..Requirement::default()
        }
    } else if let Some((rule, bindings)) = settings.rules.find(method, &segments) {
        Requirement {
            permissions: rule.permissions.clone(),
            bindings,
            ignore_bindings: rule.ignore_bindings,
        }
    } else {
        Requirement {
            permissions: vec![default_permission(
                &settings.path_prefix,
                method,
                &segments,
            )?],
            ..Requirement::default()
        }
    };
    // The route's bindings are the operator's word. A path that captures the same key
    // with another value is refused rather than judged by either: under a route pinned
    // to tenant=acme, a token bound to acme must not pass on /tenants/globex/….
    for (key, value) in &route.bindings {
        if let Some(captured) = requirement.bindings.get(key)
            && captured != value
        {
            return Err(Unmapped(format!(
                "the route binds {key} but the path names another {key}"
            )));
        }
    }
    requirement.bindings.extend(route.bindings.clone());
    requirement.ignore_bindings |= route.ignore_bindings;
    Ok(requirement)
}

/// The default mapping: the resource is the first segment after the prefix, the action
/// follows the method.
fn default_permission(
    prefix: &[String],
    method: &str,
    segments: &[Cow<'_, str>],
) -> Result<Permission, Unmapped> {
    const ACTIONS: [(&str, &str); 6] = [
        ("GET", "read"),
        ("HEAD", "read"),
        ("POST", "create"),
        ("PUT", "write"),
        ("PATCH", "write"),
        ("DELETE", "delete"),
    ];
    let Some(&(_, action)) = ACTIONS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(method))
    else {
        return Err(Unmapped(format!(
            "no permission is mapped for method {}; add a rule",
            truncate(&method.to_ascii_uppercase())
        )));
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
    let lowercase;
    let resource = match resource.bytes().any(|b| b.is_ascii_uppercase()) {
        true => {
            lowercase = resource.to_ascii_lowercase();
            lowercase.as_str()
        }
        false => resource.as_ref(),
    };
    Permission::from_sides(resource, action)
        .ok_or_else(|| Unmapped("the path does not name a resource; add a rule".into()))
}

/// Parses a comma-separated permission list; an empty list asks only for a valid token.
pub(super) fn parse_list(listed: &str) -> Result<Vec<Permission>, String> {
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
pub(super) fn segments(target: &str) -> Result<Vec<Cow<'_, str>>, String> {
    let end = target
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let path = &target[..end];
    if path.len() > 4096 {
        return Err("the path is too long".into());
    }
    let mut out = Vec::with_capacity(8);
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        // Most segments have neither escapes nor backslashes: one look at their bytes.
        let plain = !raw.bytes().any(|b| b == b'%' || b == b'\\');
        let segment = if plain {
            Cow::Borrowed(raw)
        } else {
            decode_unreserved(raw)
        };
        if segment == "." || segment == ".." {
            return Err("the path has dot segments; enable normalize_path in Envoy".into());
        }
        // An escaped slash or backslash: judged as one segment here, it may be two (or a
        // dot segment, `..%2f`) to an upstream that decodes it before resolving the path.
        if !plain
            && (has_escape(&segment, b'2', b'f')
                || has_escape(&segment, b'5', b'c')
                || segment.contains('\\'))
        {
            return Err("the path has an escaped slash or backslash".into());
        }
        out.push(segment);
    }
    Ok(out)
}

/// Whether `segment` holds the escape `%<high><low>`, the hex letter `low` in either case.
fn has_escape(segment: &str, high: u8, low: u8) -> bool {
    segment
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == high && w[2].eq_ignore_ascii_case(&low))
}

/// Decodes `%XX` escapes of unreserved characters (letters, digits, `-._~`); every other
/// escape stays as it is, since decoding it could change what the path means.
pub(super) fn decode_unreserved(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
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
    Cow::Owned(out)
}

fn truncate(value: &str) -> String {
    value.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{rules::Rules, settings::path_prefix};

    fn perms(list: &[&str]) -> Vec<Permission> {
        list.iter().map(|p| Permission::parse(p).unwrap()).collect()
    }

    fn need(settings: &CheckSettings, method: &str, path: &str) -> Result<Requirement, Unmapped> {
        requirement(settings, method, path, &Route::default())
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
            ("pOsT", "create"),
            ("Delete", "delete"),
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
        // The resource is checked as Permission::parse checks `resource:read`.
        for resource in ["*", "a:b", "1x", "é", &"a".repeat(65)] {
            let path = format!("/{resource}");
            assert_eq!(
                need(&settings, "GET", &path).ok().map(|r| r.permissions),
                Permission::parse(&format!("{resource}:read"))
                    .ok()
                    .map(|p| vec![p]),
                "{resource}"
            );
        }
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
        let route = Route::from_extensions(&extensions).unwrap();
        let need = requirement(&settings, "POST", "/anything", &route).unwrap();
        assert_eq!(
            need.permissions,
            perms(&["reports:read", "datasources:read"])
        );
        assert_eq!(
            need.bindings,
            BTreeMap::from([("tenant".into(), "acme".into())])
        );
        assert!(
            !need.ignore_bindings,
            "bindings fail closed unless the route says"
        );

        let only_authenticated = Route::from_extensions(&[("permission", " ")]).unwrap();
        let need = requirement(&settings, "POST", "/", &only_authenticated).unwrap();
        assert!(need.permissions.is_empty());
        let ignoring = Route::from_extensions(&[("bindings", "ignore")]).unwrap();
        assert!(
            requirement(&settings, "GET", "/x", &ignoring)
                .unwrap()
                .ignore_bindings
        );

        let error = Route::from_extensions(&[("permission", "Reports")]).unwrap_err();
        assert_eq!(error.field, "attributes.context_extensions.permission");
        assert!(Route::from_extensions(&[("binding.a b", "x")]).is_err());
        assert!(Route::from_extensions(&[("bindings", "yes")]).is_err());
    }

    #[test]
    fn a_route_binding_and_a_path_capture_of_another_value_are_refused() {
        let settings = CheckSettings {
            rules: Rules::parse(
                r#"
                [[rule]]
                path = "/tenants/{tenant}/**"
                permissions = ["tenants:read"]
                "#,
            )
            .unwrap(),
            ..CheckSettings::default()
        };
        let mut route = Route::default();
        route.bind("tenant", "acme").unwrap();
        let agreed = requirement(&settings, "GET", "/tenants/acme/users", &route).unwrap();
        assert_eq!(
            agreed.bindings,
            BTreeMap::from([("tenant".into(), "acme".into())])
        );
        let refused = requirement(&settings, "GET", "/tenants/globex/users", &route);
        assert!(refused.is_err(), "{refused:?}");
        route.bind("region", "eu").unwrap();
        let both = requirement(&settings, "GET", "/tenants/acme/users", &route).unwrap();
        assert_eq!(both.bindings.len(), 2, "other route keys are added");
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
        for path in [
            "/reports/..%2fadmin/1",
            "/reports/a%2Fb",
            "/reports/%5c..",
            "/reports/%5C..",
            "/reports/x%5Cy",
            "/r\\x",
        ] {
            assert!(need(&settings, "GET", path).is_err(), "{path}");
        }
    }
}
