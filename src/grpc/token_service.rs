//! TokenService: create, get, list, update, enable/disable and delete tokens.

use std::sync::Arc;

use chrono::{Duration, SubsecRound};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    AppState,
    auth::{Action, Caller, authorize},
    convert::{self, SETTABLE_FIELDS, apply_field, token_to_pb},
};
use crate::{
    domain::{
        grant::{self, Power},
        secret::TokenSecret,
        token::{self, Token, parse_owner},
    },
    encoded::EncodedToken,
    error::Error,
    pb::v1::{
        CreateTokenRequest, CreateTokenResponse, DeleteTokenRequest, GetTokenRequest,
        ListTokensRequest, ListTokensResponse, SetTokenEnabledRequest, Token as PbToken,
        UpdateTokenRequest, token_service_server::TokenService,
    },
    store::{ListQuery, Scope, UpdateOutcome},
};

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;
/// The longest `ttl` accepted: 100 years.
const MAX_TTL_SECONDS: i64 = 100 * 366 * 24 * 3600;
/// How often an update is retried when another change to the same token wins the race.
const UPDATE_ATTEMPTS: usize = 5;

/// The TokenService implementation.
pub struct TokenApi {
    state: Arc<AppState>,
}

impl TokenApi {
    /// Builds the service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn create(
        &self,
        caller: &Caller,
        request: CreateTokenRequest,
    ) -> Result<CreateTokenResponse, Error> {
        let spec = request
            .token
            .ok_or_else(|| Error::invalid("token", "is required"))?;
        let now = token::now();
        let owner = if spec.owner.is_empty() {
            caller.token.owner.clone()
        } else {
            parse_owner(&spec.owner).map_err(|m| Error::invalid("token.owner", m))?
        };
        if owner != caller.token.owner && !caller.token.is_admin() {
            return Err(Error::PermissionDenied(
                "token.owner: only a caller with *:* may create tokens for another owner".into(),
            ));
        }
        let secret = TokenSecret::generate(&self.state.prefix);
        let mut token = Token::new(owner, &secret, Some(caller.token.id), now);
        for path in SETTABLE_FIELDS {
            apply_field(&mut token, &spec, path, now)?;
        }
        if let Some(ttl) = &request.ttl {
            if spec.expire_time.is_some() {
                return Err(Error::invalid(
                    "ttl",
                    "give either ttl or token.expire_time, not both",
                ));
            }
            token.expire_time = Some((now + parse_ttl(ttl)?).trunc_subsecs(6));
        }
        grant::inherit_limits(&caller.token, &mut token);
        grant::check(&caller.token, &token, &Power::ALL).map_err(Error::PermissionDenied)?;
        self.state.store.insert(&token).await?;
        self.state
            .cache
            .insert_new(token.secret_hash, Arc::new(EncodedToken::new(&token)));
        tracing::info!(
            action = "create",
            token_id = %token.id,
            owner = %token.owner,
            actor = %caller.token.id,
            "token created"
        );
        Ok(CreateTokenResponse {
            token: Some(token_to_pb(&token)),
            secret: secret.expose().to_owned(),
        })
    }

    async fn update(&self, caller: &Caller, request: UpdateTokenRequest) -> Result<Token, Error> {
        let spec = request
            .token
            .ok_or_else(|| Error::invalid("token", "is required"))?;
        let id = convert::parse_id(&spec.id, "token.id")?;
        let paths = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                format!(
                    "must name the fields to update: {}",
                    SETTABLE_FIELDS.join(", ")
                ),
            ));
        }
        let powers: Vec<Power> = paths.iter().filter_map(|path| power_of(path)).collect();
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self
                .state
                .store
                .get(id, caller.scope())
                .await?
                .ok_or_else(|| not_found(id))?;
            let now = token::now();
            let mut updated = current.clone();
            for path in &paths {
                apply_field(&mut updated, &spec, path, now)?;
            }
            grant::check(&caller.token, &updated, &powers).map_err(Error::PermissionDenied)?;
            updated.update_time = now;
            match self.state.store.update(&updated, caller.scope()).await? {
                UpdateOutcome::Updated(token) => {
                    self.state.cache.invalidate(&token.secret_hash);
                    tracing::info!(
                        action = "update",
                        token_id = %id,
                        fields = %paths.join(","),
                        actor = %caller.token.id,
                        "token updated"
                    );
                    return Ok(*token);
                }
                UpdateOutcome::NotFound => return Err(not_found(id)),
                UpdateOutcome::Conflict => continue,
            }
        }
        Err(Error::Aborted(
            "token was changed concurrently; retry".into(),
        ))
    }

    async fn list(
        &self,
        caller: &Caller,
        request: ListTokensRequest,
    ) -> Result<ListTokensResponse, Error> {
        let limit = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 || n as u32 > MAX_PAGE_SIZE => {
                return Err(Error::invalid(
                    "page_size",
                    format!("must be between 1 and {MAX_PAGE_SIZE}"),
                ));
            }
            n => n as u32,
        };
        let after = convert::decode_page_token(&request.page_token)?;
        let scope = match (request.owner.as_str(), caller.scope()) {
            ("", scope) => scope,
            (owner, Scope::All) => Scope::Owner(owner),
            (owner, Scope::Owner(own)) if owner == own => Scope::Owner(own),
            (_, Scope::Owner(_)) => {
                return Err(Error::PermissionDenied(
                    "owner: only a caller with *:* may list another owner's tokens".into(),
                ));
            }
        };
        let mut tokens = self
            .state
            .store
            .list(&ListQuery {
                scope,
                after,
                limit: limit + 1,
            })
            .await?;
        let next_page_token = if tokens.len() > limit as usize {
            tokens.truncate(limit as usize);
            tokens
                .last()
                .map(|t| convert::encode_page_token(t.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListTokensResponse {
            tokens: tokens.iter().map(token_to_pb).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = authorize(&self.state, &request, Action::Create).await?;
        Ok(Response::new(
            self.create(&caller, request.into_inner()).await?,
        ))
    }

    async fn get_token(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<Response<PbToken>, Status> {
        let caller = authorize(&self.state, &request, Action::Read).await?;
        let id = convert::parse_id(&request.get_ref().id, "id")?;
        let token = self
            .state
            .store
            .get(id, caller.scope())
            .await
            .map_err(Error::from)?
            .ok_or_else(|| not_found(id))?;
        Ok(Response::new(token_to_pb(&token)))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let caller = authorize(&self.state, &request, Action::Read).await?;
        Ok(Response::new(
            self.list(&caller, request.into_inner()).await?,
        ))
    }

    async fn update_token(
        &self,
        request: Request<UpdateTokenRequest>,
    ) -> Result<Response<PbToken>, Status> {
        let caller = authorize(&self.state, &request, Action::Write).await?;
        let token = self.update(&caller, request.into_inner()).await?;
        Ok(Response::new(token_to_pb(&token)))
    }

    async fn set_token_enabled(
        &self,
        request: Request<SetTokenEnabledRequest>,
    ) -> Result<Response<PbToken>, Status> {
        let caller = authorize(&self.state, &request, Action::Write).await?;
        let SetTokenEnabledRequest { id, enabled } = request.into_inner();
        let id = convert::parse_id(&id, "id")?;
        let token = self
            .state
            .store
            .set_enabled(id, enabled, token::now(), caller.scope())
            .await
            .map_err(Error::from)?
            .ok_or_else(|| not_found(id))?;
        self.state.cache.invalidate(&token.secret_hash);
        tracing::info!(
            action = if enabled { "enable" } else { "disable" },
            token_id = %id,
            actor = %caller.token.id,
            "token {}",
            if enabled { "enabled" } else { "disabled" }
        );
        Ok(Response::new(token_to_pb(&token)))
    }

    async fn delete_token(
        &self,
        request: Request<DeleteTokenRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = authorize(&self.state, &request, Action::Delete).await?;
        let id = convert::parse_id(&request.get_ref().id, "id")?;
        let deleted = self
            .state
            .store
            .delete(id, caller.scope())
            .await
            .map_err(Error::from)?
            .ok_or_else(|| not_found(id))?;
        self.state.cache.invalidate(&deleted.secret_hash);
        tracing::info!(action = "delete", token_id = %id, actor = %caller.token.id, "token deleted");
        Ok(Response::new(()))
    }
}

fn parse_ttl(ttl: &prost_types::Duration) -> Result<Duration, Error> {
    if ttl.seconds < 0 || ttl.nanos < 0 || (ttl.seconds == 0 && ttl.nanos == 0) {
        return Err(Error::invalid("ttl", "must be positive"));
    }
    if ttl.seconds > MAX_TTL_SECONDS || ttl.nanos >= 1_000_000_000 {
        return Err(Error::invalid("ttl", "must be at most 100 years"));
    }
    Ok(Duration::seconds(ttl.seconds) + Duration::nanoseconds(i64::from(ttl.nanos)))
}

fn power_of(path: &str) -> Option<Power> {
    Some(match path {
        "permissions" => Power::Permissions,
        "read_only" => Power::ReadOnly,
        "expire_time" => Power::Expiry,
        "allowed_cidrs" => Power::Cidrs,
        "allowed_hosts" => Power::Hosts,
        "bindings" => Power::Bindings,
        _ => return None,
    })
}

fn not_found(id: Uuid) -> Error {
    Error::NotFound(format!("token {id} not found"))
}
