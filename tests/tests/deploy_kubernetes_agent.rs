//! The member-cluster deployment (`deploy/kubernetes/agent/`): the base and both
//! overlays render with `kubectl kustomize`, pass `kubernetes-validate --strict`
//! for the Kubernetes release the docs name, and keep what they promise: one
//! replica replaced by `Recreate` (the spool is single-writer), a pod that
//! meets Pod Security "restricted", no service account token and no RBAC, the
//! Secrets and the spool mounted where the agent's config looks, a
//! NetworkPolicy whose Prometheus rules exist only in the with-prometheus
//! overlay, and an agent config that `hubwatch-agent check-config` accepts
//! together with the shipped z2jh values.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hubwatch_shared::config::{self, AgentConfig};
use hubwatch_tests::deploy::{documents, kubernetes_dir, kustomize, of_kind, validate};
use serde_json::Value;

const OVERLAYS: &[&str] = &[
    "base",
    "overlays/with-prometheus",
    "overlays/without-prometheus",
];

fn agent_dir() -> PathBuf {
    kubernetes_dir().join("agent")
}

fn render(which: &str) -> Vec<Value> {
    let yaml = kustomize(&agent_dir().join(which)).unwrap_or_else(|e| panic!("{which}: {e:#}"));
    validate(&yaml).unwrap_or_else(|e| panic!("{which}: {e:#}"));
    documents(&yaml).unwrap_or_else(|e| panic!("{which}: {e:#}"))
}

fn one<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found = of_kind(docs, kind, Some(name));
    assert_eq!(found.len(), 1, "{kind}/{name}: {found:?}");
    found[0]
}

/// The agent config in the rendered ConfigMap, and the Deployment.
fn config_of(docs: &[Value]) -> (String, AgentConfig) {
    let maps = of_kind(docs, "ConfigMap", None);
    assert_eq!(maps.len(), 1, "{maps:?}");
    let toml = maps[0]["data"]["agent.toml"]
        .as_str()
        .expect("agent.toml in the ConfigMap")
        .to_string();
    let cfg = config::load::<AgentConfig>(&toml, &HashMap::new()).expect("agent.toml loads");
    (toml, cfg)
}

/// Where the container sees `path` from: the volume behind the mount holding
/// it, and the file's path inside that volume.
fn volume_for<'a>(deployment: &'a Value, path: &Path) -> (&'a Value, PathBuf) {
    let pod = &deployment["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts");
    let mount = mounts
        .iter()
        .find(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
        .unwrap_or_else(|| panic!("no volume mounted over {}", path.display()));
    let rest = path
        .strip_prefix(mount["mountPath"].as_str().unwrap_or_default())
        .expect("under the mount")
        .to_path_buf();
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    (volume, rest)
}

/// The Secret (name, key) a file path comes from.
fn secret_behind(deployment: &Value, path: &Path) -> (String, String) {
    let (volume, rest) = volume_for(deployment, path);
    let secret = &volume["secret"];
    assert!(
        secret.is_object(),
        "{} is not from a Secret: {volume}",
        path.display()
    );
    let item = secret["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| Path::new(i["path"].as_str().unwrap_or_default()) == rest)
        .unwrap_or_else(|| panic!("no item for {} in {volume}", path.display()));
    (
        secret["secretName"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        item["key"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn every_variant_renders_validates_and_keeps_its_promises() {
    for which in OVERLAYS {
        let docs = render(which);
        let deployment = one(&docs, "Deployment", "hubwatch-agent");
        let spec = &deployment["spec"];
        assert_eq!(spec["replicas"], 1, "{which}");
        assert_eq!(spec["strategy"]["type"], "Recreate", "{which}");

        let pod = &spec["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{which}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{which}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{which}");
        let c = &containers[0];
        assert_eq!(c["image"], "ghcr.io/hubwatch/hubwatch:0.1.0");
        assert_eq!(c["command"][0], "/usr/local/bin/hubwatch-agent");
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{which}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{which}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{which}"
        );
        assert!(sc["capabilities"]["add"].is_null(), "{which}");
        assert!(
            sc["privileged"].is_null() || sc["privileged"] == false,
            "{which}"
        );
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        for kind in ["requests", "limits"] {
            assert!(c["resources"][kind]["memory"].is_string(), "{which} {kind}");
        }

        let sa = one(&docs, "ServiceAccount", "hubwatch-agent");
        assert_eq!(sa["automountServiceAccountToken"], false);
        assert_eq!(pod["serviceAccountName"], "hubwatch-agent");
        for rbac in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"] {
            assert!(of_kind(&docs, rbac, None).is_empty(), "{which}: {rbac}");
        }
        // The operator makes the Secrets; none sits in the manifests.
        assert!(of_kind(&docs, "Secret", None).is_empty(), "{which}");

        // The config's files are where the Deployment mounts them.
        let (_, cfg) = config_of(&docs);
        let token = cfg
            .collector
            .token_file
            .clone()
            .expect("collector.token_file");
        assert_eq!(
            secret_behind(deployment, &token),
            ("hubwatch-agent-collector-token".into(), "token".into())
        );
        let pseudonym = cfg
            .privacy
            .secret_file
            .clone()
            .expect("privacy.secret_file");
        assert_eq!(
            secret_behind(deployment, &pseudonym),
            ("hubwatch-agent-pseudonym".into(), "secret".into())
        );
        for hub in &cfg.hubs {
            let file = hub.api_token_file.clone().expect("hubs[].api_token_file");
            assert_eq!(
                secret_behind(deployment, &file),
                ("hub".into(), "hub.services.hubwatch.apiToken".into()),
                "z2jh's own Secret for hub.services.hubwatch"
            );
        }
        let (spool, _) = volume_for(deployment, &cfg.agent.spool_dir);
        let claim = spool["persistentVolumeClaim"]["claimName"]
            .as_str()
            .expect("the spool is on a PVC");
        one(&docs, "PersistentVolumeClaim", claim);
        assert_eq!(
            c["ports"][0]["containerPort"],
            cfg.agent.listen.port(),
            "{which}: probes reach agent.listen"
        );
        assert!(
            cfg.agent.listen.ip().is_unspecified(),
            "{which}: not loopback"
        );

        let policy = one(&docs, "NetworkPolicy", "hubwatch-agent");
        let types = &policy["spec"]["policyTypes"];
        assert_eq!(types, &serde_json::json!(["Ingress", "Egress"]), "{which}");
        let egress = policy["spec"]["egress"].as_array().expect("egress");
        let to_hub = egress.iter().any(|rule| {
            rule["to"][0]["podSelector"]["matchLabels"]["app"] == "jupyterhub"
                && rule["to"][0]["podSelector"]["matchExpressions"][0]["values"]
                    == serde_json::json!(["hub", "proxy"])
        });
        assert!(to_hub, "{which}: egress to the hub: {egress:?}");
        let dns = egress.iter().any(|rule| {
            rule["ports"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["port"] == 53))
        });
        assert!(dns, "{which}: egress to DNS");
        let to_prometheus = egress.iter().any(|rule| rule["ports"][0]["port"] == 9090);
        let ingress = policy["spec"]["ingress"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if *which == "overlays/with-prometheus" {
            assert!(
                cfg.prometheus.url.starts_with("http"),
                "{which}: [prometheus] url"
            );
            assert!(to_prometheus, "{which}: egress to Prometheus");
            assert_eq!(ingress.len(), 1, "{which}: {ingress:?}");
            assert_eq!(ingress[0]["ports"][0]["port"], cfg.agent.listen.port());
        } else {
            assert!(
                cfg.prometheus.url.is_empty(),
                "{which}: no [prometheus] source"
            );
            assert!(!to_prometheus, "{which}: no egress to Prometheus");
            assert!(ingress.is_empty(), "{which}: no ingress: {ingress:?}");
        }
        // The pod carries the labels z2jh's own policies admit to the hub and proxy.
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(labels["hub.jupyter.org/network-access-hub"], "true");
        assert_eq!(labels["hub.jupyter.org/network-access-proxy-http"], "true");
    }
}

/// Writes the ConfigMap's agent.toml into a tempdir (its files moved under
/// it, a token file written) and runs `check-config --z2jh-values`.
#[test]
fn the_configmaps_config_passes_check_config_with_the_z2jh_values() {
    let values = agent_dir().join("z2jh-values.yaml");
    for which in OVERLAYS {
        let docs = render(which);
        let (toml, _) = config_of(&docs);
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().display().to_string();
        let toml = toml
            .replace("\"/etc/hubwatch/", &format!("\"{root}/etc/hubwatch/"))
            .replace(
                "\"/var/lib/hubwatch/",
                &format!("\"{root}/var/lib/hubwatch/"),
            );
        for (file, content) in [
            ("etc/hubwatch/collector/token", "collector-token"),
            ("etc/hubwatch/hub/token", "hub-token"),
            (
                "etc/hubwatch/privacy/secret",
                "0123456789abcdef0123456789abcdef",
            ),
        ] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, content).expect("write");
        }
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, toml).expect("write agent.toml");
        let out = Command::new(hubwatch_tests::binary("hubwatch-agent"))
            .args(["check-config", "--config"])
            .arg(&config)
            .arg("--z2jh-values")
            .arg(&values)
            .output()
            .expect("run hubwatch-agent check-config");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{which}: {stdout}\n{stderr}");
        assert!(stdout.contains("config ok"), "{which}: {stdout}");
        assert!(stdout.contains("z2jh values ok"), "{which}: {stdout}");
        assert!(!stderr.contains("warning"), "{which}: {stderr}");
    }
}

/// `check-config --z2jh-values` exits 2 naming a scope the sources need.
#[test]
fn check_config_refuses_values_missing_a_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = std::fs::read_to_string(agent_dir().join("z2jh-values.yaml")).expect("values");
    let without = values.replace("        - list:users\n", "");
    assert_ne!(without, values);
    let path = dir.path().join("values.yaml");
    std::fs::write(&path, without).expect("write");
    let out = Command::new(hubwatch_tests::binary("hubwatch-agent"))
        .args(["check-config", "--config"])
        .arg(agent_dir().join("base/agent.toml"))
        .arg("--z2jh-values")
        .arg(&path)
        .output()
        .expect("run hubwatch-agent check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing `list:users`"), "{stderr}");
}
