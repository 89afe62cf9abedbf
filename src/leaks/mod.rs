//! Leaked secrets: taking reports of them (from anyone, or signed by GitHub's secret
//! scanning) and making them stop working. What a report does to a token is the domain's
//! (`domain::leak`); `report` is the one path every front end calls, `github` is GitHub's
//! wire formats and the check that a report really came from GitHub.

pub mod github;
pub mod report;
