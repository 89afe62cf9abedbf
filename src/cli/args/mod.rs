//! The admin CLI's commands and flags (clap). Flags are in the terms people think in
//! (`--permission domains:read`, `--ttl 30d`, `--rate 10/1m`, `--bind reportId=r-17`);
//! their values are parsed here, so a bad one is a usage error before any call. This file
//! has the commands and the flags they share; [`tokens`] and [`types`] those of each group.

mod tokens;
mod types;

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use self::{tokens::*, types::*};
use super::{client::ServerArgs, output::Output, parse};

/// The commands that manage a running server.
#[derive(Debug, Subcommand)]
pub enum Admin {
    /// Create, list, change, rotate, disable and delete tokens on a server.
    Tokens(Tokens),
    /// Manage token types and their templates.
    Types(Types),
    /// Read the audit trail.
    Audit(Audit),
    /// Ask a server whether a secret (read from stdin or --secret-file) is valid for a use.
    ///
    /// Exits 0 when it is valid, 1 when it is not (the answer says why).
    #[command(after_help = "Examples:\n  \
        printf %s \"$SECRET\" | token-authority verify --permission domains:read\n  \
        token-authority verify --secret-file ./app.secret --client-ip 10.1.2.3 \\\n    \
        --host api.example.com --bind reportId=r-17 -o json")]
    Verify(VerifyArgs),
}

/// Where the server is, who the caller is, and how to print: on every admin command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct ClientArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// A file holding the caller's secret; without it the secret comes from TA_TOKEN.
    /// (There is no flag for the secret itself: every user of the machine sees flags.)
    #[arg(long, env = "TA_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// How to print the answer.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// A token's or type's id.
#[derive(Debug, Args)]
pub struct Id {
    /// The id.
    pub id: String,
}

/// Paging of a list.
#[derive(Debug, Args)]
pub struct Page {
    /// At most this many per page (1 to 1000; the server's default is 50).
    #[arg(long, value_name = "N")]
    pub page_size: Option<i32>,
    /// The page after the one that printed this token.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

/// Where a secret to check comes from: never a flag's value.
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// A file holding the secret; without it, the secret is read from stdin.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
}

/// `token-authority verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// A permission the use needs (repeat, or separate with commas).
    #[arg(long = "permission", value_name = "PERMISSION", value_delimiter = ',')]
    pub permissions: Vec<String>,
    /// The address of the client that presented the secret.
    #[arg(long, value_name = "IP")]
    pub client_ip: Option<String>,
    /// The host the secret was presented at.
    #[arg(long)]
    pub host: Option<String>,
    /// A resource the use touches, key=value (repeat).
    #[arg(long = "bind", value_name = "KEY=VALUE", value_parser = parse::pair)]
    pub bindings: Vec<(String, String)>,
}
