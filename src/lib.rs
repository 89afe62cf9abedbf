//! token-authority: one central service that issues, stores, manages and verifies API
//! bearer tokens over gRPC.

pub mod authz;
pub mod bootstrap;
pub mod cache;
pub mod cli;
pub mod config;
pub mod counters;
pub mod domain;
pub mod encoded;
pub mod error;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod invalidation;
pub mod leaks;
pub mod limits;
pub mod metrics;
pub mod pb;
pub mod scan;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;
pub mod verifier;
pub mod verify;
