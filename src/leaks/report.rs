//! Taking a report of leaked secrets: the one path that ReportLeakedTokens (gRPC), its JSON
//! form and GitHub's secret scanning endpoint (both on the HTTP port) share. Each front end
//! decodes and checks its request, then calls [`report`].

use std::{collections::HashMap, net::IpAddr};

use crate::{
    domain::{
        leak::{self, Effect, Report},
        secret::{SecretHash, TokenSecret},
        token,
    },
    error::Error,
    grpc::{AppState, auth::Origin},
    metrics::LeakSource,
};

/// Who sent a report: the front end knows, and only a signed GitHub report counts as GitHub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// ReportLeakedTokens, over gRPC or as JSON: anyone.
    Api,
    /// GitHub's secret scanning, its signature checked.
    Github,
}

/// What became of one reported secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The secret's display hint; empty when it does not have the shape of a secret.
    pub display_hint: String,
    /// Whether it was one of ours (and so works no more).
    pub ours: bool,
}

/// The source a report's metrics count it under: a fixed set, whatever the reporter wrote.
fn metric_source(channel: Channel, report: &Report) -> LeakSource {
    match (channel, report.source.as_str()) {
        (Channel::Github, _) => LeakSource::Github,
        (Channel::Api, "scan") => LeakSource::Scan,
        (Channel::Api, leak::DEFAULT_SOURCE) => LeakSource::Report,
        (Channel::Api, _) => LeakSource::Other,
    }
}

/// Checks the number of secrets in a report (the field is named `field` in errors).
pub fn check_count(count: usize, field: &str) -> Result<(), Error> {
    if count == 0 {
        return Err(Error::invalid(field, "is required: at least one secret"));
    }
    if count > leak::MAX_SECRETS {
        return Err(Error::invalid(
            field,
            format!("at most {} secrets per report", leak::MAX_SECRETS),
        ));
    }
    Ok(())
}

/// Counts one report from `limit_key` against the per-address limit of leak reports.
pub fn admit(state: &AppState, limit_key: Option<IpAddr>) -> Result<(), Error> {
    if state.leak_report_rate.allow(limit_key) {
        Ok(())
    } else {
        Err(Error::ResourceExhausted(
            "too many leak reports from this address; try again in a minute".into(),
        ))
    }
}

/// Checks the source and URL of a ReportLeakedTokens request, over gRPC or as JSON, and
/// reports its secrets. (The front end counts the request against the per-address limit
/// first, with [`admit`]: before it reads a body.)
pub async fn report_from_api(
    state: &AppState,
    secrets: &[String],
    source: &str,
    url: &str,
    origin: Origin,
) -> Result<Vec<Outcome>, Error> {
    check_count(secrets.len(), "secrets")?;
    let from =
        Report::parse(source, url).map_err(|(field, message)| Error::invalid(field, message))?;
    report(state, secrets, &from, Channel::Api, origin).await
}

/// A reporter's text with any of our secrets in it cut down to their display hints: a
/// URL may carry one (`?key=ta_…`), and the audit trail and the log never hold a secret.
fn redacted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for found in crate::scan::find_secrets(text.as_bytes()) {
        // Secrets are ASCII, so their ends are character boundaries.
        let start = usize::try_from(found.offset).unwrap_or(text.len());
        let end = start + found.secret.expose().len();
        out.push_str(&text[at..start]);
        out.push_str(&found.hint());
        out.push('…');
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// Makes every reported secret that is one of ours stop working, on every replica (the
/// store's change feed tells the others; this replica's cache is evicted here), audits
/// each, counts them and logs each at WARN. Answers per secret, in order. A store failure
/// part way leaves the secrets handled so far revoked; the reporter may send all again.
pub async fn report<S: AsRef<str>>(
    state: &AppState,
    secrets: &[S],
    report: &Report,
    channel: Channel,
    origin: Origin,
) -> Result<Vec<Outcome>, Error> {
    check_count(secrets.len(), "secrets")?;
    let source = metric_source(channel, report);
    let report = &Report {
        source: report.source.clone(),
        url: redacted(&report.url),
    };
    let client_ip = origin.client.map(|ip| ip.to_string()).unwrap_or_default();
    // Malformed ones are not ours and need no lookup; the rest are looked up in one query,
    // so that a report of well-formed secrets no token has (anyone can make them) costs
    // one read, not one per secret.
    let parsed: Vec<Option<TokenSecret>> = secrets
        .iter()
        .map(|secret| TokenSecret::parse(secret.as_ref().trim()).ok())
        .collect();
    let mut hashes: Vec<SecretHash> = parsed.iter().flatten().map(TokenSecret::hash).collect();
    hashes.sort_unstable_by_key(|hash| *hash.as_bytes());
    hashes.dedup();
    let found: HashMap<SecretHash, token::Token> = state
        .store
        .lookup_many(&hashes)
        .await?
        .into_iter()
        .flat_map(|token| {
            let previous = token.previous_hash.map(|hash| (hash, token.clone()));
            [Some((token.secret_hash, token)), previous]
                .into_iter()
                .flatten()
        })
        .collect();
    let mut ended: HashMap<SecretHash, bool> = HashMap::new();
    let mut outcomes = Vec::with_capacity(secrets.len());
    for secret in parsed {
        let Some(secret) = secret else {
            outcomes.push(Outcome {
                display_hint: String::new(),
                ours: false,
            });
            state.metrics.leak_reported(source, false);
            continue;
        };
        let hash = secret.hash();
        let ours = match (ended.get(&hash), found.get(&hash)) {
            (Some(ours), _) => *ours,
            (None, None) => false,
            (None, Some(token)) => {
                let ours = end(state, &hash, token, report, &client_ip, origin.limit_key).await?;
                ended.insert(hash, ours);
                ours
            }
        };
        state.metrics.leak_reported(source, ours);
        outcomes.push(Outcome {
            display_hint: secret.display_hint(),
            ours,
        });
    }
    Ok(outcomes)
}

/// Ends one leaked secret, which `found` (as read before the report's write) has;
/// whether it was ours. A secret that already works no more, and cannot come back but by
/// a rotation, is audited again only a few times a minute per address (as failed
/// authentications are), so that replaying one cannot fill the audit trail; the first
/// report of a disabled token's current secret is always written, as it is what keeps the
/// token from being enabled with it.
async fn end(
    state: &AppState,
    hash: &SecretHash,
    found: &token::Token,
    report: &Report,
    client_ip: &str,
    limit_key: Option<IpAddr>,
) -> Result<bool, Error> {
    let now = token::now();
    if matches!(
        leak::effect(found, hash, now),
        Some((_, Effect::AlreadyRevoked))
    ) && !state.failure_audit.allow(limit_key)
    {
        return Ok(true);
    }
    let audit =
        |token: &token::Token, which, effect| report.audit(token, which, effect, client_ip, now);
    let Some(leaked) = state.store.end_leaked(hash, now, &audit).await? else {
        return Ok(false);
    };
    state.evict(&leaked.before);
    state.evict(&leaked.after);
    let done = match leaked.effect {
        Effect::Disable => "token disabled",
        Effect::MarkReported => "token already disabled; marked reported",
        Effect::EndGrace => "previous secret's grace period ended",
        Effect::AlreadyRevoked => "secret already revoked",
    };
    tracing::warn!(
        token_id = %leaked.before.id,
        owner = %leaked.before.owner,
        secret = leaked.which.name(),
        source = %report.source,
        url = %report.url,
        outcome = done,
        "leaked token reported"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::secret::{TokenPrefix, TokenSecret};

    #[test]
    fn secrets_in_a_reporters_text_are_cut_to_their_hints() {
        let secret = TokenSecret::generate(&TokenPrefix::default());
        let url = format!("https://paste.example.com/?k={}&x=ü", secret.expose());
        let cut = redacted(&url);
        assert!(!cut.contains(secret.expose()), "{cut}");
        assert_eq!(
            cut,
            format!(
                "https://paste.example.com/?k={}…&x=ü",
                secret.display_hint()
            )
        );
        assert_eq!(redacted("https://github.com/o/r"), "https://github.com/o/r");
    }
}
