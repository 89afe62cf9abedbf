//! nginx (Debian's nginx-light or nginx: auth_request) running deploy/nginx/token-authority.conf.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use hyper::StatusCode;

use super::{Expect, Ports, Proxy, deploy_file, point_addresses, prove};

/// The shipped file is an http-level include; this is the smallest nginx.conf around it
/// that runs as any user, with every path in the test's folder.
const MAIN: &str = "\
worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    include token-authority.conf;
}
";

fn command(dir: &Path, ports: &Ports) -> Command {
    let site = point_addresses(
        &deploy_file("nginx/token-authority.conf"),
        &[
            ("listener", ports.listener),
            ("token-authority", ports.authority),
            ("upstream", ports.upstream),
        ],
    );
    std::fs::write(dir.join("token-authority.conf"), site).unwrap();
    std::fs::write(dir.join("nginx.conf"), MAIN).unwrap();
    std::fs::create_dir(dir.join("tmp")).unwrap();
    // As root, nginx's workers run as nobody and must reach the temp folders.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = Command::new("nginx");
    command
        .arg("-p")
        .arg(dir)
        .args(["-e", "stderr", "-c", "nginx.conf", "-g", "daemon off;"]);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_lets_valid_tokens_through_and_refuses_the_rest() {
    prove(
        |authority, upstream| Box::pin(Proxy::start("nginx", authority, upstream, command)),
        Expect {
            name: "nginx",
            our_body: false,
            unreachable: StatusCode::SERVICE_UNAVAILABLE,
        },
    )
    .await;
}
