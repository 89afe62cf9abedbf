//! Generated protobuf and gRPC code, with the descriptor set served by reflection.

#![allow(clippy::all, missing_docs)]

pub mod tokenauthority {
    pub mod v1 {
        tonic::include_proto!("tokenauthority.v1");
    }
}

pub use tokenauthority::v1;

/// The server side of VerifyService as it goes on the wire: the same messages, but the
/// response's `token` is the pre-encoded `Token` (see build.rs). Clients use [`v1`].
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/wire/tokenauthority.v1.rs"));
}

/// The server's zero-copy view of Envoy's `Authorization/Check` (proto/wire/ext_authz.proto):
/// wire-compatible with Envoy's messages; clients and tests use envoy-types.
pub mod ext_authz_wire {
    include!(concat!(
        env!("OUT_DIR"),
        "/ext_authz_wire/envoy.service.auth.v3.rs"
    ));
}

/// The encoded file descriptor set of our protos (and the well-known types they import).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("tokenauthority_descriptor");

/// The encoded file descriptor set of Envoy's ext_authz API (`envoy.service.auth.v3`),
/// compiled from proto/third_party for reflection; the types come from envoy-types.
pub const ENVOY_AUTHZ_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("envoy_authz_descriptor");

/// Prints a secret-bearing field as its length only.
struct Redacted(usize);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0)
    }
}

/// A `Debug` for a VerifyRequest (of either module) that prints the token's length only.
macro_rules! redacted_verify_request_debug {
    ($($message:ty),*) => {$(
        impl std::fmt::Debug for $message {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("VerifyRequest")
                    .field("token", &Redacted(self.token.len()))
                    .field("required_permissions", &self.required_permissions)
                    .field("client_ip", &self.client_ip)
                    .field("host", &self.host)
                    .field("bindings", &self.bindings)
                    .finish()
            }
        }
    )*};
}

redacted_verify_request_debug!(v1::VerifyRequest, wire::VerifyRequest);

/// A `Debug` for a response that carries a new secret, printing its length only.
macro_rules! redacted_secret_response_debug {
    ($($message:ty => $name:literal),*) => {$(
        impl std::fmt::Debug for $message {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct($name)
                    .field("token", &self.token)
                    .field("secret", &Redacted(self.secret.len()))
                    .finish()
            }
        }
    )*};
}

redacted_secret_response_debug!(
    v1::CreateTokenResponse => "CreateTokenResponse",
    v1::RotateTokenResponse => "RotateTokenResponse"
);

impl std::fmt::Debug for v1::ReportLeakedTokensRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportLeakedTokensRequest")
            .field("secrets", &Redacted(self.secrets.len()))
            .field("source", &self.source)
            .field("url", &self.url)
            .finish()
    }
}

impl std::fmt::Debug for v1::LookupTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupTokenRequest")
            .field("secret", &Redacted(self.secret.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn debug_of_secret_bearing_messages_is_redacted() {
        let secret = "ta_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL";
        let verify = v1::VerifyRequest {
            token: secret.into(),
            ..Default::default()
        };
        let created = v1::CreateTokenResponse {
            secret: secret.into(),
            token: None,
        };
        let rotated = v1::RotateTokenResponse {
            secret: secret.into(),
            token: None,
        };
        let reported = v1::ReportLeakedTokensRequest {
            secrets: vec![secret.into()],
            ..Default::default()
        };
        let looked_up = v1::LookupTokenRequest {
            secret: secret.into(),
        };
        let printed =
            format!("{verify:?} {created:?} {verify:#?} {rotated:?} {reported:?} {looked_up:?}");
        assert!(!printed.contains("0123456789"), "{printed}");
        assert!(printed.contains("redacted"));
    }
}
