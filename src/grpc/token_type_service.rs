//! TokenTypeService: the registry of token types and their templates.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    AppState,
    auth::{self, authenticate},
    convert::{chrono_to_timestamp, struct_free_duration},
};
use crate::{
    domain::{
        policy::{Action, Request as Policy},
        token::{self, parse_description},
        token_type::{Template, TokenType, parse_type_id},
    },
    error::Error,
    pb::v1::{
        CreateTokenTypeRequest, DeleteTokenTypeRequest, GetTokenTypeRequest, ListTokenTypesRequest,
        ListTokenTypesResponse, Template as PbTemplate, TokenType as PbTokenType,
        UpdateTokenTypeRequest, token_type_service_server::TokenTypeService,
    },
    store::{TypeDeletion, TypeWrite},
};

/// Fields UpdateTokenType can change.
const TYPE_FIELDS: [&str; 3] = ["display_name", "description", "template"];

/// The TokenTypeService implementation.
pub struct TokenTypeApi {
    state: Arc<AppState>,
}

impl TokenTypeApi {
    /// Builds the service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Reads a registered type.
    async fn current(&self, id: &str) -> Result<TokenType, Error> {
        self.state
            .store
            .get_type(id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| not_found(id))
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("token type {id} not found"))
}

/// Converts a type for the API.
pub fn type_to_pb(token_type: &TokenType) -> PbTokenType {
    let template = &token_type.template;
    PbTokenType {
        id: token_type.id.clone(),
        display_name: token_type.display_name.clone(),
        description: token_type.description.clone(),
        template: Some(PbTemplate {
            required_fields: template.required_fields.clone(),
            allowed_fields: template.allowed_fields.clone(),
            required_bindings: template.required_bindings.clone(),
            default_permissions: template.default_permissions.clone(),
            max_lifetime: template
                .max_lifetime_seconds
                .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            writable: template.writable,
        }),
        builtin: token_type.builtin,
        create_time: Some(chrono_to_timestamp(token_type.create_time)),
        update_time: Some(chrono_to_timestamp(token_type.update_time)),
    }
}

fn parse_display_name(value: &str) -> Result<String, Error> {
    token::parse_name(value).map_err(|m| Error::invalid("token_type.display_name", m))
}

fn parse_template(template: Option<&PbTemplate>) -> Result<Template, Error> {
    let template = template.cloned().unwrap_or_default();
    let parsed = Template {
        required_fields: template.required_fields,
        allowed_fields: template.allowed_fields,
        required_bindings: template.required_bindings,
        default_permissions: template.default_permissions,
        max_lifetime_seconds: template
            .max_lifetime
            .as_ref()
            .map(|d| struct_free_duration(d, "token_type.template.max_lifetime"))
            .transpose()?,
        writable: template.writable,
    };
    parsed
        .validate()
        .map_err(|v| Error::invalid(format!("token_type.template.{}", v.field), v.message))?;
    Ok(parsed)
}

#[tonic::async_trait]
impl TokenTypeService for TokenTypeApi {
    async fn list_token_types(
        &self,
        request: Request<ListTokenTypesRequest>,
    ) -> Result<Response<ListTokenTypesResponse>, Status> {
        let caller = authenticate(&self.state, &request, Action::ReadTypes).await?;
        caller.authorize(&self.state, &Policy::ReadTypes).await?;
        let types = self.state.store.list_types().await.map_err(Error::from)?;
        Ok(Response::new(ListTokenTypesResponse {
            total_size: types.len() as i64,
            token_types: types.iter().map(type_to_pb).collect(),
        }))
    }

    async fn get_token_type(
        &self,
        request: Request<GetTokenTypeRequest>,
    ) -> Result<Response<PbTokenType>, Status> {
        let caller = authenticate(&self.state, &request, Action::ReadTypes).await?;
        let id = parse_type_id(&request.get_ref().id).map_err(|m| Error::invalid("id", m))?;
        caller.authorize(&self.state, &Policy::ReadTypes).await?;
        let found = self.state.store.get_type(&id).await.map_err(Error::from)?;
        Ok(Response::new(type_to_pb(
            &found.ok_or_else(|| not_found(&id))?,
        )))
    }

    async fn create_token_type(
        &self,
        request: Request<CreateTokenTypeRequest>,
    ) -> Result<Response<PbTokenType>, Status> {
        let caller = authenticate(&self.state, &request, Action::CreateType).await?;
        let spec = request
            .into_inner()
            .token_type
            .ok_or_else(|| Error::invalid("token_type", "is required"))?;
        let now = token::now();
        let token_type = TokenType {
            id: parse_type_id(&spec.id).map_err(|m| Error::invalid("token_type.id", m))?,
            display_name: parse_display_name(&spec.display_name)?,
            description: parse_description(&spec.description)
                .map_err(|m| Error::invalid("token_type.description", m))?,
            template: parse_template(spec.template.as_ref())?,
            builtin: false,
            create_time: now,
            update_time: now,
            revision: 1,
        };
        caller
            .allow(&self.state, &Policy::CreateType(&token_type))
            .map_err(Error::from)?;
        let audit = caller
            .event(Action::CreateType, format!("type/{}", token_type.id), now)
            .change(
                "template",
                serde_json::to_value(&token_type.template).unwrap_or_default(),
            );
        written(
            self.state
                .store
                .insert_type(&token_type, caller.actor(), &audit)
                .await
                .map_err(Error::from)?,
        )?;
        caller.used(&self.state);
        tracing::info!(action = "type_create", token_type = %token_type.id, actor = %caller.token.id, "token type created");
        Ok(Response::new(type_to_pb(&token_type)))
    }

    async fn update_token_type(
        &self,
        request: Request<UpdateTokenTypeRequest>,
    ) -> Result<Response<PbTokenType>, Status> {
        let caller = authenticate(&self.state, &request, Action::UpdateType).await?;
        let request = request.into_inner();
        let spec = request
            .token_type
            .ok_or_else(|| Error::invalid("token_type", "is required"))?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                format!("must name the fields to update: {}", TYPE_FIELDS.join(", ")),
            )
            .into());
        }
        let id = parse_type_id(&spec.id).map_err(|m| Error::invalid("token_type.id", m))?;
        let current = self.current(&id).await?;
        let now = token::now();
        let mut updated = current.clone();
        let mut audit = caller.event(Action::UpdateType, format!("type/{id}"), now);
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    updated.display_name = parse_display_name(&spec.display_name)?;
                    audit = audit.change("display_name", updated.display_name.clone());
                }
                "description" => {
                    updated.description = parse_description(&spec.description)
                        .map_err(|m| Error::invalid("token_type.description", m))?;
                    audit = audit.change("description", updated.description.clone());
                }
                "template" => {
                    updated.template = parse_template(spec.template.as_ref())?;
                    audit = audit.change(
                        "template",
                        serde_json::to_value(&updated.template).unwrap_or_default(),
                    );
                }
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!(
                            "{:?} cannot be set; settable: {}",
                            other.chars().take(64).collect::<String>(),
                            TYPE_FIELDS.join(", ")
                        ),
                    )
                    .into());
                }
            }
        }
        updated.update_time = now;
        caller
            .allow(
                &self.state,
                &Policy::UpdateType {
                    before: &current,
                    after: &updated,
                },
            )
            .map_err(Error::from)?;
        let stored = written(
            self.state
                .store
                .update_type(&updated, caller.actor(), &audit)
                .await
                .map_err(Error::from)?,
        )?
        .ok_or_else(|| Error::Aborted("token type was changed concurrently; retry".into()))?;
        caller.used(&self.state);
        tracing::info!(action = "type_update", token_type = %id, actor = %caller.token.id, "token type updated");
        Ok(Response::new(type_to_pb(&stored)))
    }

    async fn delete_token_type(
        &self,
        request: Request<DeleteTokenTypeRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = authenticate(&self.state, &request, Action::DeleteType).await?;
        let id = parse_type_id(&request.get_ref().id).map_err(|m| Error::invalid("id", m))?;
        let current = self.current(&id).await?;
        caller
            .allow(&self.state, &Policy::DeleteType(&current))
            .map_err(Error::from)?;
        let audit = caller.event(Action::DeleteType, format!("type/{id}"), token::now());
        match written(
            self.state
                .store
                .delete_type(&id, caller.actor(), &audit)
                .await
                .map_err(Error::from)?,
        )? {
            TypeDeletion::Deleted => {
                caller.used(&self.state);
                tracing::info!(action = "type_delete", token_type = %id, actor = %caller.token.id, "token type deleted");
                Ok(Response::new(()))
            }
            TypeDeletion::NotFound => Err(not_found(&id).into()),
            TypeDeletion::Builtin => Err(Error::FailedPrecondition(format!(
                "token type {id} is built in and cannot be deleted"
            ))
            .into()),
            TypeDeletion::InUse(count) => Err(Error::FailedPrecondition(format!(
                "token type {id} is used by {count} token(s); delete or retype them first"
            ))
            .into()),
        }
    }
}

/// A type write's outcome, or the error for a caller its transaction found changed.
fn written<T>(write: TypeWrite<T>) -> Result<T, Error> {
    match write {
        TypeWrite::Done(done) => Ok(done),
        TypeWrite::CallerChanged => Err(auth::caller_changed()),
        TypeWrite::OutOfUses => Err(auth::out_of_uses()),
    }
}
