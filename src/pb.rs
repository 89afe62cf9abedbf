//! Generated protobuf and gRPC code, with the descriptor set served by reflection.

#![allow(clippy::all, missing_docs)]

pub mod tokenauthority {
    pub mod v1 {
        tonic::include_proto!("tokenauthority.v1");
    }
}

pub use tokenauthority::v1;

/// The encoded file descriptor set of our protos (and the well-known types they import).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("tokenauthority_descriptor");
