//! The deployment files under deploy/, checked offline: every YAML document parses, and
//! the Dockerfile, Kubernetes manifests and docker-compose file agree with the binary (its
//! flags' environment variables, its health service names, its ports, its subcommands).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::CommandFactory;
use serde::Deserialize;
use serde_norway::Value;
use token_authority::{
    config::{Cli, Command, parse_duration},
    startup::{LIVENESS_SERVICE, SERVICE_NAMES},
};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// Returns every .yaml/.yml file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(yaml_files(&path));
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Parses every document of a YAML file, skipping empty ones.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The Kubernetes objects of deploy/kubernetes.
fn manifests() -> Vec<Value> {
    yaml_files(&deploy().join("kubernetes"))
        .iter()
        .flat_map(|path| documents(path))
        .collect()
}

/// Returns the one object of this kind.
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn compose() -> Value {
    let docs = documents(&deploy().join("docker-compose.yml"));
    assert_eq!(docs.len(), 1, "docker-compose.yml is one document");
    docs.into_iter().next().unwrap()
}

/// Every environment variable a flag of the binary reads, subcommands included.
fn flag_envs() -> BTreeSet<String> {
    fn walk(command: &clap::Command, into: &mut BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                into.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, into);
        }
    }
    let mut envs = BTreeSet::new();
    walk(&Cli::command(), &mut envs);
    envs
}

/// The names grpc.health.v1 answers for: "" and every service.
fn health_names() -> BTreeSet<&'static str> {
    ["", LIVENESS_SERVICE]
        .into_iter()
        .chain(SERVICE_NAMES)
        .collect()
}

fn is_ours(name: &str) -> bool {
    name.starts_with("TA_") || name == "DATABASE_URL"
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// Returns a Kubernetes container's literal env value, if it sets one.
fn container_env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    seq(&container["env"])
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// Returns a compose service's environment as (name, value) pairs, map or list form.
fn compose_env(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_norway::to_string(other).unwrap().trim().to_owned(),
                };
                (str_of(k).to_owned(), value)
            })
            .collect(),
        Value::Sequence(list) => list
            .iter()
            .map(|item| {
                let (k, v) = str_of(item).split_once('=').unwrap_or((str_of(item), ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The words of a container command or args (a list, or a string split on spaces).
fn words(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        other => seq(other).iter().map(|w| str_of(w).to_owned()).collect(),
    }
}

/// Returns the value of `--flag value` or `--flag=value` among the words.
fn flag_in(words: &[String], flag: &str) -> Option<String> {
    words.iter().enumerate().find_map(|(i, w)| {
        if w == flag {
            words.get(i + 1).cloned()
        } else {
            w.strip_prefix(&format!("{flag}=")).map(str::to_owned)
        }
    })
}

/// A flag's value as a manifest gives it: the argument, else the environment variable.
fn setting(container: &Value, flag: &str, env: &str) -> Option<String> {
    let argv: Vec<String> = [words(&container["command"]), words(&container["args"])].concat();
    flag_in(&argv, flag).or_else(|| container_env(container, env).map(str::to_owned))
}

/// The Dockerfile's instructions as (INSTRUCTION, rest), continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let mut joined = String::new();
    let mut instructions = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if joined.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                joined.push_str(part);
                joined.push(' ');
            }
            None => {
                joined.push_str(line);
                let (word, rest) = joined
                    .split_once(char::is_whitespace)
                    .unwrap_or((&joined, ""));
                instructions.push((word.to_ascii_uppercase(), rest.trim().to_owned()));
                joined.clear();
            }
        }
    }
    instructions
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = yaml_files(&deploy());
    let names: Vec<_> = files
        .iter()
        .map(|p| p.strip_prefix(deploy()).unwrap().display().to_string())
        .collect();
    for expected in [
        "docker-compose.yml",
        "envoy/envoy.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/secret.example.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for path in &files {
        let docs = documents(path);
        assert!(!docs.is_empty(), "{} has no document", path.display());
        for doc in docs {
            assert!(
                doc.is_mapping(),
                "{}: a document is not a mapping",
                path.display()
            );
        }
    }
}

#[test]
fn kubernetes_manifests_have_every_kind_a_deployment_needs() {
    let objects = manifests();
    let kinds: BTreeSet<&str> = objects.iter().map(|o| str_of(&o["kind"])).collect();
    for kind in [
        "Namespace",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Secret",
    ] {
        assert!(
            kinds.contains(kind),
            "no {kind} in deploy/kubernetes: {kinds:?}"
        );
    }
    for object in &objects {
        assert!(
            object["apiVersion"].is_string() && object["kind"].is_string(),
            "{object:?} lacks apiVersion or kind"
        );
    }
}

#[test]
fn the_forward_auth_port_admits_only_the_ingress_controllers() {
    // Forward auth believes its trusted peers' description of the request, and the
    // Deployment trusts the pod network: a NetworkPolicy must keep the port to the
    // controllers, while the gRPC and metrics ports stay open.
    let objects = manifests();
    let policy = one(&objects, "NetworkPolicy");
    let deployment = one(&objects, "Deployment");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in policy["spec"]["podSelector"]["matchLabels"]
        .as_mapping()
        .expect("the policy selects pods by label")
    {
        assert_eq!(
            &labels[key], value,
            "the policy selects the Deployment's pods"
        );
    }
    assert!(
        seq(&policy["spec"]["policyTypes"])
            .iter()
            .any(|t| str_of(t) == "Ingress")
    );
    let rules = seq(&policy["spec"]["ingress"]);
    let ports_of = |rule: &Value| -> Vec<String> {
        seq(&rule["ports"])
            .iter()
            .map(|p| str_of(&p["port"]).to_owned())
            .collect()
    };
    for rule in rules {
        if ports_of(rule).iter().any(|p| p == "http") {
            let from = seq(&rule["from"]);
            assert!(
                !from.is_empty(),
                "the http port admits only named peers: {rule:?}"
            );
            for peer in from {
                assert!(
                    peer["namespaceSelector"]["matchExpressions"].is_sequence()
                        || peer["podSelector"]["matchLabels"].is_mapping(),
                    "the http port admits only selected peers: {peer:?}"
                );
            }
        }
    }
    let open: Vec<String> = rules
        .iter()
        .filter(|r| r["from"].is_null())
        .flat_map(ports_of)
        .collect();
    assert!(open.contains(&"grpc".to_owned()) && open.contains(&"metrics".to_owned()));
    assert!(!open.contains(&"http".to_owned()));
    // The ports it names are the container's.
    let container = &seq(&deployment["spec"]["template"]["spec"]["containers"])[0];
    let named: Vec<&str> = seq(&container["ports"])
        .iter()
        .map(|p| str_of(&p["name"]))
        .collect();
    for rule in rules {
        for port in ports_of(rule) {
            assert!(
                named.contains(&port.as_str()),
                "{port} is not a container port"
            );
        }
    }
}

#[test]
fn the_deployment_probes_and_exposes_the_port_the_binary_listens_on() {
    let objects = manifests();
    let deployment = one(&objects, "Deployment");
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "the Deployment runs at least 2 replicas"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &seq(&pod["containers"])[0];

    let listen: SocketAddr = setting(container, "--listen-addr", "TA_LISTEN_ADDR")
        .expect("the manifest sets --listen-addr or TA_LISTEN_ADDR")
        .parse()
        .expect("the listen address is an address");
    assert!(
        listen.ip().is_unspecified(),
        "{listen} must listen on every interface"
    );
    let grpc = seq(&container["ports"])
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a container port named grpc");
    assert_eq!(
        grpc["containerPort"].as_u64(),
        Some(u64::from(listen.port()))
    );

    let metrics: SocketAddr = setting(container, "--metrics-addr", "TA_METRICS_ADDR")
        .expect("the manifest sets TA_METRICS_ADDR")
        .parse()
        .unwrap();
    let metrics_port = seq(&container["ports"])
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a container port named metrics");
    assert_eq!(
        metrics_port["containerPort"].as_u64(),
        Some(u64::from(metrics.port()))
    );

    for probe in ["livenessProbe", "readinessProbe"] {
        assert!(container[probe].is_mapping(), "the container has a {probe}");
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let probe_grpc = &container[probe]["grpc"];
        if container[probe].is_null() {
            continue;
        }
        assert!(probe_grpc.is_mapping(), "{probe} is a native gRPC probe");
        assert_eq!(
            probe_grpc["port"].as_u64(),
            Some(u64::from(listen.port())),
            "{probe} probes the gRPC port"
        );
        let service = probe_grpc["service"].as_str().unwrap_or("");
        assert!(
            health_names().contains(service),
            "{probe} asks for {service:?}, which grpc.health.v1 does not report"
        );
    }

    for limits in ["requests", "limits"] {
        assert!(
            container["resources"][limits]["memory"].is_string(),
            "the container has memory {limits}"
        );
    }
    let run_as_non_root = pod["securityContext"]["runAsNonRoot"] == true
        || container["securityContext"]["runAsNonRoot"] == true;
    assert!(run_as_non_root, "the pod runs as non-root");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
}

#[test]
fn the_deployment_migrates_in_an_init_container_with_the_database_url_secret() {
    let objects = manifests();
    let deployment = one(&objects, "Deployment");
    let secret = one(&objects, "Secret");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &seq(&pod["containers"])[0];

    let migrate = seq(&pod["initContainers"])
        .iter()
        .find(|c| {
            let argv = [words(&c["command"]), words(&c["args"])].concat();
            argv.iter().any(|w| w == "migrate")
        })
        .expect("an initContainer runs `token-authority migrate`");
    assert_eq!(
        migrate["image"], container["image"],
        "it migrates with the same image"
    );
    assert!(
        runs_migrate(&[words(&migrate["command"]), words(&migrate["args"])].concat()),
        "the initContainer's arguments are the binary's migrate subcommand"
    );

    for c in [migrate, container] {
        let url = seq(&c["env"])
            .iter()
            .find(|e| e["name"] == "DATABASE_URL")
            .unwrap_or_else(|| panic!("{} has DATABASE_URL", str_of(&c["name"])));
        let key_ref = &url["valueFrom"]["secretKeyRef"];
        assert_eq!(
            key_ref["name"], secret["metadata"]["name"],
            "DATABASE_URL comes from the Secret"
        );
        let key = str_of(&key_ref["key"]);
        assert!(
            !secret["stringData"][key].is_null() || !secret["data"][key].is_null(),
            "the example Secret has the key {key:?}"
        );
    }
}

#[test]
fn the_grace_period_covers_the_shutdown_drain_and_timeout() {
    let objects = manifests();
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    let container = &seq(&pod["containers"])[0];
    let duration = |flag: &str, env: &str, default: &str| {
        parse_duration(&setting(container, flag, env).unwrap_or_else(|| default.to_owned()))
            .unwrap()
    };
    let drain = duration("--shutdown-drain", "TA_SHUTDOWN_DRAIN", "0s");
    let timeout = duration("--shutdown-timeout", "TA_SHUTDOWN_TIMEOUT", "30s");
    let pre_stop = Duration::from_secs(
        container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0),
    );
    assert!(
        drain > Duration::ZERO,
        "a drain lets endpoints stop sending first"
    );
    let grace = Duration::from_secs(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds is set"),
    );
    assert!(
        grace > pre_stop + drain + timeout,
        "a grace period of {grace:?} kills the pod before preStop {pre_stop:?} + drain {drain:?} + timeout {timeout:?}"
    );
}

#[test]
fn the_service_budget_and_autoscaler_point_at_the_deployment() {
    let objects = manifests();
    let deployment = one(&objects, "Deployment");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects_pods = |selector: &Value| {
        let selector = selector.as_mapping().expect("a selector");
        !selector.is_empty() && selector.iter().all(|(k, v)| &labels[str_of(k)] == v)
    };
    let container = &seq(&deployment["spec"]["template"]["spec"]["containers"])[0];
    let container_port = |target: &Value| -> Option<u64> {
        match target {
            Value::String(name) => seq(&container["ports"])
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64()),
            number => number.as_u64(),
        }
    };
    let named = |name: &str| {
        seq(&container["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
    };

    let service = one(&objects, "Service");
    assert!(
        selects_pods(&service["spec"]["selector"]),
        "the Service selects the pods"
    );
    let ports = seq(&service["spec"]["ports"]);
    let grpc = ports
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a Service port named grpc");
    assert_eq!(grpc["appProtocol"], "grpc");
    assert_eq!(container_port(&grpc["targetPort"]), named("grpc"));
    assert!(
        ports
            .iter()
            .any(|p| container_port(&p["targetPort"]) == named("metrics")),
        "the Service exposes the metrics port"
    );

    let budget = one(&objects, "PodDisruptionBudget");
    assert!(selects_pods(&budget["spec"]["selector"]["matchLabels"]));

    let hpa = one(&objects, "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    let min = hpa["spec"]["minReplicas"].as_u64().unwrap_or(1);
    assert!(min >= 2, "the autoscaler keeps at least 2 replicas");
    assert!(hpa["spec"]["maxReplicas"].as_u64().unwrap() >= min);
    assert!(!seq(&hpa["spec"]["metrics"]).is_empty());
}

#[test]
fn every_environment_variable_in_deploy_is_a_flag_of_the_binary() {
    let mut named: Vec<(String, String)> = Vec::new();
    for object in manifests() {
        let pod = &object["spec"]["template"]["spec"];
        for container in seq(&pod["containers"])
            .iter()
            .chain(seq(&pod["initContainers"]))
        {
            for env in seq(&container["env"]) {
                named.push(("deploy/kubernetes".into(), str_of(&env["name"]).to_owned()));
            }
        }
    }
    let compose = compose();
    for (_, service) in compose["services"].as_mapping().unwrap() {
        for (name, _) in compose_env(service) {
            named.push(("deploy/docker-compose.yml".into(), name));
        }
    }
    for (instruction, rest) in dockerfile() {
        if instruction == "ENV" {
            for pair in rest.split_whitespace() {
                let name = pair.split_once('=').map_or(pair, |(k, _)| k);
                named.push(("deploy/Dockerfile".into(), name.to_owned()));
            }
        }
    }
    let unit = std::fs::read_to_string(deploy().join("token-authority.service")).unwrap();
    for line in unit.lines() {
        if let Some(assignment) = line.strip_prefix("Environment=") {
            let name = assignment.split_once('=').map_or(assignment, |(k, _)| k);
            named.push(("deploy/token-authority.service".into(), name.to_owned()));
        }
    }

    let known = flag_envs();
    assert!(known.contains("TA_LISTEN_ADDR") && known.contains("DATABASE_URL"));
    let ours: Vec<_> = named.iter().filter(|(_, name)| is_ours(name)).collect();
    assert!(ours.len() > 10, "found the variables: {ours:?}");
    for (file, name) in ours {
        assert!(
            known.contains(name),
            "{file} sets {name}, which no flag reads"
        );
    }
}

#[test]
fn compose_runs_postgres_two_replicas_and_envoy_with_the_repository_envoy_config() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("compose services");
    let service = |name: &str| {
        services
            .get(name)
            .unwrap_or_else(|| panic!("no compose service {name}"))
    };
    let env_of = |s: &Value, name: &str| {
        compose_env(s)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    };
    let command_of = |s: &Value| words(&s["command"]);

    assert!(str_of(&service("postgres")["image"]).starts_with("postgres"));

    // The servers: every service with DATABASE_URL that does not run a subcommand.
    let servers: Vec<&Value> = services
        .values()
        .filter(|s| env_of(s, "DATABASE_URL").is_some() && command_of(s).is_empty())
        .collect();
    let replicas: u64 = servers
        .iter()
        .map(|s| s["deploy"]["replicas"].as_u64().unwrap_or(1))
        .sum();
    assert!(
        replicas >= 2,
        "compose runs {replicas} token-authority replicas"
    );
    let urls: BTreeSet<_> = servers.iter().map(|s| env_of(s, "DATABASE_URL")).collect();
    assert_eq!(urls.len(), 1, "the replicas share one database: {urls:?}");
    let url = urls.into_iter().next().flatten().unwrap();
    assert!(
        url.starts_with("postgres://") && url.contains("@postgres:"),
        "{url}"
    );

    // Migrations complete before the servers start.
    let migrate = service("migrate");
    assert!(command_of(migrate).contains(&"migrate".to_owned()));
    let server = service("token-authority");
    assert_eq!(
        server["depends_on"]["migrate"]["condition"],
        "service_completed_successfully"
    );

    // One bootstrap file, on a volume.
    let secret_file = env_of(server, "TA_BOOTSTRAP_TOKEN_FILE").expect("a bootstrap file");
    assert!(
        seq(&server["volumes"]).iter().any(|v| {
            let target = str_of(v).split(':').nth(1).unwrap_or_default();
            !target.is_empty() && secret_file.starts_with(target)
        }),
        "{secret_file} is on a volume"
    );

    // Envoy runs the repository's envoy.yaml, whose addresses are these service names
    // and whose token-authority port is the one the replicas listen on.
    let envoy = service("envoy");
    assert!(str_of(&envoy["image"]).contains("envoy"));
    let mounted = seq(&envoy["volumes"]).iter().find_map(|v| {
        let (source, rest) = str_of(v).split_once(':')?;
        let target = rest.split(':').next()?;
        let source = deploy().join(source).canonicalize().ok()?;
        (source == deploy().join("envoy/envoy.yaml").canonicalize().unwrap())
            .then(|| target.to_owned())
    });
    let mounted = mounted.expect("the envoy service mounts deploy/envoy/envoy.yaml");
    let command = command_of(envoy);
    assert!(
        command.is_empty() && mounted == "/etc/envoy/envoy.yaml"
            || flag_in(&command, "-c").as_deref() == Some(mounted.as_str()),
        "envoy runs the mounted file ({mounted}): {command:?}"
    );
    service("upstream");

    let envoy_yaml = &documents(&deploy().join("envoy/envoy.yaml"))[0];
    let listen: SocketAddr = env_of(server, "TA_LISTEN_ADDR")
        .expect("the replicas set TA_LISTEN_ADDR")
        .parse()
        .unwrap();
    let clusters = seq(&envoy_yaml["static_resources"]["clusters"]);
    for cluster in clusters {
        for group in seq(&cluster["load_assignment"]["endpoints"]) {
            for endpoint in seq(&group["lb_endpoints"]) {
                let address = &endpoint["endpoint"]["address"]["socket_address"];
                let host = str_of(&address["address"]);
                assert!(
                    services.contains_key(host),
                    "envoy.yaml names {host}, no compose service"
                );
                if cluster["name"] == "token_authority" {
                    assert_eq!(
                        address["port_value"].as_u64(),
                        Some(u64::from(listen.port()))
                    );
                }
            }
        }
        for check in seq(&cluster["health_checks"]) {
            if let Some(name) = check["grpc_health_check"]["service_name"].as_str() {
                assert!(
                    health_names().contains(name),
                    "envoy health-checks {name:?}"
                );
            }
        }
    }
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_the_binary_as_a_non_root_user() {
    let instructions = dockerfile();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert!(froms.len() >= 2, "a build stage and a runtime stage");
    let last_from = *froms.last().unwrap();
    assert!(
        instructions.iter().any(|(i, rest)| i == "RUN"
            && rest.contains("cargo build")
            && rest.contains("--profile production")
            && rest.contains("--locked")
            && rest.contains("target/production/token-authority")),
        "the build stage runs cargo build --profile production --locked and installs its binary"
    );
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("[profile.production]\ninherits = \"release\""),
        "Cargo.toml defines the profile the image builds with"
    );
    let runtime = &instructions[last_from..];
    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, rest)| rest.clone())
        .expect("the runtime stage sets a USER");
    let user_name = user.split(':').next().unwrap();
    assert!(
        !matches!(user_name, "root" | "0" | ""),
        "USER {user} is root"
    );

    let env: Vec<(String, String)> = runtime
        .iter()
        .filter(|(i, _)| i == "ENV")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    let addr = |name: &str| -> SocketAddr {
        env.iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("the image sets {name}"))
            .1
            .parse()
            .unwrap()
    };
    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(|p| p.split('/').next().unwrap().parse().unwrap())
                .collect::<Vec<u16>>()
        })
        .collect();
    for name in ["TA_LISTEN_ADDR", "TA_METRICS_ADDR"] {
        let addr = addr(name);
        assert!(
            addr.ip().is_unspecified(),
            "{name}={addr} must serve other hosts"
        );
        assert!(
            exposed.contains(&addr.port()),
            "EXPOSE {exposed:?} lacks {name}'s port"
        );
    }
    let entrypoint = runtime
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    assert!(entrypoint.1.contains("token-authority"), "{}", entrypoint.1);

    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect("a .dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .collect();
    assert!(
        ignored.contains("target") && ignored.contains(".git"),
        "{ignored:?}"
    );
}

/// Returns whether a container's command and args (the image's entrypoint is the binary)
/// parse as the binary's `migrate` subcommand.
fn runs_migrate(argv: &[String]) -> bool {
    use clap::Parser;
    let args = argv.iter().skip_while(|w| w.ends_with("token-authority"));
    let argv = std::iter::once("token-authority").chain(args.map(String::as_str));
    matches!(
        Cli::try_parse_from(argv),
        Ok(Cli {
            command: Some(Command::Migrate),
            ..
        })
    )
}
