//! The admin CLI, the real binary against the real server: every command's output, `-o
//! json` equal to what the gRPC API answers, the exit status of each kind of failure, the
//! secret only on stdout and only once, the credential from TA_TOKEN or --token-file, TLS.

use serde_json::Value;
use token_authority::{
    cli::output::to_json,
    pb::v1::{GetTokenRequest, ListTokensRequest, VerifyResult},
    tls::TlsFiles,
};
use tokio::io::AsyncWriteExt;

use crate::{
    both_backends,
    helpers::{
        BINARY, Backend, TestApp, TestDb, authed, spawn_app, spawn_with, spec, test_settings,
    },
    tls::Pki,
};

/// What a run of the binary printed, and its exit status.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }
}

/// Runs `token-authority <args>` against `server` with TA_TOKEN = `token` (unset when
/// `None`), writing `stdin` to it.
pub async fn run_at(server: &str, token: Option<&str>, stdin: &str, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(BINARY);
    command
        .args(args)
        .env("TA_SERVER", server)
        .env_remove("TA_TOKEN_FILE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    match token {
        Some(secret) => command.env("TA_TOKEN", secret),
        None => command.env_remove("TA_TOKEN"),
    };
    let mut child = command.spawn().expect("the binary runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = child.wait_with_output().await.unwrap();
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Runs the binary against the app, as the admin.
async fn ta(app: &TestApp, args: &[&str]) -> Run {
    run_at(
        &format!("http://{}", app.target),
        Some(&app.admin),
        "",
        args,
    )
    .await
}

/// Runs the binary against the app as `token`, with `stdin`.
async fn ta_as(app: &TestApp, token: Option<&str>, stdin: &str, args: &[&str]) -> Run {
    run_at(&format!("http://{}", app.target), token, stdin, args).await
}

async fn grpc_token(app: &TestApp, id: &str) -> token_authority::pb::v1::Token {
    app.tokens
        .clone()
        .get_token(authed(&app.admin, GetTokenRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
}

/// The value of a `field: value` line of a summary.
fn field<'a>(summary: &'a str, name: &str) -> Option<&'a str> {
    summary
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Asserts that no output of the run holds the secret.
fn assert_hidden(run: &Run, secret: &str) {
    assert!(
        !run.stdout.contains(secret) && !run.stderr.contains(secret),
        "a secret was printed: {}\n{}",
        run.stdout,
        run.stderr
    );
}

both_backends!(
    every_token_command_prints_what_the_server_answered,
    the_secret_is_printed_once_and_alone_with_output_secret,
    type_audit_and_verify_commands_work,
    each_kind_of_failure_has_its_exit_status_and_changes_nothing,
    what_the_server_stores_reaches_the_terminal_without_escapes_or_bidi,
);

async fn every_token_command_prints_what_the_server_answered(backend: Backend) {
    let app = spawn_app(backend).await;

    // create, with a flag for every field
    let created = ta(
        &app,
        &[
            "tokens",
            "create",
            "billing-ci",
            "--owner",
            "team-billing",
            "--description",
            "deploys billing",
            "--permission",
            "domains:read",
            "--permission",
            "backends:write",
            "--cidr",
            "10.0.0.0/8",
            "--host",
            "api.example.com",
            "--bind",
            "reportId=r-17",
            "--meta",
            "ticket=OPS-42",
            "--ttl",
            "30d",
            "--max-uses",
            "100",
            "--rate",
            "10/1m",
            "-o",
            "json",
        ],
    )
    .await;
    let json = created.json();
    let id = json["token"]["id"].as_str().unwrap().to_owned();
    let secret = json["secret"].as_str().unwrap().to_owned();
    let stored = grpc_token(&app, &id).await;
    assert_eq!(
        json["token"],
        to_json(&stored),
        "-o json is the gRPC answer"
    );
    assert_eq!(stored.owner, "team-billing");
    assert_eq!(stored.permissions, ["domains:read", "backends:write"]);
    assert_eq!(stored.bindings["reportId"], "r-17");
    assert_eq!(stored.max_uses, 100);
    let rate = stored.rate_limit.unwrap();
    assert_eq!((rate.requests, rate.interval.unwrap().seconds), (10, 60));
    let lifetime = stored.expire_time.unwrap().seconds - stored.create_time.unwrap().seconds;
    assert!(
        (30 * 86_400 - 5..=30 * 86_400 + 5).contains(&lifetime),
        "{lifetime}"
    );
    assert_eq!(created.stdout.matches(&secret).count(), 1, "once");
    assert!(!created.stderr.contains(&secret));

    // get, as a summary and as JSON
    let got = ta(&app, &["tokens", "get", &id]).await;
    got.ok();
    assert_eq!(
        field(&got.stdout, "name"),
        Some("billing-ci"),
        "{}",
        got.stdout
    );
    assert_eq!(
        field(&got.stdout, "permissions"),
        Some("domains:read, backends:write")
    );
    assert_eq!(field(&got.stdout, "bindings"), Some("reportId=r-17"));
    assert_hidden(&got, &secret);
    let got = ta(&app, &["tokens", "get", &id, "-o", "json"]).await;
    assert_eq!(got.json(), to_json(&grpc_token(&app, &id).await));

    // list: a table; its JSON is ListTokens' answer
    app.create(spec("other", &["a:read"])).await;
    let listed = ta(&app, &["tokens", "list", "--owner", "team-billing"]).await;
    let lines: Vec<&str> = listed.ok().lines().collect();
    assert_eq!(lines.len(), 2, "{}", listed.stdout);
    assert!(lines[0].starts_with("ID") && lines[0].contains("NAME") && lines[0].contains("OWNER"));
    assert!(lines[1].starts_with(&id) && lines[1].contains("billing-ci  team-billing"));
    assert_hidden(&listed, &secret);
    let filters = [
        "tokens",
        "list",
        "--type",
        "personal",
        "--enabled",
        "--name-prefix",
        "bill",
        "--unexpired",
        "--bind",
        "reportId=r-17",
        "-o",
        "json",
    ];
    let listed = ta(&app, &filters).await;
    let answer = app
        .tokens
        .clone()
        .list_tokens(authed(
            &app.admin,
            ListTokensRequest {
                r#type: "personal".into(),
                enabled: Some(true),
                name_prefix: "bill".into(),
                expired: Some(false),
                bindings: [("reportId".to_owned(), "r-17".to_owned())].into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.json(), to_json(&answer));
    assert_eq!(answer.tokens.len(), 1);
    assert_hidden(&listed, &secret);

    // update: only the fields given, a list replaced, a field cleared
    let updated = ta(
        &app,
        &[
            "tokens",
            "update",
            &id,
            "--description",
            "deploys billing and invoices",
            "--permission",
            "domains:read",
            "--clear",
            "rate-limit",
            "-o",
            "json",
        ],
    )
    .await;
    let after = grpc_token(&app, &id).await;
    assert_eq!(updated.json(), to_json(&after));
    assert_eq!(after.description, "deploys billing and invoices");
    assert_eq!(after.permissions, ["domains:read"]);
    assert_eq!(after.rate_limit, None);
    assert_eq!(after.allowed_hosts, ["api.example.com"], "not given, kept");

    // disable, enable
    let disabled = ta(&app, &["tokens", "disable", &id]).await;
    assert!(disabled.ok().contains("enabled:"), "{}", disabled.stdout);
    assert!(!grpc_token(&app, &id).await.enabled);
    ta(&app, &["tokens", "enable", &id]).await.ok();
    assert!(grpc_token(&app, &id).await.enabled);

    // lookup reads the secret from stdin, and prints no secret
    let looked_up = ta_as(
        &app,
        Some(&app.admin),
        &format!("{secret}\n"),
        &["tokens", "lookup"],
    )
    .await;
    assert!(looked_up.ok().contains(&id), "{}", looked_up.stdout);
    assert!(looked_up.stdout.contains("SECRET_KIND_CURRENT"));
    assert_hidden(&looked_up, &secret);

    // rotate with a grace period: the new secret printed once; the old one works for now
    let rotated = ta(&app, &["tokens", "rotate", &id, "--grace", "1h"]).await;
    let new_secret = rotated
        .ok()
        .lines()
        .find_map(|l| l.strip_prefix("secret:"))
        .expect("the secret is printed")
        .trim()
        .to_owned();
    assert!(new_secret.starts_with("ta_"), "{}", rotated.stdout);
    assert_eq!(rotated.stdout.matches(&new_secret).count(), 1);
    assert!(rotated.stdout.contains("previous_secret_expire_time:"));
    let verdict = app
        .verify(token_authority::pb::v1::VerifyRequest {
            token: new_secret.clone(),
            client_ip: "10.1.2.3".into(),
            host: "api.example.com".into(),
            ..Default::default()
        })
        .await;
    assert!(verdict.valid, "{verdict:?}");

    // revoke what the admin made; delete; then get is NOT_FOUND
    let revoked = ta(&app, &["tokens", "revoke", "--owner", "team-billing"]).await;
    assert!(
        revoked.ok().contains("revoked_count: 1"),
        "{}",
        revoked.stdout
    );
    assert!(!grpc_token(&app, &id).await.enabled);
    let deleted = ta(&app, &["tokens", "delete", &id]).await;
    assert_eq!(deleted.ok(), "deleted\n");
    let gone = ta(&app, &["tokens", "get", &id]).await;
    assert_eq!(gone.code, 4, "{}", gone.stderr);
    assert!(gone.stderr.starts_with("error: ") && gone.stderr.lines().count() == 1);
}

async fn the_secret_is_printed_once_and_alone_with_output_secret(backend: Backend) {
    let app = spawn_app(backend).await;

    let created = ta(&app, &["tokens", "create", "batch-job", "-o", "secret"]).await;
    let secret = created.ok().strip_suffix('\n').unwrap().to_owned();
    assert!(
        !secret.contains('\n') && secret.starts_with("ta_"),
        "{secret}"
    );
    assert!(app.verify_perms(&secret, &[]).await.valid);
    assert!(created.stderr.contains("name:") && created.stderr.contains("batch-job"));
    assert!(
        !created.stderr.contains(&secret),
        "the summary holds no secret"
    );

    let id = app
        .all_tokens()
        .await
        .into_iter()
        .find(|t| t.name == "batch-job")
        .unwrap()
        .id;
    let rotated = ta(&app, &["tokens", "rotate", &id, "-o", "secret"]).await;
    let new_secret = rotated.ok().trim_end().to_owned();
    assert_ne!(new_secret, secret);
    assert!(app.verify_perms(&new_secret, &[]).await.valid);
    assert!(
        !app.verify_perms(&secret, &[]).await.valid,
        "no grace: the old one ends"
    );
    assert!(!rotated.stderr.contains(&new_secret));

    // No other command prints a secret, in any form; -o secret is refused on them.
    for args in [
        &["tokens", "get", &id, "-o", "json"][..],
        &["tokens", "list", "-o", "json"],
        &["tokens", "list"],
        &["audit", "list", "-o", "json"],
    ] {
        let run = ta(&app, args).await;
        run.ok();
        assert_hidden(&run, &new_secret);
        assert_hidden(&run, &secret);
    }
    let refused = ta(&app, &["tokens", "get", &id, "-o", "secret"]).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
}

async fn type_audit_and_verify_commands_work(backend: Backend) {
    let app = spawn_app(backend).await;

    // types
    let created = ta(
        &app,
        &[
            "types",
            "create",
            "service",
            "--display-name",
            "Service Token",
            "--description",
            "machine-to-machine",
            "--required-field",
            "description",
            "--max-lifetime",
            "365d",
            "--writable",
            "-o",
            "json",
        ],
    )
    .await;
    let json = created.json();
    assert_eq!(json["id"], "service");
    assert_eq!(json["template"]["maxLifetime"], "31536000s");
    assert_eq!(json["template"]["writable"], true);
    let listed = ta(&app, &["types", "list"]).await;
    for id in ["personal", "assistant", "service"] {
        assert!(
            listed.ok().lines().any(|l| l.starts_with(id)),
            "{}",
            listed.stdout
        );
    }
    let updated = ta(
        &app,
        &[
            "types",
            "update",
            "service",
            "--max-lifetime",
            "90d",
            "-o",
            "json",
        ],
    )
    .await;
    let json = updated.json();
    assert_eq!(json["template"]["maxLifetime"], "7776000s");
    assert_eq!(
        json["template"]["requiredFields"][0], "description",
        "the rest of the template kept"
    );
    assert_eq!(json["template"]["writable"], true);
    let got = ta(&app, &["types", "get", "assistant"]).await;
    assert!(got.ok().contains("required_bindings:"), "{}", got.stdout);
    assert_eq!(
        ta(&app, &["types", "delete", "service"]).await.ok(),
        "deleted\n"
    );
    assert_eq!(ta(&app, &["types", "get", "service"]).await.code, 4);

    // verify: the secret on stdin or in a file, never a flag; exit 0 valid, 1 not
    let token = app.create(spec("app", &["domains:read"])).await;
    let valid = ta_as(
        &app,
        None,
        &token.secret,
        &["verify", "--permission", "domains:read", "-o", "json"],
    )
    .await;
    assert!(!valid.ok().is_empty());
    assert_eq!(valid.json()["valid"], true);
    assert_hidden(&valid, &token.secret);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.secret");
    std::fs::write(&file, format!("{}\n", token.secret)).unwrap();
    let denied = ta_as(
        &app,
        None,
        "",
        &[
            "verify",
            "--secret-file",
            file.to_str().unwrap(),
            "--permission",
            "domains:write",
        ],
    )
    .await;
    assert_eq!(denied.code, 1, "{}", denied.stderr);
    assert!(
        denied.stdout.contains("VERIFY_RESULT_PERMISSION_DENIED"),
        "{}",
        denied.stdout
    );
    assert_hidden(&denied, &token.secret);

    // audit list: a table of what was done, newest first; JSON for scripts
    let target = format!("token/{}", token.token.unwrap().id);
    let trail = ta(&app, &["audit", "list", "--target", &target]).await;
    let lines: Vec<&str> = trail.ok().lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("ACTION"),
        "{}",
        trail.stdout
    );
    assert_eq!(lines.len(), 2, "{}", trail.stdout);
    assert!(lines[1].contains(" create "), "{}", trail.stdout);
    let trail = ta(
        &app,
        &["audit", "list", "--action", "type_delete", "-o", "json"],
    )
    .await;
    assert_eq!(trail.json()["events"][0]["target"], "type/service");
}

async fn each_kind_of_failure_has_its_exit_status_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let weak = app
        .create(spec("weak", &["tokens:read", "tokens:write"]))
        .await;
    app.create(spec("taken", &[])).await;
    let before = app.snapshot().await;

    let cases: [(&[&str], Option<&str>, i32, &str); 11] = [
        // bad flags: refused before any call
        (
            &["tokens", "create", "x", "--ttl", "30x"],
            Some(&app.admin),
            2,
            "--ttl",
        ),
        (
            &["tokens", "create", "x", "--rate", "10"],
            Some(&app.admin),
            2,
            "--rate",
        ),
        (
            &["tokens", "create", "x", "--bind", "novalue"],
            Some(&app.admin),
            2,
            "--bind",
        ),
        (
            &["tokens", "create", "x", "--expires", "tomorrow"],
            Some(&app.admin),
            2,
            "--expires",
        ),
        (&["tokens", "create"], Some(&app.admin), 2, "<NAME>"),
        (
            &["tokens", "update", "x"],
            Some(&app.admin),
            2,
            "nothing to change",
        ),
        // INVALID_ARGUMENT from the server, naming the field
        (
            &["tokens", "create", "x", "--permission", "Domains"],
            Some(&app.admin),
            2,
            "token.permissions[0]",
        ),
        // no credential, a weaker caller
        (&["tokens", "list"], None, 3, "TA_TOKEN"),
        (
            &["tokens", "rotate", &app.admin_token().await.id],
            Some(&weak.secret),
            3,
            "permissions",
        ),
        // NOT_FOUND, ALREADY_EXISTS
        (
            &["tokens", "get", "0190f0f0-0000-7000-8000-000000000000"],
            Some(&app.admin),
            4,
            "",
        ),
        (&["tokens", "create", "taken"], Some(&app.admin), 6, ""),
    ];
    for (args, token, code, names) in cases {
        let run = ta_as(&app, token, "", args).await;
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "{args:?}: one line: {}",
            run.stderr
        );
        assert!(
            run.stderr.starts_with("error: ") && run.stderr.contains(names),
            "{args:?}: {}",
            run.stderr
        );
    }
    let unavailable = run_at(
        "http://127.0.0.1:9",
        Some(&app.admin),
        "",
        &["tokens", "list"],
    )
    .await;
    assert_eq!(unavailable.code, 5, "{}", unavailable.stderr);
    assert_eq!(app.snapshot().await, before, "nothing changed");

    // the credential from a file, when TA_TOKEN is not set; a weaker token reads its own
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weak.secret");
    std::fs::write(&file, format!("{}\n", weak.secret)).unwrap();
    let listed = ta_as(
        &app,
        None,
        "",
        &["tokens", "list", "--token-file", file.to_str().unwrap()],
    )
    .await;
    assert!(listed.ok().contains("weak"), "{}", listed.stdout);
    assert_eq!(
        app.verify_perms(&weak.secret, &[]).await.result(),
        VerifyResult::Ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_an_https_server_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let db = TestDb::fresh(Backend::Sqlite).await;
    let mut settings = test_settings(&db);
    settings.tls = Some(TlsFiles {
        ..pki.server.clone()
    });
    let app = spawn_with(db, settings, None).await;
    let port: u16 = app.target.rsplit(':').next().unwrap().parse().unwrap();
    let server = format!("https://localhost:{port}");
    let ca = pki.client_ca();
    let ca = ca.to_str().unwrap();

    let created = run_at(
        &server,
        Some(&app.admin),
        "",
        &[
            "tokens",
            "create",
            "over-tls",
            "--ca-cert",
            ca,
            "-o",
            "secret",
        ],
    )
    .await;
    let secret = created.ok().trim_end().to_owned();
    let verified = run_at(&server, None, &secret, &["verify", "--ca-cert", ca]).await;
    assert!(
        verified.ok().contains("VERIFY_RESULT_OK"),
        "{}",
        verified.stdout
    );

    let no_ca = run_at(&server, Some(&app.admin), "", &["tokens", "list"]).await;
    assert_eq!(
        no_ca.code, 2,
        "an https server needs --ca-cert: {}",
        no_ca.stderr
    );
    let plain = run_at(
        &format!("http://127.0.0.1:{port}"),
        Some(&app.admin),
        "",
        &["tokens", "list"],
    )
    .await;
    assert_ne!(plain.code, 0, "{}", plain.stderr);
}

async fn what_the_server_stores_reaches_the_terminal_without_escapes_or_bidi(backend: Backend) {
    let app = spawn_app(backend).await;
    // Anyone who may create a token can put these in what the admin later reads: a bidi
    // override and a zero-width joiner in the name and description (the server refuses
    // control characters there), ESC and BEL sequences in the metadata.
    let hostile = [
        '\u{1b}', '\u{7}', '\u{7f}', '\u{85}', '\u{9b}', '\u{202e}', '\u{2066}', '\u{200d}',
    ];
    let metadata = prost_types::Struct {
        fields: [(
            "note\u{1b}[8m".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(
                    "x\u{1b}[2J\u{1b}]0;owned\u{7}\u{7f}\u{85}\u{9b}".into(),
                )),
            },
        )]
        .into(),
    };
    let created = app
        .create(token_authority::pb::v1::Token {
            description: "safe\u{202e}txt.exe\u{200d}\u{2066}".into(),
            metadata: Some(metadata),
            ..spec("evil\u{202e}gpj.exe\u{200d}", &[])
        })
        .await;
    let id = created.token.unwrap().id;
    app.create(spec("second", &[])).await;

    let get = ta(&app, &["tokens", "get", &id]).await;
    assert_eq!(field(get.ok(), "name"), Some("evil\u{FFFD}gpj.exe\u{FFFD}"));
    let list = ta(&app, &["tokens", "list", "--page-size", "2"]).await;
    assert!(
        list.ok().contains("evil\u{FFFD}gpj.exe\u{FFFD}"),
        "{}",
        list.stdout
    );
    assert!(
        list.stderr.starts_with("more: pass --page-token "),
        "{}",
        list.stderr
    );
    for run in [
        get,
        list,
        ta(&app, &["tokens", "disable", &id]).await,
        ta(&app, &["tokens", "rotate", &id]).await,
        ta(&app, &["tokens", "rotate", &id, "-o", "secret"]).await,
        ta(&app, &["audit", "list"]).await,
    ] {
        run.ok();
        for c in hostile {
            assert!(
                !run.stdout.contains(c) && !run.stderr.contains(c),
                "{c:?} reached the terminal: {:?}\n{:?}",
                run.stdout,
                run.stderr
            );
        }
    }
    // -o json stays the exact value, with every hidden character (DEL, C1, bidi and
    // zero-width ones too) written as a JSON escape, not raw.
    let raw = ta(&app, &["tokens", "get", &id, "-o", "json"]).await;
    for c in hostile {
        assert!(
            !raw.stdout.contains(c),
            "{c:?} raw in -o json: {}",
            raw.stdout
        );
    }
    let json = raw.json();
    assert_eq!(json["name"], "evil\u{202e}gpj.exe\u{200d}");
    assert_eq!(json["description"], "safe\u{202e}txt.exe\u{200d}\u{2066}");
    assert_eq!(
        json["metadata"]["note\u{1b}[8m"],
        "x\u{1b}[2J\u{1b}]0;owned\u{7}\u{7f}\u{85}\u{9b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_to_a_host_that_is_not_loopback_is_refused_before_anything_is_sent() {
    let app = spawn_app(Backend::Sqlite).await;
    let port = app.target.rsplit(':').next().unwrap();
    // 0.0.0.0 is not a loopback address, yet on Linux it reaches the test's server: were
    // the command not refused, the token would be created, the credential sent.
    let remote = format!("http://0.0.0.0:{port}");
    let before = app.snapshot().await;
    let create = ["tokens", "create", "sent-in-cleartext"];

    let refused = run_at(&remote, Some(&app.admin), "", &create).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(
        refused.stderr.starts_with("error: --server ")
            && refused.stderr.contains("--insecure-plaintext"),
        "{}",
        refused.stderr
    );
    let verify = run_at(&remote, None, &app.admin, &["verify"]).await;
    assert_eq!(
        verify.code, 2,
        "verify sends a secret too: {}",
        verify.stderr
    );
    assert_eq!(app.snapshot().await, before, "nothing was sent");

    // Loopback by name or address stays allowed; elsewhere, --insecure-plaintext allows it.
    let local = format!("http://localhost:{port}");
    run_at(&local, Some(&app.admin), "", &["tokens", "list"])
        .await
        .ok();
    let mut insecure = create.to_vec();
    insecure.push("--insecure-plaintext");
    run_at(&remote, Some(&app.admin), "", &insecure).await.ok();
    assert_eq!(app.snapshot().await.len(), before.len() + 1);
}
