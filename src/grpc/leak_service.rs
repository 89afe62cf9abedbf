//! LeakService: anyone who found one of our secrets reports it, and it stops working.
//! Needs no credential; rate limited per client address.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{AppState, auth::origin};
use crate::{
    domain::leak::Report,
    error::Error,
    leaks::report::{self, Channel, Outcome},
    pb::v1::{
        LeakOutcome, ReportLeakedTokensRequest, ReportLeakedTokensResponse, ReportedSecret,
        leak_service_server::LeakService,
    },
};

/// The LeakService implementation.
pub struct LeakApi {
    state: Arc<AppState>,
}

impl LeakApi {
    /// Builds the service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// Encodes a report's outcomes, shared with the JSON form on the HTTP port.
pub fn encode(outcomes: Vec<Outcome>) -> ReportLeakedTokensResponse {
    let revoked = outcomes.iter().filter(|o| o.ours).count();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    ReportLeakedTokensResponse {
        revoked: count(revoked),
        unknown: count(outcomes.len() - revoked),
        results: outcomes
            .into_iter()
            .map(|o| ReportedSecret {
                display_hint: o.display_hint,
                outcome: if o.ours {
                    LeakOutcome::Revoked
                } else {
                    LeakOutcome::Unknown
                }
                .into(),
            })
            .collect(),
    }
}

/// Checks a ReportLeakedTokens request and reports it: the one path of the gRPC and the
/// JSON forms.
pub async fn report_leaked_tokens(
    state: &AppState,
    request: &ReportLeakedTokensRequest,
    origin: crate::grpc::auth::Origin,
) -> Result<ReportLeakedTokensResponse, Error> {
    report::admit(state, origin.limit_key)?;
    let from = Report::parse(&request.source, &request.url)
        .map_err(|(field, message)| Error::invalid(field, message))?;
    let outcomes = report::report(state, &request.secrets, &from, Channel::Api, origin).await?;
    Ok(encode(outcomes))
}

#[tonic::async_trait]
impl LeakService for LeakApi {
    async fn report_leaked_tokens(
        &self,
        request: Request<ReportLeakedTokensRequest>,
    ) -> Result<Response<ReportLeakedTokensResponse>, Status> {
        let origin = origin(&self.state, &request);
        let answer = report_leaked_tokens(&self.state, request.get_ref(), origin).await?;
        Ok(Response::new(answer))
    }
}
