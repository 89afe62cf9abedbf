//! The operations surface: health (overall, per service, and NOT_SERVING while the store is
//! unreachable) and reflection v1 and v1alpha.

use std::time::Duration;

use sqlx::{Connection, Executor};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    both_backends,
    helpers::{Backend, TestApp, spawn_app},
};

both_backends!(
    health_reports_serving_overall_and_per_service,
    reflection_v1_and_v1alpha_describe_every_service
);

const SERVICES: [&str; 9] = [
    "envoy.service.auth.v3.Authorization",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "tokenauthority.v1.AuditService",
    "tokenauthority.v1.LeakService",
    "tokenauthority.v1.TokenService",
    "tokenauthority.v1.TokenTypeService",
    "tokenauthority.v1.VerifyService",
];

async fn status(app: &TestApp, service: &str) -> Result<ServingStatus, tonic::Status> {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status())
}

async fn wait_for_status(app: &TestApp, want: ServingStatus) {
    for _ in 0..200 {
        if status(app, "").await.ok() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {want:?}");
}

async fn health_reports_serving_overall_and_per_service(backend: Backend) {
    let app = spawn_app(backend).await;
    wait_for_status(&app, ServingStatus::Serving).await;

    for service in [
        "",
        "tokenauthority.v1.TokenService",
        "tokenauthority.v1.VerifyService",
        "envoy.service.auth.v3.Authorization",
    ] {
        assert_eq!(
            status(&app, service).await.unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = status(&app, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_postgres_is_unreachable() {
    let app = spawn_app(Backend::Postgres).await;
    let secret = app.create(crate::helpers::spec("t", &[])).await.secret;
    wait_for_status(&app, ServingStatus::Serving).await;
    let admin_url = std::env::var("DATABASE_URL").unwrap();
    let database = app.db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();

    // Act: refuse new connections to the test's database and end the open ones.
    admin
        .execute(format!(r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS false"#).as_str())
        .await
        .unwrap();
    admin
        .execute(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'").as_str())
        .await
        .unwrap();

    // Assert: NOT_SERVING, everywhere, and Verify says the store is unavailable.
    wait_for_status(&app, ServingStatus::NotServing).await;
    assert_eq!(
        status(&app, "tokenauthority.v1.VerifyService")
            .await
            .unwrap(),
        ServingStatus::NotServing
    );
    assert_eq!(
        status(&app, token_authority::startup::LIVENESS_SERVICE)
            .await
            .unwrap(),
        ServingStatus::Serving,
        "liveness does not follow the store: a Postgres outage must not restart replicas"
    );
    let outage = app
        .verifier
        .clone()
        .verify(token_authority::pb::v1::VerifyRequest {
            token: secret.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(outage.code(), Code::Unavailable);
    assert!(!outage.message().contains(&secret[3..]));

    // And back: SERVING again, without a restart.
    admin
        .execute(format!(r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS true"#).as_str())
        .await
        .unwrap();
    wait_for_status(&app, ServingStatus::Serving).await;
    assert!(app.verify_perms(&secret, &[]).await.valid);
}

async fn reflection_v1_and_v1alpha_describe_every_service(backend: Backend) {
    let app = spawn_app(backend).await;

    let v1 = reflect_v1(&app).await;
    let v1alpha = reflect_v1alpha(&app).await;

    for (version, (services, described)) in [("v1", v1), ("v1alpha", v1alpha)] {
        let mut services = services;
        services.sort();
        assert_eq!(services, SERVICES, "{version} lists every service");
        for service in SERVICES {
            assert!(
                described.iter().any(|(s, ok)| s == service && *ok),
                "{version} describes {service}"
            );
        }
    }
}

/// Defines `async fn $name(app) -> (services, [(service, described)])`: lists services
/// over reflection `$version`, then asks for the file that declares each.
macro_rules! reflect {
    ($name:ident, $version:ident) => {
        async fn $name(app: &TestApp) -> (Vec<String>, Vec<(String, bool)>) {
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let mut client = ServerReflectionClient::new(app.channel.clone());
            let ask = |request: MessageRequest| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            let mut requests = vec![ask(MessageRequest::ListServices(String::new()))];
            requests.extend(
                SERVICES
                    .iter()
                    .map(|s| ask(MessageRequest::FileContainingSymbol(s.to_string()))),
            );
            let mut responses = client
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .unwrap()
                .into_inner();
            let mut services = Vec::new();
            let mut described = Vec::new();
            while let Some(response) = responses.next().await {
                match response.unwrap().message_response.unwrap() {
                    MessageResponse::ListServicesResponse(list) => {
                        services = list.service.into_iter().map(|s| s.name).collect()
                    }
                    MessageResponse::FileDescriptorResponse(files) => {
                        described.push((
                            SERVICES[described.len()].to_owned(),
                            !files.file_descriptor_proto.is_empty(),
                        ));
                    }
                    other => panic!("unexpected reflection answer {other:?}"),
                }
            }
            (services, described)
        }
    };
}

reflect!(reflect_v1, v1);
// Older grpcurl versions speak v1alpha.
reflect!(reflect_v1alpha, v1alpha);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_calls_finish() {
    // Arrange: hold SQLite's write lock, so that a CreateToken stays in flight.
    let app = spawn_app(Backend::Sqlite).await;
    let mut blocker = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
    blocker.execute("BEGIN IMMEDIATE").await.unwrap();
    let mut tokens = app.tokens.clone();
    let request = crate::helpers::authed(
        &app.admin,
        token_authority::pb::v1::CreateTokenRequest {
            token: Some(crate::helpers::spec("in-flight", &[])),
            ttl: None,
        },
    );
    let in_flight = tokio::spawn(async move { tokens.create_token(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the call waits for the lock");

    // Act: shut down while the call is in flight, then let it proceed.
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the in-flight call"
    );
    blocker.execute("COMMIT").await.unwrap();

    // Assert: the call completed, then the server stopped, and the token was kept.
    let created = in_flight
        .await
        .unwrap()
        .expect("the in-flight call succeeded");
    let (db, admin) = stopping.await.unwrap();
    let secret = created.into_inner().secret;
    let settings = crate::helpers::test_settings(&db);
    let app = crate::helpers::spawn_with(db, settings, Some(admin)).await;
    assert!(app.verify_perms(&secret, &[]).await.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_reports_not_serving_first_and_fails_no_call() {
    // Arrange: the real binary with a 1 s drain, under Verify load, its health watched.
    let dir = tempfile::tempdir().unwrap();
    let admin_file = dir.path().join("admin.secret");
    let admin_file_str = admin_file.display().to_string();
    let server = crate::helpers::Process::start(
        dir.path(),
        &[],
        &[
            ("TA_SHUTDOWN_DRAIN", "1s"),
            ("TA_SHUTDOWN_TIMEOUT", "5s"),
            ("TA_BOOTSTRAP_TOKEN_FILE", &admin_file_str),
        ],
    );
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_owned();
    let target = format!("http://127.0.0.1:{}", server.port);
    let start = std::time::Instant::now();
    let load = {
        let target = target.clone();
        tokio::spawn(async move {
            let mut client =
                token_authority::pb::v1::verify_service_client::VerifyServiceClient::connect(
                    target,
                )
                .await
                .unwrap();
            // (sent at, answered at, valid) of every call until the server is gone.
            let mut calls = Vec::new();
            loop {
                let sent = start.elapsed();
                let answer = client
                    .verify(token_authority::pb::v1::VerifyRequest {
                        token: admin.clone(),
                        ..Default::default()
                    })
                    .await;
                let valid = answer.is_ok_and(|a| a.get_ref().valid);
                calls.push((sent, start.elapsed(), valid));
                if !valid || calls.len() > 1_000_000 {
                    return calls;
                }
            }
        })
    };
    let health = {
        let target = target.clone();
        tokio::spawn(async move {
            let channel = tonic::transport::Channel::from_shared(target)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = HealthClient::new(channel);
            loop {
                match client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(answer) if answer.get_ref().status() == ServingStatus::NotServing => {
                        return Some(start.elapsed());
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    Err(_) => return None,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Act: SIGTERM.
    let signalled = start.elapsed();
    let (exited_cleanly, _, stderr) = server.terminate().await;
    let exited = start.elapsed();

    // Assert: NOT_SERVING came first; every call sent before the drain ended succeeded;
    // the process exited within the drain and the shutdown timeout.
    let not_serving = health
        .await
        .unwrap()
        .expect("health reported NOT_SERVING before the server went away");
    assert!(not_serving >= signalled && not_serving < signalled + Duration::from_secs(1));
    let calls = load.await.unwrap();
    let drain_end = signalled + Duration::from_millis(900);
    let during_drain = calls
        .iter()
        .filter(|(sent, _, _)| *sent > not_serving && *sent < drain_end)
        .count();
    assert!(during_drain > 0, "calls were made during the drain");
    let failed: Vec<_> = calls
        .iter()
        .filter(|(sent, _, valid)| *sent < drain_end && !valid)
        .collect();
    assert!(
        failed.is_empty(),
        "calls failed during the drain: {failed:?}"
    );
    assert!(exited_cleanly, "{stderr}");
    assert!(
        exited < signalled + Duration::from_secs(6),
        "exited {:?} after SIGTERM",
        exited - signalled
    );
}
