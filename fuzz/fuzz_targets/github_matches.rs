//! The body GitHub's secret scanning sends (after its signature checked out, but a
//! compromised or buggy sender must not crash us either), and the feedback built from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_authority::leaks::github::{MAX_MATCHES, feedback, parse_matches};

fuzz_target!(|body: &[u8]| {
    if let Ok(matches) = parse_matches(body) {
        assert!(matches.len() <= MAX_MATCHES);
        let answer = feedback(&matches, |i| i % 2 == 0);
        let parsed: serde_json::Value = serde_json::from_slice(&answer).expect("feedback is JSON");
        assert_eq!(parsed.as_array().map(Vec::len), Some(matches.len()));
    }
});
