//! The central stack's shipped files, checked by the tools that will run
//! them: `deploy/central/` (Prometheus, Alertmanager, Grafana provisioning),
//! `deploy/kubernetes/collector/`, `deploy/systemd/` and the `Dockerfile`.
//!
//! - `promtool check config` on `deploy/central/prometheus.yml` (its secret
//!   files made to exist in a temporary directory), and its federate job
//!   keeps the labels and asks for the series the dashboards read.
//! - `amtool check-config` on both Alertmanager files; their routing trees
//!   and inhibit rules are the same text; `amtool config routes test` sends
//!   the alerts a real collector raises (read from its `/api/v1/alerts`) to
//!   the receivers the runbooks promise: a premier `HubDown` pages, a starter
//!   one is a ticket, `Watchdog` reaches the dead man's switch, an alert in
//!   maintenance reaches no one.
//! - `systemd-analyze verify` (no warning at all) and `security` (exposure
//!   at most 2.0) on both units, with `ExecStart` pointed at the built
//!   binaries.
//! - `kubectl kustomize` of the collector base, validated by
//!   `kubernetes-validate --strict` for Kubernetes 1.30, and its properties
//!   (one replica, restricted security context, probes, volume, TLS Secret);
//!   the config it embeds and the example configs pass `check-config`.
//! - The `Dockerfile`'s invariants, and the `health` subcommand its
//!   `HEALTHCHECK` runs, against a real TLS collector (and the agent's, against
//!   a real agent).
//!
//! Tools come from `scripts/install-test-deps.sh` (kubernetes-validate in
//! the venv `/opt/hubwatch-test/k8s-venv`, or `HUBWATCH_K8S_VENV`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, PROTOCOL_VERSION, Record};
use hubwatch_tests::alertmanager::{collector_alerting_toml, collector_alerts};
use hubwatch_tests::binaries::workspace_root;
use hubwatch_tests::{
    Collector, CollectorOptions, MemberSpec, ServerTls, TestCa, Webhook, binary, eventually,
};
use serde_json::Value;

/// The Kubernetes version the manifests are validated for (also in
/// `deploy/kubernetes/collector/README.md`).
const KUBERNETES_VERSION: &str = "1.30.0";

fn root_file(path: &str) -> PathBuf {
    workspace_root().join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `command`; its output, whatever the status.
fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (scripts/install-test-deps.sh)"))
}

/// Runs `command` and panics with its output unless it exits 0.
fn run_ok(command: &mut Command) -> Output {
    let out = output(command);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every YAML document of `text`, as JSON (PyYAML: the tests crate has no
/// YAML parser, and kubernetes-validate's venv brings one).
fn yaml_documents(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(python())
        .args([
            "-c",
            "import sys, yaml, json; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (scripts/install-test-deps.sh)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write YAML");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "YAML does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

fn k8s_venv() -> PathBuf {
    std::env::var_os("HUBWATCH_K8S_VENV")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || PathBuf::from("/opt/hubwatch-test/k8s-venv"),
            PathBuf::from,
        )
}

fn python() -> PathBuf {
    let venv = k8s_venv().join("bin/python3");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

// ---- Prometheus ----

#[test]
fn central_prometheus_config_passes_promtool_and_federates_what_the_dashboards_read() {
    // promtool checks that credentials and CA files exist: give it the
    // file's own paths under a temporary directory.
    let dir = tempfile::tempdir().expect("temporary directory");
    let yaml = read("deploy/central/prometheus.yml");
    let prefix = "/etc/prometheus/secrets/";
    assert!(yaml.contains(prefix), "the secrets live under {prefix}");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("mkdir");
    for name in ["hubwatch-token", "hubwatch-ca.pem"] {
        std::fs::write(secrets.join(name), "x\n").expect("write secret");
    }
    let local = yaml.replace(prefix, &format!("{}/", secrets.display()));
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, local).expect("write prometheus.yml");
    run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(&config),
    );

    let doc = &yaml_documents(&yaml)[0];
    let jobs = doc["scrape_configs"].as_array().expect("scrape_configs");
    let job = |path: &str| {
        jobs.iter()
            .find(|j| j["metrics_path"] == path)
            .unwrap_or_else(|| panic!("no job scrapes {path}"))
    };
    let metrics = job("/metrics");
    assert_eq!(metrics["scheme"], "https");
    let federate = job("/federate");
    assert_eq!(
        federate["honor_labels"], true,
        "member/hub/agent must not become exported_*"
    );
    let selectors: Vec<&str> = federate["params"]["match[]"]
        .as_array()
        .expect("match[] params")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // The selector docs/dashboards.md documents, which covers every
    // forwarded name the dashboards use.
    let documented = r#"{__name__=~"jupyterhub_.+"}"#;
    assert!(
        read("docs/dashboards.md").contains(&format!("match[]={documented}")),
        "docs/dashboards.md names {documented}"
    );
    assert_eq!(selectors, [documented]);
    for name in hubwatch_dashboards::FORWARDED {
        assert!(
            name.starts_with("jupyterhub_") && name.len() > "jupyterhub_".len(),
            "{name} is not matched by {documented}: add a selector"
        );
    }
}

#[test]
fn grafana_provisioning_points_at_the_dashboards_and_a_prometheus() {
    let providers = &yaml_documents(&read(
        "deploy/central/grafana/provisioning/dashboards/hubwatch.yaml",
    ))[0];
    assert_eq!(providers["providers"][0]["type"], "file");
    let sources = &yaml_documents(&read(
        "deploy/central/grafana/provisioning/datasources/hubwatch.yaml",
    ))[0];
    assert_eq!(sources["datasources"][0]["type"], "prometheus");
}

// ---- Alertmanager ----

/// The text from `route:` up to `receivers:`: the routing tree and the
/// inhibit rules.
fn routing_section(path: &str) -> String {
    let text = read(path);
    let start = text
        .find("\nroute:\n")
        .unwrap_or_else(|| panic!("{path}: no top-level route"));
    let end = text
        .find("\nreceivers:\n")
        .unwrap_or_else(|| panic!("{path}: no top-level receivers"));
    assert!(start < end, "{path}: receivers come after route");
    text[start..end].to_string()
}

#[test]
fn both_alertmanager_configs_pass_amtool_and_share_one_routing_tree() {
    for path in [
        "deploy/central/alertmanager.yml",
        "deploy/alertmanager/alertmanager.yml",
    ] {
        run_ok(
            Command::new("amtool")
                .arg("check-config")
                .arg(root_file(path)),
        );
    }
    let central = routing_section("deploy/central/alertmanager.yml");
    let tested = routing_section("deploy/alertmanager/alertmanager.yml");
    assert_eq!(
        central, tested,
        "deploy/central/alertmanager.yml and deploy/alertmanager/alertmanager.yml must route alike \
         (the end-to-end tests run the second)"
    );
    assert!(central.contains("inhibit_rules:"), "{central}");
    let doc = &yaml_documents(&read("deploy/central/alertmanager.yml"))[0];
    assert_eq!(
        doc["route"]["group_by"],
        serde_json::json!(["member", "hub", "alertname"])
    );
    let rule = &doc["inhibit_rules"][0];
    assert_eq!(rule["equal"], serde_json::json!(["member", "hub", "slo"]));
    assert!(
        rule["source_matchers"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m == r#"severity="page""#)),
        "{rule}"
    );
    assert!(
        rule["target_matchers"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m == r#"severity="ticket""#)),
        "{rule}"
    );
    let receivers = doc["receivers"].as_array().expect("receivers");
    let receiver = |name: &str| {
        receivers
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no receiver {name}"))
    };
    let pager = receiver("on-call");
    assert!(pager["pagerduty_configs"][0]["routing_key_file"].is_string());
    assert!(pager["opsgenie_configs"][0]["api_key_file"].is_string());
    let watchdog = doc["route"]["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["receiver"] == "deadmans-switch")
        .expect("a Watchdog route");
    assert_eq!(watchdog["repeat_interval"], "1m");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Posts one batch as `agent` of `member`: hub `hub` failing its health
/// check and the re-check a second later, as the agent sends a hub down.
fn post_down(collector: &Collector, token: &str, agent: &str, member: &str, hub: &str) {
    let now = now_ms();
    let batch = Batch {
        agent_id: agent.into(),
        member: member.into(),
        seq: (now as u64) << 16,
        created_ms: now,
        dropped_records: 0,
        agent_version: format!("tests-{PROTOCOL_VERSION}"),
        records: [now - 1_000, now]
            .map(|at| {
                Record::Health(HealthCheck {
                    target: format!("http://127.0.0.1:8000/{hub}/hub/health"),
                    hub: Some(hub.into()),
                    kind: CheckKind::HubHealth,
                    ok: false,
                    status: None,
                    latency_us: 1500,
                    failure: None,
                    error: Some("connect to 127.0.0.1:8000: connection refused".into()),
                    cert_expiry_days: None,
                    timestamp_ms: at,
                })
            })
            .to_vec(),
    };
    let frame = hubwatch_shared::codec::encode(&batch).expect("encode");
    eventually("batch accepted", Duration::from_secs(10), || {
        let reply = collector.post_batch(Some(token), &frame)?;
        ensure!(
            reply.status == 200,
            "ingest: {} {}",
            reply.status,
            reply.body
        );
        Ok(())
    });
}

/// The receiver `amtool config routes test` picks for `labels` in `config`.
fn route(config: &Path, labels: &BTreeMap<String, String>) -> String {
    let mut command = Command::new("amtool");
    command
        .arg("config")
        .arg("routes")
        .arg("test")
        .arg(format!("--config.file={}", config.display()));
    for (name, value) in labels {
        command.arg(format!("{name}={value}"));
    }
    String::from_utf8_lossy(&run_ok(&mut command).stdout)
        .trim()
        .to_string()
}

fn labels_of(alert: &Value) -> BTreeMap<String, String> {
    alert["labels"]
        .as_object()
        .expect("labels")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

#[test]
fn a_real_collectors_alerts_route_by_tier_and_the_watchdog_to_the_dead_mans_switch() {
    // The collector's alerts, not hand-written labels: a premier and a
    // starter hub go down and the collector says what it would send.
    let webhook = Webhook::start();
    let members = [
        MemberSpec {
            id: "leap".into(),
            tier: "premier".into(),
            hubs: vec![("prod".into(), None)],
        },
        MemberSpec {
            id: "tiny".into(),
            tier: "starter".into(),
            hubs: vec![("lab".into(), None)],
        },
    ];
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: collector_alerting_toml(
            webhook.url(),
            "evaluation_interval = \"1s\"\nagent_silent_after = \"10m\"",
            &members,
        ),
        ..CollectorOptions::default()
    });
    let leap = collector.create_token("leap", "leap-agent");
    let tiny = collector.create_token("tiny", "tiny-agent");
    post_down(&collector, &leap, "leap-agent", "leap", "prod");
    post_down(&collector, &tiny, "tiny-agent", "tiny", "lab");

    let find = |alerts: &[Value], name: &str, hub: Option<&str>| {
        alerts
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == name
                    && hub.is_none_or(|h| a["labels"]["hub"] == h)
                    && a["state"] != "resolved"
            })
            .cloned()
    };
    let mut alerts = Vec::new();
    eventually(
        "HubDown for both hubs and the Watchdog",
        Duration::from_secs(30),
        || {
            alerts = collector_alerts(collector.http())?;
            for (name, hub) in [
                ("HubDown", Some("prod")),
                ("HubDown", Some("lab")),
                ("Watchdog", None),
            ] {
                find(&alerts, name, hub)
                    .with_context(|| format!("no {name} {hub:?}: {alerts:?}"))?;
            }
            Ok(())
        },
    );
    let premier = labels_of(&find(&alerts, "HubDown", Some("prod")).expect("premier HubDown"));
    let starter = labels_of(&find(&alerts, "HubDown", Some("lab")).expect("starter HubDown"));
    let watchdog = labels_of(&find(&alerts, "Watchdog", None).expect("Watchdog"));
    assert_eq!(premier["severity"], "page", "{premier:?}");
    assert_eq!(starter["severity"], "ticket", "{starter:?}");
    assert_eq!(watchdog["severity"], "none", "{watchdog:?}");
    let mut in_maintenance = premier.clone();
    in_maintenance.insert("maintenance".into(), "true".into());

    for path in [
        "deploy/central/alertmanager.yml",
        "deploy/alertmanager/alertmanager.yml",
    ] {
        let config = root_file(path);
        for (labels, receiver) in [
            (&premier, "on-call"),
            (&starter, "tickets"),
            (&watchdog, "deadmans-switch"),
            (&in_maintenance, "maintenance-null"),
        ] {
            assert_eq!(route(&config, labels), receiver, "{path}: {labels:?}");
        }
    }
}

// ---- systemd ----

/// `unit` with its binaries at `bin_dir`, written into `dir`.
fn unit_with_binaries(unit: &str, bin_dir: &Path, dir: &Path) -> PathBuf {
    let text = read(&format!("deploy/systemd/{unit}"));
    assert!(text.contains("ExecStart=/usr/local/bin/"), "{unit}");
    let local = text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
    let path = dir.join(unit);
    std::fs::write(&path, local).expect("write unit");
    path
}

#[test]
fn systemd_units_verify_without_a_warning_and_are_hardened() {
    let bin_dir = binary("hubwatch-collector")
        .parent()
        .expect("binary directory")
        .to_path_buf();
    assert!(
        bin_dir.join("hubwatch-agent").is_file(),
        "cargo build --bins"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    for unit in ["hubwatch-agent.service", "hubwatch-collector.service"] {
        let path = unit_with_binaries(unit, &bin_dir, dir.path());
        let out = run_ok(Command::new("systemd-analyze").arg("verify").arg(&path));
        // verify exits 0 on an unknown key or a value it ignores: any line
        // on stderr is a mistake in the unit.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.trim().is_empty(), "{unit}: {stderr}");

        // Exposure 0.0-10.0, threshold in tenths: at most 2.0.
        let out = output(
            Command::new("systemd-analyze")
                .args(["security", "--offline=true", "--threshold=20"])
                .arg(&path),
        );
        let report = String::from_utf8_lossy(&out.stdout);
        let score = report
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_default()
            .to_string();
        assert!(out.status.success(), "{unit} scores above 2.0: {score}");
        eprintln!("{unit}: {}", score.trim());

        let text = read(&format!("deploy/systemd/{unit}"));
        for directive in [
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            "CapabilityBoundingSet=\n",
            "RestrictAddressFamilies=",
            "SystemCallFilter=@system-service",
            "StateDirectory=",
            "ConfigurationDirectory=",
            "LoadCredential=",
        ] {
            assert!(text.contains(directive), "{unit} lacks {directive:?}");
        }
        assert!(
            text.contains("DynamicUser=yes") || text.contains("\nUser="),
            "{unit} runs as root"
        );
    }
}

// ---- Kubernetes ----

#[test]
fn collector_kustomization_renders_validates_and_is_restricted() {
    let rendered = run_ok(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(root_file("deploy/kubernetes/collector")),
    )
    .stdout;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("collector.yaml");
    std::fs::write(&file, &rendered).expect("write rendered manifests");
    let validate = k8s_venv().join("bin/kubernetes-validate");
    assert!(
        validate.is_file(),
        "{} is missing: run scripts/install-test-deps.sh",
        validate.display()
    );
    run_ok(
        Command::new(&validate)
            .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
            .arg(&file),
    );

    let docs = yaml_documents(&String::from_utf8_lossy(&rendered));
    let kind = |k: &str| {
        docs.iter()
            .filter(|d| d["kind"] == k)
            .cloned()
            .collect::<Vec<_>>()
    };
    let sets = kind("StatefulSet");
    assert_eq!(sets.len(), 1);
    let set = &sets[0];
    assert_eq!(set["metadata"]["namespace"], "hubwatch");
    assert_eq!(set["spec"]["replicas"], 1, "single-writer store");
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/hubwatch/hubwatch:0.1.0");
    assert_eq!(container["command"][0], "/usr/local/bin/hubwatch-collector");
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    for resource in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(
                container["resources"][resource][what].is_string(),
                "{resource}.{what}"
            );
        }
    }
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "store"
    );

    // The config the pod reads is the file in the base, and it names the
    // mounted TLS files and the volume.
    let maps = kind("ConfigMap");
    let embedded = maps[0]["data"]["collector.toml"]
        .as_str()
        .expect("collector.toml");
    assert_eq!(embedded, read("deploy/kubernetes/collector/collector.toml"));
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("no mount of {volume}"))
            .to_string()
    };
    assert!(embedded.contains(&format!("tls_cert = \"{}/tls.crt\"", mount_of("tls"))));
    assert!(embedded.contains(&format!("path = \"{}/store\"", mount_of("store"))));
    let tls = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "tls")
        .expect("tls volume");
    assert_eq!(tls["secret"]["secretName"], "hubwatch-collector-tls");
    let services = kind("Service");
    assert!(
        services
            .iter()
            .any(|s| s["spec"]["ports"][0]["port"] == 9470),
        "a Service on 9470"
    );
    // Every Service selects the pod: each selector label is on the template.
    let pod_labels = &set["spec"]["template"]["metadata"]["labels"];
    for service in &services {
        let selector = service["spec"]["selector"].as_object().expect("a selector");
        assert!(!selector.is_empty());
        for (k, v) in selector {
            assert_eq!(
                &pod_labels[k], v,
                "{} selects {k}={v}",
                service["metadata"]["name"]
            );
        }
    }
}

#[test]
fn the_shipped_and_embedded_configs_pass_the_binaries_check_config() {
    // check-config reads the TLS files: the manifests' config names the
    // Secret's mount, so it runs on a copy pointing at a real key pair, as
    // the mounted `kubernetes.io/tls` Secret would provide.
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = hubwatch_tests::pki::TestCa::new("deploy CA")
        .server_cert()
        .write(dir.path(), "tls");
    let manifest = read("deploy/kubernetes/collector/collector.toml");
    for mounted in ["/etc/hubwatch/tls/tls.crt", "/etc/hubwatch/tls/tls.key"] {
        assert!(manifest.contains(mounted), "the config names {mounted}");
    }
    let mounted = dir.path().join("collector.toml");
    std::fs::write(
        &mounted,
        manifest
            .replace("/etc/hubwatch/tls/tls.crt", &cert.display().to_string())
            .replace("/etc/hubwatch/tls/tls.key", &key.display().to_string()),
    )
    .expect("write");
    // Their drift from the code's defaults is shared/src/config/tests.rs's.
    for (bin, config) in [
        ("hubwatch-collector", mounted.clone()),
        (
            "hubwatch-collector",
            root_file("deploy/collector.example.toml"),
        ),
        ("hubwatch-agent", root_file("deploy/agent.example.toml")),
    ] {
        let mut command = Command::new(binary(bin));
        command.arg("check-config").arg("--config").arg(&config);
        // Only the file speaks: no HUBWATCH_* override from the caller.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HUBWATCH_") {
                command.env_remove(key);
            }
        }
        let out = run_ok(&mut command);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("config ok"),
            "{}: {out:?}",
            config.display()
        );
    }
}

// ---- the container image ----

/// `major.minor` of a version string such as `1.95.0` or `1.95`.
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("not a version: {version:?}"),
    }
}

#[test]
fn dockerfile_builds_both_binaries_with_the_toolchain_and_runs_them_non_root_with_a_healthcheck() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: builder and runtime");
    let builder = froms[0]
        .strip_prefix("FROM rust:")
        .and_then(|rest| rest.strip_suffix("-bookworm AS builder"))
        .unwrap_or_else(|| panic!("builder stage: {}", froms[0]));
    let cargo_toml = read("Cargo.toml");
    let rust_version = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("workspace rust-version");
    assert!(
        major_minor(builder) >= major_minor(rust_version),
        "the builder's Rust {builder} is older than rust-version {rust_version}"
    );
    // The toolchain CI builds and tests with (this machine's rustc).
    let rustc = String::from_utf8_lossy(&run_ok(Command::new("rustc").arg("--version")).stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
        .expect("rustc --version");
    assert_eq!(
        major_minor(builder),
        major_minor(&rustc),
        "the Dockerfile builds with Rust {builder}, CI with {rustc}: update FROM rust:"
    );
    assert!(
        dockerfile
            .contains("cargo build --release --locked -p hubwatch-agent -p hubwatch-collector")
    );

    let runtime = dockerfile
        .split(froms[1])
        .nth(1)
        .expect("the runtime stage");
    assert!(
        runtime.contains(
            "COPY --from=builder /out/hubwatch-agent /out/hubwatch-collector /usr/local/bin/"
        ),
        "both binaries in /usr/local/bin"
    );
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("numeric USER: {user}"));
    assert_ne!(uid, 0, "non-root");
    assert_eq!(uid, 65532, "the uid the Kubernetes manifests run as");
    let healthcheck = runtime
        .split("HEALTHCHECK")
        .nth(1)
        .and_then(|rest| rest.split("CMD ").nth(1))
        .and_then(|cmd| cmd.lines().next())
        .expect("a HEALTHCHECK ... CMD [...]");
    let argv: Vec<String> = serde_json::from_str(healthcheck)
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD in exec form (no shell in distroless): {e}"));
    assert_eq!(argv[0], "/usr/local/bin/hubwatch-collector");
    assert_eq!(argv[1], "health");
    // The subcommand it runs exists and takes those flags.
    let name = argv[0].rsplit('/').next().expect("binary name");
    run_ok(Command::new(binary(name)).args(&argv[1..2]).arg("--help"));

    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "no target/ in the context"
    );
    for member in ["shared", "agent", "collector", "dashboards", "tests"] {
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == member),
            "workspace member {member} must be in the build context"
        );
    }
}

#[test]
fn the_health_subcommand_asks_the_real_collector_over_pinned_tls() {
    let ca = TestCa::new("hubwatch-test-ca");
    let dir = tempfile::tempdir().expect("temporary directory");
    let tls = ServerTls::from_ca(&ca, dir.path(), false);
    let mut collector = Collector::start(CollectorOptions {
        tls: Some(tls),
        ..CollectorOptions::default()
    });
    let (ok, stdout, stderr) = collector.run_cli(&["health"]);
    assert!(ok, "health failed: {stdout} {stderr}");
    assert!(stdout.contains("ready: https://"), "{stdout}");

    // Another certificate than server.tls_cert: not this collector.
    let other = TestCa::new("another-ca")
        .server_cert()
        .write(dir.path(), "other");
    let config = std::fs::read_to_string(collector.config_path()).expect("collector.toml");
    let cert_line = config
        .lines()
        .find(|l| l.starts_with("tls_cert"))
        .expect("tls_cert in the harness config")
        .to_string();
    let wrong = dir.path().join("wrong.toml");
    let other_cert = other.0.display().to_string();
    std::fs::write(
        &wrong,
        config.replace(&cert_line, &format!("tls_cert = {other_cert:?}")),
    )
    .expect("write config");
    let out = output(
        Command::new(binary("hubwatch-collector"))
            .args(["health", "--config"])
            .arg(&wrong),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not server.tls_cert"),
        "{out:?}"
    );

    collector.sigkill();
    let (ok, stdout, stderr) = collector.run_cli(&["health", "--timeout", "2s"]);
    assert!(!ok, "a killed collector is not healthy: {stdout}");
    assert!(stderr.contains("health"), "{stderr}");
}

#[test]
fn the_agents_health_subcommand_asks_the_real_agents_healthz() {
    let collector = Collector::start(CollectorOptions::default());
    let token = collector.create_token("leap", "leap-agent");
    let mut agent = hubwatch_tests::Agent::start(
        hubwatch_tests::AgentOptions::new("leap-agent", "leap", &token, "1s"),
        collector.url(),
    );
    let config = agent.config_path().to_path_buf();
    let health = |timeout: &str| {
        output(
            Command::new(binary("hubwatch-agent"))
                .args(["health", "--timeout", timeout, "--config"])
                .arg(&config),
        )
    };
    let out = health("5s");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("healthy: http://127.0.0.1:"),
        "{out:?}"
    );
    agent.sigkill();
    let out = health("2s");
    assert_eq!(out.status.code(), Some(1), "a killed agent: {out:?}");
}
