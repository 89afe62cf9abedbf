//! Compiles the protobuf API with protox (no protoc binary needed) and writes the file
//! descriptor set that the reflection service serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/tokenauthority/v1/token.proto",
    "proto/tokenauthority/v1/verify.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("tokenauthority_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // These carry a plaintext secret: src/pb.rs gives them a redacted Debug.
        .skip_debug([
            "tokenauthority.v1.VerifyRequest",
            "tokenauthority.v1.CreateTokenResponse",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
