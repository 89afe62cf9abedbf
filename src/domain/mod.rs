//! The domain: tokens, secrets, permissions, restrictions and the rules over them. Pure, no I/O.

pub mod audit;
pub mod fields;
pub mod leak;
pub mod permission;
pub mod policy;
pub mod power;
pub mod restrictions;
pub mod secret;
pub mod token;
pub mod token_type;
pub mod verify;
