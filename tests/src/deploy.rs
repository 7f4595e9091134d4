//! Rendering and validating the Kubernetes manifests under `deploy/kubernetes/`:
//! `kubectl kustomize` (kustomize built into kubectl) and the PyPI package
//! `kubernetes-validate` against the OpenAPI schemas of [`KUBERNETES_VERSION`],
//! both installed by `scripts/install-test-deps.sh`. The rendered YAML is read
//! back as JSON values so tests can assert what the manifests promise.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The Kubernetes release the manifests are validated for (the oldest the
/// docs support; `docs/operations.md`).
pub const KUBERNETES_VERSION: &str = "1.30.0";

/// `deploy/kubernetes/` in this workspace.
pub fn kubernetes_dir() -> PathBuf {
    crate::binaries::workspace_root().join("deploy/kubernetes")
}

/// The `kubernetes-validate` command: `HUBWATCH_K8S_VALIDATE`, else the venv
/// `scripts/install-test-deps.sh` makes.
pub fn validate_command() -> PathBuf {
    std::env::var_os("HUBWATCH_K8S_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/hubwatch-test/k8s-venv/bin/kubernetes-validate"))
}

/// `kubectl kustomize DIR`: the rendered manifests.
pub fn kustomize(dir: &Path) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("run kubectl (scripts/install-test-deps.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {}: {}\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("kustomize output is not UTF-8")
}

/// Validates `yaml` (any number of documents) with `kubernetes-validate
/// --strict` for [`KUBERNETES_VERSION`]: unknown fields are errors too.
pub fn validate(yaml: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let path = dir.path().join("manifests.yaml");
    std::fs::write(&path, yaml).context("write manifests")?;
    let cmd = validate_command();
    let out = Command::new(&cmd)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&path)
        .output()
        .with_context(|| format!("run {} (scripts/install-test-deps.sh)", cmd.display()))?;
    if !out.status.success() {
        bail!(
            "kubernetes-validate {KUBERNETES_VERSION}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Every YAML document in `yaml`, as JSON values.
pub fn documents(yaml: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc).context("a YAML document")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The documents of `kind` (and `name`, when given).
pub fn of_kind<'a>(
    docs: &'a [serde_json::Value],
    kind: &str,
    name: Option<&str>,
) -> Vec<&'a serde_json::Value> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .filter(|d| name.is_none_or(|n| d["metadata"]["name"] == n))
        .collect()
}
