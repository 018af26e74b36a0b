//! deploy/ checked against the binary: the Dockerfile, the Kubernetes
//! manifests and the systemd unit must use the ports, probe paths and config
//! paths that aitokens actually has. (No container engine runs here, so the
//! image itself is not built by the tests; see deploy/Dockerfile.)

use std::{collections::HashMap, path::Path, process::Command};

use aitokens::{
    cli::Cli,
    config::Config,
    telemetry::{HEALTH_PATH, READY_PATH},
};
use clap::CommandFactory;
use serde::Deserialize;
use serde_yaml_ng::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
/// Where every deployment puts the config file.
const CONFIG_PATH: &str = "/etc/aitokens/config.toml";

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(DEPLOY).join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The default ports of `aitokens dev`: admin, internal, metrics.
fn default_ports() -> (u16, u16, u16) {
    let cli = Cli::command();
    let dev = cli.find_subcommand("dev").expect("dev subcommand");
    let default = |id: &str| {
        let arg = dev
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("dev has no {id}"));
        arg.get_default_values()[0]
            .to_str()
            .expect("utf-8")
            .to_owned()
    };
    let port = |addr: String| {
        addr.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    };
    (
        port(default("admin_addr")),
        port(default("internal_addr")),
        default("metrics_port").parse().expect("metrics port"),
    )
}

fn ports_of(config: &Config) -> (u16, u16, u16) {
    (
        config.admin.listen.port(),
        config.internal.listen.port(),
        config.metrics.as_ref().expect("[metrics]").listen.port(),
    )
}

#[test]
fn example_config_uses_the_default_ports() {
    let config: Config =
        toml::from_str(&read("config.example.toml")).expect("config.example.toml parses");
    assert_eq!(ports_of(&config), default_ports());
}

/// Every document of the manifest file, by kind and name.
fn manifests() -> HashMap<(String, String), Value> {
    manifests_in("kubernetes/aitokens.yaml")
}

/// Every document of `file`, by kind and name.
fn manifests_in(file: &str) -> HashMap<(String, String), Value> {
    serde_yaml_ng::Deserializer::from_str(&read(file))
        .map(|doc| {
            let doc = Value::deserialize(doc).expect("YAML document");
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
            ((kind, name), doc)
        })
        .collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

#[test]
fn kubernetes_manifests_match_the_binary() {
    let docs = manifests();
    let get = |kind: &str, name: &str| {
        docs.get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let (admin_port, internal_port, metrics_port) = default_ports();

    // The config in the ConfigMap is a valid aitokens config on the default ports.
    let config_map = get("ConfigMap", "aitokens-config");
    let config: Config =
        toml::from_str(str_of(&config_map["data"]["config.toml"])).expect("config.toml parses");
    assert_eq!(ports_of(&config), (admin_port, internal_port, metrics_port));
    assert!(
        config.internal.crls.len() == 1,
        "the internal listener enforces a CRL"
    );

    let set = get("StatefulSet", "aitokens");
    let pod = &set["spec"]["template"];
    let pod_labels = pod["metadata"]["labels"].as_mapping().expect("pod labels");
    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(args, ["serve", "--config", CONFIG_PATH]);
    let named_ports: HashMap<&str, u64> = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"]),
                p["containerPort"].as_u64().expect("port"),
            )
        })
        .collect();
    assert_eq!(
        named_ports,
        HashMap::from([
            ("admin", admin_port.into()),
            ("internal", internal_port.into()),
            ("metrics", metrics_port.into())
        ])
    );
    for (probe, path) in [
        ("livenessProbe", HEALTH_PATH),
        ("startupProbe", HEALTH_PATH),
        ("readinessProbe", READY_PATH),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(str_of(&get["path"]), path, "{probe}");
        assert_eq!(
            named_ports[str_of(&get["port"])],
            u64::from(metrics_port),
            "{probe} port"
        );
    }

    // Non-root, read-only, no privilege escalation.
    assert_eq!(
        pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_ne!(
        pod["spec"]["securityContext"]["runAsUser"].as_u64(),
        Some(0)
    );
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );

    // Volumes: the database on the claim, the key where the config says,
    // every Secret that a volume names is in the file.
    let mounts: HashMap<&str, &str> = container["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .map(|m| (str_of(&m["name"]), str_of(&m["mountPath"])))
        .collect();
    let claim = str_of(&set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]);
    assert_eq!(
        Some(Path::new(mounts[claim])),
        config.store.database.parent()
    );
    assert_eq!(
        Some(Path::new(mounts["master-key"])),
        config
            .store
            .master_key_file
            .as_deref()
            .expect("the k8s config uses a key file")
            .parent()
    );
    assert_eq!(
        Some(Path::new(mounts["config"])),
        Path::new(CONFIG_PATH).parent()
    );
    assert_eq!(
        Some(Path::new(mounts["tls"])),
        config.internal.cert.parent()
    );
    for volume in pod["spec"]["volumes"].as_sequence().expect("volumes") {
        if let Some(secret) = volume["secret"]["secretName"].as_str() {
            get("Secret", secret);
        }
    }

    // Two Services, each to its own port, selecting the pod.
    for (service, port) in [
        ("aitokens-admin", "admin"),
        ("aitokens-internal", "internal"),
    ] {
        let spec = &get("Service", service)["spec"];
        for (k, v) in spec["selector"].as_mapping().expect("selector") {
            assert_eq!(pod_labels.get(k), Some(v), "{service} selects the pod");
        }
        let ports = spec["ports"].as_sequence().expect("ports");
        assert_eq!(ports.len(), 1, "{service} exposes one port");
        assert_eq!(str_of(&ports[0]["targetPort"]), port);
        assert_eq!(ports[0]["port"].as_u64(), Some(named_ports[port]));
    }

    // The internal port admits only pods labelled as agents.
    let policy = &get("NetworkPolicy", "aitokens")["spec"];
    for (k, v) in policy["podSelector"]["matchLabels"]
        .as_mapping()
        .expect("podSelector")
    {
        assert_eq!(pod_labels.get(k), Some(v), "the policy selects the pod");
    }
    let rules = policy["ingress"].as_sequence().expect("ingress rules");
    let mut internal_rules = 0;
    for rule in rules {
        let ports: Vec<u64> = rule["ports"]
            .as_sequence()
            .expect("every rule names its ports (a rule without ports opens all)")
            .iter()
            .map(|p| p["port"].as_u64().expect("numeric port"))
            .collect();
        if ports.contains(&u64::from(internal_port)) {
            internal_rules += 1;
            assert_eq!(
                ports,
                [u64::from(internal_port)],
                "the internal port has its own rule"
            );
            let from = rule["from"]
                .as_sequence()
                .expect("internal port: a from list");
            assert!(!from.is_empty());
            for peer in from {
                assert!(
                    peer.get("ipBlock").is_none(),
                    "no ipBlock reaches the internal port"
                );
                assert_eq!(
                    peer["podSelector"]["matchLabels"]["aitokens.dev/agent"].as_str(),
                    Some("true"),
                    "only labelled agent pods reach the internal port"
                );
            }
        }
    }
    assert_eq!(internal_rules, 1);
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_exposes_the_default_ports() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let froms: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    let last_stage = &lines[*froms.last().expect("a stage")..];
    let user = last_stage
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric uid");
    assert_ne!(uid, 0, "non-root");
    let exposed: Vec<u16> = last_stage
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse().expect("port")))
        .collect();
    let (admin, internal, metrics) = default_ports();
    assert_eq!(exposed, [admin, internal, metrics]);
    let entrypoint = last_stage
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).expect("exec-form ENTRYPOINT");
    assert_eq!(entrypoint[1..], ["serve", "--config", CONFIG_PATH]);
    assert!(
        last_stage
            .iter()
            .any(|l| l.starts_with("COPY --from=") && l.contains(&entrypoint[0])),
        "the runtime stage copies the binary the entrypoint runs"
    );
}

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit = read("systemd/aitokens.service");
    let mut service: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut section = "";
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" && !line.is_empty() && !line.starts_with('#') {
            let (key, value) = line.split_once('=').expect("key=value");
            service.entry(key).or_default().push(value);
        }
    }
    let one = |key: &str| {
        service
            .get(key)
            .and_then(|v| v.last().copied())
            .unwrap_or_else(|| panic!("no {key}="))
    };
    assert_ne!(one("User"), "root");
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("LimitCORE"), "0");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("StateDirectory"), "aitokens");
    assert_eq!(one("StateDirectoryMode"), "0700");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(
        one("ExecStart"),
        format!("/usr/local/bin/aitokens serve --config {CONFIG_PATH}")
    );
    assert!(
        one("ExecReload").contains("-HUP"),
        "reload = SIGHUP = TLS reload"
    );
    // The example config keeps its database in the unit's state directory.
    let config: Config = toml::from_str(&read("config.example.toml")).expect("example config");
    assert!(config.store.database.starts_with("/var/lib/aitokens"));

    // systemd's own check, with ExecStart pointing at the binary under test.
    let analyze = "systemd-analyze";
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("aitokens.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/aitokens", env!("CARGO_BIN_EXE_aitokens")),
    )
    .expect("write unit");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("{analyze}: {e} (apt-get install systemd)"));
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify:\n{complaints}"
    );
}

/// The multi-replica variant: three pods of a Deployment over PostgreSQL, a
/// disruption budget, migrations before serving, readiness that follows the
/// database, the single replica's Services and NetworkPolicy; and the
/// CloudNativePG cluster it points to, with synchronous replication.
#[test]
fn the_multi_replica_manifests_match_the_binary_and_their_database() {
    let ha = manifests_in("kubernetes/aitokens-ha.yaml");
    let single = manifests();
    let db = manifests_in("kubernetes/postgres-cnpg.yaml");
    let get = |docs: &HashMap<(String, String), Value>, kind: &str, name: &str| {
        docs.get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let (admin_port, internal_port, metrics_port) = default_ports();
    let config: Config = toml::from_str(str_of(
        &get(&ha, "ConfigMap", "aitokens-ha-config")["data"]["config.toml"],
    ))
    .expect("config.toml parses");
    assert_eq!(ports_of(&config), (admin_port, internal_port, metrics_port));
    assert!(
        config.store.database.as_os_str().is_empty(),
        "no SQLite file"
    );
    let url = config.store.url.clone().expect("[store] url");
    let (base, query) = url.split_once('?').expect("URL options");
    let (user_host, database) = base
        .strip_prefix("postgres://")
        .and_then(|rest| rest.split_once('/'))
        .expect("postgres://USER@HOST/DB");
    let (user, host) = user_host.split_once('@').expect("USER@HOST");
    let options: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    assert_eq!(options.get("sslmode"), Some(&"verify-full"));
    let password_file = config.store.password_file.clone().expect("password_file");

    let deployment = get(&ha, "Deployment", "aitokens");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3));
    let pod = &deployment["spec"]["template"];
    let pod_labels = pod["metadata"]["labels"].as_mapping().expect("pod labels");
    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(args, ["serve", "--config", CONFIG_PATH]);
    assert_eq!(
        str_of(&container["readinessProbe"]["httpGet"]["path"]),
        READY_PATH,
        "readiness follows the database (/readyz)"
    );
    let migrate = pod["spec"]["initContainers"]
        .as_sequence()
        .expect("init containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("migrate"))
        .expect("a migrate init container");
    let migrate_args: Vec<&str> = migrate["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(migrate_args, ["migrate", "--config", CONFIG_PATH]);
    assert!(Cli::command().find_subcommand("migrate").is_some());

    // The files the config names come from the secrets the operator makes.
    let cluster = get(&db, "Cluster", "aitokens-db");
    let cluster_name = "aitokens-db";
    let mounts: HashMap<&str, &str> = container["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .map(|m| (str_of(&m["name"]), str_of(&m["mountPath"])))
        .collect();
    let secret_of = |volume: &str| -> String {
        pod["spec"]["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"].as_str() == Some(volume))
            .and_then(|v| v["secret"]["secretName"].as_str())
            .unwrap_or_else(|| panic!("volume {volume} of a secret"))
            .to_owned()
    };
    assert_eq!(secret_of("db-app"), format!("{cluster_name}-app"));
    assert_eq!(secret_of("db-ca"), format!("{cluster_name}-ca"));
    assert_eq!(
        password_file,
        Path::new(mounts["db-app"]).join("password"),
        "the password file is the app secret's password"
    );
    assert_eq!(
        Path::new(options["sslrootcert"]),
        Path::new(mounts["db-ca"]).join("ca.crt")
    );
    assert_eq!(
        host.split(':').next(),
        Some(format!("{cluster_name}-rw").as_str())
    );
    assert_eq!(
        str_of(&cluster["spec"]["bootstrap"]["initdb"]["database"]),
        database
    );
    assert_eq!(
        str_of(&cluster["spec"]["bootstrap"]["initdb"]["owner"]),
        user
    );
    let sync = &cluster["spec"]["postgresql"]["synchronous"];
    assert!(
        sync["number"].as_u64().is_some_and(|n| n >= 1),
        "synchronous replication"
    );
    assert_eq!(sync["dataDurability"].as_str(), Some("required"));
    assert!(
        cluster["spec"]["instances"]
            .as_u64()
            .is_some_and(|n| n >= 2)
    );

    // Two pods keep serving through a drain.
    let budget = get(&ha, "PodDisruptionBudget", "aitokens");
    for (k, v) in budget["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("budget selector")
    {
        assert_eq!(pod_labels.get(k), Some(v), "the budget selects the pods");
    }
    assert_eq!(budget["spec"]["minAvailable"].as_u64(), Some(2));

    // The single replica's Services and NetworkPolicy, unchanged.
    for (kind, name) in [
        ("Service", "aitokens-admin"),
        ("Service", "aitokens-internal"),
        ("NetworkPolicy", "aitokens"),
    ] {
        assert_eq!(
            get(&ha, kind, name)["spec"],
            get(&single, kind, name)["spec"],
            "{kind} {name}"
        );
    }
}
