//! token-authority: one central service that issues, stores, manages and verifies API
//! bearer tokens over gRPC.

pub mod domain;
pub mod pb;
