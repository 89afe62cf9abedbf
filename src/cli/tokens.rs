//! `token-authority tokens …`: each command's flags mapped to its TokenService request.

use std::collections::{BTreeMap, HashMap};

use prost_types::{FieldMask, Struct, value::Kind};

use super::{
    Session,
    args::{CreateArgs, ListArgs, RevokeArgs, TokenCommand, TokenFields, Tokens, UpdateArgs},
    client::Failure,
    output::View,
    read_secret,
};
use crate::pb::v1::{
    CreateTokenRequest, DeleteTokenRequest, GetTokenRequest, ListTokensRequest, LookupTokenRequest,
    RateLimit, RevokeTokensRequest, RotateTokenRequest, SetTokenEnabledRequest, Token,
    UpdateTokenRequest, token_service_client::TokenServiceClient,
};

/// The columns of `tokens list`.
const COLUMNS: &[&str] = &[
    "id",
    "name",
    "owner",
    "type",
    "enabled",
    "permissions",
    "expire_time",
    "display_hint",
];

const TOKEN: View = View::Summary;

/// Runs a token command.
pub async fn run(args: Tokens) -> Result<u8, Failure> {
    let hands_out_a_secret = matches!(
        args.command,
        TokenCommand::Create(_) | TokenCommand::Rotate(_)
    );
    // Everything that can be refused locally is, before the connection is made.
    let command = Prepared::from(args.command)?;
    let session = Session::open(&args.client, true, hands_out_a_secret).await?;
    let mut tokens = TokenServiceClient::new(session.channel.clone());
    match command {
        Prepared::Create(request) => {
            let answer = tokens.create_token(session.request(request)).await?;
            session.print(answer.get_ref(), TOKEN)
        }
        Prepared::List(request) => {
            let answer = tokens.list_tokens(session.request(request)).await?;
            let view = View::Table {
                rows: "tokens",
                columns: COLUMNS,
            };
            session.print(answer.get_ref(), view)
        }
        Prepared::Get(id) => {
            let answer = tokens
                .get_token(session.request(GetTokenRequest { id }))
                .await?;
            session.print(answer.get_ref(), TOKEN)
        }
        Prepared::Update(request) => {
            let answer = tokens.update_token(session.request(request)).await?;
            session.print(answer.get_ref(), TOKEN)
        }
        Prepared::SetEnabled(request) => {
            let answer = tokens.set_token_enabled(session.request(request)).await?;
            session.print(answer.get_ref(), TOKEN)
        }
        Prepared::Rotate(request) => {
            let answer = tokens.rotate_token(session.request(request)).await?;
            session.print(answer.get_ref(), TOKEN)
        }
        Prepared::Delete(id) => {
            let answer = tokens
                .delete_token(session.request(DeleteTokenRequest { id }))
                .await?;
            session.print(answer.get_ref(), View::Done("deleted"))
        }
        Prepared::Revoke(request) => {
            let answer = tokens.revoke_tokens(session.request(request)).await?;
            session.print(answer.get_ref(), View::Summary)
        }
        Prepared::Lookup(request) => {
            let answer = tokens.lookup_token(session.request(request)).await?;
            session.print(answer.get_ref(), View::Summary)
        }
    }
}

/// A command's request, built from its flags.
enum Prepared {
    Create(CreateTokenRequest),
    List(ListTokensRequest),
    Get(String),
    Update(UpdateTokenRequest),
    SetEnabled(SetTokenEnabledRequest),
    Rotate(RotateTokenRequest),
    Delete(String),
    Revoke(RevokeTokensRequest),
    Lookup(LookupTokenRequest),
}

impl Prepared {
    fn from(command: TokenCommand) -> Result<Self, Failure> {
        Ok(match command {
            TokenCommand::Create(args) => Self::Create(create(args)?),
            TokenCommand::List(args) => Self::List(list(args)),
            TokenCommand::Get(args) => Self::Get(args.id),
            TokenCommand::Update(args) => Self::Update(update(args)?),
            TokenCommand::Enable(args) => Self::SetEnabled(SetTokenEnabledRequest {
                id: args.id,
                enabled: true,
            }),
            TokenCommand::Disable(args) => Self::SetEnabled(SetTokenEnabledRequest {
                id: args.id,
                enabled: false,
            }),
            TokenCommand::Rotate(args) => Self::Rotate(RotateTokenRequest {
                id: args.id,
                grace_period: args.grace,
            }),
            TokenCommand::Delete(args) => Self::Delete(args.id),
            TokenCommand::Revoke(args) => Self::Revoke(revoke(args)),
            TokenCommand::Lookup(args) => Self::Lookup(LookupTokenRequest {
                secret: read_secret(&args)?,
            }),
        })
    }
}

fn create(args: CreateArgs) -> Result<CreateTokenRequest, Failure> {
    let mut token = Token {
        name: args.name,
        owner: args.owner.unwrap_or_default(),
        ..Default::default()
    };
    args.fields.apply(&mut token)?;
    Ok(CreateTokenRequest {
        token: Some(token),
        ttl: args.ttl,
    })
}

/// The update mask is the fields given and the fields cleared; a field cannot be both.
fn update(args: UpdateArgs) -> Result<UpdateTokenRequest, Failure> {
    let mut token = Token {
        id: args.id,
        ..Default::default()
    };
    let mut paths = args.fields.apply(&mut token)?;
    if let Some(name) = args.name {
        token.name = name;
        paths.push("name");
    }
    for field in args.clear {
        let path = field.path();
        if paths.contains(&path) {
            return Err(Failure::usage(format!(
                "--clear {path}: the field is also given a value"
            )));
        }
        paths.push(path);
    }
    if paths.is_empty() {
        return Err(Failure::usage(
            "nothing to change: give a field's flag (see --help), or --clear",
        ));
    }
    Ok(UpdateTokenRequest {
        token: Some(token),
        update_mask: Some(FieldMask {
            paths: paths.into_iter().map(str::to_owned).collect(),
        }),
    })
}

fn list(args: ListArgs) -> ListTokensRequest {
    let either = |yes: bool, no: bool| (yes || no).then_some(yes);
    ListTokensRequest {
        page_size: args.page.page_size.unwrap_or_default(),
        page_token: args.page.page_token.unwrap_or_default(),
        owner: args.owner.unwrap_or_default(),
        r#type: args.kind.unwrap_or_default(),
        enabled: either(args.enabled, args.disabled),
        name_prefix: args.name_prefix.unwrap_or_default(),
        expired: either(args.expired, args.unexpired),
        bindings: args.bindings.into_iter().collect(),
        created_by: args.created_by.unwrap_or_default(),
    }
}

fn revoke(args: RevokeArgs) -> RevokeTokensRequest {
    RevokeTokensRequest {
        owner: args.owner.unwrap_or_default(),
        r#type: args.kind.unwrap_or_default(),
        created_by: args.created_by.unwrap_or_default(),
        include_caller: args.include_caller,
    }
}

impl TokenFields {
    /// Sets the fields given on `token`; returns their update-mask paths.
    fn apply(self, token: &mut Token) -> Result<Vec<&'static str>, Failure> {
        let mut paths = Vec::new();
        let mut set = |given: bool, path| {
            if given {
                paths.push(path);
            }
        };
        set(self.kind.is_some(), "type");
        token.r#type = self.kind.unwrap_or_default();
        set(self.description.is_some(), "description");
        token.description = self.description.unwrap_or_default();
        set(!self.permissions.is_empty(), "permissions");
        token.permissions = self.permissions;
        set(self.read_only.is_some(), "read_only");
        token.read_only = self.read_only.unwrap_or_default();
        set(!self.cidrs.is_empty(), "allowed_cidrs");
        token.allowed_cidrs = self.cidrs;
        set(!self.hosts.is_empty(), "allowed_hosts");
        token.allowed_hosts = self.hosts;
        set(!self.bindings.is_empty(), "bindings");
        token.bindings = unique("--bind", self.bindings)?.into_iter().collect();
        set(!self.metadata.is_empty(), "metadata");
        let metadata = unique("--meta", self.metadata)?;
        token.metadata = (!metadata.is_empty()).then(|| Struct {
            fields: strings(metadata),
        });
        set(self.expires.is_some(), "expire_time");
        token.expire_time = self.expires;
        set(self.max_uses.is_some(), "max_uses");
        token.max_uses = self.max_uses.unwrap_or_default();
        set(self.rate.is_some(), "rate_limit");
        token.rate_limit = self.rate.map(|(requests, interval)| RateLimit {
            requests,
            interval: Some(interval),
        });
        Ok(paths)
    }
}

/// Returns the pairs as a map, refusing a key given twice.
fn unique(flag: &str, pairs: Vec<(String, String)>) -> Result<HashMap<String, String>, Failure> {
    let mut map = HashMap::new();
    for (key, value) in pairs {
        if map.insert(key.clone(), value).is_some() {
            return Err(Failure::usage(format!("{flag}: {key:?} is given twice")));
        }
    }
    Ok(map)
}

fn strings(pairs: HashMap<String, String>) -> BTreeMap<String, prost_types::Value> {
    pairs
        .into_iter()
        .map(|(key, value)| {
            let value = prost_types::Value {
                kind: Some(Kind::StringValue(value)),
            };
            (key, value)
        })
        .collect()
}
