//! AuditService: the audit trail, newest first.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    AppState,
    auth::authenticate,
    convert::{self, chrono_to_timestamp, json_to_struct, timestamp_to_chrono},
};
use crate::{
    domain::{
        audit::AuditEvent,
        policy::{Action, Request as Policy},
    },
    error::Error,
    pb::v1::{
        AuditEvent as PbAuditEvent, ListAuditEventsRequest, ListAuditEventsResponse,
        audit_service_server::AuditService,
    },
    store::{AuditQuery, Scope},
};

/// The longest filter string accepted.
const FILTER_LEN: usize = 256;

/// The AuditService implementation.
pub struct AuditApi {
    state: Arc<AppState>,
}

impl AuditApi {
    /// Builds the service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

fn event_to_pb(event: &AuditEvent) -> PbAuditEvent {
    PbAuditEvent {
        id: event.id.to_string(),
        time: Some(chrono_to_timestamp(event.time)),
        actor_id: event.actor_id.map(|id| id.to_string()).unwrap_or_default(),
        actor_owner: event.actor_owner.clone(),
        action: event.action.clone(),
        target: event.target.clone(),
        target_owner: event.target_owner.clone(),
        changes: Some(json_to_struct(&event.changes)),
        client_ip: event.client_ip.clone(),
        detail: event.detail.clone(),
    }
}

fn filter<'a>(value: &'a str, field: &str) -> Result<Option<&'a str>, Error> {
    if value.len() > FILTER_LEN {
        return Err(Error::invalid(
            field,
            format!("is longer than {FILTER_LEN} bytes"),
        ));
    }
    Ok((!value.is_empty()).then_some(value))
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let caller = authenticate(&self.state, &request, Action::ReadAudit).await?;
        let request = request.into_inner();
        let limit = convert::parse_page_size(request.page_size)?;
        let query = AuditQuery {
            owner: match caller.scope() {
                Scope::All => None,
                Scope::Owner(owner) => Some(owner),
            },
            before: convert::decode_page_token(&request.page_token)?,
            limit: limit + 1,
            target: filter(&request.target, "target")?,
            actor_id: match request.actor_id.as_str() {
                "" => None,
                id => Some(convert::parse_id(id, "actor_id")?),
            },
            action: filter(&request.action, "action")?,
            start_time: request
                .start_time
                .as_ref()
                .map(|t| timestamp_to_chrono(t, "start_time"))
                .transpose()?,
            end_time: request
                .end_time
                .as_ref()
                .map(|t| timestamp_to_chrono(t, "end_time"))
                .transpose()?,
        };
        caller.authorize(&self.state, &Policy::ReadAudit).await?;
        let mut events = self
            .state
            .store
            .list_audit(&query)
            .await
            .map_err(Error::from)?;
        let next_page_token = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events
                .last()
                .map(|e| convert::encode_page_token(e.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListAuditEventsResponse {
            events: events.iter().map(event_to_pb).collect(),
            next_page_token,
        }))
    }
}
