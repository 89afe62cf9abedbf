//! The README's CLI examples (its `sh cli` blocks), run as written by bash against the
//! real server, with the real binary first on PATH and TA_SERVER naming the test's port.

use token_authority::pb::v1::VerifyResult;

use crate::{
    cli::run_at,
    helpers::{BINARY, Backend, TestDb, spawn_with, test_settings},
};

/// The `sh cli` blocks of the README, in order.
fn readme_cli_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh cli") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_cli_examples_work_as_written() {
    // Arrange: a server whose first start wrote the admin secret to ./admin.secret, as the
    // quick start runs it.
    let blocks = readme_cli_blocks();
    assert!(blocks.len() >= 2, "the quick start and the CLI section");
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(Backend::Sqlite).await;
    let mut settings = test_settings(&db);
    settings.bootstrap_token_file = Some(dir.path().join("admin.secret"));
    let mut app = spawn_with(db, settings, None).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.secret")).unwrap();
    app.admin = admin.trim().to_owned();
    let bin = std::path::Path::new(BINARY).parent().unwrap();

    // Act: every block, in one shell, stopping at the first failing command.
    let script = format!("set -euo pipefail\n{}", blocks.concat());
    let output = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("TA_SERVER", format!("http://{}", app.target))
        .env_remove("TA_TOKEN")
        .env_remove("TA_TOKEN_FILE")
        .output()
        .await
        .expect("bash runs");

    // Assert
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        output.status.success(),
        "{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("refused, as it should be"), "{stdout}");
    assert!(stdout.contains("VERIFY_RESULT_DISABLED"), "{stdout}");
    let tokens = app.all_tokens().await;
    let billing = tokens.iter().find(|t| t.name == "billing-ci").unwrap();
    assert!(!billing.enabled, "the quick start disabled it");
    assert!(
        tokens.iter().all(|t| t.name != "deployer"),
        "deleted at the end"
    );
    let secret = std::fs::read_to_string(dir.path().join("billing.secret")).unwrap();
    let secret = secret.trim();
    assert_eq!(
        app.verify_perms(secret, &[]).await.result(),
        VerifyResult::Disabled
    );
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains(secret), "a secret in {name}");
        assert!(!text.contains(admin.trim()), "the admin secret in {name}");
    }

    // And every command's --help runs, with examples.
    let help = run_at(
        "http://127.0.0.1:9",
        None,
        "",
        &["tokens", "create", "--help"],
    )
    .await;
    assert!(help.ok().contains("Examples:"), "{}", help.stdout);
}
