//! The integration suite: the real server, on a real SQLite file and a real Postgres,
//! driven over real gRPC. Every conformance test runs once per backend.

mod helpers;

mod attacks;
mod authorization;
mod cli;
mod cli_readme;
mod concurrent_writes;
mod crash;
mod deploy_files;
mod drain;
mod dropped_connections;
mod envoy;
mod ext_authz;
mod faults;
mod forward_auth;
mod gateways;
mod grpcurl;
mod hostile_input;
mod json_api;
mod leaks;
mod leaks_github;
mod leaks_reported;
mod lifecycle;
mod listener;
mod lookups;
mod metrics;
mod operations;
mod persistence;
mod policy_model;
mod races;
mod readme_examples;
mod replicas;
mod request_ids;
mod rotation_and_limits;
mod scan_report;
mod settings;
mod soak;
mod tls;
mod types_and_audit;
mod validation;
mod verify;
