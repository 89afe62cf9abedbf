//! `token-authority scan`: prints where secrets were found, reports them when asked, and
//! says in its exit status whether any was found.
//!
//! stdout: one line per finding, `path:line: <hint>… (token-authority secret)`, and with
//! `--report` one per distinct secret, `reported <hint>…: revoked` (or `unknown`).
//! stderr: warnings (`token-authority scan: warning: <path>: <why>`) and one summary line.

use std::{
    io::{self, BufWriter, Write},
    path::Path,
    process::ExitCode,
};

use super::{
    Finding,
    report::{self, ReportSettings},
    walk::{self, Input, Sink, Totals},
};
use crate::config::ScanArgs;

/// The exit status when no secret was found.
pub const CLEAN: u8 = 0;
/// The exit status when a secret was found (reported or not).
pub const FOUND: u8 = 1;
/// The exit status of a usage error, of a scan that could read nothing, of a failed report.
pub const TROUBLE: u8 = 2;

/// Runs the scan the arguments describe, printing as it goes; returns the exit status.
pub async fn run(args: ScanArgs) -> ExitCode {
    let settings = ReportSettings {
        server: args.server,
        source: args.source,
        url: args.url,
    };
    if args.report
        && let Err(error) = settings.server.check()
    {
        say(error);
        return ExitCode::from(TROUBLE);
    }

    let mut printer = Printer {
        out: BufWriter::new(io::stdout().lock()),
        findings: Vec::new(),
        files_with_secrets: 0,
    };
    let readers = match args.threads {
        0 => walk::default_readers(),
        n => usize::from(n),
    };
    let totals = walk::scan(&Input::from_args(&args.paths), readers, &mut printer);
    let Printer {
        out,
        findings,
        files_with_secrets,
    } = printer;
    drop(out);
    say(summary(&totals, findings.len(), files_with_secrets));
    if totals.unreadable > 0 && totals.files == 0 {
        return ExitCode::from(TROUBLE);
    }
    if findings.is_empty() {
        return ExitCode::from(CLEAN);
    }
    if args.report && !send(&settings, &findings).await {
        return ExitCode::from(TROUBLE);
    }
    ExitCode::from(FOUND)
}

/// Reports the distinct secrets among the findings; returns whether the report went through.
async fn send(settings: &ReportSettings, findings: &[Finding]) -> bool {
    let secrets = report::distinct(findings.iter().map(|f| &f.secret));
    let (mut revoked, mut unknown) = (0, 0);
    let mut out = io::stdout().lock();
    let result = report::report(settings, &secrets, |hint, outcome| {
        match outcome {
            report::Outcome::Revoked => revoked += 1,
            report::Outcome::Unknown => unknown += 1,
        }
        let _ = writeln!(out, "reported {hint}…: {}", outcome.as_str());
    })
    .await;
    match result {
        Ok(()) => {
            say(format_args!(
                "reported {} to {}: {revoked} revoked, {unknown} unknown",
                plural(secrets.len() as u64, "secret"),
                settings.server.server
            ));
            true
        }
        Err(error) => {
            say(format_args!("the report failed: {error:#}"));
            false
        }
    }
}

/// Prints findings as they come, keeping them for the report.
struct Printer<W> {
    out: W,
    findings: Vec<Finding>,
    files_with_secrets: u64,
}

impl<W: Write> Sink for Printer<W> {
    fn found(&mut self, name: &str, findings: Vec<Finding>) {
        self.files_with_secrets += 1;
        for finding in &findings {
            // A closed stdout (`| head`) must not stop the scan or its exit status.
            let _ = writeln!(self.out, "{}", line(name, finding));
        }
        self.findings.extend(findings);
    }

    fn unreadable(&mut self, path: &Path, error: &io::Error) {
        // Flushed first, so that the warning lands among the findings where it happened.
        let _ = self.out.flush();
        say(format_args!("warning: {}: {error}", path.display()));
    }
}

/// Writes a line to stderr. A closed stderr is no reason to stop (`eprintln!` would panic).
fn say(line: impl std::fmt::Display) {
    let _ = writeln!(io::stderr(), "token-authority scan: {line}");
}

/// The line printed for a finding.
pub fn line(name: &str, finding: &Finding) -> String {
    format!(
        "{name}:{}: {}… (token-authority secret)",
        finding.line,
        finding.hint()
    )
}

/// The summary line, e.g. `2 secrets found in 1 file (812 files, 48.1 MiB read)`.
fn summary(totals: &Totals, found: usize, files_with_secrets: u64) -> String {
    let what = match found {
        0 => "no secrets found".to_owned(),
        n => format!(
            "{} found in {}",
            plural(n as u64, "secret"),
            plural(files_with_secrets, "file")
        ),
    };
    let unreadable = match totals.unreadable {
        0 => String::new(),
        n => format!(", {} could not be read", plural(n, "path")),
    };
    format!(
        "{what} ({}, {} read{unreadable})",
        plural(totals.files, "file"),
        size(totals.bytes)
    )
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_in_words() {
        let totals = Totals {
            files: 812,
            bytes: 50_436_000,
            unreadable: 1,
        };
        assert_eq!(
            summary(&totals, 2, 1),
            "2 secrets found in 1 file (812 files, 48.1 MiB read, 1 path could not be read)"
        );
        let one = Totals {
            files: 1,
            bytes: 100,
            unreadable: 0,
        };
        assert_eq!(summary(&one, 0, 0), "no secrets found (1 file, 100 B read)");
    }
}
