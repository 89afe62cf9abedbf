//! Reports the secrets a scan found to a server's LeakService, which revokes those that
//! are ours (`token-authority scan --report`).

use std::collections::HashSet;

use anyhow::{anyhow, bail};

use crate::{
    cli::client::ServerArgs,
    domain::secret::TokenSecret,
    pb::v1::{LeakOutcome, ReportLeakedTokensRequest, leak_service_client::LeakServiceClient},
};

/// The most secrets one ReportLeakedTokens request may carry.
pub const MAX_PER_REQUEST: usize = crate::domain::leak::MAX_SECRETS;

/// Where to report and what to tell the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportSettings {
    /// The server, and the TLS files to reach it with.
    pub server: ServerArgs,
    /// Who found the secrets, for the audit trail.
    pub source: String,
    /// Where they were found, for the audit trail; may be empty.
    pub url: String,
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
    let mut client = LeakServiceClient::new(settings.server.connect().await?);
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
                let why = match crate::cli::text::one_line(status.message()) {
                    empty if empty.is_empty() => status.code().description().to_owned(),
                    message => message,
                };
                anyhow!(
                    "{} refused the report: {:?}: {why}",
                    settings.server.server,
                    status.code()
                )
            })?
            .into_inner();
        if response.results.len() != batch.len() {
            bail!(
                "{} answered {} results for {} secrets",
                settings.server.server,
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
