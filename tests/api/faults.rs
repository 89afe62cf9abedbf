//! Postgres stopped under load and started again, with its own throwaway cluster (the
//! suite's shared one must stay up): health turns NOT_SERVING and back, Verify fails
//! closed meanwhile and never accepts a token revoked before the outage, nothing
//! acknowledged is lost, and the server reconnects without a restart.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use token_authority::pb::v1::{
    ListTokensRequest, SetTokenEnabledRequest, VerifyRequest, VerifyResult,
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Backend, TestApp, TestDb, authed, spawn_with, spec, test_settings};

/// A Postgres cluster of a test's own.
pub struct OwnPostgres {
    /// Its admin URL.
    pub url: String,
    dir: String,
}

impl OwnPostgres {
    fn script(args: &[&str]) -> String {
        let output = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/throwaway-postgres.sh"
        ))
        .args(args)
        .output()
        .expect("scripts/throwaway-postgres.sh runs");
        assert!(
            output.status.success(),
            "throwaway-postgres {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Starts a cluster, fast and not crash-safe.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a cluster that acknowledges a commit only once its WAL is written, so that a
    /// crash of the server loses nothing acknowledged.
    pub fn start_durable() -> Self {
        Self::start_with(&["--durable"])
    }

    fn start_with(args: &[&str]) -> Self {
        let exports = Self::script(args);
        let value = |name: &str| {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("no {name} in {exports}"))
                .to_owned()
        };
        Self {
            url: value("DATABASE_URL"),
            dir: value("TA_PG_DIR"),
        }
    }

    /// Stops the server cleanly, keeping its data.
    pub fn pause(&self) {
        Self::script(&["--pause", &self.dir]);
    }

    /// Kills the server (`pg_ctl stop -m immediate`): no checkpoint, crash recovery at the
    /// next start.
    pub fn crash(&self) {
        Self::script(&["--crash", &self.dir]);
    }

    /// Starts the server again, on the same port.
    pub fn resume(&self) {
        Self::script(&["--resume", &self.dir]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        Self::script(&["--stop", &self.dir]);
    }
}

async fn health(app: &TestApp) -> Option<ServingStatus> {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status())
}

async fn wait_for(app: &TestApp, want: ServingStatus) {
    for _ in 0..300 {
        if health(app).await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_and_started_again() {
    // Arrange: a server on a Postgres of its own; a valid token and one revoked before the
    // outage, both cached; Verify load throughout.
    let postgres = OwnPostgres::start();
    let db = TestDb {
        backend: Backend::Postgres,
        url: postgres.url.clone(),
        dir: None,
    };
    let settings = test_settings(&db);
    let app = spawn_with(db, settings, None).await;
    let valid = app.create(spec("valid", &[])).await.secret;
    let revoked = app.create(spec("revoked", &[])).await;
    assert!(app.verify_perms(&revoked.secret, &[]).await.valid);
    app.tokens
        .clone()
        .set_token_enabled(authed(
            &app.admin,
            SetTokenEnabledRequest {
                id: revoked.token.unwrap().id,
                enabled: false,
            },
        ))
        .await
        .unwrap();
    assert!(app.verify_perms(&valid, &[]).await.valid);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut client = app.verifier.clone();
        let (valid, revoked) = (valid.clone(), revoked.secret.clone());
        tokio::spawn(async move {
            let (mut answered, mut unavailable, mut revoked_accepted) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                for (secret, is_revoked) in [(&valid, false), (&revoked, true)] {
                    match client
                        .verify(VerifyRequest {
                            token: secret.clone(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(answer) => {
                            answered += 1;
                            if is_revoked && answer.get_ref().valid {
                                revoked_accepted += 1;
                            }
                        }
                        Err(status) => {
                            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                            unavailable += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (answered, unavailable, revoked_accepted)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act: stop Postgres; then start it again.
    postgres.pause();
    wait_for(&app, ServingStatus::NotServing).await;
    // The change feed's heartbeat notices the lost connection within about 2 s; from then
    // on the cache is not trusted and Verify fails closed.
    let mut closed = false;
    for _ in 0..100 {
        let during = app
            .verifier
            .clone()
            .verify(VerifyRequest {
                token: valid.clone(),
                ..Default::default()
            })
            .await;
        if let Err(status) = during {
            assert_eq!(status.code(), Code::Unavailable);
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "Verify fails closed within 5 s of losing the store");
    postgres.resume();
    wait_for(&app, ServingStatus::Serving).await;

    // Assert: back without a restart; nothing lost; the revoked token never accepted.
    let mut back = false;
    for _ in 0..200 {
        if app.verify_perms(&valid, &[]).await.valid {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "Verify works again after Postgres is back");
    stop.store(true, Ordering::Relaxed);
    let (answered, unavailable, revoked_accepted) = load.await.unwrap();
    assert!(
        answered > 0 && unavailable > 0,
        "{answered} answered, {unavailable} unavailable"
    );
    assert_eq!(
        revoked_accepted, 0,
        "a token revoked before the outage was accepted"
    );
    assert_eq!(
        app.verify_perms(&revoked.secret, &[]).await.result(),
        VerifyResult::Disabled
    );
    let listed = app
        .tokens
        .clone()
        .list_tokens(authed(&app.admin, ListTokensRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 3, "admin, valid and revoked");
    app.create(spec("after-the-outage", &[])).await;
}
