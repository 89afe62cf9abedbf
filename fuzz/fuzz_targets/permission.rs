//! A permission from a token spec or a Verify request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_authority::domain::permission::Permission;

fuzz_target!(|text: &str| {
    if let Ok(permission) = Permission::parse(text) {
        // Only canonical text parses, and matching agrees with itself.
        assert_eq!(permission.to_string(), text);
        assert!(permission.covers(&permission));
        assert!(permission.is_covered_by_text(text));
        assert!(Permission::all().covers(&permission));
    }
});
