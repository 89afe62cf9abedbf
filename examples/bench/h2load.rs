//! An independent client: nghttp2's `h2load` (Debian's `nghttp2-client`) sending the same
//! gRPC requests as this tool, so that the ratios do not rest on our own load generator.
//!
//! Each request is a pre-framed gRPC message in a file (`-d`), posted with the gRPC
//! headers; h2load counts a 200 as a success whatever the grpc-status, so every run is
//! preceded by one call through tonic that must succeed (the caller checks it).

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use prost::Message;

/// How h2load is driven: connections × streams per connection, warmup and duration.
pub struct H2load {
    pub connections: usize,
    pub streams: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub threads: usize,
}

/// Writes `message` as one uncompressed gRPC frame (flag byte, 4-byte length, bytes).
pub fn write_frame(path: &Path, message: &impl Message) -> anyhow::Result<()> {
    let body = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
    framed.extend_from_slice(&body);
    std::fs::write(path, framed).with_context(|| format!("cannot write {}", path.display()))
}

impl H2load {
    /// Runs h2load against `url` (`http://host:port/package.Service/Method`) posting the
    /// framed request in `body`, and returns the requests per second it reports.
    pub async fn run(&self, url: &str, body: &Path) -> anyhow::Result<f64> {
        let output = tokio::process::Command::new("h2load")
            .args(["-c", &self.connections.to_string()])
            .args(["-m", &self.streams.to_string()])
            .args(["-t", &self.threads.to_string()])
            .args([
                "--warm-up-time",
                &format!("{}s", self.warmup.as_secs().max(1)),
            ])
            .args(["-D", &format!("{}s", self.duration.as_secs().max(1))])
            .args(["-H", "content-type: application/grpc"])
            .args(["-H", "te: trailers"])
            .arg("-d")
            .arg(body)
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .await
            .context("cannot run h2load (Debian: apt-get install nghttp2-client)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "h2load failed: {}{}",
                text,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse(&text).with_context(|| format!("h2load's output has no result:\n{text}"))
    }
}

/// Reads `finished in 10.00s, 44612.30 req/s, …` and checks that every request succeeded.
fn parse(text: &str) -> anyhow::Result<f64> {
    let rate = text
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("finished in ")?;
            let rate = rest.split(", ").nth(1)?.strip_suffix(" req/s")?;
            rate.parse::<f64>().ok()
        })
        .context("no `finished in` line")?;
    let requests = text
        .lines()
        .find(|line| line.starts_with("requests:"))
        .context("no `requests:` line")?;
    // "requests: 446123 total, 446187 started, 446123 done, 446123 succeeded, 0 failed, 0 errored, 0 timeout"
    let field = |name: &str| -> Option<u64> {
        requests
            .split(", ")
            .find_map(|part| part.trim_start_matches("requests: ").strip_suffix(name))
            .and_then(|n| n.trim().parse().ok())
    };
    let (failed, errored) = (field(" failed"), field(" errored"));
    if failed != Some(0) || errored != Some(0) {
        bail!("h2load saw failures: {requests}");
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_h2loads_summary() {
        let text = "finished in 10.00s, 44612.30 req/s, 9.52MB/s\n\
                    requests: 446123 total, 446187 started, 446123 done, 446123 succeeded, 0 failed, 0 errored, 0 timeout\n";
        assert_eq!(super::parse(text).unwrap(), 44612.30);
        let failed = text.replace("0 failed", "3 failed");
        assert!(super::parse(&failed).is_err());
    }
}
