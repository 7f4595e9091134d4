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
            "[agent]\nid = \"a\"\nmax_batch_bytes = \"1KiB\"\n[collector]\ntoken = \"x\"",
            "agent.max_batch_bytes",
        ),
        (
            "[agent]\nid = \"a\"\nmax_batch_bytes = \"1GiB\"\n[collector]\ntoken = \"x\"",
            "agent.max_batch_bytes",
        ),
        (
            "[agent]\nid = \"a\"\nspool_write_timeout = \"1ms\"\n[collector]\ntoken = \"x\"",
            "agent.spool_write_timeout",
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
        ("[storage]\nbackend = \"postgres\"", "storage.url"),
        (
            "[storage]\nbackend = \"postgres\"\nurl = \"mysql://db/x\"",
            "storage.url",
        ),
        (
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres:///x\"",
            "storage.url",
        ),
        ("[storage]\npool_size = 0", "storage.pool_size"),
        (
            "[storage]\nconnect_timeout = \"0s\"",
            "storage.connect_timeout",
        ),
        ("[storage]\nbackend = \"mongodb\"", "backend"),
    ];
    for (text, key) in cases {
        let err = load::<CollectorConfig>(text, &HashMap::new()).expect_err(text);
        assert!(err.to_string().contains(key), "{text:?}: {err}");
    }
}

#[test]
fn telemetry_keys_are_checked_by_name() {
    let bad: &[&str] = &[
        "[telemetry]\notlp_endpoint = \"localhost:4318\"",
        "[telemetry]\notlp_endpoint = \"http://\"",
        "[telemetry]\notlp_endpoint = \"http://exa mple:4318\"",
        "[telemetry]\notlp_endpoint = \"http://otel:4318/?x=1\"",
    ];
    for text in bad {
        let err = load::<CollectorConfig>(text, &HashMap::new()).expect_err(text);
        assert!(
            err.to_string().contains("telemetry.otlp_endpoint"),
            "{text:?}: {err}"
        );
    }
    let err = load::<CollectorConfig>("[telemetry]\nsample_ratio = 1.5", &HashMap::new())
        .expect_err("ratio over 1");
    assert!(err.to_string().contains("telemetry.sample_ratio"), "{err}");
    // Good values load, from the file and from the environment.
    let cfg = load::<CollectorConfig>(
        "[telemetry]\notlp_endpoint = \"https://otel.example.org:4318/base/\"",
        &env(&[("HUBWATCH_TELEMETRY__SAMPLE_RATIO", "1")]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.telemetry.otlp_endpoint.as_deref(),
        Some("https://otel.example.org:4318/base/")
    );
    assert!((cfg.telemetry.sample_ratio - 1.0).abs() < f64::EPSILON);
}

#[test]
fn a_postgres_url_with_a_password_is_never_echoed() {
    let text = "[storage]\nbackend = \"postgres\"\nurl = \"pg://u:hunter2@db/x\"";
    let err = load::<CollectorConfig>(text, &HashMap::new()).expect_err(text);
    assert!(err.to_string().contains("storage.url"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let ok = "[storage]\nbackend = \"postgres\"\nurl = \"postgres://u@db:5432/x\"";
    let cfg = load::<CollectorConfig>(ok, &HashMap::new()).expect(ok);
    assert_eq!(cfg.storage.backend, StorageBackend::Postgres);
    assert!(!cfg.storage.postgres_tls());
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

#[test]
fn kubernetes_collector_config_differs_from_the_defaults_only_where_the_manifests_need() {
    let cfg: CollectorConfig = load(
        &example("kubernetes/collector/collector.toml"),
        &HashMap::new(),
    )
    .expect("deploy/kubernetes/collector/collector.toml is valid");
    // The listener for the Service, the files of the TLS Secret's mount and
    // the store on the StatefulSet's volume (statefulset.yaml); nothing else.
    let mut want = CollectorConfig::default();
    want.server.listen = "0.0.0.0:9470".parse().expect("address");
    want.server.tls_cert = Some("/etc/hubwatch/tls/tls.crt".into());
    want.server.tls_key = Some("/etc/hubwatch/tls/tls.key".into());
    want.storage.path = "/var/lib/hubwatch/store".into();
    assert_eq!(
        cfg, want,
        "deploy/kubernetes/collector/collector.toml drifted"
    );
}

// ---- [hubs.journey] ----

fn with_hub(journey: &str) -> String {
    format!(
        "{AGENT_MIN}\n[[hubs]]\nname = \"lab\"\nurl = \"http://127.0.0.1:8000\"\n\n[hubs.journey]\n{journey}\n"
    )
}

fn agent_error(toml: &str) -> (String, String) {
    match load::<AgentConfig>(toml, &HashMap::new()) {
        Err(ConfigError::Invalid { key, reason }) => (key, reason),
        other => panic!("expected an invalid-key error, got {other:?}"),
    }
}

#[test]
fn the_journey_is_off_by_default_with_the_documented_defaults() {
    let cfg: AgentConfig = load(&with_hub(""), &HashMap::new()).expect("valid");
    let j = &cfg.hubs[0].journey;
    assert_eq!(j, &JourneyConfig::default());
    assert!(!j.enabled);
    assert_eq!(j.interval, Duration::from_secs(1800));
    assert_eq!(j.server_name, "hubwatch-journey");
    assert_eq!(j.named_server, NamedServer::Auto);
    assert_eq!(
        [
            j.login_timeout,
            j.spawn_timeout,
            j.kernel_timeout,
            j.execute_timeout,
            j.stop_timeout
        ],
        [30, 300, 60, 60, 120].map(Duration::from_secs)
    );
}

#[test]
fn journey_keys_parse_and_errors_name_the_key() {
    let cfg: AgentConfig = load(
        &with_hub(
            "enabled = true\ntoken_file = \"/t\"\nnamed_server = \"never\"\n\
             user_options = { profile = \"small\", gpu = 1 }\nkernel = \"python3\"\n\
             code = \"import numpy\"\nspawn_timeout = \"10m\"",
        ),
        &HashMap::new(),
    )
    .expect("valid");
    let j = &cfg.hubs[0].journey;
    assert_eq!(j.named_server, NamedServer::Never);
    assert_eq!(
        serde_json::Value::Object(j.user_options.clone()),
        serde_json::json!({"profile": "small", "gpu": 1})
    );
    assert_eq!(j.spawn_timeout, Duration::from_secs(600));
    assert_eq!(j.code.as_deref(), Some("import numpy"));

    assert_eq!(
        agent_error(&with_hub("enabled = true")).0,
        "hubs[0].journey.token_file"
    );
    assert_eq!(
        agent_error(&with_hub("server_name = \"a/b\"")).0,
        "hubs[0].journey.server_name"
    );
    assert_eq!(
        agent_error(&with_hub("kernel = \"py 3\"")).0,
        "hubs[0].journey.kernel"
    );
    assert_eq!(
        agent_error(&with_hub("stop_timeout = \"0s\"")).0,
        "hubs[0].journey.stop_timeout"
    );
    assert!(load::<AgentConfig>(&with_hub("colour = 1"), &HashMap::new()).is_err());
    assert!(load::<AgentConfig>(&with_hub("named_server = \"maybe\""), &HashMap::new()).is_err());
}

#[test]
fn the_commented_journey_example_is_the_defaults() {
    let text = example("agent.example.toml");
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "# [hubs.journey]")
        .skip(1)
        .take_while(|l| l.starts_with("# ") && !l.starts_with("# ["))
        .map(|l| l.trim_start_matches("# "))
        .collect();
    assert!(block.len() > 10, "no [hubs.journey] block in the example");
    let cfg: AgentConfig = load(&with_hub(&block.join("\n")), &HashMap::new()).expect("valid");
    let mut want = JourneyConfig {
        token_file: Some("/etc/hubwatch/journey-token".into()),
        code: Some("import numpy".into()),
        ..JourneyConfig::default()
    };
    want.enabled = false;
    assert_eq!(
        cfg.hubs[0].journey, want,
        "the [hubs.journey] example drifted"
    );
}

// ---- [[tiers]] ----

fn tier_error(toml: &str) -> (String, String) {
    match load::<CollectorConfig>(toml, &HashMap::new()) {
        Err(ConfigError::Invalid { key, reason }) => (key, reason),
        other => panic!("expected an invalid-key error, got {other:?}"),
    }
}

#[test]
fn builtin_tiers_have_the_suggested_defaults() {
    let cfg = CollectorConfig::default();
    let starter = cfg.tier("starter").expect("starter");
    let member = cfg.tier("member").expect("member");
    let premier = cfg.tier("premier").expect("premier");
    assert_eq!(
        [
            starter.availability_target,
            starter.spawn_success_target,
            starter.spawn_latency_target
        ],
        [0.99, 0.95, 0.90]
    );
    assert_eq!(
        [
            member.availability_target,
            member.spawn_success_target,
            member.spawn_latency_target
        ],
        [0.995, 0.98, 0.95]
    );
    assert_eq!(
        [
            premier.availability_target,
            premier.spawn_success_target,
            premier.spawn_latency_target
        ],
        [0.999, 0.99, 0.99]
    );
    assert!(!starter.page_on_fast_burn);
    assert!(member.page_on_fast_burn && premier.page_on_fast_burn);
    for t in [&starter, &member, &premier] {
        assert_eq!(t.window, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(t.report_period, ReportPeriod::CalendarMonth);
    }
}

#[test]
fn tiers_override_a_builtin_and_add_new_ones() {
    let cfg: CollectorConfig = load(
        r#"
        [[tiers]]
        name = "premier"
        availability_target = 0.9995
        window = "28days"
        [[tiers]]
        name = "enterprise"
        spawn_success_target = 0.999
        report_period = "rolling"
        [[members]]
        id = "big"
        tier = "enterprise"
        "#,
        &HashMap::new(),
    )
    .expect("valid");
    let premier = cfg.tier("premier").expect("premier");
    assert_eq!(premier.availability_target, 0.9995);
    assert_eq!(
        premier.spawn_success_target, 0.99,
        "unset keys keep the built-in"
    );
    assert_eq!(premier.window, Duration::from_secs(28 * 24 * 3600));
    let enterprise = cfg.tier("enterprise").expect("new tier");
    assert_eq!(enterprise.spawn_success_target, 0.999);
    assert_eq!(
        enterprise.availability_target, 0.995,
        "new tiers start from member"
    );
    assert_eq!(enterprise.report_period, ReportPeriod::Rolling);
    assert_eq!(
        cfg.tier_names(),
        ["starter", "member", "premier", "enterprise"]
    );
}

#[test]
fn unknown_tier_on_a_member_names_the_key_and_the_known_tiers() {
    let (key, reason) =
        tier_error("[[tiers]]\nname = \"gold\"\n[[members]]\nid = \"m\"\ntier = \"platinum\"");
    assert_eq!(key, "members[0].tier");
    assert!(
        reason.contains("platinum") && reason.contains("gold"),
        "{reason}"
    );
}

#[test]
fn targets_outside_zero_one_are_refused() {
    for bad in ["1.0", "0.0", "99.5", "-0.5", "nan"] {
        let (key, reason) = tier_error(&format!(
            "[[tiers]]\nname = \"member\"\nspawn_success_target = {bad}"
        ));
        assert_eq!(key, "tiers[0].spawn_success_target", "{bad}");
        assert!(reason.contains("between 0 and 1"), "{reason}");
    }
}

#[test]
fn builtin_tiers_have_the_documented_journey_objectives() {
    let cfg = CollectorConfig::default();
    let get = |name: &str| {
        let t = cfg.tier(name).expect("built-in tier");
        (
            t.journey_target,
            t.journey_max_duration,
            t.journey_page_after_failures,
        )
    };
    let minutes = |m: u64| Duration::from_secs(m * 60);
    assert_eq!(get("starter"), (0.90, minutes(10), 0));
    assert_eq!(get("member"), (0.95, minutes(6), 0));
    assert_eq!(get("premier"), (0.98, minutes(4), 2));
    assert_eq!(SloKind::Journey.as_str(), "journey");
}

#[test]
fn journey_keys_override_a_tier_and_bad_values_name_the_key() {
    let cfg: CollectorConfig = load(
        "[[tiers]]\nname = \"member\"\njourney_target = 0.97\njourney_max_duration = \"8m\"\n\
         journey_page_after_failures = 3",
        &HashMap::new(),
    )
    .expect("valid");
    let member = cfg.tier("member").expect("member");
    assert_eq!(member.journey_target, 0.97);
    assert_eq!(member.journey_max_duration, Duration::from_secs(480));
    assert_eq!(member.journey_page_after_failures, 3);
    let (key, reason) = tier_error("[[tiers]]\nname = \"member\"\njourney_target = 1.5");
    assert_eq!(key, "tiers[0].journey_target");
    assert!(reason.contains("between 0 and 1"), "{reason}");
    for bad in ["0s", "7h"] {
        let (key, _) = tier_error(&format!(
            "[[tiers]]\nname = \"premier\"\njourney_max_duration = \"{bad}\""
        ));
        assert_eq!(key, "tiers[0].journey_max_duration", "{bad}");
    }
    // 14.4 x (1 - 0.9) >= 1: a paging tier's journey page could never fire.
    let (key, reason) = tier_error("[[tiers]]\nname = \"gold\"\njourney_target = 0.9");
    assert_eq!(key, "tiers[0].journey_target");
    assert!(reason.contains("journey"), "{reason}");
}

#[test]
fn windows_shorter_than_the_longest_alert_window_are_refused() {
    let (key, reason) = tier_error("[[tiers]]\nname = \"premier\"\nwindow = \"2days\"");
    assert_eq!(key, "tiers[0].window");
    assert!(reason.contains("3days"), "{reason}");
    let cfg: CollectorConfig = load(
        "[[tiers]]\nname = \"premier\"\nwindow = \"3days\"",
        &HashMap::new(),
    )
    .expect("3d is enough");
    assert_eq!(
        cfg.tier("premier").map(|t| t.window),
        Some(LONGEST_ALERT_WINDOW)
    );
}

#[test]
fn a_page_threshold_that_could_never_fire_names_tier_and_objective() {
    // 14.4 x (1 - 0.93) = 1.008: even a total outage burns slower than 14.4.
    let (key, reason) = tier_error("[[tiers]]\nname = \"gold\"\navailability_target = 0.93");
    assert_eq!(key, "tiers[0].availability_target");
    assert!(
        reason.contains("\"gold\"") && reason.contains("availability"),
        "{reason}"
    );
    // The starter built-in (spawn latency 0.90) is valid only because it does not page.
    let (key, reason) = tier_error("[[tiers]]\nname = \"starter\"\npage_on_fast_burn = true");
    assert_eq!(key, "tiers[0].page_on_fast_burn");
    assert!(reason.contains("spawn_latency"), "{reason}");
    load::<CollectorConfig>(
        "[[tiers]]\nname = \"gold\"\navailability_target = 0.94",
        &HashMap::new(),
    )
    .expect("14.4 x 0.06 < 1 can fire");
}

#[test]
fn duplicate_tier_names_are_refused() {
    let (key, _) = tier_error("[[tiers]]\nname = \"gold\"\n[[tiers]]\nname = \"gold\"");
    assert_eq!(key, "tiers[1].name");
}

#[test]
fn alerting_checks_name_their_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[alerting]\nevaluation_interval = \"0s\"",
            "alerting.evaluation_interval",
        ),
        (
            "[alerting]\nresend_interval = \"1m\"\nresolved_retention = \"30s\"",
            "alerting.resolved_retention",
        ),
        (
            "[alerting]\nexternal_url = \"hubwatch.example.org\"",
            "alerting.external_url",
        ),
        (
            "[alerting]\noutside_probe_timeout = \"0s\"",
            "alerting.outside_probe_timeout",
        ),
    ];
    for (text, key) in cases {
        let err = load::<CollectorConfig>(text, &HashMap::new()).expect_err(text);
        assert!(err.to_string().contains(key), "{text:?}: {err}");
    }
    let env = env(&[("HUBWATCH_ALERTING__EVALUATION_INTERVAL", "2s")]);
    let cfg: CollectorConfig = load("", &env).expect("valid");
    assert_eq!(cfg.alerting.evaluation_interval, Duration::from_secs(2));
}

#[test]
fn sli_retention_must_cover_every_tier_window() {
    let err = load::<CollectorConfig>("[storage]\nsli_retention = \"10days\"", &HashMap::new())
        .expect_err("10 days is shorter than the 30-day tier windows");
    assert!(err.to_string().contains("storage.sli_retention"), "{err}");
}

#[test]
fn a_status_page_is_public_unless_made_private_and_a_bad_value_names_its_key() {
    let member = |extra: &str| format!("[[members]]\nid = \"leap\"\ntier = \"premier\"\n{extra}");
    let cfg: CollectorConfig = load(&member(""), &HashMap::new()).expect("valid");
    assert!(!cfg.members[0].status_page_private());
    let cfg: CollectorConfig =
        load(&member("status_page = \"private\"\n"), &HashMap::new()).expect("valid");
    assert!(cfg.members[0].status_page_private());
    let err = load::<CollectorConfig>(&member("status_page = \"secret\"\n"), &HashMap::new())
        .expect_err("only public or private");
    assert!(err.to_string().contains("members[0].status_page"), "{err}");
}

// ---- cost model: [[clusters]], [[costs]], [[cost_pools]] ----

const COST_MEMBERS: &str = r#"
[[members]]
id = "leap"
tier = "premier"
[[members.hubs]]
name = "prod"
[[members]]
id = "cryo"
tier = "member"
[[members.hubs]]
name = "staging"
"#;

fn cost_cfg(extra: &str) -> Result<CollectorConfig, ConfigError> {
    load::<CollectorConfig>(&format!("{COST_MEMBERS}{extra}"), &HashMap::new())
}

fn cost_error(extra: &str) -> (String, String) {
    match cost_cfg(extra) {
        Err(ConfigError::Invalid { key, reason }) => (key, reason),
        other => panic!("expected an invalid-key error, got {other:?}"),
    }
}

const GOOD_MODEL: &str = r#"
[[clusters]]
id = "shared-gke"
kind = "shared"
hubs = ["leap/prod", "cryo/staging"]
memory_weight = 3
[[clusters]]
id = "leap-aws"
kind = "dedicated"
member = "leap"
[[costs]]
cluster = "shared-gke"
period = "2026-11"
amount = "1234.56"
[[cost_pools]]
name = "operations"
amount = "20000"
split = "even"
[[cost_pools]]
name = "rtc"
amount = "5000.5"
split = "funding"
shares = [{ member = "leap", fraction = "0.6" }, { member = "cryo", fraction = "0.4" }]
"#;

#[test]
fn a_cost_model_parses_with_defaults() {
    let cfg = cost_cfg(GOOD_MODEL).expect("valid model");
    assert_eq!(cfg.currency, "USD");
    assert_eq!(cfg.clusters.len(), 2);
    assert_eq!(cfg.clusters[0].kind, ClusterKind::Shared);
    assert_eq!(
        (
            cfg.clusters[0].cpu_weight,
            cfg.clusters[0].memory_weight,
            cfg.clusters[0].storage_weight
        ),
        (1, 3, 1)
    );
    assert_eq!(cfg.clusters[1].member.as_deref(), Some("leap"));
    assert_eq!(cfg.cost_pools[1].split, PoolSplit::Funding);
    assert_eq!(cfg.cost_pools[1].shares[1].fraction.as_deref(), Some("0.4"));
}

#[test]
fn money_parses_exactly_to_micros() {
    assert_eq!(parse_money("1234.56"), Ok(1_234_560_000));
    assert_eq!(parse_money("0"), Ok(0));
    assert_eq!(parse_money("0.000001"), Ok(1));
    assert_eq!(parse_money("9223372036854.775807"), Ok(i64::MAX as u64));
    // 0.1 + 0.2 style inputs stay exact: no float ever sees them.
    assert_eq!(parse_money("0.3"), Ok(300_000));
    for bad in [
        "-1",
        "1e3",
        "",
        ".5",
        "5.",
        "1.0000001",
        "1,5",
        "9223372036854.775808",
        " 1",
    ] {
        assert!(parse_money(bad).is_err(), "{bad:?} should be refused");
    }
    assert_eq!(parse_fraction("0.25"), Ok(250_000_000));
    assert_eq!(parse_fraction("1"), Ok(FRACTION_SCALE));
    assert!(parse_fraction("0").is_err());
    assert!(parse_fraction("1.000000001").is_err());
}

#[test]
fn periods_parse_as_calendar_months() {
    assert_eq!(
        Period::parse("2026-11"),
        Ok(Period {
            year: 2026,
            month: 11
        })
    );
    assert_eq!(
        Period::parse("2026-01").map(|p| p.to_string()),
        Ok("2026-01".into())
    );
    for bad in [
        "2026-13",
        "2026-00",
        "2026-1",
        "26-11",
        "2026/11",
        "2026-11-01",
        "abcd-ef",
    ] {
        assert!(Period::parse(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn cost_model_errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[clusters]]\nid = \"a\"\nkind = \"dedicated\"\nmember = \"nobody\"\n",
            "clusters[0].member",
            "unknown member \"nobody\"",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"dedicated\"\n",
            "clusters[0].member",
            "must name the member",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"shared\"\nmember = \"leap\"\n",
            "clusters[0].member",
            "only a dedicated cluster",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"shared\"\nhubs = [\"leap/nope\"]\n",
            "clusters[0].hubs[0]",
            "has no hub \"nope\"",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"shared\"\nhubs = [\"ghost/prod\"]\n",
            "clusters[0].hubs[0]",
            "unknown member \"ghost\"",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"shared\"\nhubs = [\"leap/prod\"]\n\
             [[clusters]]\nid = \"b\"\nkind = \"shared\"\nhubs = [\"cryo/staging\", \"leap/prod\"]\n",
            "clusters[1].hubs[1]",
            "already assigned to cluster \"a\"",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"dedicated\"\nmember = \"leap\"\nhubs = [\"cryo/staging\"]\n",
            "clusters[0].hubs[0]",
            "serves \"leap\" only",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"shared\"\ncpu_weight = 0\nmemory_weight = 0\nstorage_weight = 0\n",
            "clusters[0].cpu_weight",
            "all 0",
        ),
        (
            "[[costs]]\ncluster = \"nope\"\nperiod = \"2026-11\"\namount = \"1\"\n",
            "costs[0].cluster",
            "unknown cluster \"nope\"",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"shared\"\n[[costs]]\ncluster = \"a\"\nperiod = \"2026-13\"\namount = \"1\"\n",
            "costs[0].period",
            "YYYY-MM",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"shared\"\n[[costs]]\ncluster = \"a\"\nperiod = \"2026-11\"\namount = \"-5\"\n",
            "costs[0].amount",
            "negative",
        ),
        (
            "[[clusters]]\nid = \"a\"\nkind = \"shared\"\n\
             [[costs]]\ncluster = \"a\"\nperiod = \"2026-11\"\namount = \"1\"\n\
             [[costs]]\ncluster = \"a\"\nperiod = \"2026-11\"\namount = \"2\"\n",
            "costs[1].period",
            "already has a cost for 2026-11",
        ),
        (
            "[[cost_pools]]\nname = \"ops\"\namount = \"1.5.0\"\nsplit = \"even\"\n",
            "cost_pools[0].amount",
            "not a decimal",
        ),
        (
            "[[cost_pools]]\nname = \"p\"\namount = \"10\"\nsplit = \"funding\"\n\
             shares = [{ member = \"leap\", fraction = \"0.6\" }, { member = \"cryo\", fraction = \"0.3\" }]\n",
            "cost_pools[0].shares",
            "sum to 0.900000000, not 1",
        ),
        (
            "[[cost_pools]]\nname = \"p\"\namount = \"10\"\nsplit = \"funding\"\n\
             shares = [{ member = \"leap\", fraction = \"0.5\" }, { member = \"ghost\", fraction = \"0.5\" }]\n",
            "cost_pools[0].shares[1].member",
            "unknown member \"ghost\"",
        ),
        (
            "[[cost_pools]]\nname = \"p\"\namount = \"10\"\nsplit = \"weight\"\nshares = [{ member = \"leap\" }]\n",
            "cost_pools[0].shares[0].weight",
            "needs a weight",
        ),
        (
            "[[cost_pools]]\nname = \"p\"\namount = \"10\"\nsplit = \"weight\"\n",
            "cost_pools[0].shares",
            "lists no members",
        ),
    ];
    // A top-level key must come before the first table.
    match load::<CollectorConfig>(
        &format!("currency = \"usd\"\n{COST_MEMBERS}"),
        &HashMap::new(),
    ) {
        Err(ConfigError::Invalid { key, reason }) => {
            assert_eq!(key, "currency");
            assert!(reason.contains("ISO 4217"), "{reason}");
        }
        other => panic!("expected an invalid currency, got {other:?}"),
    }
    for (extra, want_key, want_reason) in cases {
        let (key, reason) = cost_error(extra);
        assert_eq!(&key, want_key, "for {extra}");
        assert!(
            reason.contains(want_reason),
            "for {extra}: reason {reason:?} should contain {want_reason:?}"
        );
    }
}

#[test]
fn the_commented_cost_model_example_is_valid() {
    // Uncomment the example's cost-model keys and tables (not its prose) and
    // load them with the members they name, so the example cannot drift into
    // something check-config refuses.
    let text = example("collector.example.toml");
    let start = text
        .find("# Cost model (example)")
        .expect("the example documents the cost model");
    let body: String = text[start..]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.starts_with("[[")
                || l.split_once(" = ").is_some_and(|(k, _)| {
                    k.trim()
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_')
                })
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = cost_cfg(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert_eq!(cfg.clusters.len(), 2);
    assert_eq!(cfg.costs.len(), 1);
    assert_eq!(cfg.cost_pools.len(), 2);
}

#[test]
fn period_bounds_are_utc_months() {
    let p = |s: &str| Period::parse(s).unwrap_or_else(|e| panic!("{e}"));
    // 2026-11-01T00:00:00Z and 2026-12-01T00:00:00Z, from `date -u -d ... +%s`.
    assert_eq!(p("2026-11").start_ms(), 1_793_491_200_000);
    assert_eq!(p("2026-11").end_ms(), 1_796_083_200_000);
    assert_eq!(p("2026-12").end_ms(), p("2027-01").start_ms());
    assert_eq!(p("1970-01").start_ms(), 0);
    // 2024 is a leap year: February has 29 days.
    assert_eq!(
        p("2024-02").end_ms() - p("2024-02").start_ms(),
        29 * 86_400_000
    );
    assert_eq!(p("2026-01").prev(), p("2025-12"));
    assert_eq!(p("2025-12").next(), p("2026-01"));
    for s in ["1970-01", "2024-02", "2026-11", "2026-12", "9999-12"] {
        let q = p(s);
        assert_eq!(Period::containing(q.start_ms()), Some(q));
        assert_eq!(Period::containing(q.end_ms() - 1), Some(q));
    }
    assert_eq!(Period::containing(-1), None);
}

#[test]
fn cost_close_grace_and_billing_accounts_are_checked_by_key() {
    let cfg = cost_cfg(GOOD_MODEL).expect("valid model");
    assert_eq!(cfg.cost.close_grace, Duration::from_secs(48 * 3600));
    let cfg = cost_cfg("[cost]\nclose_grace = \"72h\"\n").expect("valid");
    assert_eq!(cfg.cost.close_grace, Duration::from_secs(72 * 3600));
    let (key, reason) = cost_error("[cost]\nclose_grace = \"0s\"\n");
    assert_eq!(
        (key.as_str(), reason.as_str()),
        ("cost.close_grace", "must be greater than zero")
    );
    // One SubAccountId names one cluster; an unset billing_account is the id.
    let (key, reason) = cost_error(
        "[[clusters]]\nid = \"a\"\nkind = \"shared\"\nbilling_account = \"b\"\n\
         [[clusters]]\nid = \"b\"\nkind = \"shared\"\n",
    );
    assert_eq!(key, "clusters[1].billing_account");
    assert!(reason.contains("already maps to cluster \"a\""), "{reason}");
}

#[test]
fn usage_keys_are_validated_naming_the_key() {
    let parse = |toml: &str| -> Result<CollectorConfig, String> {
        load::<CollectorConfig>(toml, &HashMap::new()).map_err(|e| e.to_string())
    };
    let ok = parse("[usage]\nmax_gap = \"2s\"\npoints_retention = \"3days\"\n").expect("valid");
    assert_eq!(ok.usage.max_gap, Duration::from_secs(2));
    assert_eq!(
        CollectorConfig::default().usage.max_gap,
        Duration::from_secs(30)
    );
    for (toml, key) in [
        ("[usage]\nmax_gap = \"0s\"\n", "usage.max_gap"),
        (
            "[usage]\nflush_interval = \"10min\"\n",
            "usage.flush_interval",
        ),
        ("[usage]\nmax_gap = \"2h\"\n", "usage.max_gap"),
        (
            "[usage]\npoints_retention = \"48h\"\n",
            "usage.points_retention",
        ),
    ] {
        let err = parse(toml).expect_err(toml);
        assert!(err.contains(key), "{toml}: {err}");
    }
}

#[test]
fn metrics_per_user_is_off_by_default_and_validated_naming_the_key() {
    assert!(!CollectorConfig::default().metrics.per_user);
    let on =
        load::<CollectorConfig>("[metrics]\nper_user = true\n", &HashMap::new()).expect("valid");
    assert!(on.metrics.per_user);
    let env = HashMap::from([("HUBWATCH_METRICS__PER_USER".to_string(), "true".to_string())]);
    assert!(
        load::<CollectorConfig>("", &env)
            .expect("valid")
            .metrics
            .per_user
    );
    // A misspelt key is refused naming it (values go through the config
    // crate's usual boolean coercion, as every other boolean key).
    let err = load::<CollectorConfig>("[metrics]\nper_users = true\n", &HashMap::new())
        .expect_err("unknown key")
        .to_string();
    assert!(err.contains("per_users"), "{err}");
}

#[test]
fn remote_write_entries_default_and_name_themselves() {
    let cfg: CollectorConfig = load(
        "[[remote_write]]\nurl = \"https://mimir.example.org:8080/api/v1/push\"\n\
         [[remote_write]]\nurl = \"http://vm:8428/api/v1/write\"\nname = \"vm\"\n\
         tenant_header = \"X-Scope-OrgID\"\nbasic_auth = { username = \"u\", password_file = \"p\" }\n\
         headers = { X-Extra = \"1\" }\nwrite_relabel = { keep_names = [\"jupyterhub_.*\"] }",
        &HashMap::new(),
    )
    .expect("valid");
    let rw = &cfg.remote_write[0];
    assert_eq!(rw.resolved_name(), "mimir.example.org_8080");
    assert_eq!(rw.max_samples_per_send, 2000);
    assert_eq!(rw.shards, 4);
    assert_eq!(rw.min_backoff, Duration::from_millis(100));
    assert_eq!(rw.max_backoff, Duration::from_secs(30));
    assert_eq!(cfg.remote_write[1].resolved_name(), "vm");
    assert_eq!(
        cfg.remote_write[1].write_relabel.keep_names,
        ["jupyterhub_.*"]
    );
}

#[test]
fn remote_write_checks_name_their_key_and_why() {
    let rw = |rest: &str| format!("[[remote_write]]\nurl = \"http://a:1/w\"\n{rest}");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "[[remote_write]]\nurl = \"http://a:1/w\"\n[[remote_write]]\nurl = \"ftp://b/w\"".into(),
            "remote_write[1].url",
            "not http(s)",
        ),
        (
            "[[remote_write]]\nurl = \"http://a:1/w\"\n[[remote_write]]\nurl = \"http://a:1/other\"".into(),
            "remote_write[1].name",
            "set a distinct name",
        ),
        (rw("shards = 0"), "remote_write[0].shards", "between 1"),
        (
            rw("max_samples_per_send = 0"),
            "remote_write[0].max_samples_per_send",
            "between 1",
        ),
        (
            rw("tls_cert_file = \"c.pem\""),
            "remote_write[0].tls_key_file",
            "together",
        ),
        (
            rw("bearer_token_file = \"t\"\nbasic_auth = { username = \"u\", password_file = \"p\" }"),
            "remote_write[0].basic_auth",
            "both",
        ),
        (
            rw("write_relabel = { drop_names = [\"ok\", \"(unclosed\"] }"),
            "remote_write[0].write_relabel.drop_names[1]",
            "not a valid regular expression",
        ),
        (
            rw("write_relabel = { keep_labels = { member = \"(unclosed\" } }"),
            "remote_write[0].write_relabel.keep_labels.member",
            "not a valid regular expression",
        ),
        (
            rw("write_relabel = { drop_labels = { \"bad-label\" = \"x\" } }"),
            "remote_write[0].write_relabel.drop_labels.bad-label",
            "not a valid label name",
        ),
        (
            rw("tenant_label = \"bad-label\""),
            "remote_write[0].tenant_label",
            "label name",
        ),
        (
            rw("headers = { Content-Type = \"text/plain\" }"),
            "remote_write[0].headers.Content-Type",
            "cannot be overridden",
        ),
        (
            rw("min_backoff = \"1s\"\nmax_backoff = \"100ms\""),
            "remote_write[0].max_backoff",
            "at least min_backoff",
        ),
        (rw("timeout = \"0s\""), "remote_write[0].timeout", "greater than zero"),
    ];
    for (text, key, why) in cases {
        let err = load::<CollectorConfig>(&text, &HashMap::new()).expect_err(&text);
        let err = err.to_string();
        assert!(err.contains(key), "{text:?}: {err}");
        assert!(err.contains(why), "{text:?}: {err}");
    }
    let missing = load::<CollectorConfig>("[[remote_write]]\nname = \"x\"", &HashMap::new())
        .expect_err("url is required");
    assert!(missing.to_string().contains("url"), "{missing}");
}

#[test]
fn remote_write_examples_are_valid() {
    let dir = format!("{}/../deploy/remote-write", env!("CARGO_MANIFEST_DIR"));
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/remote-write") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let cfg: CollectorConfig =
            load(&text, &HashMap::new()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!cfg.remote_write.is_empty(), "{}", path.display());
        files += 1;
    }
    assert_eq!(
        files, 4,
        "mimir, thanos, victoriametrics single and cluster"
    );
}

#[test]
fn status_merge_window_is_validated_naming_the_key() {
    let parse = |toml: &str| -> Result<CollectorConfig, String> {
        load::<CollectorConfig>(toml, &HashMap::new()).map_err(|e| e.to_string())
    };
    assert_eq!(
        CollectorConfig::default().status.incident_merge_window,
        Duration::from_secs(1800)
    );
    let ok = parse("[status]\nincident_merge_window = \"0s\"\n").expect("valid");
    assert_eq!(ok.status.incident_merge_window, Duration::ZERO);
    let env = HashMap::from([(
        "HUBWATCH_STATUS__INCIDENT_MERGE_WINDOW".to_string(),
        "5m".to_string(),
    )]);
    let from_env: CollectorConfig = load("", &env).expect("valid");
    assert_eq!(
        from_env.status.incident_merge_window,
        Duration::from_secs(300)
    );
    let err = parse("[status]\nincident_merge_window = \"8days\"\n").expect_err("too long");
    assert!(err.contains("status.incident_merge_window"), "{err}");
}

// ---- [[maintenance]] ----

const MEMBERS: &str = r#"
[[members]]
id = "leap"
tier = "premier"
[[members.hubs]]
name = "prod"
[[members.hubs]]
name = "staging"
"#;

fn maintenance_error(window: &str) -> (String, String) {
    tier_error(&format!("{MEMBERS}\n[[maintenance]]\n{window}"))
}

#[test]
fn a_maintenance_window_converts_local_time_to_utc() {
    // Berlin is UTC+1 in January.
    let span = window_span("2026-01-10T09:00", "2026-01-10T11:30", "Europe/Berlin").expect("valid");
    assert_eq!(span.start_ms, 1_768_032_000_000); // 2026-01-10T08:00:00Z
    assert_eq!(span.end_ms - span.start_ms, 150 * 60 * 1000);
    let utc = window_span("2026-01-10T08:00:00", "2026-01-10T09:00:00", "UTC").expect("valid");
    assert_eq!(utc.start_ms, span.start_ms);
}

#[test]
fn a_window_across_spring_forward_is_one_hour_shorter() {
    // 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST.
    let span = window_span("2026-03-29T01:00", "2026-03-29T04:00", "Europe/Berlin").expect("valid");
    assert_eq!(span.start_ms, 1_774_742_400_000); // 00:00Z
    assert_eq!(span.end_ms - span.start_ms, 2 * 3600 * 1000);
    // A time in the gap moves forward by the gap: 02:30 local is 01:30Z.
    let gap = local_to_utc_ms("start", "2026-03-29T02:30", "Europe/Berlin").expect("valid");
    assert_eq!(gap, 1_774_742_400_000 + 90 * 60 * 1000);
}

#[test]
fn a_window_across_fall_back_is_one_hour_longer_and_a_fold_takes_summer_time() {
    // 2026-10-25 in Berlin: 03:00 CEST falls back to 02:00 CET.
    let span = window_span("2026-10-25T01:00", "2026-10-25T04:00", "Europe/Berlin").expect("valid");
    assert_eq!(span.end_ms - span.start_ms, 4 * 3600 * 1000);
    // 02:30 happens twice; the first (CEST, 00:30Z) is taken.
    let fold = local_to_utc_ms("end", "2026-10-25T02:30", "Europe/Berlin").expect("valid");
    assert_eq!(fold, span.start_ms + 90 * 60 * 1000);
    // New York (other rules, other date): 2026-03-08 02:00 EST → 03:00 EDT.
    let ny =
        window_span("2026-03-08T00:00", "2026-03-08T06:00", "America/New_York").expect("valid");
    assert_eq!(ny.end_ms - ny.start_ms, 5 * 3600 * 1000);
}

#[test]
fn utc_times_show_in_the_windows_zone_with_its_abbreviation() {
    // 2026-01-10T08:00:00Z is 09:00 in Berlin (CET), 03:00 in New York (EST).
    let at = 1_768_032_000_000;
    assert_eq!(
        utc_ms_to_local(at, "Europe/Berlin").as_deref(),
        Ok("2026-01-10 09:00 CET")
    );
    assert_eq!(
        utc_ms_to_local(at, "America/New_York").as_deref(),
        Ok("2026-01-10 03:00 EST")
    );
    assert_eq!(
        utc_ms_to_local(at, "UTC").as_deref(),
        Ok("2026-01-10 08:00 UTC")
    );
    // The round trip through local_to_utc_ms, in summer time.
    let summer = local_to_utc_ms("start", "2026-07-01T22:15", "Europe/Berlin").expect("valid");
    assert_eq!(
        utc_ms_to_local(summer, "Europe/Berlin").as_deref(),
        Ok("2026-07-01 22:15 CEST")
    );
    assert!(matches!(
        utc_ms_to_local(at, "Mars/Olympus"),
        Err(WindowTimeError::UnknownTimezone(_))
    ));
}

#[test]
fn bad_maintenance_windows_name_their_key() {
    let (key, reason) = maintenance_error(
        "member = \"nope\"\nstart = \"2026-01-10T09:00\"\nend = \"2026-01-10T10:00\"",
    );
    assert_eq!(key, "maintenance[0].member");
    assert!(reason.contains("nope"), "{reason}");
    let (key, _) = maintenance_error(
        "member = \"leap\"\nhubs = [\"prod\", \"gone\"]\nstart = \"2026-01-10T09:00\"\nend = \"2026-01-10T10:00\"",
    );
    assert_eq!(key, "maintenance[0].hubs[1]");
    let (key, reason) = maintenance_error(
        "member = \"leap\"\nstart = \"2026-01-10T09:00\"\nend = \"2026-01-10T10:00\"\ntimezone = \"Mars/Olympus\"",
    );
    assert_eq!(key, "maintenance[0].timezone");
    assert!(reason.contains("Mars/Olympus"), "{reason}");
    let (key, _) = maintenance_error(
        "member = \"leap\"\nstart = \"2026-01-10T11:00\"\nend = \"2026-01-10T10:00\"",
    );
    assert_eq!(key, "maintenance[0].end");
    let (key, _) =
        maintenance_error("member = \"leap\"\nstart = \"tomorrow\"\nend = \"2026-01-10T10:00\"");
    assert_eq!(key, "maintenance[0].start");
}

#[test]
fn a_good_maintenance_window_loads_and_tiers_exclude_after_a_day_of_notice_by_default() {
    let cfg: CollectorConfig = load(
        &format!(
            "{MEMBERS}\n[[maintenance]]\nmember = \"leap\"\nhubs = [\"prod\"]\n\
             start = \"2026-01-10T09:00\"\nend = \"2026-01-10T10:00\"\n\
             timezone = \"Europe/Berlin\"\nnote = \"upgrade\"\n\
             [[tiers]]\nname = \"starter\"\nmaintenance = \"count\"\nmaintenance_notice = \"1h\""
        ),
        &HashMap::new(),
    )
    .expect("valid");
    assert_eq!(cfg.maintenance.len(), 1);
    assert_eq!(cfg.maintenance[0].note, "upgrade");
    let premier = cfg.tier("premier").expect("premier");
    assert_eq!(premier.maintenance, MaintenancePolicy::Exclude);
    assert_eq!(premier.maintenance_notice, DEFAULT_MAINTENANCE_NOTICE);
    let starter = cfg.tier("starter").expect("starter");
    assert_eq!(starter.maintenance, MaintenancePolicy::Count);
    assert_eq!(starter.maintenance_notice, Duration::from_secs(3600));
    let (key, _) = tier_error("[[tiers]]\nname = \"member\"\nmaintenance_notice = \"90days\"");
    assert_eq!(key, "tiers[0].maintenance_notice");
}

#[test]
fn status_webhooks_parse_and_bad_ones_name_their_key() {
    let parse = |toml: &str| -> Result<CollectorConfig, String> {
        load::<CollectorConfig>(toml, &HashMap::new()).map_err(|e| e.to_string())
    };
    assert!(CollectorConfig::default().status.webhooks.is_empty());
    let ok = parse(
        "[[status.webhooks]]\nurl = \"https://hooks.example.org/x\"\nmembers = [\"leap\"]\nsecret_file = \"/k\"\n\
         [[status.webhooks]]\nurl = \"http://127.0.0.1:9000/\"\nsecret_file = \"/k2\"\n",
    )
    .expect("valid");
    assert_eq!(ok.status.webhooks.len(), 2);
    assert_eq!(ok.status.webhooks[0].members, ["leap"]);
    assert!(
        ok.status.webhooks[1].members.is_empty(),
        "absent: every member"
    );
    let err = parse(
        "[[status.webhooks]]\nurl = \"http://a/\"\nsecret_file = \"/k\"\n\
         [[status.webhooks]]\nurl = \"ftp://nope\"\nsecret_file = \"/k\"\n",
    )
    .expect_err("not http");
    assert!(err.contains("status.webhooks[1].url"), "{err}");
    let err = parse("[[status.webhooks]]\nurl = \"http://a/\"\nsecret_file = \"\"\n")
        .expect_err("no secret");
    assert!(err.contains("status.webhooks[0].secret_file"), "{err}");
    let err = parse("[[status.webhooks]]\nurl = \"http://a/\"\n").expect_err("secret required");
    assert!(err.contains("secret_file"), "{err}");
}

#[test]
fn collector_urls_replace_url_and_are_checked_like_it() {
    let base = "[agent]\nid = \"a\"\n[collector]\ntoken = \"x\"\n";
    // Neither: the default; url alone: that one; urls: those, in order.
    let cfg: AgentConfig = load(base, &HashMap::new()).expect("valid");
    assert_eq!(cfg.collector.endpoints(), vec![DEFAULT_COLLECTOR_URL]);
    assert_eq!(cfg.collector.failover_after, 3);
    assert_eq!(cfg.collector.failback_after, Duration::from_secs(300));
    let cfg: AgentConfig = load(
        &format!("{base}url = \"https://c.example.org\"\n"),
        &HashMap::new(),
    )
    .expect("valid");
    assert_eq!(cfg.collector.endpoints(), vec!["https://c.example.org"]);
    let cfg: AgentConfig = load(
        &format!(
            "{base}urls = [\"https://c1.example.org\", \"https://c2.example.org\"]\n\
             failover_after = 5\nfailback_after = \"1m\"\n"
        ),
        &HashMap::new(),
    )
    .expect("valid");
    assert_eq!(
        cfg.collector.endpoints(),
        vec!["https://c1.example.org", "https://c2.example.org"]
    );
    assert_eq!(cfg.collector.failover_after, 5);
    assert_eq!(cfg.collector.failback_after, Duration::from_secs(60));

    let cases: &[(&str, &str)] = &[
        (
            "url = \"https://c.example.org\"\nurls = [\"https://c2.example.org\"]",
            "collector.url and collector.urls are both set",
        ),
        (
            "urls = [\"https://c.example.org\", \"http://10.1.2.3:9470\"]",
            "collector.urls[1]",
        ),
        (
            "urls = [\"https://c.example.org\", \"ftp://x\"]",
            "collector.urls[1]",
        ),
        (
            "urls = [\"https://c.example.org\", \"https://c.example.org\"]",
            "listed twice",
        ),
        ("failover_after = 0", "collector.failover_after"),
        ("failback_after = \"10ms\"", "collector.failback_after"),
    ];
    for (extra, want) in cases {
        let text = format!("{base}{extra}\n");
        let err = load::<AgentConfig>(&text, &HashMap::new()).expect_err(&text);
        assert!(err.to_string().contains(want), "{text:?}: {err}");
    }
    // insecure_plaintext allows a plaintext replica off this host.
    let text = format!("{base}urls = [\"http://10.1.2.3:9470\"]\ninsecure_plaintext = true\n");
    load::<AgentConfig>(&text, &HashMap::new()).expect("valid with insecure_plaintext");
}

#[test]
fn ha_failover_timeout_defaults_to_30s_and_is_checked() {
    let cfg: CollectorConfig = load("", &HashMap::new()).expect("valid");
    assert_eq!(cfg.server.ha_failover_timeout, Duration::from_secs(30));
    let err = load::<CollectorConfig>(
        "[server]\nha_failover_timeout = \"100ms\"\n",
        &HashMap::new(),
    )
    .expect_err("too short");
    assert!(
        err.to_string().contains("server.ha_failover_timeout"),
        "{err}"
    );
}

#[test]
fn the_auth_failure_limit_defaults_to_20_refilling_every_second_and_is_checked() {
    let cfg: CollectorConfig = load("", &HashMap::new()).expect("valid");
    assert_eq!(cfg.server.auth_failures_burst, 20);
    assert_eq!(cfg.server.auth_failure_refill, Duration::from_secs(1));
    let cfg: CollectorConfig = load("[server]\nauth_failures_burst = 0\n", &HashMap::new())
        .expect("0 turns the limit off");
    assert_eq!(cfg.server.auth_failures_burst, 0);
    for (text, key) in [
        ("auth_failures_burst = 100001", "server.auth_failures_burst"),
        ("auth_failures_burst = -1", "auth_failures_burst"),
        (
            "auth_failure_refill = \"1ms\"",
            "server.auth_failure_refill",
        ),
        ("auth_failure_refill = \"2h\"", "server.auth_failure_refill"),
    ] {
        let text = format!("[server]\n{text}\n");
        let err = load::<CollectorConfig>(&text, &HashMap::new()).expect_err(&text);
        assert!(err.to_string().contains(key), "{text:?}: {err}");
    }
}

#[test]
fn byte_sizes_written_back_read_back_as_the_same_bytes() {
    use super::exact_bytes::text;
    for bytes in [
        0,
        1,
        1000,
        1024,
        65_536,
        425_762_750_464,
        (1 << 30) + 1,
        3 << 40,
        u64::MAX,
    ] {
        let written = text(ByteSize(bytes));
        assert_eq!(
            written.parse::<ByteSize>(),
            Ok(ByteSize(bytes)),
            "{bytes} written as {written}"
        );
    }
    assert_eq!(text(ByteSize::mib(512)), "512MiB");
    assert_eq!(text(ByteSize(1000)), "1000");

    // A whole config: loaded, written as TOML, loaded again: the same.
    let file = "[agent]\nid = \"leap\"\nspool_max_bytes = \"406039MiB\"\nmax_batch_bytes = \"1000000\"\n\n[collector]\ntoken_file = \"/etc/hubwatch/token\"\n";
    let env = HashMap::new();
    let cfg: AgentConfig = load(file, &env).expect("loads");
    assert_eq!(cfg.agent.spool_max_bytes, ByteSize::mib(406_039));
    let written = toml::to_string(&cfg).expect("toml");
    let again: AgentConfig = load(&written, &env).expect("reloads");
    assert_eq!(again, cfg, "{written}");
}
