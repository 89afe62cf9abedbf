//! Reports of leaked secrets from outside partners, in their own formats. What a report
//! does to a token is the domain's (`domain::leak`); this is only the partners' wire formats
//! and the checks that a report really came from them.

pub mod github;
