//! Property tests of the parsers that read hostile input (secrets, permissions, networks,
//! hosts, the ext_authz rules file) and of permission matching. The fuzz targets in fuzz/
//! go deeper where nightly is available; these run everywhere, in CI, in seconds.

use proptest::prelude::*;
use token_authority::{
    authz::Rules,
    domain::{
        leak::Report,
        permission::Permission,
        restrictions::{Cidr, HostPattern},
        secret::{TokenPrefix, TokenSecret},
    },
    leaks::github::{MAX_MATCHES, feedback, parse_matches},
};

/// Few enough cases to keep CI fast, unless PROPTEST_CASES asks for more (scripts/fuzz).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

/// One side of a permission from a small alphabet, so that generated permissions often
/// share names and the covering relation is exercised, not vacuous.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![Just("*".to_owned()), "[a-c][a-c0-9._-]{0,2}"]
}

fn permission() -> impl Strategy<Value = Permission> {
    (segment(), segment()).prop_map(|(resource, action)| {
        Permission::parse(&format!("{resource}:{action}")).expect("generated permissions parse")
    })
}

/// Strings that look like the inputs: mostly printable, with the separators that matter.
fn near_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9:*._/\\[\\]%{}-]{0,40}",
        "[0-9a-f:.]{0,45}(/[0-9]{0,3})?",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_admin_permission_covers_every_permission(p in permission()) {
        prop_assert!(Permission::all().covers(&p));
        prop_assert!(p.is_covered_by_text("*:*"));
    }

    #[test]
    fn covering_is_reflexive(p in permission()) {
        prop_assert!(p.covers(&p));
    }

    #[test]
    fn covering_is_transitive(a in permission(), b in permission(), c in permission()) {
        if a.covers(&b) && b.covers(&c) {
            prop_assert!(a.covers(&c), "{a} covers {b} covers {c}");
        }
    }

    #[test]
    fn covering_by_text_agrees_with_covering(held in permission(), required in permission()) {
        prop_assert_eq!(required.is_covered_by_text(held.to_string()), held.covers(&required));
    }

    #[test]
    fn a_permission_parses_back_from_its_text(p in permission()) {
        prop_assert_eq!(Permission::parse(&p.to_string()), Ok(p));
    }

    #[test]
    fn permission_parsing_accepts_only_canonical_text(text in near_text()) {
        if let Ok(p) = Permission::parse(&text) {
            prop_assert_eq!(p.to_string(), text);
        }
    }

    #[test]
    fn cidr_parsing_never_panics_and_round_trips(text in near_text()) {
        if let Ok(cidr) = Cidr::parse(&text) {
            prop_assert_eq!(Cidr::parse(&cidr.to_string()), Ok(cidr));
            prop_assert!(cidr.contains_net(&cidr));
        }
    }

    #[test]
    fn host_pattern_parsing_never_panics_and_round_trips(text in near_text()) {
        if let Ok(host) = HostPattern::parse(&text) {
            prop_assert_eq!(HostPattern::parse(&host.to_string()), Ok(host.clone()));
            prop_assert!(host.within(&host));
            let _ = host.matches(&text);
        }
    }

    #[test]
    fn presented_secrets_never_panic(text in near_text()) {
        let _ = TokenSecret::hash_of_presented(&text);
        let _ = TokenSecret::parse(&text);
    }

    #[test]
    fn any_one_character_typo_in_a_secret_is_refused(
        position in any::<prop::sample::Index>(),
        replacement in "[0-9A-Za-z_]",
    ) {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        let text = secret.expose();
        prop_assert_eq!(TokenSecret::hash_of_presented(text), Ok(secret.hash()));
        let at = position.index(text.len());
        prop_assume!(text[at..at + 1] != replacement);
        let typo = format!("{}{}{}", &text[..at], replacement, &text[at + 1..]);
        prop_assert!(TokenSecret::hash_of_presented(&typo).is_err(), "{typo} accepted");
    }

    #[test]
    fn rules_parsing_never_panics_on_any_text(text in any::<String>()) {
        let _ = Rules::parse(&text);
    }

    #[test]
    fn rules_parsing_never_panics_on_any_rule(
        methods in prop::collection::vec(near_text(), 0..3),
        path in near_text(),
        permissions in prop::collection::vec(near_text(), 0..3),
    ) {
        let quoted = |items: &[String]| {
            items.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
        };
        // Debug quoting of Rust strings is close enough to TOML's basic strings that most
        // documents reach the rule parser rather than stopping at the TOML layer.
        let text = format!(
            "[[rule]]\nmethods = [{}]\npath = {path:?}\npermissions = [{}]\n",
            quoted(&methods),
            quoted(&permissions),
        );
        let _ = Rules::parse(&text);
    }

    #[test]
    fn githubs_match_bodies_never_panic_and_never_echo_a_token(
        tokens in proptest::collection::vec("[ -~]{0,60}", 0..4),
        junk in any::<Vec<u8>>(),
    ) {
        let body: Vec<serde_json::Value> = tokens
            .iter()
            .map(|t| serde_json::json!({"token": t, "type": "t", "url": "u", "source": "content"}))
            .collect();
        let body = serde_json::to_vec(&body).unwrap();
        for bytes in [&body[..], &junk[..]] {
            match parse_matches(bytes) {
                Ok(matches) => {
                    prop_assert!(matches.len() <= MAX_MATCHES);
                    let answer = feedback(&matches, |_| true);
                    let parsed: serde_json::Value = serde_json::from_slice(&answer).unwrap();
                    prop_assert_eq!(parsed.as_array().map(Vec::len), Some(matches.len()));
                }
                Err(message) => {
                    for token in tokens.iter().filter(|t| t.len() > 8) {
                        prop_assert!(!message.contains(token.as_str()), "{}", message);
                    }
                }
            }
        }
    }

    #[test]
    fn leak_report_sources_and_urls_never_panic(source in any::<String>(), url in any::<String>()) {
        if let Ok(report) = Report::parse(&source, &url) {
            prop_assert!(report.source != "github");
            prop_assert!(!report.url.chars().any(char::is_control));
        }
        let github = Report::github(&url);
        prop_assert_eq!(github.source.as_str(), "github");
    }
}

// The admin CLI's flag values (`--ttl 30d`, `--rate 10/1m`, `--bind k=v`, `--expires`).
mod cli_values {
    use proptest::prelude::*;
    use token_authority::cli::parse;

    const UNITS: [(&str, u64); 5] = [
        ("s", 1),
        ("m", 60),
        ("h", 3_600),
        ("d", 86_400),
        ("w", 604_800),
    ];

    proptest! {
        #![proptest_config(super::config())]

        #[test]
        fn a_number_and_a_unit_is_that_many_seconds(n in 0u64..1_000_000, unit in 0usize..5) {
            let (suffix, seconds) = UNITS[unit];
            let parsed = parse::duration(&format!("{n}{suffix}")).unwrap();
            prop_assert_eq!(parsed.as_secs(), n * seconds);
        }

        #[test]
        fn a_rate_is_requests_per_interval(n in 1i64..10_000_000, m in 1u64..1_000, unit in 0usize..5) {
            let (suffix, seconds) = UNITS[unit];
            let (requests, interval) = parse::rate(&format!("{n}/{m}{suffix}")).unwrap();
            prop_assert_eq!(requests, n);
            prop_assert_eq!(interval.seconds as u64, m * seconds);
        }

        #[test]
        fn a_pair_splits_at_its_first_equals_sign(key in "[^=]{1,20}", value in any::<String>()) {
            let (k, v) = parse::pair(&format!("{key}={value}")).unwrap();
            prop_assert_eq!(k, key);
            prop_assert_eq!(v, value);
        }

        #[test]
        fn the_value_parsers_never_panic(text in any::<String>()) {
            let _ = parse::duration(&text);
            let _ = parse::proto_duration(&text);
            let _ = parse::rate(&text);
            let _ = parse::pair(&text);
            let _ = parse::time(&text);
        }

        #[test]
        fn times_round_trip_through_rfc_3339(seconds in 0i64..253_402_300_799) {
            let text = chrono::DateTime::from_timestamp(seconds, 0).unwrap().to_rfc3339();
            prop_assert_eq!(parse::time(&text).unwrap().seconds, seconds);
        }
    }
}

/// The JSON API's rules, read once.
fn json_api_rules() -> &'static [token_authority::http::transcode::rules::Rule] {
    static RULES: std::sync::OnceLock<Vec<token_authority::http::transcode::rules::Rule>> =
        std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let pool = token_authority::http::transcode::pool().unwrap();
        token_authority::http::transcode::rules::read(&pool).unwrap()
    })
}

/// A secret-shaped string: an error must never quote it back.
const PLANTED: &str = "ta_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL";

/// Request paths near the API's: its literals, ids, verbs, escapes and the planted secret.
fn api_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("v1".to_owned()),
        Just("tokens".to_owned()),
        Just("tokenTypes".to_owned()),
        Just("tokens:revoke".to_owned()),
        Just(format!("{PLANTED}:rotate")),
        Just(PLANTED.to_owned()),
        "[a-z0-9%:.{}-]{0,12}",
    ];
    prop_oneof![
        proptest::collection::vec(segment, 0..5).prop_map(|s| format!("/{}", s.join("/"))),
        any::<String>(),
    ]
}

/// Query strings and JSON bodies near the API's: field names, dotted and map names,
/// values of every type, the planted secret as a name and as a value.
fn api_query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("pageSize".to_owned()),
        Just("updateMask".to_owned()),
        Just("enabled".to_owned()),
        Just("bindings[reportId]".to_owned()),
        Just("token.name".to_owned()),
        Just("rateLimit.interval".to_owned()),
        Just(PLANTED.to_owned()),
        "[a-zA-Z_.\\[\\]%]{0,12}",
    ];
    let value = prop_oneof![
        Just(PLANTED.to_owned()),
        Just("true".to_owned()),
        "[a-z0-9,%+.-]{0,8}",
    ];
    proptest::collection::vec((name, value), 0..5).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn api_body() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::json!(PLANTED)),
        Just(serde_json::json!(1)),
        Just(serde_json::json!(true)),
        Just(serde_json::json!(null)),
        Just(serde_json::json!("3600s")),
    ];
    let key = prop_oneof![
        Just("token".to_owned()),
        Just("name".to_owned()),
        Just("permissions".to_owned()),
        Just("expireTime".to_owned()),
        Just("bindings".to_owned()),
        Just(PLANTED.to_owned()),
        "[a-z_]{0,6}",
    ];
    let json = leaf.prop_recursive(3, 16, 4, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![json.prop_map(|v| v.to_string()), any::<String>()]
}

proptest! {
    #![proptest_config(config())]

    /// The JSON API's matcher and request builder never panic on any path, query or body,
    /// and a refusal never quotes a secret it was given.
    #[test]
    fn the_json_api_never_panics_and_never_echoes_a_secret(
        path in api_path(),
        query in api_query(),
        body in api_body(),
    ) {
        for rule in json_api_rules() {
            let bound = rule.template.matches(&path).unwrap_or_default();
            let built = token_authority::http::transcode::request::build(
                rule,
                bound,
                Some(&query),
                body.as_bytes(),
            );
            if let Err(error) = built {
                let message = error.to_string();
                prop_assert!(!message.contains(&PLANTED[3..]), "{}", message);
            }
        }
    }
}
