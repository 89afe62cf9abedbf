//! Settings that cannot work are refused at start by the real binary, naming the flag,
//! with a nonzero exit and no panic; extreme values that can work, work.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{BINARY, Process};

/// Runs the binary with a clean environment plus `env`, for at most 10 s; returns its exit
/// code (None when it was still running, i.e. it started serving) and its stderr.
fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(BINARY)
        .current_dir(dir)
        .args(args)
        .env_clear()
        .env("TA_LISTEN_ADDR", "127.0.0.1:0")
        .env("TA_METRICS_ADDR", "off")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (code, stderr)
}

#[test]
fn zero_or_negative_intervals_and_timeouts_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        ("--usage-flush-interval", "TA_USAGE_FLUSH_INTERVAL"),
        ("--health-check-interval", "TA_HEALTH_CHECK_INTERVAL"),
        ("--db-acquire-timeout", "TA_DB_ACQUIRE_TIMEOUT"),
        ("--shutdown-timeout", "TA_SHUTDOWN_TIMEOUT"),
        ("--cache-ttl", "TA_CACHE_TTL"),
        ("--cache-negative-ttl", "TA_CACHE_NEGATIVE_TTL"),
        ("--change-feed-heartbeat", "TA_CHANGE_FEED_HEARTBEAT"),
    ];
    // (arguments, environment, the flag the refusal must name)
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let mut cases: Vec<Case> = Vec::new();
    for (flag, env) in flags {
        cases.push((vec![format!("{flag}=0s")], vec![], flag));
        cases.push((vec![format!("{flag}=-1s")], vec![], flag));
        cases.push((vec![], vec![(env, "0ms")], flag));
    }
    for value in ["0", "4294967295"] {
        cases.push((
            vec![format!("--db-max-connections={value}")],
            vec![],
            "--db-max-connections",
        ));
    }
    cases.push((
        vec!["--cache-ttl=18446744073709551615h".into()],
        vec![],
        "--cache-ttl",
    ));
    for (args, env, flag) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run(dir.path(), &args, &env);
        let case = format!("{args:?} {env:?}");
        assert!(
            code.is_some(),
            "{case}: the server started instead of refusing"
        );
        assert_ne!(code, Some(0), "{case}: exit code");
        assert!(stderr.contains(flag), "{case}: names {flag}: {stderr}");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_settings_work() {
    // Every duration at its 100-year maximum: the server starts, answers and stops
    // cleanly (nothing overflows a clock or panics a task).
    let dir = tempfile::tempdir().unwrap();
    let long = "876000h";
    let admin_file = dir.path().join("admin.secret");
    let server = Process::start(
        dir.path(),
        &[],
        &[
            ("TA_BOOTSTRAP_TOKEN_FILE", admin_file.to_str().unwrap()),
            ("TA_USAGE_FLUSH_INTERVAL", long),
            ("TA_HEALTH_CHECK_INTERVAL", long),
            ("TA_CACHE_TTL", long),
            ("TA_CACHE_NEGATIVE_TTL", long),
            ("TA_DB_ACQUIRE_TIMEOUT", long),
            ("TA_SHUTDOWN_TIMEOUT", long),
            ("TA_CHANGE_FEED_HEARTBEAT", long),
            ("TA_CACHE_MAX_ENTRIES", "18446744073709551615"),
            ("TA_MANAGEMENT_RATE_LIMIT", "4294967295"),
        ],
    );
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let admin = std::fs::read_to_string(&admin_file).unwrap();
    let mut verifier =
        token_authority::pb::v1::verify_service_client::VerifyServiceClient::new(channel);
    for _ in 0..2 {
        // A miss that fills the cache for 100 years, then a hit.
        let answer = verifier
            .verify(token_authority::pb::v1::VerifyRequest {
                token: admin.trim().into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(answer.get_ref().valid);
    }
    drop((health, verifier));
    let (clean, _, stderr) = server.terminate().await;
    assert!(clean, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
