//! The admin CLI: `token-authority tokens|types|audit|verify …`, a thin gRPC client of a
//! running server. Each command maps its flags to a request ([`tokens`], [`types`]); the
//! connection, the credential, the errors ([`client`]) and the printing ([`output`]) are
//! the same for all. Like `scan`, it logs nothing: what it prints is its output.

pub mod args;
pub mod client;
pub mod output;
pub mod parse;
pub mod text;
mod tokens;
mod types;

use std::{
    io::{self, IsTerminal, Read, Write},
    process::ExitCode,
};

use tonic::{Request, metadata::AsciiMetadataValue, transport::Channel};

pub use args::Admin;
use args::{ClientArgs, SecretArgs};
use client::Failure;
use output::{Named, Output, View};

/// Runs an admin command; returns its exit status (see README, "The CLI").
pub async fn run(command: Admin) -> ExitCode {
    let result = match command {
        Admin::Tokens(args) => tokens::run(args).await,
        Admin::Types(args) => types::run(args).await,
        Admin::Audit(args) => types::audit(args).await,
        Admin::Verify(args) => types::verify(args).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => fail(&failure),
    }
}

/// Prints a failure as one line on stderr, sanitized (it may quote the server or the
/// network), and returns its exit status.
pub fn fail(failure: &Failure) -> ExitCode {
    let _ = writeln!(io::stderr(), "error: {}", text::one_line(&failure.line));
    ExitCode::from(failure.code)
}

/// Prints a command-line error (or `--help`) as clap does, a usage error on one line, and
/// returns its exit status: 0 for help and version, 2 otherwise.
pub fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::from(if error.use_stderr() {
            client::BAD_INPUT
        } else {
            0
        });
    }
    let text = error.render().to_string();
    let line = text
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line).to_owned();
    fail(&Failure::usage(line))
}

/// A connection to the server, the caller's credential and how to print.
struct Session {
    channel: Channel,
    credential: Option<AsciiMetadataValue>,
    output: Output,
}

impl Session {
    /// Checks the flags, finds the credential (when `authenticated`), then connects; in
    /// that order, so that bad input fails before anything reaches the network.
    async fn open(
        client: &ClientArgs,
        authenticated: bool,
        secret_output: bool,
    ) -> Result<Self, Failure> {
        if client.output == Output::Secret && !secret_output {
            return Err(Failure::usage(
                "--output secret is only for tokens create and tokens rotate",
            ));
        }
        client.server.check().map_err(Failure::usage)?;
        let credential = match authenticated {
            true => Some(client::credential(client.token_file.as_ref())?),
            false => None,
        };
        Ok(Self {
            channel: client.server.connect().await?,
            credential,
            output: client.output,
        })
    }

    /// Wraps a message with the caller's `authorization`.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(credential) = &self.credential {
            request
                .metadata_mut()
                .insert("authorization", credential.clone());
        }
        request
    }

    /// Prints an answer.
    fn print<M: Named>(&self, answer: &M, view: View) -> Result<u8, Failure> {
        output::print(answer, self.output, view).map(|()| 0)
    }
}

/// Reads a secret to check, from `--secret-file` or stdin: never from a flag's value.
fn read_secret(args: &SecretArgs) -> Result<String, Failure> {
    let text = match &args.secret_file {
        Some(path) => std::fs::read_to_string(path).map_err(|error| {
            Failure::usage(format!(
                "--secret-file: cannot read {}: {error}",
                path.display()
            ))
        })?,
        None => {
            let stdin = io::stdin();
            if stdin.is_terminal() {
                let _ = writeln!(
                    io::stderr(),
                    "reading the secret from stdin (end with Ctrl-D)"
                );
            }
            let mut text = String::new();
            stdin.lock().read_to_string(&mut text).map_err(|error| {
                Failure::usage(format!("stdin: cannot read the secret: {error}"))
            })?;
            text
        }
    };
    let secret = text.trim();
    if secret.is_empty() {
        return Err(Failure::usage(
            "no secret to check: give it on stdin or in --secret-file",
        ));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::config::Cli;

    /// Every admin command, down to the leaves, has help with an example.
    #[test]
    fn every_admin_command_has_examples_in_its_help() {
        let cli = Cli::command();
        let mut leaves = 0;
        for group in ["tokens", "types", "audit", "verify"] {
            let group = cli.find_subcommand(group).expect("a command");
            let commands: Vec<_> = match group.has_subcommands() {
                true => group.get_subcommands().collect(),
                false => vec![group],
            };
            for command in commands {
                let help = command
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(help.contains("Example"), "{}: {help}", command.get_name());
                leaves += 1;
            }
        }
        assert_eq!(leaves, 10 + 5 + 1 + 1);
    }
}
