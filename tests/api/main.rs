//! The integration suite: the real server, on a real SQLite file and a real Postgres,
//! driven over real gRPC. Every conformance test runs once per backend.

mod helpers;

mod authorization;
mod grpcurl;
mod lifecycle;
mod metrics;
mod operations;
mod persistence;
mod replicas;
mod request_ids;
mod tls;
mod validation;
mod verify;
