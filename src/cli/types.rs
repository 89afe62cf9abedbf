//! `token-authority types …`, `audit list` and `verify`: flags mapped to their requests.

use prost_types::FieldMask;

use super::{
    Session,
    args::{Audit, AuditCommand, TypeArgs, TypeCommand, Types, VerifyArgs},
    client::Failure,
    output::View,
    read_secret,
};
use crate::pb::v1::{
    CreateTokenTypeRequest, DeleteTokenTypeRequest, GetTokenTypeRequest, ListAuditEventsRequest,
    ListTokenTypesRequest, Template, TokenType, UpdateTokenTypeRequest, VerifyRequest,
    audit_service_client::AuditServiceClient, token_type_service_client::TokenTypeServiceClient,
    verify_service_client::VerifyServiceClient,
};

/// Runs a token type command.
pub async fn run(args: Types) -> Result<u8, Failure> {
    let session = Session::open(&args.client, true, false).await?;
    let mut types = TokenTypeServiceClient::new(session.channel.clone());
    match args.command {
        TypeCommand::List => {
            let answer = types
                .list_token_types(session.request(ListTokenTypesRequest {}))
                .await?;
            let view = View::Table {
                rows: "token_types",
                columns: &["id", "display_name", "builtin", "description"],
            };
            session.print(answer.get_ref(), view)
        }
        TypeCommand::Get(args) => {
            let answer = types
                .get_token_type(session.request(GetTokenTypeRequest { id: args.id }))
                .await?;
            session.print(answer.get_ref(), View::Summary)
        }
        TypeCommand::Create(args) => {
            let (token_type, _) = fields(args, Template::default());
            let request = CreateTokenTypeRequest {
                token_type: Some(token_type),
            };
            let answer = types.create_token_type(session.request(request)).await?;
            session.print(answer.get_ref(), View::Summary)
        }
        TypeCommand::Update(args) => {
            // A template is replaced whole: the flags change the one the server has.
            let template = match args.changes_template() {
                true => {
                    let id = args.id.clone();
                    let current = types
                        .get_token_type(session.request(GetTokenTypeRequest { id }))
                        .await?;
                    current.into_inner().template.unwrap_or_default()
                }
                false => Template::default(),
            };
            let (token_type, paths) = fields(args, template);
            if paths.is_empty() {
                return Err(Failure::usage(
                    "nothing to change: give a field's flag (see --help)",
                ));
            }
            let request = UpdateTokenTypeRequest {
                token_type: Some(token_type),
                update_mask: Some(FieldMask {
                    paths: paths.into_iter().map(str::to_owned).collect(),
                }),
            };
            let answer = types.update_token_type(session.request(request)).await?;
            session.print(answer.get_ref(), View::Summary)
        }
        TypeCommand::Delete(args) => {
            let answer = types
                .delete_token_type(session.request(DeleteTokenTypeRequest { id: args.id }))
                .await?;
            session.print(answer.get_ref(), View::Done("deleted"))
        }
    }
}

impl TypeArgs {
    fn changes_template(&self) -> bool {
        !self.required_fields.is_empty()
            || !self.allowed_fields.is_empty()
            || !self.required_bindings.is_empty()
            || !self.default_permissions.is_empty()
            || self.max_lifetime.is_some()
            || self.writable.is_some()
    }
}

/// The type the flags describe, over `template`, and the update-mask paths they set.
fn fields(args: TypeArgs, mut template: Template) -> (TokenType, Vec<&'static str>) {
    let mut paths = Vec::new();
    if args.display_name.is_some() {
        paths.push("display_name");
    }
    if args.description.is_some() {
        paths.push("description");
    }
    if args.changes_template() {
        paths.push("template");
    }
    let replace = |list: &mut Vec<String>, given: Vec<String>| {
        if !given.is_empty() {
            *list = given;
        }
    };
    replace(&mut template.required_fields, args.required_fields);
    replace(&mut template.allowed_fields, args.allowed_fields);
    replace(&mut template.required_bindings, args.required_bindings);
    replace(&mut template.default_permissions, args.default_permissions);
    template.max_lifetime = args.max_lifetime.or(template.max_lifetime);
    template.writable = args.writable.unwrap_or(template.writable);
    let token_type = TokenType {
        id: args.id,
        display_name: args.display_name.unwrap_or_default(),
        description: args.description.unwrap_or_default(),
        template: Some(template),
        ..Default::default()
    };
    (token_type, paths)
}

/// Runs an audit command.
pub async fn audit(args: Audit) -> Result<u8, Failure> {
    let session = Session::open(&args.client, true, false).await?;
    let AuditCommand::List(list) = args.command;
    let request = ListAuditEventsRequest {
        page_size: list.page.page_size.unwrap_or_default(),
        page_token: list.page.page_token.unwrap_or_default(),
        target: list.target.unwrap_or_default(),
        actor_id: list.actor.unwrap_or_default(),
        action: list.action.unwrap_or_default(),
        start_time: list.since,
        end_time: list.until,
    };
    let answer = AuditServiceClient::new(session.channel.clone())
        .list_audit_events(session.request(request))
        .await?;
    let view = View::Table {
        rows: "events",
        columns: &[
            "time",
            "action",
            "target",
            "actor_owner",
            "actor_id",
            "client_ip",
            "detail",
        ],
    };
    session.print(answer.get_ref(), view)
}

/// Runs `verify`: exit 0 when the secret is valid for the use, 1 when it is not.
pub async fn verify(args: VerifyArgs) -> Result<u8, Failure> {
    let request = VerifyRequest {
        token: read_secret(&args.secret)?,
        required_permissions: args.permissions,
        client_ip: args.client_ip.unwrap_or_default(),
        host: args.host.unwrap_or_default(),
        bindings: args.bindings.into_iter().collect(),
    };
    // Verify needs no credential: the secret being checked is the credential.
    let session = Session::open(&args.client, false, false).await?;
    let answer = VerifyServiceClient::new(session.channel.clone())
        .verify(request)
        .await?
        .into_inner();
    session.print(&answer, View::Summary)?;
    Ok(if answer.valid { 0 } else { 1 })
}
