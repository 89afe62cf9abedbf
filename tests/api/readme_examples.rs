//! The README's curl and grpcurl examples, run as written with a real curl and a real
//! grpcurl through `sh`, in the README's order, against the real server (one per tool):
//! only the addresses, the ids and the secrets that stand as `localhost:8080`,
//! `localhost:50051`, `01a2…` and `ta_…` are put in. Every RPC's route must have a curl
//! example, and every RPC a grpcurl one.

use serde_json::Value;

use crate::helpers::{Backend, TestDb, spawn_with, test_settings};

/// The README's curl commands, each with its continuation lines.
fn readme_curls() -> Vec<String> {
    readme_commands("curl ")
}

/// The README's commands that start with `tool`, each with its continuation lines.
fn readme_commands(tool: &str) -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split_once("## grpcurl and curl examples")
        .expect("the examples section")
        .1;
    let block = section.split_once("```sh\n").unwrap().1;
    let block = block.split_once("\n```").unwrap().0;
    let mut commands = Vec::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        if !line.starts_with(tool) {
            continue;
        }
        let mut command = line.to_owned();
        while command.ends_with('\\') || command.matches('\'').count() % 2 == 1 {
            command.push('\n');
            command.push_str(lines.next().expect("a complete command"));
        }
        commands.push(command);
    }
    commands
}

/// The method and path a curl command asks for.
fn route_of(command: &str) -> (String, String) {
    let method = if command.contains("-X PATCH") {
        "PATCH"
    } else if command.contains("-X DELETE") {
        "DELETE"
    } else if command.contains(" -d ") {
        "POST"
    } else {
        "GET"
    };
    let at = command.find("localhost:8080").unwrap() + "localhost:8080".len();
    let url: String = command[at..]
        .chars()
        .take_while(|c| !matches!(c, '\'' | ' ' | '\n' | '?'))
        .collect();
    (method.to_owned(), url)
}

/// The JSON answer of each command run, in order.
struct Answers(Vec<(String, Value)>);

impl Answers {
    /// The answer of the first command naming `part` (a path or a method).
    fn to(&self, part: &str) -> &Value {
        &self
            .0
            .iter()
            .find(|(c, _)| c.contains(part))
            .unwrap_or_else(|| panic!("no example of {part}"))
            .1
    }
}

/// Runs README example commands in order, as written but for the address (`address.0`
/// becomes `address.1`) and the placeholders of the `billing-ci` token's id (`01a2…`) and
/// secret (`ta_…`), filled in from the answers that show them. Each must succeed and
/// print a JSON answer that is not an error; with `others_allowed`, a command may print
/// something else instead (grpcurl's `list` and `describe`), and is not kept.
fn run_in_order(
    commands: &[String],
    address: (&str, &str),
    admin: &str,
    others_allowed: bool,
) -> Answers {
    let (mut id, mut secret) = (String::new(), String::new());
    let mut answers = Vec::new();
    for command in commands {
        let run = command
            .replace(address.0, address.1)
            .replace("01a2…", &id)
            .replace("ta_…", &secret);
        let output = std::process::Command::new("sh")
            .args(["-c", &run])
            .env("AUTH", format!("authorization: Bearer {admin}"))
            .output()
            .expect("sh, curl and grpcurl are installed (scripts/test installs grpcurl)");
        assert!(output.status.success(), "{command}: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        if others_allowed && !text.trim_start().starts_with('{') {
            continue;
        }
        let answer: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{command}: {e}: {text}"));
        assert!(answer.get("error").is_none(), "{command}: {answer}");
        if answer["token"]["name"] == "billing-ci" {
            id = answer["token"]["id"].as_str().unwrap().to_owned();
            if let Some(new) = answer["secret"].as_str() {
                secret = new.to_owned();
            }
        }
        answers.push((command.clone(), answer));
    }
    Answers(answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_examples_work() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let mut settings = test_settings(&db);
    settings.http_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = spawn_with(db, settings, None).await;
    let host = format!("127.0.0.1:{}", app.http_port.unwrap());

    let commands = readme_curls();
    let pool = token_authority::http::transcode::pool().unwrap();
    for rule in token_authority::http::transcode::rules::read(&pool).unwrap() {
        assert!(
            commands.iter().any(|c| {
                let (method, path) = route_of(c);
                method == rule.method.as_str() && rule.template.matches(&path).is_some()
            }),
            "the README has no curl example of {} {}",
            rule.method,
            rule.template.as_str()
        );
    }

    let answers = run_in_order(&commands, ("localhost:8080", &host), &app.admin, false);
    let answer_to = |path: &str| answers.to(path);
    assert_eq!(answer_to("/v1/verify")["valid"], true);
    assert_eq!(answer_to("/v1/leaks")["revoked"], 1);
    assert_eq!(
        answer_to("/v1/tokens:lookup")["secretKind"],
        "SECRET_KIND_CURRENT"
    );
    assert!(answer_to("/v1/openapi.json")["paths"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_examples_work_as_written() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    let commands = readme_commands("grpcurl ");
    let pool = token_authority::http::transcode::pool().unwrap();
    for service in pool.services() {
        if !service.full_name().starts_with("tokenauthority.") {
            continue;
        }
        for method in service.methods() {
            let name = format!("{}/{}", service.full_name(), method.name());
            assert!(
                commands.iter().any(|c| c.contains(&name)),
                "the README has no grpcurl example of {name}"
            );
        }
    }
    let address = ("localhost:50051", app.channel_target());
    let answers = run_in_order(&commands, address, &app.admin, true);
    let answer_to = |method: &str| answers.to(method);
    assert_eq!(answer_to("VerifyService/Verify")["valid"], true);
    assert_eq!(answer_to("LeakService/ReportLeakedTokens")["revoked"], 1);
    assert_eq!(
        answer_to("TokenService/LookupToken")["secretKind"],
        "SECRET_KIND_CURRENT"
    );
    assert_eq!(answer_to("Health/Check")["status"], "SERVING");
}
