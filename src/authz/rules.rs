//! Method and path rules from the rules file: which permissions a request needs, and
//! which bindings its path names.

use std::{borrow::Cow, collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::requirement::{decode_unreserved, parse_list};
use crate::domain::permission::Permission;

/// Method and path rules from the rules file, tried in order; the first match wins.
#[derive(Clone, Debug, Default)]
pub struct Rules(Vec<Rule>);

/// One rule: which requests it matches and what they need.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Upper-case methods; empty matches any.
    methods: Vec<String>,
    pattern: Vec<Piece>,
    pub(super) permissions: Vec<Permission>,
    /// Whether bound tokens may use the rule's requests without naming their bound keys.
    pub(super) ignore_bindings: bool,
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
    #[serde(default)]
    ignore_bindings: bool,
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
    pub(super) fn find(
        &self,
        method: &str,
        segments: &[Cow<'_, str>],
    ) -> Option<(&Rule, BTreeMap<String, String>)> {
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
                literal => Piece::Literal(decode_unreserved(literal).into_owned()),
            });
        }
        let permissions =
            parse_list(&spec.permissions.join(",")).map_err(|e| format!("permissions: {e}"))?;
        Ok(Self {
            methods,
            pattern,
            permissions,
            ignore_bindings: spec.ignore_bindings,
        })
    }

    fn capture(&self, segments: &[Cow<'_, str>]) -> Option<BTreeMap<String, String>> {
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
                    bindings.insert(name.clone(), value.to_string());
                }
            }
        }
        rest.next().is_none().then_some(bindings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{
        requirement::{Requirement, Route, Unmapped, requirement},
        settings::CheckSettings,
    };

    fn perms(list: &[&str]) -> Vec<Permission> {
        list.iter().map(|p| Permission::parse(p).unwrap()).collect()
    }

    fn need(settings: &CheckSettings, method: &str, path: &str) -> Result<Requirement, Unmapped> {
        requirement(settings, method, path, &Route::default())
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
}
