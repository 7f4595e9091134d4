//! `hubwatch-agent check-config --config agent.toml --z2jh-values values.yaml`:
//! checks the zero-to-jupyterhub values that give the agent its hub token
//! against what the agent's config needs (`docs/operations.md`, "Installing
//! the agent on a member cluster"):
//!
//! - `hub.services.hubwatch` exists (its token is the `[[hubs]]`
//!   `api_token_file`; an inline `apiToken` is warned about, z2jh generates one
//!   into its `hub` Secret when it is left out);
//! - the `hub.loadRoles` entries naming the service hold every scope the
//!   configured hub sources need ([`HUB_SOURCE_SCOPES`]), an error naming each
//!   missing one; a scope beyond those is a warning (least privilege);
//! - with a journey on, an override of JupyterHub's default `user` role still
//!   grants the journey's scopes ([`JOURNEY_SCOPES`]);
//! - each hub's `url` is z2jh's `proxy-public` service, `proxy-http` on port
//!   8000 (with autohttps) or the `hub` service on port 8081, as seen from
//!   inside the cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hubwatch_shared::config::AgentConfig;
use serde_norway::Value;

/// The service name the agent's token belongs to in `hub.services`.
pub const SERVICE: &str = "hubwatch";

/// What each `[[hubs]]` source reads with its `api_token_file` token:
/// `/hub/api/users` pages (`list:users`, `read:users`), their servers
/// (`read:servers`) and `/hub/metrics` (`read:metrics`).
pub const HUB_SOURCE_SCOPES: &[&str] =
    &["list:users", "read:users", "read:servers", "read:metrics"];

/// What the journey's test user needs on its own token (`docs/journey.md`):
/// JupyterHub's default `user` role grants both through `self`.
pub const JOURNEY_SCOPES: &[&str] = &["servers!user", "access:servers!user"];

/// Scopes that hold narrower ones, as JupyterHub's scope hierarchy has them
/// (only the branches above the scopes the agent needs).
const BROADER: &[(&str, &[&str])] = &[
    ("admin:users", &["users", "read:users", "list:users"]),
    ("users", &["read:users", "list:users"]),
    ("admin:servers", &["servers", "read:servers"]),
    ("servers", &["read:servers"]),
    ("self", &["servers!user", "access:servers!user"]),
];

/// Why the values file cannot be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum Z2jhError {
    /// The file cannot be read.
    #[error("z2jh values {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("z2jh values {path}: {source}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_norway::Error,
    },
}

/// What the check found: errors make `check-config` exit 2.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Each thing that would stop the agent working, naming the key.
    pub errors: Vec<String>,
    /// Each thing that works but should not be so (extra scopes, a token in
    /// the values).
    pub warnings: Vec<String>,
}

/// Reads `path` and checks it against `cfg`.
pub fn check_file(cfg: &AgentConfig, path: &Path) -> Result<Findings, Z2jhError> {
    let text = std::fs::read_to_string(path).map_err(|source| Z2jhError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let values: Value = serde_norway::from_str(&text).map_err(|source| Z2jhError::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(check(cfg, &values))
}

/// Checks parsed values against `cfg`.
pub fn check(cfg: &AgentConfig, values: &Value) -> Findings {
    let mut found = Findings::default();
    let hub = values.get("hub");
    let service = hub
        .and_then(|h| h.get("services"))
        .and_then(|s| s.get(SERVICE));
    match service {
        None => found.errors.push(format!(
            "hub.services.{SERVICE} is missing: the agent's hub token belongs to that service"
        )),
        Some(service) => {
            if service.get("apiToken").is_some() {
                found.warnings.push(format!(
                    "hub.services.{SERVICE}.apiToken is set in the values: leave it out and z2jh \
                     generates one into its `hub` Secret (key hub.services.{SERVICE}.apiToken), \
                     which the agent's manifests mount"
                ));
            }
        }
    }

    let roles = hub
        .and_then(|h| h.get("loadRoles"))
        .and_then(Value::as_mapping);
    let mut granted = BTreeSet::new();
    let mut role_names = Vec::new();
    for (name, role) in roles.into_iter().flatten() {
        let name = name.as_str().unwrap_or("?").to_string();
        if strings(role.get("services")).contains(SERVICE) {
            granted.extend(strings(role.get("scopes")));
            role_names.push(name);
        }
    }
    if role_names.is_empty() {
        found.errors.push(format!(
            "hub.loadRoles: no role lists `{SERVICE}` under `services`, so its token holds no \
             scope (needs {})",
            HUB_SOURCE_SCOPES.join(", ")
        ));
    }
    let at = if role_names.is_empty() {
        "hub.loadRoles".to_string()
    } else {
        format!("hub.loadRoles.{}", role_names.join("/"))
    };
    let needed: BTreeSet<String> = if cfg.hubs.is_empty() {
        BTreeSet::new()
    } else {
        HUB_SOURCE_SCOPES.iter().map(|s| s.to_string()).collect()
    };
    if !role_names.is_empty() {
        let mut warned_broad = BTreeSet::new();
        for scope in &needed {
            if granted.contains(scope) {
                continue;
            }
            match broader_holder(&granted, scope) {
                Some(broad) => {
                    found.warnings.push(format!(
                        "{at}.scopes: `{broad}` covers `{scope}` but grants more than the agent \
                         needs; list `{scope}` instead"
                    ));
                    warned_broad.insert(broad);
                }
                None => found.errors.push(format!(
                    "{at}.scopes: missing `{scope}`, which the [[hubs]] sources need"
                )),
            }
        }
        for extra in granted.iter().filter(|s| !needed.contains(*s)) {
            if warned_broad.contains(extra) {
                continue; // already warned about above
            }
            found.warnings.push(format!(
                "{at}.scopes: `{extra}` is not needed by the agent (least privilege: remove it)"
            ));
        }
    }

    if cfg.hubs.iter().any(|h| h.journey.enabled)
        && let Some(user_role) = roles.and_then(|r| r.get("user"))
    {
        let scopes = strings(user_role.get("scopes"));
        for scope in JOURNEY_SCOPES {
            if !scopes.contains(*scope) && broader_holder(&scopes, scope).is_none() {
                found.errors.push(format!(
                    "hub.loadRoles.user.scopes: missing `{scope}` (or `self`), which the \
                     journey's test user needs"
                ));
            }
        }
    }

    for (i, h) in cfg.hubs.iter().enumerate() {
        if let Err(why) = z2jh_hub_url(&h.url) {
            found
                .errors
                .push(format!("hubs[{i}].url {:?}: {why}", h.url));
        }
    }
    found
}

/// Whether `url` names z2jh's `proxy-public` service (port 80, or 443 with
/// https) or its `hub` service on port 8081, by short or qualified name.
fn z2jh_hub_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    // A Service's names: `svc`, `svc.ns`, `svc.ns.svc[.cluster domain]`; a
    // public name such as hub.example.org is none of them.
    let labels: Vec<&str> = host.split('.').collect();
    let in_cluster = labels.len() <= 2 || labels.get(2) == Some(&"svc");
    let service = if in_cluster { labels[0] } else { "" };
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    match service {
        "proxy-public" if port == 80 || port == 443 => Ok(()),
        "proxy-public" => Err(format!(
            "z2jh's proxy-public service listens on 80 (or 443), not {port}"
        )),
        // With z2jh's autohttps, proxy-public is Traefik; proxy-http is the proxy itself.
        "proxy-http" if port == 8000 => Ok(()),
        "proxy-http" => Err(format!(
            "z2jh's proxy-http service listens on 8000, not {port}"
        )),
        "hub" if port == 8081 => Ok(()),
        "hub" => Err(format!("z2jh's hub service listens on 8081, not {port}")),
        _ => Err(
            "is not a z2jh service: use http://proxy-public (or http://hub:8081) in the hub's \
             namespace, or <service>.<namespace>.svc from another"
                .to_string(),
        ),
    }
}

fn strings(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn broader_holder(granted: &BTreeSet<String>, scope: &str) -> Option<String> {
    BROADER
        .iter()
        .find(|(broad, narrower)| granted.contains(*broad) && narrower.contains(&scope))
        .map(|(broad, _)| broad.to_string())
}

#[cfg(test)]
mod tests;
