//! Configuration: command-line flags, each with an environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    authz::{self, CheckSettings},
    domain::secret::TokenPrefix,
    store,
    tls::TlsFiles,
};

/// One central authority that issues, stores, manages and verifies API bearer tokens.
#[derive(Debug, Parser)]
#[command(
    name = "token-authority",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Where tokens are stored.
    #[command(flatten, next_help_heading = "Store")]
    pub store: StoreArgs,
    /// How to log.
    #[command(flatten, next_help_heading = "Logging")]
    pub log: LogArgs,
    /// Serving options (when no subcommand is given).
    #[command(flatten)]
    pub serve: ServeArgs,
    /// What to do; with none, the service runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations and exit.
    Migrate,
    /// Create an admin token (`*:*`) now and print its secret once, for an operator with
    /// database access (e.g. when every admin token was lost).
    Bootstrap(BootstrapArgs),
    /// Look for our secrets in files, folders or stdin, offline; optionally report them.
    ///
    /// Prints `path:line: <hint>… (token-authority secret)` per secret found, never the
    /// secret; with --report, the server revokes those that are ours. Exits 0 when none is
    /// found, 1 when any is, 2 on a usage error, when nothing could be read or when the
    /// report failed.
    Scan(ScanArgs),
    /// The admin commands: tokens, types, audit, verify (a gRPC client of a server).
    #[command(flatten)]
    Admin(Box<crate::cli::Admin>),
}

/// Where tokens are stored.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store: postgres://user:pass@host/db or sqlite://path/to/file.db. Without it,
    /// tokens are kept in a SQLite file under --data-dir.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Folder of the embedded SQLite store, used when no --database-url is given.
    #[arg(long, env = "TA_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// The most database connections to hold open.
    #[arg(
        long,
        env = "TA_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=MAX_DB_CONNECTIONS),
        global = true
    )]
    pub db_max_connections: u32,

    /// How long a call waits for a free database connection before failing (e.g. 5s, 500ms).
    #[arg(long, env = "TA_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration, global = true)]
    pub db_acquire_timeout: Duration,

    /// How often the change listener's connection is checked (Postgres): a connection that
    /// died silently is noticed within two of these, and Verify bypasses the cache from then
    /// until the listener is back.
    #[arg(long, env = "TA_CHANGE_FEED_HEARTBEAT", default_value = "1s", value_parser = parse_positive_duration, global = true)]
    pub change_feed_heartbeat: Duration,
}

impl StoreArgs {
    /// Returns the store options these flags describe.
    pub fn options(&self) -> store::StoreOptions {
        store::StoreOptions {
            url: self
                .database_url
                .clone()
                .filter(|url| !url.is_empty())
                .unwrap_or_else(|| store::default_sqlite_url(&self.data_dir)),
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_acquire_timeout,
            feed_heartbeat: self.change_feed_heartbeat,
        }
    }
}

/// Log output.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format: text for people, json for log pipelines. Levels come from RUST_LOG
    /// (default info).
    #[arg(long, env = "TA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Log formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Serving options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the gRPC port.
    #[arg(long, env = "TA_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// PEM certificate chain of the gRPC port; with --tls-key, the port speaks only TLS.
    #[arg(long, env = "TA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): when given, every client must present a certificate signed
    /// by one of them (mutual TLS).
    #[arg(long, env = "TA_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Address of the Prometheus endpoint (plain HTTP, GET /metrics); `off` disables it.
    #[arg(long, env = "TA_METRICS_ADDR", default_value = "127.0.0.1:9464", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,

    /// Prefix of new token secrets: 1 to 16 lowercase letters and digits.
    #[arg(long, env = "TA_TOKEN_PREFIX", default_value = "ta", value_parser = parse_prefix)]
    pub token_prefix: TokenPrefix,

    /// Owner of the admin token made on the first start.
    #[arg(long, env = "TA_BOOTSTRAP_OWNER", default_value = "admin")]
    pub bootstrap_owner: String,

    /// Write the first start's admin secret to this file (mode 0600) instead of stderr.
    #[arg(long, env = "TA_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,

    /// How often usage (last used time, use count) is written to the store.
    #[arg(long, env = "TA_USAGE_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub usage_flush_interval: Duration,

    /// How often the store is checked for grpc.health.v1.
    #[arg(long, env = "TA_HEALTH_CHECK_INTERVAL", default_value = "2s", value_parser = parse_positive_duration)]
    pub health_check_interval: Duration,

    /// On SIGTERM or Ctrl-C, how long to report NOT_SERVING before refusing new calls, so
    /// load balancers stop sending traffic first. In-flight calls always finish.
    #[arg(long, env = "TA_SHUTDOWN_DRAIN", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,

    /// The most tokens the Verify cache holds (positive and negative entries each); 0
    /// disables it, so that every Verify reads the store.
    #[arg(long, env = "TA_CACHE_MAX_ENTRIES", default_value_t = 1_000_000)]
    pub cache_max_entries: u64,

    /// How long the Verify cache keeps a token. Changes evict at once on every replica
    /// (Postgres LISTEN/NOTIFY); this only bounds memory held by unused entries.
    #[arg(long, env = "TA_CACHE_TTL", default_value = "10m", value_parser = parse_positive_duration)]
    pub cache_ttl: Duration,

    /// How long the Verify cache remembers that a secret is unknown.
    #[arg(long, env = "TA_CACHE_NEGATIVE_TTL", default_value = "1m", value_parser = parse_positive_duration)]
    pub cache_negative_ttl: Duration,

    /// The most store queries of Verify's cache misses in flight at once; misses arriving
    /// meanwhile wait for the next query, which takes up to 128 of them. One measured
    /// best on a 2-core machine (more queries, each smaller, cost more CPU per Verify).
    #[arg(long, env = "TA_VERIFY_QUERIES_IN_FLIGHT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub verify_queries_in_flight: u32,

    /// Store lookups of unknown secrets (cache misses that find no token) per second per
    /// client address, burst twice that; past it, a cache miss from that address fails
    /// RESOURCE_EXHAUSTED (HTTP 429), never with a verdict. 0 for no limit.
    #[arg(long, env = "TA_UNKNOWN_LOOKUPS_PER_ADDRESS", default_value_t = 50)]
    pub unknown_lookups_per_address: u32,

    /// Store lookups of unknown secrets per second from every address together, burst
    /// twice that; past it, cache misses fail as above. 0 for no limit.
    #[arg(long, env = "TA_UNKNOWN_LOOKUPS_OVERALL", default_value_t = 1000)]
    pub unknown_lookups_overall: u32,

    /// After the drain, how long in-flight calls and open connections get to finish before
    /// the process exits anyway.
    #[arg(long, env = "TA_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub shutdown_timeout: Duration,

    /// Management API (TokenService, TokenTypeService, AuditService) requests per minute
    /// per client address; past it, calls fail RESOURCE_EXHAUSTED. 0 for no limit. Verify
    /// and Check are never limited by it.
    #[arg(long, env = "TA_MANAGEMENT_RATE_LIMIT", default_value_t = 120)]
    pub management_rate_limit: u32,

    /// Leak reports (ReportLeakedTokens over gRPC or JSON, and GitHub's secret scanning
    /// endpoint) per minute per client address, each carrying up to 1,000 secrets; past
    /// it, reports fail RESOURCE_EXHAUSTED (HTTP 429). 0 for no limit.
    #[arg(long, env = "TA_LEAK_REPORT_RATE_LIMIT", default_value_t = 60)]
    pub leak_report_rate_limit: u32,

    /// The largest request message the token, type, audit, Verify and Check services accept
    /// (bytes, or with KiB or MiB); larger ones are refused OUT_OF_RANGE before they are
    /// decoded. Health and reflection keep tonic's 4 MiB.
    #[arg(long, env = "TA_MAX_MESSAGE_SIZE", default_value = "4MiB", value_parser = parse_size)]
    pub max_message_size: usize,

    /// Comma-separated networks of the proxies in front of the gRPC port (load balancers)
    /// whose x-forwarded-for is believed for management calls: the caller's address then
    /// comes from it, for its token's allowed_cidrs and the per-address management rate
    /// limit. Empty: the caller is the peer. Check has its own list,
    /// --ext-authz-trusted-proxies.
    #[arg(long, env = "TA_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Address of the HTTP port (HTTP/1.1 and h2c; TLS with --tls-cert, like the gRPC port),
    /// which serves forward auth for nginx, Traefik, Caddy, HAProxy and Envoy's HTTP mode;
    /// `off` disables it.
    #[arg(long, env = "TA_HTTP_ADDR", default_value = "127.0.0.1:8080", value_parser = parse_metrics_addr)]
    pub http_addr: MetricsAddr,

    /// Serve the whole API as JSON on the HTTP port (/v1/tokens…, /v1/verify, /v1/leaks,
    /// /v1/openapi.json). `false` leaves the port to forward auth and GitHub's leak
    /// reports: for a port that gateways or the internet reach.
    #[arg(long, env = "TA_HTTP_API", default_value_t = true, action = clap::ArgAction::Set)]
    pub http_api: bool,

    /// Comma-separated networks of the proxies (nginx, Traefik, Caddy, HAProxy, Envoy) whose
    /// X-Original-*, X-Forwarded-* and X-Real-IP headers forward auth believes; from any other
    /// peer they are ignored and the peer is the client. `none` for none.
    #[arg(long, env = "TA_FORWARD_AUTH_TRUSTED_PROXIES", default_value = "127.0.0.0/8,::1/128", value_parser = parse_nets)]
    pub forward_auth_trusted_proxies: Nets,

    /// Where the public keys of GitHub's secret scanning come from (for `POST
    /// /v1/leaks/github` on the HTTP port): GitHub's meta endpoint, loaded at the first
    /// report and again, at most once a minute, for an unknown key identifier or after a day.
    #[arg(long, env = "TA_GITHUB_KEYS_URL", default_value = crate::leaks::github::KEYS_URL)]
    pub github_keys_url: String,

    /// A file with GitHub's key list (the JSON the meta endpoint serves), for installs that
    /// cannot reach GitHub; instead of --github-keys-url.
    #[arg(long, env = "TA_GITHUB_KEYS_FILE", conflicts_with = "github_keys_url")]
    pub github_keys_file: Option<PathBuf>,

    /// How Envoy ext_authz Check requests are read and answered.
    #[command(flatten)]
    pub ext_authz: ExtAuthzArgs,
}

/// Options of the Envoy ext_authz `Check` service.
#[derive(Debug, Args)]
pub struct ExtAuthzArgs {
    /// A header that may carry the secret instead of `Authorization: Bearer`; empty for none.
    #[arg(long, env = "TA_EXT_AUTHZ_API_KEY_HEADER", default_value = "x-api-key")]
    pub ext_authz_api_key_header: String,

    /// A path prefix (e.g. /api/v1) skipped before the default mapping takes the first path
    /// segment as the resource.
    #[arg(long, env = "TA_EXT_AUTHZ_PATH_PREFIX", default_value = "")]
    pub ext_authz_path_prefix: String,

    /// A TOML file of method and path rules naming the permissions requests need.
    #[arg(long, env = "TA_EXT_AUTHZ_RULES")]
    pub ext_authz_rules: Option<PathBuf>,

    /// Comma-separated networks of proxies whose x-forwarded-for is believed (e.g. the load
    /// balancer in front of Envoy). Empty: the client is the peer Envoy saw.
    #[arg(long, env = "TA_EXT_AUTHZ_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub ext_authz_trusted_proxies: Vec<ipnet::IpNet>,

    /// The header that tells the upstream the token's id.
    #[arg(long, env = "TA_EXT_AUTHZ_ID_HEADER", default_value = "x-token-id")]
    pub ext_authz_id_header: String,

    /// The header that tells the upstream the token's owner.
    #[arg(
        long,
        env = "TA_EXT_AUTHZ_OWNER_HEADER",
        default_value = "x-token-owner"
    )]
    pub ext_authz_owner_header: String,

    /// The header that tells the upstream the token's name.
    #[arg(long, env = "TA_EXT_AUTHZ_NAME_HEADER", default_value = "x-token-name")]
    pub ext_authz_name_header: String,

    /// The header that tells the upstream the token's type.
    #[arg(long, env = "TA_EXT_AUTHZ_TYPE_HEADER", default_value = "x-token-type")]
    pub ext_authz_type_header: String,

    /// Pass the credential header on to the upstream (by default Envoy removes it, so the
    /// secret travels no further).
    #[arg(long, env = "TA_EXT_AUTHZ_FORWARD_CREDENTIAL")]
    pub ext_authz_forward_credential: bool,

    /// The realm named in WWW-Authenticate challenges.
    #[arg(long, env = "TA_EXT_AUTHZ_REALM", default_value = "token-authority")]
    pub ext_authz_realm: String,
}

impl ExtAuthzArgs {
    /// Returns the Check settings these flags describe, reading the rules file.
    pub fn settings(&self) -> Result<CheckSettings, String> {
        let header = |flag: &str, value: &str| {
            authz::header_name(value).map_err(|e| format!("--{flag}: {e}"))
        };
        let api_key_header = match self.ext_authz_api_key_header.trim() {
            "" => None,
            name => Some(header("ext-authz-api-key-header", name)?),
        };
        if self.ext_authz_realm.contains(['"', '\\']) || self.ext_authz_realm.is_empty() {
            return Err(
                "--ext-authz-realm: must be non-empty, without quotes or backslashes".into(),
            );
        }
        Ok(CheckSettings {
            api_key_header,
            path_prefix: authz::path_prefix(&self.ext_authz_path_prefix)
                .map_err(|e| format!("--ext-authz-path-prefix: {e}"))?,
            rules: match &self.ext_authz_rules {
                Some(path) => {
                    authz::Rules::load(path).map_err(|e| format!("--ext-authz-rules: {e}"))?
                }
                None => authz::Rules::default(),
            },
            trusted_proxies: self.ext_authz_trusted_proxies.clone(),
            identity_headers: authz::IdentityHeaders {
                id: header("ext-authz-id-header", &self.ext_authz_id_header)?,
                owner: header("ext-authz-owner-header", &self.ext_authz_owner_header)?,
                name: header("ext-authz-name-header", &self.ext_authz_name_header)?,
                kind: header("ext-authz-type-header", &self.ext_authz_type_header)?,
            },
            forward_credential: self.ext_authz_forward_credential,
            realm: self.ext_authz_realm.clone(),
        })
    }
}

fn parse_net(value: &str) -> Result<ipnet::IpNet, String> {
    let value = value.trim();
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{value:?} is not a network such as 10.0.0.0/8 or an address"))
}

impl ServeArgs {
    /// Returns the gRPC port's TLS files, when TLS is configured.
    pub fn tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

/// Where to serve a port, if anywhere (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_metrics_addr(value: &str) -> Result<MetricsAddr, String> {
    match value.trim() {
        "" | "off" => Ok(MetricsAddr(None)),
        addr => addr
            .parse()
            .map(|addr| MetricsAddr(Some(addr)))
            .map_err(|_| format!("{value:?} is not an address such as 127.0.0.1:9464, or off")),
    }
}

/// Networks given as one comma-separated value; `none` (or empty) for none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nets(pub Vec<ipnet::IpNet>);

fn parse_nets(value: &str) -> Result<Nets, String> {
    if value.trim() == "none" {
        return Ok(Nets::default());
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(parse_net)
        .collect::<Result<_, _>>()
        .map(Nets)
}

/// Options of `token-authority bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Owner of the new admin token.
    #[arg(long, env = "TA_BOOTSTRAP_OWNER", default_value = "admin")]
    pub owner: String,

    /// Write the secret to this file (mode 0600) instead of stdout.
    #[arg(long, env = "TA_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,

    /// Prefix of the new secret.
    #[arg(long, env = "TA_TOKEN_PREFIX", default_value = "ta", value_parser = parse_prefix)]
    pub token_prefix: TokenPrefix,
}

/// Options of `token-authority scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files and folders to scan; folders recursively, skipping `.git` and symlinked
    /// folders. `-`, or none, reads stdin.
    pub paths: Vec<PathBuf>,

    /// How many threads read files, 1 to 64; 0 for one per core, at most 4.
    #[arg(long, env = "TA_SCAN_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub threads: u16,

    /// Send the secrets found to --server's LeakService, which revokes those that are
    /// ours, and print what became of each.
    #[arg(long)]
    pub report: bool,

    /// The server to report to, and the TLS files to reach it with.
    #[command(flatten)]
    pub server: crate::cli::client::ServerArgs,

    /// Who found the secrets, recorded in the audit trail: 1 to 64 lowercase letters,
    /// digits and `.-_`.
    #[arg(long, env = "TA_SCAN_SOURCE", default_value = "scan", value_parser = parse_source)]
    pub source: String,

    /// Where the secrets were found (e.g. the CI job's or the repository's URL), recorded in
    /// the audit trail; at most 2,048 characters.
    #[arg(long, env = "TA_SCAN_URL", default_value = "", value_parser = parse_report_url)]
    pub url: String,
}

/// A scan report's source, checked as the server will check it (`github` is kept for
/// GitHub's signed reports), so that a bad one fails before the scan, not after it.
fn parse_source(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    crate::domain::leak::Report::parse(value, "")
        .map(|report| report.source)
        .map_err(|(_, message)| message)
}

/// A scan report's URL, checked as the server will check it.
fn parse_report_url(value: &str) -> Result<String, String> {
    crate::domain::leak::Report::parse("", value)
        .map(|report| report.url)
        .map_err(|(_, message)| message)
}

fn parse_prefix(value: &str) -> Result<TokenPrefix, String> {
    TokenPrefix::parse(value)
}

/// The most database connections a pool may hold: sqlx allocates a slot for each up
/// front, so an absurd value would exhaust memory instead of failing clearly.
const MAX_DB_CONNECTIONS: i64 = 10_000;

/// The longest duration any flag takes: 100 years, far past any sensible setting, and
/// short enough that adding it to a clock cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses durations such as `250ms`, `5s`, `2m`, `1h` (zero included), at most 100 years.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let not_a_duration = || format!("{value:?} is not a duration such as 250ms, 5s, 2m or 1h");
    let (number, unit) = split_number(value);
    let number: u64 = number.parse().map_err(|_| not_a_duration())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(not_a_duration()),
    };
    let duration = number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .filter(|duration| *duration <= MAX_DURATION)
        .ok_or_else(|| format!("{value:?} is too long: at most 100 years"))?;
    Ok(duration)
}

/// Parses an interval, timeout or TTL: a duration more than zero. (A zero interval would
/// panic the task that ticks on it; a zero timeout or TTL would fail or drop everything.)
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.is_zero() {
        return Err(format!("{:?} must be more than 0", value.trim()));
    }
    Ok(duration)
}

/// Splits `250ms` into its leading digits and the rest (`250`, `ms`).
fn split_number(text: &str) -> (&str, &str) {
    text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    )
}

/// Parses a byte size: `65536`, `64KiB` or `4MiB`; at least 1 KiB, at most 1 GiB.
pub fn parse_size(value: &str) -> Result<usize, String> {
    let (number, unit) = split_number(value.trim());
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        _ => {
            return Err(format!(
                "{value:?} is not a size such as 65536, 64KiB or 4MiB"
            ));
        }
    };
    let bytes = number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{value:?} is not a size such as 65536, 64KiB or 4MiB"))?;
    if !(1 << 10..=1 << 30).contains(&bytes) {
        return Err(format!("{value:?}: must be between 1KiB and 1024MiB"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_stay_in_bounds() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert!(parse_size("4MB").is_err());
        assert!(parse_size("100").is_err());
        assert!(parse_size("2048MiB").is_err());
        assert!(parse_size("99999999999999999999MiB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-5s").is_err());
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("876000h").is_ok(), "100 years");
        assert!(parse_duration("876001h").unwrap_err().contains("too long"));
        assert!(
            parse_duration("18446744073709551615h").is_err(),
            "no overflow"
        );
    }

    #[test]
    fn intervals_timeouts_and_ttls_must_be_more_than_zero_naming_the_flag() {
        for flag in [
            "--usage-flush-interval",
            "--health-check-interval",
            "--db-acquire-timeout",
            "--shutdown-timeout",
            "--cache-ttl",
            "--cache-negative-ttl",
            "--change-feed-heartbeat",
        ] {
            for value in ["0s", "0ms", "0", "-1s"] {
                let error = Cli::try_parse_from(["token-authority", &format!("{flag}={value}")])
                    .expect_err("refused")
                    .to_string();
                assert!(error.contains(flag), "{flag} {value}: {error}");
            }
            assert!(Cli::try_parse_from(["token-authority", flag, "1ms"]).is_ok());
        }
        let drain = Cli::try_parse_from(["token-authority", "--shutdown-drain", "0s"]).unwrap();
        assert_eq!(
            drain.serve.shutdown_drain,
            Duration::ZERO,
            "no drain is a choice"
        );
        for connections in ["0", "10001"] {
            let error =
                Cli::try_parse_from(["token-authority", "--db-max-connections", connections])
                    .expect_err("refused")
                    .to_string();
            assert!(error.contains("--db-max-connections"), "{error}");
        }
    }

    #[test]
    fn ext_authz_flags_make_check_settings() {
        let cli = Cli::try_parse_from([
            "token-authority",
            "--ext-authz-api-key-header",
            "X-Key",
            "--ext-authz-trusted-proxies",
            "10.0.0.0/8, 192.0.2.7",
            "--ext-authz-path-prefix",
            "/api",
        ])
        .unwrap();
        let settings = cli.serve.ext_authz.settings().unwrap();
        assert_eq!(settings.api_key_header.as_deref(), Some("x-key"));
        assert_eq!(settings.trusted_proxies.len(), 2);
        assert_eq!(settings.path_prefix, vec!["api".to_owned()]);
        assert_eq!(settings.identity_headers.id, "x-token-id");

        let cli =
            Cli::try_parse_from(["token-authority", "--ext-authz-api-key-header", ""]).unwrap();
        assert_eq!(cli.serve.ext_authz.settings().unwrap().api_key_header, None);
        let cli =
            Cli::try_parse_from(["token-authority", "--ext-authz-id-header", "x id"]).unwrap();
        assert!(
            cli.serve
                .ext_authz
                .settings()
                .unwrap_err()
                .contains("--ext-authz-id-header")
        );
        assert!(
            Cli::try_parse_from(["token-authority", "--ext-authz-trusted-proxies", "nope"])
                .is_err()
        );
    }

    #[test]
    fn scan_takes_paths_and_checks_its_report_flags() {
        let scan = |args: &[&str]| {
            let argv = ["token-authority", "scan"].iter().chain(args).copied();
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Some(Command::Scan(args)) => args,
                other => panic!("not a scan: {other:?}"),
            })
        };
        let defaults = scan(&[]).unwrap();
        assert!(defaults.paths.is_empty() && !defaults.report);
        assert_eq!(defaults.source, "scan");
        let args = scan(&["a", "-", "--report", "--server", "https://ta.example:443"]).unwrap();
        assert_eq!(args.paths, [PathBuf::from("a"), PathBuf::from("-")]);
        assert_eq!(args.server.server, "https://ta.example:443");
        for bad in [
            &["--server", "127.0.0.1:50051"][..],
            &["--server", "ftp://host"],
            &["--source", "CI"],
            &["--source", ""],
            &["--client-cert", "c.pem"],
            &["--threads", "65"],
        ] {
            assert!(scan(bad).is_err(), "{bad:?}");
        }
        assert!(scan(&["--url", &"u".repeat(2049)]).is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn metrics_listen_on_localhost_unless_turned_off() {
        let parse = |args: &[&str]| {
            let argv = ["token-authority"].iter().chain(args).copied();
            Cli::try_parse_from(argv).map(|cli| cli.serve.metrics_addr.0)
        };
        assert_eq!(parse(&[]).unwrap(), Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse(&["--metrics-addr", "off"]).unwrap(), None);
        assert_eq!(parse(&["--metrics-addr", ""]).unwrap(), None);
        assert_eq!(
            parse(&["--metrics-addr", "0.0.0.0:9000"]).unwrap(),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        assert!(parse(&["--metrics-addr", "localhost"]).is_err());
    }

    #[test]
    fn tls_needs_both_a_certificate_and_a_key() {
        let parse = |args: &[&str]| {
            let argv = ["token-authority"].iter().chain(args).copied();
            Cli::try_parse_from(argv).map(|cli| cli.serve.tls())
        };
        assert!(parse(&[]).unwrap().is_none());
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["--tls-key", "k.pem"]).is_err());
        assert!(parse(&["--tls-client-ca", "ca.pem"]).is_err());
        let tls = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .unwrap()
            .unwrap();
        assert_eq!(tls.mode(), "tls");
        let mtls = parse(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-client-ca",
            "ca.pem",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(mtls.mode(), "mtls");
    }

    #[test]
    fn without_a_database_url_the_store_is_sqlite_under_the_data_dir() {
        let cli = Cli::try_parse_from(["token-authority", "--data-dir", "/tmp/x"]).unwrap();
        let mut store = cli.store;
        store.database_url = None;
        assert_eq!(store.options().url, "sqlite:///tmp/x/token-authority.db");
    }
}
