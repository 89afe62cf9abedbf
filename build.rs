//! Compiles the protobuf API with protox (no protoc binary needed) and writes the file
//! descriptor set that the reflection service serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/tokenauthority/v1/token.proto",
    "proto/tokenauthority/v1/verify.proto",
    "proto/tokenauthority/v1/token_type.proto",
    "proto/tokenauthority/v1/audit.proto",
    "proto/tokenauthority/v1/leak.proto",
];

/// Our codec: prost's, with undecodable requests answered INVALID_ARGUMENT, not INTERNAL.
const CODEC: &str = "crate::grpc::codec::ProstCodec";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds the migration files; a new file must rebuild the library too.
    println!("cargo:rerun-if-changed=migrations");
    let mut compiler = protox::Compiler::new(["proto", "proto/third_party"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded by protox itself, not through prost-types, which would drop the options'
    // extensions: the google.api.http rules the HTTP port's JSON API is generated from.
    fs::write(
        out_dir.join("tokenauthority_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .codec_path(CODEC)
        .build_server(true)
        .build_client(true)
        // These carry a plaintext secret: src/pb.rs gives them a redacted Debug.
        .skip_debug([
            "tokenauthority.v1.VerifyRequest",
            "tokenauthority.v1.CreateTokenResponse",
            "tokenauthority.v1.RotateTokenResponse",
            "tokenauthority.v1.ReportLeakedTokensRequest",
            "tokenauthority.v1.LookupTokenRequest",
        ])
        .compile_fds(descriptors)?;
    compile_verify_wire(&out_dir)?;
    // Envoy's ext_authz API, for reflection only: the Rust types come from envoy-types.
    let envoy = protox::compile(
        ["envoy/service/auth/v3/external_auth.proto"],
        ["proto/third_party"],
    )?;
    fs::write(
        out_dir.join("envoy_authz_descriptor.bin"),
        envoy.encode_to_vec(),
    )?;
    compile_ext_authz_wire(&out_dir)?;
    Ok(())
}

/// Compiles the server's lean, zero-copy view of Envoy's Check (proto/wire/ext_authz.proto):
/// request fields are `Bytes` slices of the received buffer, and the response's
/// sub-messages are pre-encoded bytes.
fn compile_ext_authz_wire(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let wire_dir = out_dir.join("ext_authz_wire");
    fs::create_dir_all(&wire_dir)?;
    let descriptors = protox::compile(["ext_authz.proto"], ["proto/wire"])?;
    tonic_prost_build::configure()
        .codec_path(CODEC)
        .build_server(true)
        .build_client(false)
        .out_dir(&wire_dir)
        .bytes(".")
        // Requests carry bearer secrets in their headers: no derived Debug.
        .skip_debug(["."])
        .compile_fds(descriptors)?;
    Ok(())
}

/// Compiles the server side of VerifyService once more, with `VerifyResponse.token` as
/// `bytes`: on the wire an embedded message and a bytes field are the same, so the server
/// can answer with a token it encoded once, when it was cached, and clients still see a
/// `Token`. Reflection serves the real descriptors, not these.
fn compile_verify_wire(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let source = fs::read_to_string("proto/tokenauthority/v1/verify.proto")?;
    let wire = source
        .replace("import \"tokenauthority/v1/token.proto\";", "")
        .replace("  Token token = 3;", "  bytes token = 3;");
    if !wire.contains("bytes token = 3;") || wire.contains("token.proto") {
        return Err("verify.proto changed: update compile_verify_wire in build.rs".into());
    }
    let wire_dir = out_dir.join("wire");
    fs::create_dir_all(wire_dir.join("tokenauthority/v1"))?;
    fs::write(wire_dir.join("tokenauthority/v1/verify.proto"), wire)?;
    let descriptors = protox::compile(
        ["tokenauthority/v1/verify.proto"],
        [
            wire_dir.as_path(),
            std::path::Path::new("proto/third_party"),
        ],
    )?;
    tonic_prost_build::configure()
        .codec_path(CODEC)
        .build_server(true)
        .build_client(false)
        .out_dir(&wire_dir)
        .bytes(".")
        .skip_debug(["tokenauthority.v1.VerifyRequest"])
        .compile_fds(descriptors)?;
    Ok(())
}
