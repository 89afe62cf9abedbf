//! Reports the secrets a scan found to a server's LeakService, which revokes those that
//! are ours (`token-authority scan --report`).

use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::{Context, anyhow, bail};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{
    domain::secret::TokenSecret,
    pb::v1::{LeakOutcome, ReportLeakedTokensRequest, leak_service_client::LeakServiceClient},
};

/// The most secrets one ReportLeakedTokens request may carry.
pub const MAX_PER_REQUEST: usize = crate::domain::leak::MAX_SECRETS;

/// How long connecting, and then each request, may take before the report fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where to report and what to tell the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportSettings {
    /// The server's gRPC address, `http://…` or `https://…`.
    pub server: String,
    /// Who found the secrets, for the audit trail.
    pub source: String,
    /// Where they were found, for the audit trail; may be empty.
    pub url: String,
    /// The CA to trust for an https server.
    pub ca_cert: Option<PathBuf>,
    /// A client certificate and its key, for a server that requires mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ReportSettings {
    /// Checks that the TLS files fit the server's scheme, before anything is scanned.
    pub fn check(&self) -> Result<(), String> {
        let https = self.server.starts_with("https://");
        if https && self.ca_cert.is_none() {
            return Err("an https --server needs --ca-cert (no public CAs are built in)".into());
        }
        if !https && (self.ca_cert.is_some() || self.identity.is_some()) {
            return Err("--ca-cert and --client-cert need an https:// --server".into());
        }
        Ok(())
    }
}

/// What became of one reported secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// One of ours: it no longer works.
    Revoked,
    /// Not one of ours, as far as the server knows.
    Unknown,
}

impl Outcome {
    /// Returns the word printed for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Unknown => "unknown",
        }
    }
}

/// Returns each secret once, in the order first seen.
pub fn distinct<'a>(secrets: impl IntoIterator<Item = &'a TokenSecret>) -> Vec<TokenSecret> {
    let mut seen = HashSet::new();
    secrets
        .into_iter()
        .filter(|secret| seen.insert(secret.expose()))
        .cloned()
        .collect()
}

/// Reports `secrets`, at most [`MAX_PER_REQUEST`] to a request, calling `on_result` with
/// each one's hint and outcome as the answers come. Errors name no secret.
pub async fn report(
    settings: &ReportSettings,
    secrets: &[TokenSecret],
    mut on_result: impl FnMut(&str, Outcome),
) -> anyhow::Result<()> {
    let mut client = LeakServiceClient::new(connect(settings).await?);
    for batch in secrets.chunks(MAX_PER_REQUEST) {
        let request = ReportLeakedTokensRequest {
            secrets: batch.iter().map(|s| s.expose().to_owned()).collect(),
            source: settings.source.clone(),
            url: settings.url.clone(),
        };
        let response = client
            .report_leaked_tokens(request)
            .await
            .map_err(|status| {
                let why = match status.message() {
                    "" => status.code().description(),
                    message => message,
                };
                anyhow!(
                    "{} refused the report: {:?}: {why}",
                    settings.server,
                    status.code()
                )
            })?
            .into_inner();
        if response.results.len() != batch.len() {
            bail!(
                "{} answered {} results for {} secrets",
                settings.server,
                response.results.len(),
                batch.len()
            );
        }
        for (secret, result) in batch.iter().zip(&response.results) {
            let outcome = match result.outcome() {
                LeakOutcome::Revoked => Outcome::Revoked,
                LeakOutcome::Unknown | LeakOutcome::Unspecified => Outcome::Unknown,
            };
            on_result(&secret.display_hint(), outcome);
        }
    }
    Ok(())
}

async fn connect(settings: &ReportSettings) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(settings.server.clone())
        .with_context(|| format!("--server {} is not a URL", settings.server))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if let Some(ca) = &settings.ca_cert {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = &settings.identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("the TLS files do not make a client configuration")?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", settings.server))
}

/// Reads a PEM file; errors name the file, never its contents.
fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
