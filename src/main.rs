//! The `token-authority` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use clap::Parser as _;
use token_authority::{
    bootstrap::{self, Mode},
    cache::CacheSettings,
    cli,
    config::{Cli, Command, ServeArgs},
    scan,
    startup::{Application, GithubKeySource, Settings, shutdown_signal},
    store::{self, StoreOptions},
    telemetry,
    verifier::LookupSettings,
    verify::loader::LoaderSettings,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return cli::usage_error(error),
    };
    let command = match cli.command {
        // The scanner's and the admin commands' output is their own: no log lines, from
        // them or the libraries they use.
        Some(Command::Scan(args)) => return scan::run::run(args).await,
        Some(Command::Admin(command)) => return cli::run(*command).await,
        command => command,
    };
    telemetry::init(cli.log.log_format);
    match run(command, cli.store.options(), cli.serve).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "token-authority failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    command: Option<Command>,
    store_options: StoreOptions,
    serve: ServeArgs,
) -> anyhow::Result<()> {
    match command {
        Some(Command::Migrate) => {
            let store = store::connect(&store_options).await?;
            store.migrate().await?;
            store.close().await;
            tracing::info!(store = store.backend(), "migrations applied");
            Ok(())
        }
        Some(Command::Bootstrap(args)) => {
            let store = store::connect(&store_options).await?;
            store.migrate().await?;
            let made = bootstrap::create_admin_token(
                store.as_ref(),
                &args.token_prefix,
                &args.owner,
                Mode::OnDemand,
            )
            .await?;
            store.close().await;
            let (token, secret) = made.expect("on-demand bootstrap always makes a token");
            match &args.bootstrap_token_file {
                Some(path) => bootstrap::write_secret_file(path, &secret)?,
                None => println!("{}", secret.expose()),
            }
            eprintln!(
                "admin token {} ({}) created for owner {}",
                token.id, token.display_hint, token.owner
            );
            Ok(())
        }
        Some(Command::Scan(_) | Command::Admin(_)) => {
            unreachable!("main runs scans and admin commands before logging is set up")
        }
        None => {
            let ext_authz = serve.ext_authz.settings().map_err(anyhow::Error::msg)?;
            let app = Application::build(Settings {
                listen_addr: serve.listen_addr,
                tls: serve.tls(),
                metrics_addr: serve.metrics_addr.0,
                http_addr: serve.http_addr.0,
                http_api: serve.http_api,
                forward_auth_trusted_proxies: serve.forward_auth_trusted_proxies.0,
                github_keys: match serve.github_keys_file {
                    Some(path) => GithubKeySource::File(path),
                    None => GithubKeySource::Url(serve.github_keys_url),
                },
                store: store_options,
                token_prefix: serve.token_prefix,
                bootstrap: true,
                bootstrap_owner: serve.bootstrap_owner,
                bootstrap_token_file: serve.bootstrap_token_file,
                usage_flush_interval: serve.usage_flush_interval,
                health_check_interval: serve.health_check_interval,
                shutdown_drain: serve.shutdown_drain,
                shutdown_timeout: serve.shutdown_timeout,
                cache: CacheSettings {
                    max_entries: serve.cache_max_entries,
                    ttl: serve.cache_ttl,
                    negative_ttl: serve.cache_negative_ttl,
                },
                lookups: LookupSettings {
                    loader: LoaderSettings {
                        in_flight: serve.verify_queries_in_flight as usize,
                    },
                    unknown_per_address: serve.unknown_lookups_per_address,
                    unknown_overall: serve.unknown_lookups_overall,
                },
                ext_authz,
                management_rate_limit: serve.management_rate_limit,
                leak_report_rate_limit: serve.leak_report_rate_limit,
                max_message_size: serve.max_message_size,
                trusted_proxies: serve.trusted_proxies,
            })
            .await?;
            if let Some(secret) = app.bootstrap_secret() {
                eprintln!(
                    "\nFirst start: an admin token (*:*) was created. Its secret is shown this once:\n\n    {}\n\nKeep it safe; use it as `authorization: Bearer <secret>` to manage tokens.\n",
                    secret.expose()
                );
            }
            app.run_until_stopped(shutdown_signal()).await
        }
    }
}
