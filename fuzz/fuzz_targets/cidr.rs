//! An allowed network from a token spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_authority::domain::restrictions::Cidr;

fuzz_target!(|text: &str| {
    if let Ok(cidr) = Cidr::parse(text) {
        assert_eq!(Cidr::parse(&cidr.to_string()), Ok(cidr));
        assert!(cidr.contains_net(&cidr));
    }
});
