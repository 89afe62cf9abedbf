//! A presented bearer secret: anything a client sends must be refused or hashed, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_authority::domain::secret::TokenSecret;

fuzz_target!(|text: &str| {
    let hashed = TokenSecret::hash_of_presented(text);
    // Both entry points agree on what is a secret.
    assert_eq!(hashed.is_ok(), TokenSecret::parse(text).is_ok());
});
