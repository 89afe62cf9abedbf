//! The flags of `token-authority types …` and `audit …`.

use clap::{Args, Subcommand};

use super::{ClientArgs, Id, Page};
use crate::cli::parse;

/// `token-authority types …`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    token-authority types list\n  \
    token-authority types create service --display-name 'Service Token' \\\n    \
    --required-field description --max-lifetime 365d --writable\n  \
    token-authority types update service --max-lifetime 90d")]
pub struct Types {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TypeCommand,
}

/// A token type command.
#[derive(Debug, Subcommand)]
pub enum TypeCommand {
    /// List the token types (ListTokenTypes).
    #[command(after_help = "Example:\n  token-authority types list")]
    List,
    /// Show one type and its template (GetTokenType).
    #[command(after_help = "Example:\n  token-authority types get assistant")]
    Get(Id),
    /// Create a type (CreateTokenType).
    #[command(after_help = "Example:\n  \
        token-authority types create service --display-name 'Service Token' \\\n    \
        --description machine-to-machine --required-field description --max-lifetime 365d --writable")]
    Create(TypeArgs),
    /// Change the fields given (UpdateTokenType). Template flags change the template the
    /// server has, read first, and write it back whole.
    #[command(
        after_help = "Example:\n  token-authority types update service --max-lifetime 90d --writable=false"
    )]
    Update(TypeArgs),
    /// Delete a type no token uses (DeleteTokenType).
    #[command(after_help = "Example:\n  token-authority types delete service")]
    Delete(Id),
}

/// A type's fields.
#[derive(Debug, Args)]
pub struct TypeArgs {
    /// The type's id, as tokens name it.
    pub id: String,
    /// A name for people.
    #[arg(long)]
    pub display_name: Option<String>,
    /// Free text for people.
    #[arg(long)]
    pub description: Option<String>,
    /// A field every token of the type must set (repeat, or separate with commas).
    #[arg(long = "required-field", value_name = "FIELD", value_delimiter = ',')]
    pub required_fields: Vec<String>,
    /// If given, the only optional fields a token of the type may set (repeat).
    #[arg(long = "allowed-field", value_name = "FIELD", value_delimiter = ',')]
    pub allowed_fields: Vec<String>,
    /// A binding key every token of the type must be bound on (repeat).
    #[arg(long = "required-binding", value_name = "KEY", value_delimiter = ',')]
    pub required_bindings: Vec<String>,
    /// A permission a new token gets when it names none (repeat).
    #[arg(
        long = "default-permission",
        value_name = "PERMISSION",
        value_delimiter = ','
    )]
    pub default_permissions: Vec<String>,
    /// The longest lifetime of a token of the type, e.g. 365d.
    #[arg(long, value_name = "DURATION", value_parser = parse::proto_duration)]
    pub max_lifetime: Option<prost_types::Duration>,
    /// Whether tokens of the type may be writable (`--writable=false` to forbid).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub writable: Option<bool>,
}

/// `token-authority audit …`
#[derive(Debug, Args)]
pub struct Audit {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// An audit command.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first (ListAuditEvents).
    #[command(after_help = "Examples:\n  \
        token-authority audit list --target token/01a2…\n  \
        token-authority audit list --actor 01a2… --since 2026-12-01T00:00:00Z")]
    List(AuditListArgs),
}

/// `audit list`
#[derive(Debug, Args)]
pub struct AuditListArgs {
    /// Only events about this target, e.g. token/<id>, type/<id>, owner/<owner>.
    #[arg(long)]
    pub target: Option<String>,
    /// Only events by this acting token (its id).
    #[arg(long, value_name = "ID")]
    pub actor: Option<String>,
    /// Only events of this action, e.g. create, rotate, disable.
    #[arg(long)]
    pub action: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub since: Option<prost_types::Timestamp>,
    /// Only events before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse::time)]
    pub until: Option<prost_types::Timestamp>,
    #[command(flatten)]
    pub page: Page,
}
