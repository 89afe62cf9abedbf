//! The flags of `token-authority tokens …`.

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use super::{ClientArgs, Id, Page, SecretArgs};
use crate::cli::parse;

/// `token-authority tokens …`
#[derive(Debug, Args)]
#[command(
    after_help = "The caller's secret comes from TA_TOKEN or --token-file.\n\n\
    Examples:\n  \
    export TA_TOKEN=\"$(cat ./admin.secret)\"\n  \
    token-authority tokens create billing-ci --permission domains:read --ttl 30d\n  \
    token-authority tokens list --owner team-billing\n  \
    token-authority tokens disable 01a2…"
)]
pub struct Tokens {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// A token command.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret, this once (CreateToken).
    #[command(after_help = "Examples:\n  \
        token-authority tokens create billing-ci --owner team-billing --type service \\\n    \
        --description 'deploys billing' --permission domains:read --permission backends:write \\\n    \
        --cidr 10.0.0.0/8 --host api.example.com --bind reportId=r-17 --meta ticket=OPS-42 --ttl 30d\n  \
        token-authority tokens create batch-job --max-uses 100 --rate 10/1m -o secret > batch.secret")]
    Create(CreateArgs),
    /// List tokens, oldest first, one page at a time (ListTokens).
    #[command(after_help = "Examples:\n  \
        token-authority tokens list\n  \
        token-authority tokens list --owner team-billing --type service --enabled --name-prefix billing\n  \
        token-authority tokens list --created-by 01a2… -o json")]
    List(ListArgs),
    /// Show one token (GetToken).
    #[command(after_help = "Example:\n  token-authority tokens get 01a2…")]
    Get(Id),
    /// Change the fields given, and only those (UpdateToken).
    ///
    /// A list flag (--permission, --cidr, --host, --bind, --meta) replaces the whole list;
    /// --clear empties a field.
    #[command(after_help = "Examples:\n  \
        token-authority tokens update 01a2… --description 'deploys billing and invoices' \\\n    \
        --permission domains:read\n  \
        token-authority tokens update 01a2… --clear expire-time --clear rate-limit")]
    Update(UpdateArgs),
    /// Enable a disabled token (SetTokenEnabled).
    #[command(after_help = "Example:\n  token-authority tokens enable 01a2…")]
    Enable(Id),
    /// Disable a token: it is kept, and fails verification until enabled (SetTokenEnabled).
    #[command(after_help = "Example:\n  token-authority tokens disable 01a2…")]
    Disable(Id),
    /// Give a token a new secret, printed this once (RotateToken).
    #[command(after_help = "Examples:\n  \
        token-authority tokens rotate 01a2… --grace 1h\n  \
        token-authority tokens rotate 01a2… -o secret | vault kv put secret/billing token=-")]
    Rotate(RotateArgs),
    /// Delete a token for good (DeleteToken).
    #[command(after_help = "Example:\n  token-authority tokens delete 01a2…")]
    Delete(Id),
    /// Disable every enabled token of an owner, of a type, or made by a token (RevokeTokens).
    #[command(after_help = "Examples:\n  \
        token-authority tokens revoke --created-by 01a2…\n  \
        token-authority tokens revoke --owner team-billing")]
    Revoke(RevokeArgs),
    /// Find the token a secret (read from stdin or --secret-file) belongs to (LookupToken).
    #[command(after_help = "Example:\n  \
        printf %s \"$FOUND_IN_A_LOG\" | token-authority tokens lookup")]
    Lookup(SecretArgs),
}

/// The fields of a token that both create and update set.
#[derive(Debug, Args)]
pub struct TokenFields {
    /// The token's type (e.g. personal, assistant, service).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Free text for people.
    #[arg(long)]
    pub description: Option<String>,
    /// A permission, `resource:action` (repeat, or separate with commas).
    #[arg(long = "permission", value_name = "PERMISSION", value_delimiter = ',')]
    pub permissions: Vec<String>,
    /// Satisfy only `read` actions (`--read-only=false` to undo).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// A network the token may be used from, e.g. 10.0.0.0/8 (repeat).
    #[arg(long = "cidr", value_name = "CIDR")]
    pub cidrs: Vec<String>,
    /// A host the token may be used at, e.g. api.example.com or *.example.com (repeat).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// A resource the token is bound to, key=value (repeat).
    #[arg(long = "bind", value_name = "KEY=VALUE", value_parser = parse::pair)]
    pub bindings: Vec<(String, String)>,
    /// Metadata, key=value, stored as a string (repeat).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse::pair)]
    pub metadata: Vec<(String, String)>,
    /// When the token stops working, in RFC 3339 (2027-01-01T00:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub expires: Option<prost_types::Timestamp>,
    /// At most this many successful verifications in all.
    #[arg(long, value_name = "N")]
    pub max_uses: Option<i64>,
    /// At most this many verifications per interval, e.g. 10/1m.
    #[arg(long, value_name = "N/INTERVAL", value_parser = parse::rate)]
    pub rate: Option<(i64, prost_types::Duration)>,
}

/// `tokens create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The token's name, unique per owner.
    pub name: String,
    /// The owner (default: the caller's; another owner's needs `*:*`).
    #[arg(long)]
    pub owner: Option<String>,
    /// Lifetime from now, e.g. 30d, 12h, 2w (instead of --expires).
    #[arg(long, value_name = "DURATION", value_parser = parse::proto_duration, conflicts_with = "expires")]
    pub ttl: Option<prost_types::Duration>,
    #[command(flatten)]
    pub fields: TokenFields,
}

/// A token field that `tokens update --clear` empties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenField {
    Description,
    Permissions,
    AllowedCidrs,
    AllowedHosts,
    Bindings,
    Metadata,
    ExpireTime,
    MaxUses,
    RateLimit,
}

impl TokenField {
    /// The field's name in an update mask.
    pub fn path(self) -> &'static str {
        match self {
            Self::Description => "description",
            Self::Permissions => "permissions",
            Self::AllowedCidrs => "allowed_cidrs",
            Self::AllowedHosts => "allowed_hosts",
            Self::Bindings => "bindings",
            Self::Metadata => "metadata",
            Self::ExpireTime => "expire_time",
            Self::MaxUses => "max_uses",
            Self::RateLimit => "rate_limit",
        }
    }
}

/// `tokens update`
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The token's id.
    pub id: String,
    /// A new name.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub fields: TokenFields,
    /// Empty this field (repeat).
    #[arg(long, value_enum, value_name = "FIELD")]
    pub clear: Vec<TokenField>,
}

/// `tokens list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tokens of this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only tokens of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Only enabled tokens.
    #[arg(long, conflicts_with = "disabled")]
    pub enabled: bool,
    /// Only disabled tokens.
    #[arg(long)]
    pub disabled: bool,
    /// Only expired tokens.
    #[arg(long, conflicts_with = "unexpired")]
    pub expired: bool,
    /// Only tokens not expired.
    #[arg(long)]
    pub unexpired: bool,
    /// Only tokens whose name starts with this.
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Only tokens bound to this, key=value (repeat: all of them).
    #[arg(long = "bind", value_name = "KEY=VALUE", value_parser = parse::pair)]
    pub bindings: Vec<(String, String)>,
    /// Only tokens made by this token (its id).
    #[arg(long)]
    pub created_by: Option<String>,
    #[command(flatten)]
    pub page: Page,
}

/// `tokens rotate`
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The token's id.
    pub id: String,
    /// How long the old secret keeps working, e.g. 1h (at most 30 days); none by default.
    #[arg(long, value_name = "DURATION", value_parser = parse::proto_duration)]
    pub grace: Option<prost_types::Duration>,
}

/// `tokens revoke`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["owner", "type", "created_by"])))]
pub struct RevokeArgs {
    /// Every token of this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Every token of this type.
    #[arg(long = "type", id = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Every token this token made, and those they made, all the way down.
    #[arg(long)]
    pub created_by: Option<String>,
    /// Also the caller's own token, if it matches.
    #[arg(long)]
    pub include_caller: bool,
}
