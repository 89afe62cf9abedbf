//! HAProxy 2.6+ (Debian's haproxy) running deploy/haproxy/haproxy.cfg and our
//! token-authority.lua.

use std::{path::Path, process::Command};

use hyper::StatusCode;

use super::{Expect, Ports, Proxy, deploy_file, point_addresses, prove};

fn command(dir: &Path, ports: &Ports) -> Command {
    let lua = dir.join("token-authority.lua");
    std::fs::write(&lua, deploy_file("haproxy/token-authority.lua")).unwrap();
    let config = point_addresses(
        &deploy_file("haproxy/haproxy.cfg"),
        &[
            ("listener", ports.listener),
            ("token-authority", ports.authority),
            ("upstream", ports.upstream),
        ],
    );
    let shipped_path = "/etc/haproxy/token-authority.lua";
    assert_eq!(config.matches(shipped_path).count(), 1);
    let config = config.replace(shipped_path, &lua.display().to_string());
    std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
    let mut command = Command::new("haproxy");
    command.args(["-db", "-f", "haproxy.cfg"]);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_lua_forward_auth_lets_valid_tokens_through_and_refuses_the_rest() {
    prove(
        |authority, upstream| Box::pin(Proxy::start("haproxy", authority, upstream, command)),
        Expect {
            name: "haproxy",
            our_body: true,
            unreachable: StatusCode::SERVICE_UNAVAILABLE,
        },
    )
    .await;
}
