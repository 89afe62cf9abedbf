//! Reaching a server as a client: the `--server` and TLS flags, the connection, the
//! caller's credential, and what a failed call tells the user. Shared by the admin
//! commands and `token-authority scan --report`.

use std::{fmt, net::IpAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::text::one_line;
use tonic::{
    Code, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// How long connecting, and then each request, may take before the command fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The server to talk to, and the TLS files to reach it with.
#[derive(Clone, Debug, Args, PartialEq, Eq)]
pub struct ServerArgs {
    /// The server's gRPC address: https://host:port with --ca-cert, or http://host:port to
    /// this machine (localhost, 127.0.0.0/8, ::1; elsewhere only with --insecure-plaintext).
    #[arg(long, env = "TA_SERVER", default_value = "http://127.0.0.1:50051", value_parser = parse_server, global = true)]
    pub server: String,

    /// PEM CA certificate(s) that signed an https --server's certificate.
    #[arg(long, env = "TA_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(long, env = "TA_CLIENT_CERT", requires = "client_key", global = true)]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, env = "TA_CLIENT_KEY", requires = "client_cert", global = true)]
    pub client_key: Option<PathBuf>,

    /// Allow an http:// --server that is not loopback, although the credential (and any
    /// secret sent) then crosses the network in cleartext. Without it such a --server is
    /// refused before anything is sent.
    #[arg(long, global = true)]
    pub insecure_plaintext: bool,
}

/// Why no connection was made.
#[derive(Debug)]
pub enum ConnectError {
    /// The flags or files do not make a client (a usage error).
    Setup(String),
    /// The server could not be reached.
    Unreachable(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(why) | Self::Unreachable(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ConnectError {}

impl ServerArgs {
    /// Checks that the TLS files fit the server's scheme, and that cleartext goes to this
    /// machine only (or `--insecure-plaintext` says so), before anything else is done.
    pub fn check(&self) -> Result<(), String> {
        let https = self.server.starts_with("https://");
        if https && self.ca_cert.is_none() {
            return Err("an https --server needs --ca-cert (no public CAs are built in)".into());
        }
        if !https && (self.ca_cert.is_some() || self.client_cert.is_some()) {
            return Err("--ca-cert and --client-cert need an https:// --server".into());
        }
        if !https && !self.insecure_plaintext && !loopback(&self.server) {
            return Err(format!(
                "--server {}: http:// to a host that is not loopback would send secrets in \
                 cleartext; use https:// with --ca-cert, or pass --insecure-plaintext",
                self.server
            ));
        }
        Ok(())
    }

    /// Connects to the server. Errors name files, never their contents.
    pub async fn connect(&self) -> Result<Channel, ConnectError> {
        self.check().map_err(ConnectError::Setup)?;
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|_| ConnectError::Setup(format!("--server {} is not a URL", self.server)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if let Some(ca) = &self.ca_cert {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls).map_err(|_| {
                ConnectError::Setup("the TLS files do not make a client configuration".into())
            })?;
        }
        endpoint.connect().await.map_err(|error| {
            let mut cause = String::new();
            let mut last = String::new();
            let mut source = std::error::Error::source(&error);
            while let Some(inner) = source {
                let text = inner.to_string();
                if text != last {
                    cause.push_str(&format!(": {text}"));
                }
                last = text;
                source = inner.source();
            }
            ConnectError::Unreachable(format!("cannot connect to {}{cause}", self.server))
        })
    }
}

/// Returns whether the URL's host is this machine: `localhost`, 127.0.0.0/8 or ::1.
fn loopback(server: &str) -> bool {
    let Some(host) = server.parse::<http::Uri>().ok().and_then(|uri| {
        uri.host().map(|host| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
    }) else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Reads a PEM file; errors name the file, never its contents.
fn read(path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path)
        .map_err(|error| ConnectError::Setup(format!("cannot read {}: {error}", path.display())))
}

fn parse_server(value: &str) -> Result<String, String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("{value:?} is not a URL such as http://127.0.0.1:50051"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(value.to_owned()),
        _ => Err(format!(
            "{value:?} is not an http:// or https:// URL with a host"
        )),
    }
}

/// A command that failed: the line to print after `error: `, and the exit status.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// One line, naming the field or flag at fault; never a secret.
    pub line: String,
    /// The exit status, by kind (see [`exit_code`]).
    pub code: u8,
}

/// The exit status of bad input: a usage error, INVALID_ARGUMENT, FAILED_PRECONDITION,
/// OUT_OF_RANGE.
pub const BAD_INPUT: u8 = 2;
/// The exit status of UNAUTHENTICATED and PERMISSION_DENIED, or of no credential.
pub const DENIED: u8 = 3;
/// The exit status of NOT_FOUND.
pub const NOT_FOUND: u8 = 4;
/// The exit status of UNAVAILABLE, DEADLINE_EXCEEDED, or a server that cannot be reached.
pub const UNAVAILABLE: u8 = 5;
/// The exit status of ALREADY_EXISTS.
pub const ALREADY_EXISTS: u8 = 6;

/// Returns the exit status of a gRPC status code; 1 for kinds not listed.
pub fn exit_code(code: Code) -> u8 {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => BAD_INPUT,
        Code::Unauthenticated | Code::PermissionDenied => DENIED,
        Code::NotFound => NOT_FOUND,
        Code::Unavailable | Code::DeadlineExceeded => UNAVAILABLE,
        Code::AlreadyExists => ALREADY_EXISTS,
        _ => 1,
    }
}

impl Failure {
    /// A usage error (exit 2).
    pub fn usage(line: impl Into<String>) -> Self {
        Self {
            line: line.into(),
            code: BAD_INPUT,
        }
    }
}

impl From<Status> for Failure {
    /// The server's message (which names the field, e.g. `token.permissions[2]: …`) on one
    /// line, sanitized, and the exit status of its code.
    fn from(status: Status) -> Self {
        let message = match one_line(status.message()) {
            empty if empty.is_empty() => status.code().description().to_owned(),
            message => message,
        };
        Self {
            line: message,
            code: exit_code(status.code()),
        }
    }
}

impl From<ConnectError> for Failure {
    fn from(error: ConnectError) -> Self {
        let code = match &error {
            ConnectError::Setup(_) => BAD_INPUT,
            ConnectError::Unreachable(_) => UNAVAILABLE,
        };
        Self {
            line: error.to_string(),
            code,
        }
    }
}

/// The environment variable that holds the caller's secret.
pub const TOKEN_ENV: &str = "TA_TOKEN";

/// Returns `authorization: Bearer <secret>` of the caller: the secret in `token_file`,
/// else in `TA_TOKEN`. Never a flag's value, which anyone on the machine could read in
/// `ps`. Errors name where the secret was looked for, never the secret.
pub fn credential(token_file: Option<&PathBuf>) -> Result<AsciiMetadataValue, Failure> {
    let (secret, from) = match token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (text, format!("--token-file {}", path.display())),
            Err(error) => {
                return Err(Failure::usage(format!(
                    "--token-file: cannot read {}: {error}",
                    path.display()
                )));
            }
        },
        None => match std::env::var(TOKEN_ENV) {
            Ok(text) => (text, TOKEN_ENV.to_owned()),
            Err(_) => {
                return Err(Failure {
                    line: format!(
                        "no credential: put the caller's secret in {TOKEN_ENV} or a --token-file"
                    ),
                    code: DENIED,
                });
            }
        },
    };
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(Failure {
            line: format!("{from}: the secret is empty"),
            code: DENIED,
        });
    }
    let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {secret}"))
        .map_err(|_| Failure::usage(format!("{from}: the secret is not printable ASCII")))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_status_has_its_exit_code() {
        let cases = [
            (Code::InvalidArgument, 2),
            (Code::FailedPrecondition, 2),
            (Code::OutOfRange, 2),
            (Code::Unauthenticated, 3),
            (Code::PermissionDenied, 3),
            (Code::NotFound, 4),
            (Code::Unavailable, 5),
            (Code::DeadlineExceeded, 5),
            (Code::AlreadyExists, 6),
            (Code::Internal, 1),
            (Code::ResourceExhausted, 1),
            (Code::Aborted, 1),
        ];
        for (code, exit) in cases {
            assert_eq!(exit_code(code), exit, "{code:?}");
        }
    }

    #[test]
    fn a_status_becomes_one_line() {
        let failure = Failure::from(Status::invalid_argument("token.name: must\nnot be empty"));
        assert_eq!(failure.line, "token.name: must not be empty");
        assert_eq!(failure.code, 2);
        let bare = Failure::from(Status::new(Code::NotFound, ""));
        assert_eq!(
            (bare.line.as_str(), bare.code),
            ("Some requested entity was not found", 4)
        );
        let hostile = Failure::from(Status::not_found("a\u{1b}]0;owned\u{7}\u{202e}b\u{200d}"));
        assert_eq!(hostile.line, "a\u{FFFD}]0;owned\u{FFFD}\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn tls_files_must_fit_the_scheme() {
        let args = |server: &str, ca: bool| ServerArgs {
            server: server.into(),
            ca_cert: ca.then(|| "ca.pem".into()),
            client_cert: None,
            client_key: None,
            insecure_plaintext: false,
        };
        assert!(args("https://h:1", false).check().is_err());
        assert!(args("http://127.0.0.1:1", true).check().is_err());
        assert!(args("https://h:1", true).check().is_ok());
        assert!(args("http://127.0.0.1:1", false).check().is_ok());
        assert!(parse_server("127.0.0.1:50051").is_err());
        assert!(parse_server("ftp://host").is_err());
    }

    #[test]
    fn cleartext_goes_to_loopback_only_unless_insecure_plaintext() {
        let args = |server: &str, insecure_plaintext: bool| ServerArgs {
            server: server.into(),
            ca_cert: None,
            client_cert: None,
            client_key: None,
            insecure_plaintext,
        };
        for local in [
            "http://127.0.0.1:50051",
            "http://127.10.0.3:1",
            "http://localhost:50051",
            "http://LOCALHOST",
            "http://[::1]:50051",
            "http://[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(args(local, false).check(), Ok(()), "{local}");
        }
        for remote in [
            "http://remote-host:50051",
            "http://10.0.0.1:50051",
            "http://0.0.0.0:50051",
            "http://[::]:50051",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "http://[2001:db8::1]:1",
        ] {
            let refused = args(remote, false).check().unwrap_err();
            assert!(
                refused.starts_with("--server ") && !refused.contains('\n'),
                "{refused}"
            );
            assert_eq!(args(remote, true).check(), Ok(()), "{remote}");
        }
        let tls = ServerArgs {
            ca_cert: Some("ca.pem".into()),
            ..args("https://remote-host:1", false)
        };
        assert_eq!(tls.check(), Ok(()));
    }
}
