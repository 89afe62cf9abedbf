//! `token-authority scan`, the real binary, over real files: what it finds, what it must
//! not find, and that no secret ever appears in what it prints.

use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use token_authority::domain::secret::{TokenPrefix, TokenSecret};

const BINARY: &str = env!("CARGO_BIN_EXE_token-authority");

/// What a run printed and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `token-authority scan <args>` in `cwd`, with `stdin` (or none) as its input.
fn scan(cwd: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut child = Command::new(BINARY)
        .current_dir(cwd)
        .arg("scan")
        .args(args)
        .env_remove("TA_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut input = child.stdin.take().unwrap();
    // A scan of paths need not read stdin, and may have exited already.
    let _ = input.write_all(stdin.unwrap_or_default());
    drop(input);
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn secret(prefix: &str) -> TokenSecret {
    TokenSecret::generate(&TokenPrefix::parse(prefix).unwrap())
}

fn write(root: &Path, path: &str, contents: impl AsRef<[u8]>) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

/// The line printed for a secret found at `place` (`path:line`).
fn finding(place: &str, secret: &TokenSecret) -> String {
    format!(
        "{place}: {}… (token-authority secret)",
        secret.display_hint()
    )
}

fn assert_shows_no_secret(run: &Run, secrets: &[&TokenSecret]) {
    for secret in secrets {
        // The hint is the prefix and 6 characters; anything longer of the secret is too much.
        let tail = &secret.expose()[secret.display_hint().len()..];
        for printed in [&run.stdout, &run.stderr] {
            assert!(!printed.contains(tail), "a secret was printed:\n{printed}");
        }
    }
}

#[test]
fn planted_secrets_are_found_with_their_paths_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, d, hidden) = (
        secret("ta"),
        secret("acme2"),
        secret("ta"),
        secret("ci"),
        secret("ta"),
    );
    let tree = dir.path().join("tree");
    write(&tree, "top.txt", format!("{}\nthe first line", a.expose()));
    write(
        &tree,
        "src/config.json",
        format!(
            "{{\n  \"name\": \"x\",\n  \"token\": \"{}\"\n}}\n",
            b.expose()
        ),
    );
    write(
        &tree,
        "src/main.rs",
        format!(
            "fn main() {{\n    let k = \"{}\";\n}}\n\n// {}\n",
            d.expose(),
            a.expose()
        ),
    );
    write(
        &tree,
        "deep/a/b/end.env",
        format!("USER=me\nTOKEN={}", c.expose()),
    );
    let mut binary = vec![0u8, 0xff, 0xfe, b'\n'];
    binary.extend_from_slice(d.expose().as_bytes());
    binary.extend_from_slice(&[0, 0x80, 0x81]);
    write(&tree, "bin.dat", binary);
    write(&tree, ".git/config", hidden.expose());
    write(&tree, "deep/.git/objects/ab", hidden.expose());

    let run = scan(dir.path(), &["tree"], None);

    assert_eq!(run.code, 1, "{}", run.stderr);
    let expected = [
        finding("tree/bin.dat:2", &d),
        finding("tree/top.txt:1", &a),
        finding("tree/deep/a/b/end.env:2", &c),
        finding("tree/src/config.json:3", &b),
        finding("tree/src/main.rs:2", &d),
        finding("tree/src/main.rs:5", &a),
    ];
    assert_eq!(run.stdout.lines().collect::<Vec<_>>(), expected);
    assert!(
        !run.stdout.contains(&hidden.display_hint()),
        ".git is skipped"
    );
    assert!(
        run.stderr.contains("6 secrets found in 5 files (5 files,"),
        "{}",
        run.stderr
    );
    assert_shows_no_secret(&run, &[&a, &b, &c, &d, &hidden]);
}

#[test]
fn findings_come_in_walk_order_whatever_the_threads() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret("ta");
    let mut expected = Vec::new();
    // More files than one batch of a reader holds, so that several readers share them.
    for i in 0..300 {
        let name = format!("many/f{i:03}.txt");
        if i % 7 == 0 {
            write(dir.path(), &name, format!("x\n{}\n", s.expose()));
            expected.push(finding(&format!("{name}:2"), &s));
        } else {
            write(dir.path(), &name, "nothing here\n".repeat(i));
        }
    }

    for threads in ["1", "4"] {
        let run = scan(dir.path(), &["--threads", threads, "many"], None);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert_eq!(
            run.stdout.lines().collect::<Vec<_>>(),
            expected,
            "{threads}"
        );
        assert!(run.stderr.contains("(300 files,"), "{}", run.stderr);
    }
}

#[test]
fn lookalikes_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let real = secret("ta");
    let text = real.expose();
    let mut one_off = String::new();
    for (i, byte) in text.bytes().enumerate() {
        let other = if byte == b'a' { 'b' } else { 'a' };
        one_off.push_str(&format!("{}{other}{}\n", &text[..i], &text[i + 1..]));
    }
    write(dir.path(), "one-character-off.txt", one_off);
    write(
        dir.path(),
        "same-shape.txt",
        format!(
            "ta_{}\nghp_{}\nacme_{}\n",
            &"a1B2c3".repeat(9)[..49],
            "Z".repeat(49),
            "0".repeat(49)
        ),
    );
    write(
        dir.path(),
        "glued.txt",
        format!(
            "x{text}\nmy_{text}\n{text}s\n{text}_v2\nX{text}\n9{text}\n{}\n{}\n",
            text.replacen("ta_", "TA_", 1),
            text.replacen("ta_", "ta-", 1)
        ),
    );
    write(
        dir.path(),
        "cut.txt",
        format!("{}\n", &text[..text.len() - 1]),
    );

    let run = scan(dir.path(), &["."], None);

    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("no secrets found (4 files,"),
        "{}",
        run.stderr
    );
}

#[test]
fn stdin_is_read_for_a_dash_or_no_path() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret("ta");
    let input = format!("curl -H 'Authorization: Bearer {}'\n", s.expose());
    let piped = format!("a log line\n{input}");

    for args in [&[][..], &["-"]] {
        let run = scan(dir.path(), args, Some(piped.as_bytes()));
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout, finding("<stdin>:2", &s) + "\n");
        assert_shows_no_secret(&run, &[&s]);
    }
    let clean = scan(dir.path(), &[], Some(b"nothing to see\n"));
    assert_eq!((clean.code, clean.stdout.as_str()), (0, ""));
}

#[test]
fn an_unreadable_path_is_named_and_the_rest_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret("ta");
    write(dir.path(), "tree/a.txt", s.expose());
    // A dangling symlink: unreadable even by root, which may read files of any mode.
    std::os::unix::fs::symlink("/nonexistent/target", dir.path().join("tree/broken")).unwrap();

    let run = scan(dir.path(), &["missing.txt", "tree/broken", "tree"], None);

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stdout, finding("tree/a.txt:1", &s) + "\n");
    assert!(
        run.stderr.contains("warning: missing.txt: "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("warning: tree/broken: "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("2 paths could not be read"),
        "{}",
        run.stderr
    );
    assert_shows_no_secret(&run, &[&s]);

    let nothing = scan(dir.path(), &["missing.txt"], None);
    assert_eq!(nothing.code, 2, "nothing could be read: {}", nothing.stderr);
}

#[test]
fn symlinks_met_in_a_walk_are_not_followed_and_named_ones_are() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret("ta");
    write(dir.path(), "tree/a/secret.txt", s.expose());
    // Outside the tree, e.g. the CI runner's own environment: never read through a link.
    let outside = secret("ta");
    write(dir.path(), "home/.env", outside.expose());
    std::os::unix::fs::symlink("..", dir.path().join("tree/a/loop")).unwrap();
    std::os::unix::fs::symlink("a/secret.txt", dir.path().join("tree/link.txt")).unwrap();
    std::os::unix::fs::symlink("../home/.env", dir.path().join("tree/env")).unwrap();

    let run = scan(dir.path(), &["tree"], None);

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [finding("tree/a/secret.txt:1", &s)]
    );
    assert_shows_no_secret(&run, &[&s, &outside]);

    let named = scan(dir.path(), &["tree/link.txt"], None);
    assert_eq!(named.stdout, finding("tree/link.txt:1", &s) + "\n");
}

#[test]
fn usage_errors_exit_2_before_scanning() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", secret("ta").expose());
    for args in [
        &["--server", "127.0.0.1:50051", "a.txt"][..],
        &["--source", "Not Valid", "a.txt"],
        &["--source", "github", "a.txt"],
        &["--url", "a\nb", "a.txt"],
        &["--report", "--server", "https://localhost:1", "a.txt"],
        &["--report", "--ca-cert", "ca.pem", "a.txt"],
        &["--no-such-flag"],
    ] {
        let run = scan(dir.path(), args, None);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout, "", "{args:?}");
    }
}

#[test]
fn a_report_that_cannot_be_sent_exits_2_after_printing_the_findings() {
    let dir = tempfile::tempdir().unwrap();
    let s = secret("ta");
    write(dir.path(), "a.txt", s.expose());
    // Bind a port, then free it: nothing listens there when the scan connects.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");

    let run = scan(
        dir.path(),
        &["--report", "--server", &server, "a.txt"],
        None,
    );

    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stdout, finding("a.txt:1", &s) + "\n");
    assert!(run.stderr.contains("the report failed"), "{}", run.stderr);
    assert_shows_no_secret(&run, &[&s]);
}
