use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const AGENT_MIN: &str = r#"
[agent]
id = "leap-cluster"
[collector]
url = "http://127.0.0.1:9470"
token_file = "/etc/hubwatch/token"
"#;

#[test]
fn agent_defaults_apply() {
    let cfg: AgentConfig = load(AGENT_MIN, &HashMap::new()).expect("valid");
    assert_eq!(cfg.agent.interval, Duration::from_secs(15));
    assert_eq!(cfg.agent.spool_max_bytes, ByteSize::mib(512));
    assert!(cfg.privacy.pseudonymise_users);
    assert!(cfg.host.enabled);
}

#[test]
fn env_overrides_file() {
    let cfg: AgentConfig = load(
        AGENT_MIN,
        &env(&[
            ("HUBWATCH_AGENT__INTERVAL", "2s"),
            ("HUBWATCH_COLLECTOR__TOKEN", "hwt_secret"),
            ("HUBWATCH_AGENT__SPOOL_MAX_BYTES", "1MiB"),
            ("HUBWATCH_UNRELATED", "ignored"),
        ]),
    )
    .expect("valid");
    assert_eq!(cfg.agent.interval, Duration::from_secs(2));
    assert_eq!(cfg.collector.token.as_deref(), Some("hwt_secret"));
    assert_eq!(cfg.agent.spool_max_bytes, ByteSize::mib(1));
}

#[test]
fn bad_values_name_their_key() {
    let cases: &[(&str, &str)] = &[
        ("[agent]\nid = \"\"\n[collector]\ntoken = \"x\"", "agent.id"),
        (
            "[agent]\nid = \"a\"\ninterval = \"soon\"\n[collector]\ntoken = \"x\"",
            "interval",
        ),
        (
            "[agent]\nid = \"a\"\n[collector]\nurl = \"http://10.1.2.3:9470\"\ntoken = \"x\"",
            "collector.url",
        ),
        ("[agent]\nid = \"a\"\n", "collector.token_file"),
        (
            "[agent]\nid = \"a\"\nspool_max_bytes = \"1KiB\"\n[collector]\ntoken = \"x\"",
            "agent.spool_max_bytes",
        ),
        (
            "[agent]\nid = \"a\"\nintervall = \"1s\"\n[collector]\ntoken = \"x\"",
            "intervall",
        ),
    ];
    for (text, key) in cases {
        let err = load::<AgentConfig>(text, &HashMap::new()).expect_err(text);
        assert!(err.to_string().contains(key), "{text:?}: {err}");
    }
}

#[test]
fn collector_checks_name_their_key() {
    let cases: &[(&str, &str)] = &[
        ("[server]\nlisten = \"0.0.0.0:9470\"", "server.listen"),
        ("[server]\ntls_cert = \"c.pem\"", "server.tls_key"),
        ("[server]\nlisten = \"nonsense\"", "listen"),
        (
            "[[members]]\nid = \"leap\"\ntier = \"gold\"",
            "members[0].tier",
        ),
        (
            "[[members]]\nid = \"a\"\ntier = \"starter\"\n[[members]]\nid = \"a\"\ntier = \"member\"",
            "members[1].id",
        ),
        (
            "[[alertmanagers]]\nurl = \"127.0.0.1:9093\"",
            "alertmanagers[0].url",
        ),
        ("[storage]\nraw_retention = \"5m\"", "storage.raw_retention"),
    ];
    for (text, key) in cases {
        let err = load::<CollectorConfig>(text, &HashMap::new()).expect_err(text);
        assert!(err.to_string().contains(key), "{text:?}: {err}");
    }
}

#[test]
fn plaintext_non_loopback_allowed_when_asked() {
    let cfg: CollectorConfig = load(
        "[server]\nlisten = \"0.0.0.0:9470\"\ninsecure_plaintext = true",
        &HashMap::new(),
    )
    .expect("explicitly allowed");
    assert!(cfg.server.insecure_plaintext);
}

#[test]
fn loopback_url_detection() {
    assert!(url_host_is_loopback("http://127.0.0.1:9470"));
    assert!(url_host_is_loopback("http://localhost/x"));
    assert!(url_host_is_loopback("http://[::1]:80"));
    assert!(!url_host_is_loopback("http://10.0.0.1"));
    assert!(!url_host_is_loopback("http://example.org"));
}

fn example(name: &str) -> String {
    let path = format!("{}/../deploy/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn collector_example_matches_defaults() {
    let cfg: CollectorConfig = load(&example("collector.example.toml"), &HashMap::new())
        .expect("the example config is valid");
    assert_eq!(
        cfg,
        CollectorConfig::default(),
        "deploy/collector.example.toml drifted"
    );
}

#[test]
fn agent_example_matches_defaults() {
    let cfg: AgentConfig =
        load(&example("agent.example.toml"), &HashMap::new()).expect("the example config is valid");
    // The two required values are examples; everything else must be the default.
    let mut want = AgentConfig::default();
    want.agent.id = "leap-cluster".into();
    want.collector.token_file = Some("/etc/hubwatch/token".into());
    assert_eq!(cfg, want, "deploy/agent.example.toml drifted");
}
