use std::collections::HashMap;

use hubwatch_shared::config;

use super::*;

/// The shipped snippet and the shipped agent config.
const VALUES: &str = include_str!("../../../deploy/kubernetes/agent/z2jh-values.yaml");
const AGENT_TOML: &str = include_str!("../../../deploy/kubernetes/agent/base/agent.toml");

fn cfg() -> AgentConfig {
    config::load::<AgentConfig>(AGENT_TOML, &HashMap::new()).expect("the shipped config loads")
}

fn values(text: &str) -> Value {
    serde_norway::from_str(text).expect("yaml")
}

#[test]
fn the_shipped_snippet_passes_with_the_shipped_config() {
    assert_eq!(check(&cfg(), &values(VALUES)), Findings::default());
}

#[test]
fn a_missing_scope_is_an_error_naming_it() {
    let text = VALUES.replace("        - read:metrics\n", "");
    assert_ne!(text, VALUES, "the snippet lists read:metrics");
    let found = check(&cfg(), &values(&text));
    assert_eq!(found.errors.len(), 1, "{found:?}");
    assert!(
        found.errors[0].contains("hub.loadRoles.hubwatch.scopes: missing `read:metrics`"),
        "{found:?}"
    );
}

#[test]
fn an_extra_scope_is_a_warning() {
    let text = VALUES.replace(
        "        - read:metrics\n",
        "        - read:metrics\n        - admin:groups\n",
    );
    let found = check(&cfg(), &values(&text));
    assert!(found.errors.is_empty(), "{found:?}");
    assert_eq!(found.warnings.len(), 1, "{found:?}");
    assert!(
        found.warnings[0].contains("`admin:groups` is not needed"),
        "{found:?}"
    );
}

#[test]
fn a_broader_scope_covers_but_is_warned_about() {
    let text = VALUES.replace("        - read:users\n", "        - admin:users\n");
    let found = check(&cfg(), &values(&text));
    assert!(found.errors.is_empty(), "{found:?}");
    assert_eq!(found.warnings.len(), 1, "{found:?}");
    assert!(
        found.warnings[0].contains("`admin:users` covers `read:users`"),
        "{found:?}"
    );
}

#[test]
fn a_missing_service_or_role_is_an_error() {
    let found = check(&cfg(), &values("hub:\n  loadRoles: {}\n"));
    assert!(
        found
            .errors
            .iter()
            .any(|e| e.contains("hub.services.hubwatch is missing")),
        "{found:?}"
    );
    assert!(
        found
            .errors
            .iter()
            .any(|e| e.contains("no role lists `hubwatch`")),
        "{found:?}"
    );
}

#[test]
fn an_inline_api_token_is_warned_about() {
    let text = VALUES.replace("    hubwatch: {}\n", "    hubwatch:\n      apiToken: abc\n");
    let found = check(&cfg(), &values(&text));
    assert!(found.errors.is_empty(), "{found:?}");
    assert!(found.warnings[0].contains("apiToken is set"), "{found:?}");
}

#[test]
fn the_hub_url_must_be_a_z2jh_service() {
    let mut cfg = cfg();
    for ok in [
        "http://proxy-public",
        "http://proxy-public.jhub.svc.cluster.local",
        "http://hub:8081",
        "http://hub.jhub.svc:8081",
        "http://proxy-http:8000",
    ] {
        cfg.hubs[0].url = ok.to_string();
        assert_eq!(check(&cfg, &values(VALUES)), Findings::default(), "{ok}");
    }
    for (bad, why) in [
        ("http://hub", "8081"),
        ("https://hub.example.org", "not a z2jh service"),
        ("http://proxy-public:8081", "80"),
    ] {
        cfg.hubs[0].url = bad.to_string();
        let found = check(&cfg, &values(VALUES));
        assert_eq!(found.errors.len(), 1, "{bad}: {found:?}");
        assert!(found.errors[0].starts_with("hubs[0].url"), "{found:?}");
        assert!(found.errors[0].contains(why), "{bad}: {found:?}");
    }
}

#[test]
fn a_journey_needs_its_scopes_in_an_overridden_user_role() {
    let mut cfg = cfg();
    cfg.hubs[0].journey.enabled = true;
    cfg.hubs[0].journey.token_file = Some("/etc/hubwatch/journey/token".into());
    // The default user role (no override) grants them.
    assert_eq!(check(&cfg, &values(VALUES)), Findings::default());
    let text = VALUES.replace(
        "  loadRoles:\n",
        "  loadRoles:\n    user:\n      scopes: [\"servers!user\"]\n",
    );
    let found = check(&cfg, &values(&text));
    assert_eq!(found.errors.len(), 1, "{found:?}");
    assert!(
        found.errors[0].contains("hub.loadRoles.user.scopes: missing `access:servers!user`"),
        "{found:?}"
    );
    let with_self = VALUES.replace(
        "  loadRoles:\n",
        "  loadRoles:\n    user:\n      scopes: [\"self\"]\n",
    );
    assert_eq!(check(&cfg, &values(&with_self)), Findings::default());
}

#[test]
fn unreadable_or_invalid_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.yaml");
    let e = check_file(&cfg(), &missing).expect_err("missing");
    assert!(e.to_string().contains("nope.yaml"), "{e}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "hub: [unclosed").expect("write");
    let e = check_file(&cfg(), &bad).expect_err("invalid");
    assert!(e.to_string().contains("bad.yaml"), "{e}");
}
