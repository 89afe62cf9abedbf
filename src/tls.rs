//! TLS on the gRPC and HTTP ports (rustls: through tonic for gRPC, through tokio-rustls for
//! HTTP): the server's certificate and key, and optionally a CA whose client certificates
//! are then required (mutual TLS). Both ports take the same files.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// A client that has not finished its handshake by then is disconnected, so that idle
/// connections cannot pile up before they ever send a call.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// Reads the files into a rustls configuration for the HTTP port, offering HTTP/2 and
    /// HTTP/1.1 by ALPN. Errors name the file, never its contents.
    pub fn rustls(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read the TLS certificate {}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("cannot read the TLS key {}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("cannot read the TLS client CA {}", ca.display()))?
                {
                    let cert = cert.with_context(|| {
                        format!("cannot read the TLS client CA {}", ca.display())
                    })?;
                    roots.add(cert).with_context(|| {
                        format!("cannot use the TLS client CA {}", ca.display())
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .with_context(|| format!("cannot use the TLS client CA {}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).with_context(|| {
            format!(
                "cannot use the TLS certificate {} with the key {}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
