//! The ext_authz rules file (--ext-authz-rules): TOML, then method and path patterns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_authority::authz::Rules;

fuzz_target!(|text: &str| {
    let _ = Rules::parse(text);
});
