//! TLS on the gRPC port (rustls, through tonic): the server's certificate and key, and
//! optionally a CA whose client certificates are then required (mutual TLS).

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// A client that has not finished its handshake by then is disconnected, so that idle
/// connections cannot pile up before they ever send a call.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the gRPC port's TLS material lives, all PEM.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate.
    pub key: PathBuf,
    /// CA certificates; when set, every client must present a certificate one of them
    /// signed.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Returns `tls`, or `mtls` when client certificates are required; for the logs.
    pub fn mode(&self) -> &'static str {
        if self.client_ca.is_some() {
            "mtls"
        } else {
            "tls"
        }
    }

    /// Reads the files and checks that they make a working configuration. Errors name the
    /// file, never its contents.
    pub fn load(&self) -> anyhow::Result<ServerTlsConfig> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .with_context(|| format!("cannot read the {what} {}", path.display()))
        };
        let cert = read(&self.cert, "TLS certificate")?;
        let key = read(&self.key, "TLS key")?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            // Client authentication is required unless made optional, which we never do.
            config = config.client_ca_root(Certificate::from_pem(read(ca, "TLS client CA")?));
        }
        // Building the acceptor parses everything; do it now, so that a bad file stops the
        // start instead of the first connection.
        Server::builder()
            .tls_config(config.clone())
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot use the TLS certificate {}, key {}{}: {error}",
                    self.cert.display(),
                    self.key.display(),
                    self.client_ca
                        .as_ref()
                        .map(|ca| format!(" and client CA {}", ca.display()))
                        .unwrap_or_default()
                )
            })?;
        Ok(config)
    }
}
