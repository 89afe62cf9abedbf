//! Leaked secrets: taking reports of them (from anyone, or signed by GitHub's secret
//! scanning) and making them stop working.

pub mod report;
