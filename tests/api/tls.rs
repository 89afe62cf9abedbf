//! TLS on the gRPC port, with certificates made per test (rcgen): real TLS clients are
//! served, plain ones are not; with a client CA, only clients holding a certificate it
//! signed are served.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use token_authority::{
    pb::v1::{
        CreateTokenRequest, VerifyRequest, token_service_client::TokenServiceClient,
        verify_service_client::VerifyServiceClient,
    },
    startup::Application,
    tls::TlsFiles,
};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::helpers::{Backend, Process, TestDb, authed, spawn_with, spec, test_settings};

/// A certificate authority.
pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a certificate for these names (DNS names or IP addresses); returns its PEM
    /// and its key's.
    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A CA, a server certificate for localhost and 127.0.0.1 in files, and a client
/// certificate of that CA.
pub(crate) struct Pki {
    pub(crate) ca: Ca,
    pub(crate) server: TlsFiles,
    pub(crate) client: (String, String),
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Self {
        let ca = Ca::new("token-authority test CA");
        let (cert, key) = ca.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = ca.issue(&["billing-service"], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, pem: &str| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let server = TlsFiles {
            cert: write("server.pem", &cert),
            key: write("server.key", &key),
            client_ca: None,
        };
        write("ca.pem", &ca.pem);
        Self { ca, server, client }
    }

    pub(crate) fn client_ca(&self) -> PathBuf {
        self.server.cert.with_file_name("ca.pem")
    }
}

/// Connects over TLS to localhost:`port`, trusting `ca` (nothing when `None`), presenting
/// `identity` when given.
pub(crate) async fn tls_channel(
    port: u16,
    ca: Option<&str>,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().domain_name("localhost");
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// Whether a Verify succeeds through a channel; a refused handshake may show at connect
/// or (TLS 1.3 checks the client's certificate after the client is done) at the first call.
async fn verify_through(channel: Result<Channel, tonic::transport::Error>) -> Result<(), String> {
    let channel = channel.map_err(|e| format!("connect: {e:?}"))?;
    VerifyServiceClient::new(channel)
        .verify(VerifyRequest {
            token: "ta_unknown".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|status| format!("call: {status:?}"))
}

async fn health(channel: &Channel) -> ServingStatus {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "tokenauthority.v1.VerifyService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn reflected_services(channel: &Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match answers.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_are_served_and_plaintext_clients_are_not() {
    // Arrange: a server with a certificate of the test CA.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let db = TestDb::fresh(Backend::Sqlite).await;
    let mut settings = test_settings(&db);
    settings.tls = Some(pki.server.clone());
    let app = spawn_with(db, settings, None).await;
    let port: u16 = app.target.rsplit(':').next().unwrap().parse().unwrap();

    // Act: a client that trusts the CA manages and verifies tokens, checks health and
    // uses reflection.
    let channel = tls_channel(port, Some(&pki.ca.pem), None).await.unwrap();
    let created = TokenServiceClient::new(channel.clone())
        .create_token(authed(
            &app.admin,
            CreateTokenRequest {
                token: Some(spec("over-tls", &["a:read"])),
                ttl: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let answer = VerifyServiceClient::new(channel.clone())
        .verify(VerifyRequest {
            token: created.secret,
            required_permissions: vec!["a:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // Assert
    assert!(answer.valid);
    assert_eq!(health(&channel).await, ServingStatus::Serving);
    assert!(
        reflected_services(&channel)
            .await
            .contains(&"tokenauthority.v1.VerifyService".to_owned())
    );
    let plaintext = verify_through(Ok(app.channel.clone())).await;
    assert!(plaintext.is_err(), "a plaintext client is not served");
    let untrusting = verify_through(tls_channel(port, None, None).await).await;
    assert!(
        untrusting.is_err(),
        "a client that does not trust the CA stops"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_its_certificates_are_served() {
    // Arrange: the binary, with the TLS flags and a client CA.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let rogue = Ca::new("someone else's CA");
    let rogue_client = rogue.issue(&["billing-service"], ExtendedKeyUsagePurpose::ClientAuth);
    let path = |p: &Path| p.display().to_string();
    let server = Process::start(
        dir.path(),
        &[],
        &[
            ("TA_TLS_CERT", &path(&pki.server.cert)),
            ("TA_TLS_KEY", &path(&pki.server.key)),
            ("TA_TLS_CLIENT_CA", &path(&pki.client_ca())),
        ],
    );
    assert!(server.seen.iter().any(|l| l.contains(r#""tls":"mtls""#)));

    // Act
    let without_certificate =
        verify_through(tls_channel(server.port, Some(&pki.ca.pem), None).await).await;
    let with_a_rogue_certificate =
        verify_through(tls_channel(server.port, Some(&pki.ca.pem), Some(&rogue_client)).await)
            .await;
    let with_its_certificate = tls_channel(server.port, Some(&pki.ca.pem), Some(&pki.client)).await;

    // Assert
    assert!(
        without_certificate.is_err(),
        "no client certificate, no service"
    );
    assert!(
        with_a_rogue_certificate.is_err(),
        "a certificate of another CA is refused"
    );
    let channel = with_its_certificate.expect("a client of the CA connects");
    verify_through(Ok(channel.clone())).await.unwrap();
    assert_eq!(health(&channel).await, ServingStatus::Serving);
    // The README's grpcurl example, as written.
    std::fs::write(dir.path().join("client.pem"), &pki.client.0).unwrap();
    std::fs::write(dir.path().join("client.key"), &pki.client.1).unwrap();
    let target = format!("localhost:{}", server.port);
    let listed = std::process::Command::new("grpcurl")
        .current_dir(dir.path())
        .args([
            "-cacert",
            "ca.pem",
            "-cert",
            "client.pem",
            "-key",
            "client.key",
        ])
        .args([target.as_str(), "list"])
        .output()
        .expect("grpcurl is installed (scripts/test installs it)");
    let services = String::from_utf8_lossy(&listed.stdout);
    assert!(
        services
            .lines()
            .any(|l| l == "tokenauthority.v1.VerifyService"),
        "{services}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let (stopped, _, _) = server.terminate().await;
    assert!(stopped);
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let db = TestDb::fresh(Backend::Sqlite).await;
    let start = |tls: TlsFiles| {
        let mut settings = test_settings(&db);
        settings.tls = Some(tls);
        Application::build(settings)
    };

    let missing = dir.path().join("missing.key");
    let error = start(TlsFiles {
        key: missing.clone(),
        ..pki.server.clone()
    })
    .await
    .err()
    .expect("a missing key stops the start");
    assert!(
        format!("{error:#}").contains(&missing.display().to_string()),
        "{error:#}"
    );

    let garbage = dir.path().join("garbage.key");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let error = start(TlsFiles {
        key: garbage.clone(),
        ..pki.server.clone()
    })
    .await
    .err()
    .expect("a bad key stops the start");
    let message = format!("{error:#}");
    assert!(
        message.contains(&garbage.display().to_string()),
        "{message}"
    );
    assert!(
        !message.contains("c2VjcmV0"),
        "the key's contents are not shown: {message}"
    );
}
