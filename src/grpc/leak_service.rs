//! LeakService: anyone who found one of our secrets reports it, and it stops working.
//! Needs no credential; rate limited per client address.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{AppState, auth::origin};
use crate::{
    leaks::report::{self, Outcome},
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

/// Encodes a report's outcomes.
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

#[tonic::async_trait]
impl LeakService for LeakApi {
    async fn report_leaked_tokens(
        &self,
        request: Request<ReportLeakedTokensRequest>,
    ) -> Result<Response<ReportLeakedTokensResponse>, Status> {
        let origin = origin(&self.state, &request);
        if request
            .extensions()
            .get::<super::auth::Admitted>()
            .is_none()
        {
            report::admit(&self.state, origin.limit_key)?;
        }
        let request = request.get_ref();
        let outcomes = report::report_from_api(
            &self.state,
            &request.secrets,
            &request.source,
            &request.url,
            origin,
        )
        .await?;
        Ok(Response::new(encode(outcomes)))
    }
}
