//! An allowed host from a token spec, and a presented host matched against it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_authority::domain::restrictions::HostPattern;

fuzz_target!(|input: (&str, &str)| {
    let (pattern, presented) = input;
    if let Ok(host) = HostPattern::parse(pattern) {
        assert_eq!(HostPattern::parse(&host.to_string()), Ok(host.clone()));
        assert!(host.within(&host));
        let _ = host.matches(presented);
    }
});
