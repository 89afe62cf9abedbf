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
        audit::{AuditEvent, token_fields},
        grant::{self, Power},
        secret::TokenSecret,
        token::{self, Token, limits, parse_owner, parse_type},
        token_type::Violation,
    },
    encoded::EncodedToken,
    error::Error,
    pb::v1::{
        CreateTokenRequest, CreateTokenResponse, DeleteTokenRequest, GetTokenRequest,
        ListTokensRequest, ListTokensResponse, RevokeTokensRequest, RevokeTokensResponse,
        RotateTokenRequest, RotateTokenResponse, SetTokenEnabledRequest, Token as PbToken,
        UpdateTokenRequest, token_service_server::TokenService,
    },
    store::{ListQuery, RevokeFilter, Rotation, Scope, UpdateOutcome},
};

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
        let token_type = self
            .state
            .store
            .get_type(&token.token_type)
            .await?
            .ok_or_else(|| {
                Error::invalid(
                    "token.type",
                    format!(
                        "{:?} is not a registered token type (see TokenTypeService.ListTokenTypes)",
                        token.token_type
                    ),
                )
            })?;
        token_type.template.fill_defaults(&mut token, now);
        grant::inherit_limits(&caller.token, &mut token);
        token_type
            .template
            .check(&token_type.id, &token)
            .map_err(template_error)?;
        grant::check(&caller.token, &token, &Power::ALL).map_err(Error::PermissionDenied)?;
        let mut audit = caller.event("create", AuditEvent::token_target(token.id), now);
        let mut fields: Vec<&str> = SETTABLE_FIELDS.to_vec();
        fields.push("owner");
        audit.changes = token_fields(&token, &fields);
        audit
            .changes
            .insert("owner".into(), token.owner.clone().into());
        self.state.store.insert(&token, &audit).await?;
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
            self.check_template(&current, &updated).await?;
            updated.update_time = now;
            let mut audit = caller.event("update", AuditEvent::token_target(id), now);
            let fields: Vec<&str> = paths.iter().map(String::as_str).collect();
            audit.changes = token_fields(&updated, &fields);
            match self
                .state
                .store
                .update(&updated, caller.scope(), &audit)
                .await?
            {
                UpdateOutcome::Updated(token) => {
                    self.state.evict(&token);
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
        let limit = convert::parse_page_size(request.page_size)?;
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
        if !request.r#type.is_empty() {
            parse_type(&request.r#type).map_err(|m| Error::invalid("type", m))?;
        }
        if request.name_prefix.len() > limits::NAME_LEN {
            return Err(Error::invalid(
                "name_prefix",
                format!("is longer than {} bytes", limits::NAME_LEN),
            ));
        }
        let mut query = ListQuery {
            scope,
            after,
            limit: limit + 1,
            token_type: (!request.r#type.is_empty()).then_some(request.r#type.as_str()),
            enabled: request.enabled,
            name_prefix: (!request.name_prefix.is_empty()).then_some(request.name_prefix.as_str()),
            expired: request.expired,
            now: token::now(),
            bindings: convert::parse_bindings(&request.bindings, "bindings")?,
        };
        let mut tokens = self.state.store.list(&query).await?;
        query.after = None;
        let total_size = self.state.store.count(&query).await?;
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
            total_size,
        })
    }

    /// Checks an updated token against its type's template. A token whose type is no
    /// longer registered may keep it, but may not move to an unregistered type.
    async fn check_template(&self, current: &Token, updated: &Token) -> Result<(), Error> {
        match self.state.store.get_type(&updated.token_type).await? {
            Some(token_type) => token_type
                .template
                .check(&token_type.id, updated)
                .map_err(template_error),
            None if updated.token_type == current.token_type => Ok(()),
            None => Err(Error::invalid(
                "token.type",
                format!("{:?} is not a registered token type", updated.token_type),
            )),
        }
    }

    async fn rotate(
        &self,
        caller: &Caller,
        request: RotateTokenRequest,
    ) -> Result<RotateTokenResponse, Error> {
        let id = convert::parse_id(&request.id, "id")?;
        let grace = match &request.grace_period {
            None => None,
            Some(d) if d.seconds == 0 && d.nanos == 0 => None,
            Some(d) => {
                if d.seconds < 0 || d.nanos < 0 || d.seconds > limits::GRACE_SECONDS {
                    return Err(Error::invalid(
                        "grace_period",
                        "must be between 0 and 30 days",
                    ));
                }
                Some(Duration::seconds(d.seconds) + Duration::nanoseconds(i64::from(d.nanos)))
            }
        };
        let current = self
            .state
            .store
            .get(id, caller.scope())
            .await?
            .ok_or_else(|| not_found(id))?;
        let now = token::now();
        let secret = TokenSecret::generate(&self.state.prefix);
        // Rotation never extends a lifetime: the old secret ends by the token's expiry too.
        let previous_until = grace.map(|grace| {
            let until = (now + grace).trunc_subsecs(6);
            current.expire_time.map_or(until, |at| until.min(at))
        });
        let mut audit = caller.event("rotate", AuditEvent::token_target(id), now);
        audit
            .changes
            .insert("display_hint".into(), secret.display_hint().into());
        audit.changes.insert(
            "previous_secret_expire_time".into(),
            previous_until.map_or(serde_json::Value::Null, |t| t.to_rfc3339().into()),
        );
        let rotation = Rotation {
            hash: secret.hash(),
            display_hint: secret.display_hint(),
            previous_until,
            now,
        };
        let token = self
            .state
            .store
            .rotate(id, &rotation, caller.scope(), &audit)
            .await?
            .ok_or_else(|| not_found(id))?;
        // Every secret the token had or has: the old one may now be a previous one, with a
        // shorter life than its cached entry, and the new one may be cached as unknown.
        self.state.evict(&current);
        self.state.evict(&token);
        tracing::info!(action = "rotate", token_id = %id, actor = %caller.token.id, "token rotated");
        Ok(RotateTokenResponse {
            token: Some(token_to_pb(&token)),
            secret: secret.expose().to_owned(),
        })
    }

    async fn revoke(
        &self,
        caller: &Caller,
        request: RevokeTokensRequest,
    ) -> Result<RevokeTokensResponse, Error> {
        let now = token::now();
        let (filter, target, target_owner) =
            match (request.owner.is_empty(), request.r#type.is_empty()) {
                (false, true) => {
                    let owner =
                        parse_owner(&request.owner).map_err(|m| Error::invalid("owner", m))?;
                    if !caller.token.is_admin() && owner != caller.token.owner {
                        return Err(Error::PermissionDenied(
                            "owner: only a caller with *:* may revoke another owner's tokens"
                                .into(),
                        ));
                    }
                    (
                        RevokeFilter::Owner(&request.owner),
                        format!("owner/{owner}"),
                        owner,
                    )
                }
                (true, false) => {
                    let kind =
                        parse_type(&request.r#type).map_err(|m| Error::invalid("type", m))?;
                    let owner = match caller.scope() {
                        Scope::All => String::new(),
                        Scope::Owner(own) => own.to_owned(),
                    };
                    (
                        RevokeFilter::Type(&request.r#type),
                        format!("type/{kind}"),
                        owner,
                    )
                }
                _ => {
                    return Err(Error::invalid(
                        "owner",
                        "give exactly one of owner and type",
                    ));
                }
            };
        let mut audit = caller.event("bulk_revoke", target, now);
        audit.target_owner = target_owner;
        let revoked = self
            .state
            .store
            .revoke(filter, now, caller.scope(), &audit)
            .await?;
        for token in &revoked {
            self.state.evict(token);
        }
        tracing::info!(
            action = "bulk_revoke",
            target = %audit.target,
            revoked = revoked.len(),
            actor = %caller.token.id,
            "tokens revoked"
        );
        Ok(RevokeTokensResponse {
            revoked_count: revoked.len() as i64,
        })
    }
}

/// A template violation, as an error naming the token field.
fn template_error(violation: Violation) -> Error {
    Error::invalid(format!("token.{}", violation.field), violation.message)
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = authorize(&self.state, &request, &[Action::Create.permission()]).await?;
        Ok(Response::new(
            self.create(&caller, request.into_inner()).await?,
        ))
    }

    async fn get_token(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<Response<PbToken>, Status> {
        let caller = authorize(&self.state, &request, &[Action::Read.permission()]).await?;
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
        let caller = authorize(&self.state, &request, &[Action::Read.permission()]).await?;
        Ok(Response::new(
            self.list(&caller, request.into_inner()).await?,
        ))
    }

    async fn update_token(
        &self,
        request: Request<UpdateTokenRequest>,
    ) -> Result<Response<PbToken>, Status> {
        let caller = authorize(&self.state, &request, &[Action::Write.permission()]).await?;
        let token = self.update(&caller, request.into_inner()).await?;
        Ok(Response::new(token_to_pb(&token)))
    }

    async fn set_token_enabled(
        &self,
        request: Request<SetTokenEnabledRequest>,
    ) -> Result<Response<PbToken>, Status> {
        let caller = authorize(&self.state, &request, &[Action::Write.permission()]).await?;
        let SetTokenEnabledRequest { id, enabled } = request.into_inner();
        let id = convert::parse_id(&id, "id")?;
        let now = token::now();
        let audit = caller
            .event(
                if enabled { "enable" } else { "disable" },
                AuditEvent::token_target(id),
                now,
            )
            .change("enabled", enabled);
        let token = self
            .state
            .store
            .set_enabled(id, enabled, now, caller.scope(), &audit)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| not_found(id))?;
        self.state.evict(&token);
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
        let caller = authorize(&self.state, &request, &[Action::Delete.permission()]).await?;
        let id = convert::parse_id(&request.get_ref().id, "id")?;
        let audit = caller.event("delete", AuditEvent::token_target(id), token::now());
        let deleted = self
            .state
            .store
            .delete(id, caller.scope(), &audit)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| not_found(id))?;
        self.state.evict(&deleted);
        tracing::info!(action = "delete", token_id = %id, actor = %caller.token.id, "token deleted");
        Ok(Response::new(()))
    }

    async fn rotate_token(
        &self,
        request: Request<RotateTokenRequest>,
    ) -> Result<Response<RotateTokenResponse>, Status> {
        let caller = authorize(&self.state, &request, &[Action::Write.permission()]).await?;
        Ok(Response::new(
            self.rotate(&caller, request.into_inner()).await?,
        ))
    }

    async fn revoke_tokens(
        &self,
        request: Request<RevokeTokensRequest>,
    ) -> Result<Response<RevokeTokensResponse>, Status> {
        let caller = authorize(&self.state, &request, &[Action::Write.permission()]).await?;
        Ok(Response::new(
            self.revoke(&caller, request.into_inner()).await?,
        ))
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
