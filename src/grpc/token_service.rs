//! TokenService: create, get, list, update, enable/disable, rotate, revoke and delete
//! tokens. Each call decodes its request, reads what the policy needs, asks the policy
//! (`Caller::authorize`), writes what it allowed, and encodes the answer.

use std::sync::Arc;

use chrono::{Duration, SubsecRound};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    AppState,
    auth::{self, Caller, authenticate},
    convert::{self, apply_field, settable_list, token_to_pb},
};
use crate::{
    domain::{
        audit::AuditEvent,
        fields, leak,
        policy::{self, Action, Refusal, Request as Policy},
        power,
        secret::TokenSecret,
        token::{self, Token, limits, parse_owner, parse_type},
        token_type::TokenType,
    },
    error::Error,
    pb::v1::{
        CreateTokenRequest, CreateTokenResponse, DeleteTokenRequest, GetTokenRequest,
        ListTokensRequest, ListTokensResponse, LookupTokenRequest, LookupTokenResponse,
        RevokeTokensRequest, RevokeTokensResponse, RotateTokenRequest, RotateTokenResponse,
        SecretKind, SetTokenEnabledRequest, Token as PbToken, UpdateTokenRequest,
        token_service_server::TokenService,
    },
    store::{Change, Changed, Decided, ListQuery, RevokeOutcome, RevokeQuery, Rotation},
};

/// The longest `ttl` accepted: 100 years.
const MAX_TTL_SECONDS: i64 = 100 * 366 * 24 * 3600;

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
        let secret = TokenSecret::generate(&self.state.prefix);
        let mut token = Token::new(owner, &secret, Some(caller.token.id), now);
        for name in fields::settable() {
            apply_field(&mut token, &spec, name, now)?;
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
        let kind = self
            .registered_type(&token.token_type)
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
        kind.template.fill_defaults(&mut token, now);
        power::inherit_limits(&caller.token, &mut token);
        caller.allow(
            &self.state,
            &Policy::Create {
                token: &token,
                kind: &kind,
            },
        )?;
        let mut audit = caller.event(Action::CreateToken, AuditEvent::token_target(token.id), now);
        let recorded: Vec<&str> = fields::settable().chain(["owner"]).collect();
        audit.changes = fields::audited(&token, &recorded);
        let delegated = power::delegated_uses(&caller.token, None, &token);
        let changed = self
            .state
            .store
            .insert(&token, kind.revision, caller.actor(), delegated, &audit)
            .await?;
        self.finish(caller, token.id, changed)?;
        // Not cached here: a Verify fills the cache, so that no revocation racing this
        // call can be undone by a stale entry.
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
                format!("must name the fields to update: {}", settable_list()),
            ));
        }
        let now = token::now();
        // Every named field parses (or the call is INVALID_ARGUMENT) before anything is read.
        let mut probe = caller.token.as_ref().clone();
        for path in &paths {
            apply_field(&mut probe, &spec, path, now)?;
        }
        let kinds = self.state.store.list_types().await?;
        let kind = |id: &str| kinds.iter().find(|k| k.id == id);
        let changed: Vec<&str> = paths.iter().map(String::as_str).collect();
        let decide = |before: &Token| {
            let mut after = before.clone();
            for path in &paths {
                apply_field(&mut after, &spec, path, now).map_err(|e| Refusal::Invalid {
                    field: "token".into(),
                    message: e.to_string(),
                })?;
            }
            after.update_time = now;
            caller.allow(
                &self.state,
                &Policy::Update {
                    before,
                    after: &after,
                    before_kind: kind(&before.token_type),
                    after_kind: kind(&after.token_type),
                },
            )?;
            let mut audit = caller.event(Action::UpdateToken, AuditEvent::token_target(id), now);
            audit.changes = fields::audited(&after, &changed);
            let templates = [kind(&before.token_type), kind(&after.token_type)]
                .into_iter()
                .flatten()
                .map(|k| (k.id.clone(), k.revision))
                .collect();
            Ok(Decided {
                delegated_uses: power::delegated_uses(&caller.token, Some(before), &after),
                change: Change::Update(Box::new(after)),
                audit,
                templates,
            })
        };
        let changed = self.state.store.change(id, caller.actor(), &decide).await?;
        let (_, after) = self.finish(caller, id, changed)?;
        tracing::info!(
            action = "update",
            token_id = %id,
            fields = %paths.join(","),
            actor = %caller.token.id,
            "token updated"
        );
        Ok(after.expect("an update keeps the token"))
    }

    async fn set_enabled(&self, caller: &Caller, id: Uuid, enabled: bool) -> Result<Token, Error> {
        let action = if enabled {
            Action::EnableToken
        } else {
            Action::DisableToken
        };
        let now = token::now();
        let decide = |before: &Token| {
            caller.allow(
                &self.state,
                &Policy::SetEnabled {
                    token: before,
                    enabled,
                },
            )?;
            Ok(Decided {
                // Nothing to write, and nothing for a flood of no-op calls to race with.
                change: if before.enabled == enabled {
                    Change::Keep
                } else {
                    Change::SetEnabled(enabled)
                },
                audit: caller
                    .event(action, AuditEvent::token_target(id), now)
                    .change("enabled", enabled),
                delegated_uses: 0,
                templates: Vec::new(),
            })
        };
        let changed = self.state.store.change(id, caller.actor(), &decide).await?;
        let (_, after) = self.finish(caller, id, changed)?;
        tracing::info!(
            action = action.audit_name(),
            token_id = %id,
            actor = %caller.token.id,
            "token {}",
            if enabled { "enabled" } else { "disabled" }
        );
        Ok(after.expect("enabling or disabling keeps the token"))
    }

    async fn delete(&self, caller: &Caller, id: Uuid) -> Result<(), Error> {
        let now = token::now();
        let decide = |before: &Token| {
            caller.allow(&self.state, &Policy::Delete(before))?;
            Ok(Decided {
                change: Change::Delete,
                audit: caller.event(Action::DeleteToken, AuditEvent::token_target(id), now),
                delegated_uses: 0,
                templates: Vec::new(),
            })
        };
        let changed = self.state.store.change(id, caller.actor(), &decide).await?;
        self.finish(caller, id, changed)?;
        tracing::info!(action = "delete", token_id = %id, actor = %caller.token.id, "token deleted");
        Ok(())
    }

    async fn list(
        &self,
        caller: &Caller,
        request: ListTokensRequest,
    ) -> Result<ListTokensResponse, Error> {
        let limit = convert::parse_page_size(request.page_size)?;
        let after = convert::decode_page_token(&request.page_token)?;
        let owner = (!request.owner.is_empty()).then_some(request.owner.as_str());
        if !request.r#type.is_empty() {
            parse_type(&request.r#type).map_err(|m| Error::invalid("type", m))?;
        }
        if request.name_prefix.len() > limits::NAME_LEN {
            return Err(Error::invalid(
                "name_prefix",
                format!("is longer than {} bytes", limits::NAME_LEN),
            ));
        }
        let created_by = match request.created_by.as_str() {
            "" => None,
            id => Some(convert::parse_id(id, "created_by")?),
        };
        let bindings = convert::parse_bindings(&request.bindings, "bindings")?;
        caller
            .authorize(&self.state, &Policy::ListTokens { owner })
            .await?;
        let mut query = ListQuery {
            scope: match owner {
                Some(owner) => crate::store::Scope::Owner(owner),
                None => caller.scope(),
            },
            after,
            limit: limit + 1,
            token_type: (!request.r#type.is_empty()).then_some(request.r#type.as_str()),
            enabled: request.enabled,
            name_prefix: (!request.name_prefix.is_empty()).then_some(request.name_prefix.as_str()),
            expired: request.expired,
            now: token::now(),
            bindings,
            created_by,
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
                let over = d.seconds > limits::GRACE_SECONDS
                    || (d.seconds == limits::GRACE_SECONDS && d.nanos > 0);
                if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 || over {
                    return Err(Error::invalid(
                        "grace_period",
                        "must be between 0 and 30 days",
                    ));
                }
                Some(Duration::seconds(d.seconds) + Duration::nanoseconds(i64::from(d.nanos)))
            }
        };
        let now = token::now();
        // Made before the decision, shown only if the rotation is done.
        let secret = TokenSecret::generate(&self.state.prefix);
        let decide = |before: &Token| {
            caller.allow(
                &self.state,
                &Policy::Rotate {
                    token: before,
                    grace: grace.is_some(),
                },
            )?;
            // Rotation never extends a lifetime: the old secret ends by the token's expiry too.
            let previous_until = grace.map(|grace| {
                let until = (now + grace).trunc_subsecs(6);
                before.expire_time.map_or(until, |at| until.min(at))
            });
            let rotation = Rotation {
                hash: secret.hash(),
                display_hint: secret.display_hint(),
                previous_until,
                now,
            };
            let mut rotated = before.clone();
            rotated.display_hint = rotation.display_hint.clone();
            rotated.previous_hash = previous_until.map(|_| before.secret_hash);
            rotated.previous_hash_expire_time = previous_until;
            rotated.secret_reported_time = None;
            let mut audit = caller.event(Action::RotateToken, AuditEvent::token_target(id), now);
            let mut changed = vec!["display_hint", "previous_secret_expire_time"];
            // The rotation that puts a reported token back in service says so.
            if before.secret_reported_time.is_some() {
                changed.push("secret_reported_time");
            }
            audit.changes = fields::audited(&rotated, &changed);
            Ok(Decided {
                change: Change::Rotate(rotation),
                audit,
                delegated_uses: 0,
                templates: Vec::new(),
            })
        };
        let changed = self.state.store.change(id, caller.actor(), &decide).await?;
        let (_, after) = self.finish(caller, id, changed)?;
        tracing::info!(action = "rotate", token_id = %id, actor = %caller.token.id, "token rotated");
        Ok(RotateTokenResponse {
            token: after.as_ref().map(token_to_pb),
            secret: secret.expose().to_owned(),
        })
    }

    async fn revoke(
        &self,
        caller: &Caller,
        request: RevokeTokensRequest,
    ) -> Result<RevokeTokensResponse, Error> {
        let now = token::now();
        let given = [
            !request.owner.is_empty(),
            !request.r#type.is_empty(),
            !request.created_by.is_empty(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(Error::invalid(
                "owner",
                "give exactly one of owner, type and created_by",
            ));
        }
        let owner = if request.owner.is_empty() {
            None
        } else {
            Some(parse_owner(&request.owner).map_err(|m| Error::invalid("owner", m))?)
        };
        if !request.r#type.is_empty() {
            parse_type(&request.r#type).map_err(|m| Error::invalid("type", m))?;
        }
        let created_by = match request.created_by.as_str() {
            "" => None,
            id => Some(convert::parse_id(id, "created_by")?),
        };
        // The policy and the caller's rate limit, as for every write.
        caller.allow(
            &self.state,
            &Policy::Revoke {
                owner: owner.as_deref(),
            },
        )?;
        // A caller without `*:*` only ever reaches its own owner's tokens.
        let scope_owner = owner
            .clone()
            .or_else(|| (!caller.token.is_admin()).then(|| caller.token.owner.clone()));
        let target = match (&owner, created_by) {
            (Some(owner), _) => format!("owner/{owner}"),
            (None, Some(id)) => AuditEvent::token_target(id),
            (None, None) => format!("type/{}", request.r#type),
        };
        let mut audit = caller.event(Action::RevokeTokens, target, now);
        audit.target_owner = scope_owner.clone().unwrap_or_default();
        let query = RevokeQuery {
            owner: scope_owner.as_deref(),
            token_type: (!request.r#type.is_empty()).then_some(request.r#type.as_str()),
            descendants_of: created_by,
        };
        let include_caller = request.include_caller;
        let decide = |token: &Token| {
            caller
                .decide(&Policy::RevokeOne {
                    token,
                    include_caller,
                })
                .is_ok()
        };
        let revoked = self
            .state
            .store
            .revoke(&query, caller.actor(), &decide, now, &audit)
            .await?;
        match revoked.outcome {
            RevokeOutcome::Done => caller.used(&self.state),
            RevokeOutcome::CallerChanged => return Err(auth::caller_changed()),
            RevokeOutcome::OutOfUses => return Err(auth::out_of_uses()),
        }
        for token in &revoked.tokens {
            self.state.evict(token);
        }
        tracing::info!(
            action = "bulk_revoke",
            target = %audit.target,
            revoked = revoked.tokens.len(),
            skipped = revoked.skipped,
            actor = %caller.token.id,
            "tokens revoked"
        );
        Ok(RevokeTokensResponse {
            revoked_count: revoked.tokens.len() as i64,
            skipped_count: revoked.skipped as i64,
        })
    }

    /// The token a presented secret belongs to, whatever its state; another owner's
    /// token is as unknown as no token (the policy's `LookupToken`), so that a lookup
    /// reveals nothing beyond the caller's scope.
    async fn lookup(&self, caller: &Caller, secret: &str) -> Result<LookupTokenResponse, Error> {
        if secret.is_empty() {
            return Err(Error::invalid("secret", "is required"));
        }
        let hash = TokenSecret::hash_of_presented(secret)
            .map_err(|malformed| Error::invalid("secret", malformed.to_string()))?;
        let token = self
            .state
            .store
            .lookup(&hash)
            .await?
            .ok_or_else(|| Error::NotFound(policy::NO_TOKEN_HAS_THE_SECRET.into()))?;
        caller
            .authorize(&self.state, &Policy::LookupToken(&token))
            .await?;
        let kind = match leak::Which::of(&token, &hash) {
            Some(leak::Which::Previous) => SecretKind::Previous,
            _ => SecretKind::Current,
        };
        Ok(LookupTokenResponse {
            token: Some(token_to_pb(&token)),
            secret_kind: kind.into(),
        })
    }

    /// Reads a token as the caller may see it.
    async fn current(&self, caller: &Caller, id: Uuid) -> Result<Token, Error> {
        self.state
            .store
            .get(id, caller.scope())
            .await?
            .ok_or_else(|| not_found(id))
    }

    async fn registered_type(&self, id: &str) -> Result<Option<TokenType>, Error> {
        Ok(self.state.store.get_type(id).await?)
    }

    /// What a write did, or why it did nothing, as the call's answer: the token as it was
    /// and as it is now. Every secret either had is evicted from this replica's cache
    /// (and, through the change feed, from every other's).
    fn finish(
        &self,
        caller: &Caller,
        id: Uuid,
        changed: Changed,
    ) -> Result<(Token, Option<Token>), Error> {
        match changed {
            Changed::Done { before, after } => {
                self.state.evict(&before);
                if let Some(after) = &after {
                    self.state.evict(after);
                }
                caller.used(&self.state);
                Ok((*before, after.map(|a| *a)))
            }
            Changed::Refused(refusal) => Err(refusal.into()),
            Changed::NotFound => Err(not_found(id)),
            Changed::CallerChanged => Err(auth::caller_changed()),
            Changed::OutOfUses => Err(auth::out_of_uses()),
            Changed::TypeChanged => Err(Error::Aborted(
                "the token's type changed while the call ran; retry".into(),
            )),
            Changed::TypeGone => Err(Error::invalid(
                "token.type",
                "is no longer a registered token type",
            )),
        }
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = authenticate(&self.state, &request, Action::CreateToken).await?;
        Ok(Response::new(
            self.create(&caller, request.into_inner()).await?,
        ))
    }

    async fn get_token(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<Response<PbToken>, Status> {
        let caller = authenticate(&self.state, &request, Action::ReadTokens).await?;
        let id = convert::parse_id(&request.get_ref().id, "id")?;
        let token = self.current(&caller, id).await?;
        caller
            .authorize(&self.state, &Policy::GetToken(&token))
            .await?;
        Ok(Response::new(token_to_pb(&token)))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let caller = authenticate(&self.state, &request, Action::ReadTokens).await?;
        Ok(Response::new(
            self.list(&caller, request.into_inner()).await?,
        ))
    }

    async fn update_token(
        &self,
        request: Request<UpdateTokenRequest>,
    ) -> Result<Response<PbToken>, Status> {
        let caller = authenticate(&self.state, &request, Action::UpdateToken).await?;
        let token = self.update(&caller, request.into_inner()).await?;
        Ok(Response::new(token_to_pb(&token)))
    }

    async fn set_token_enabled(
        &self,
        request: Request<SetTokenEnabledRequest>,
    ) -> Result<Response<PbToken>, Status> {
        let enabled = request.get_ref().enabled;
        let action = if enabled {
            Action::EnableToken
        } else {
            Action::DisableToken
        };
        let caller = authenticate(&self.state, &request, action).await?;
        let id = convert::parse_id(&request.get_ref().id, "id")?;
        let token = self.set_enabled(&caller, id, enabled).await?;
        Ok(Response::new(token_to_pb(&token)))
    }

    async fn delete_token(
        &self,
        request: Request<DeleteTokenRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = authenticate(&self.state, &request, Action::DeleteToken).await?;
        let id = convert::parse_id(&request.get_ref().id, "id")?;
        self.delete(&caller, id).await?;
        Ok(Response::new(()))
    }

    async fn rotate_token(
        &self,
        request: Request<RotateTokenRequest>,
    ) -> Result<Response<RotateTokenResponse>, Status> {
        let caller = authenticate(&self.state, &request, Action::RotateToken).await?;
        Ok(Response::new(
            self.rotate(&caller, request.into_inner()).await?,
        ))
    }

    async fn revoke_tokens(
        &self,
        request: Request<RevokeTokensRequest>,
    ) -> Result<Response<RevokeTokensResponse>, Status> {
        let caller = authenticate(&self.state, &request, Action::RevokeTokens).await?;
        Ok(Response::new(
            self.revoke(&caller, request.into_inner()).await?,
        ))
    }

    async fn lookup_token(
        &self,
        request: Request<LookupTokenRequest>,
    ) -> Result<Response<LookupTokenResponse>, Status> {
        let caller = authenticate(&self.state, &request, Action::ReadTokens).await?;
        Ok(Response::new(
            self.lookup(&caller, &request.get_ref().secret).await?,
        ))
    }
}

fn parse_ttl(ttl: &prost_types::Duration) -> Result<Duration, Error> {
    if ttl.seconds < 0 || ttl.nanos < 0 || (ttl.seconds == 0 && ttl.nanos == 0) {
        return Err(Error::invalid("ttl", "must be positive"));
    }
    if ttl.nanos >= 1_000_000_000 {
        return Err(Error::invalid(
            "ttl.nanos",
            "must be less than 1,000,000,000 (a second)",
        ));
    }
    if ttl.seconds > MAX_TTL_SECONDS {
        return Err(Error::invalid("ttl", "must be at most 100 years"));
    }
    Ok(Duration::seconds(ttl.seconds) + Duration::nanoseconds(i64::from(ttl.nanos)))
}

fn not_found(id: Uuid) -> Error {
    Error::NotFound(format!("token {id} not found"))
}
