use super::*;
use clap::CommandFactory;

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("collector.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = {:?}\n\n\
         [[members]]\nid = \"leap\"\nname = \"LEAP\"\ntier = \"premier\"\n{extra}",
        dir.join("data")
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn parses_every_subcommand_as_documented() {
    let cli = Cli::try_parse_from([
        "hubwatch-collector",
        "--log-format",
        "json",
        "token",
        "create",
        "--config",
        "c.toml",
        "--member",
        "leap",
        "--agent",
        "a1",
    ])
    .unwrap();
    assert_eq!(cli.log_format, LogFormat::Json);
    assert!(matches!(
        cli.command,
        Command::Token(TokenCommand::Create { ref member, ref agent, .. }) if member == "leap" && agent == "a1"
    ));
    for args in [
        &["serve", "--config", "c.toml"][..],
        &["check-config", "--config", "c.toml", "--log-level", "debug"],
        &["token", "revoke", "--config", "c.toml", "--agent", "a1"],
        &["backup", "--config", "c.toml", "--out", "b.db"],
        &["restore", "--config", "c.toml", "--from", "b.db"],
        &["incident", "list", "--config", "c.toml", "--member", "leap"],
        &["incident", "show", "--config", "c.toml", "--id", "3"],
        &[
            "incident",
            "open",
            "--config",
            "c.toml",
            "--member",
            "leap",
            "--hub",
            "prod",
            "--title",
            "Down",
            "--message",
            "Looking",
        ],
        &[
            "incident",
            "update",
            "--config",
            "c.toml",
            "--id",
            "3",
            "--state",
            "identified",
            "--message",
            "Disk",
        ],
        &["incident", "resolve", "--config", "c.toml", "--id", "3"],
    ] {
        let mut argv = vec!["hubwatch-collector"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap();
    }
    assert!(Cli::try_parse_from(["hubwatch-collector", "serve"]).is_err());
    // An id is a number; an update needs its state and message.
    for args in [
        &["incident", "show", "--config", "c.toml", "--id", "x"][..],
        &[
            "incident",
            "update",
            "--config",
            "c.toml",
            "--id",
            "3",
            "--message",
            "m",
        ],
    ] {
        let mut argv = vec!["hubwatch-collector"];
        argv.extend_from_slice(args);
        assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
    }
}

#[test]
fn missing_config_file_names_the_path_and_exits_2() {
    let err = load_config(Path::new("/nonexistent/hubwatch.toml")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/hubwatch.toml"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn broken_config_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"10.1.2.3:9470\"\n").unwrap();
    let err = load_config(&path).unwrap_err();
    assert!(err.to_string().contains("server.listen"), "{err}");
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn check_config_summary_names_the_essentials() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(&write_config(dir.path(), "")).unwrap();
    let text = summary(&cfg);
    assert!(text.contains("listen: 127.0.0.1:0"), "{text}");
    assert!(text.contains("tls: off"), "{text}");
    assert!(text.contains("mtls: off"), "{text}");
    assert!(text.contains("members: 1"), "{text}");
    assert!(text.contains(&dir.path().join("data").display().to_string()));
}

#[test]
fn token_create_then_revoke_and_revoke_without_a_live_token_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(&write_config(dir.path(), "")).unwrap();
    let token = create_token(&cfg, "leap", "a1").unwrap();
    assert!(token.len() >= 64, "256-bit token expected: {}", token.len());

    // Stored hashed, never in clear.
    let store = Store::open(&cfg.storage).unwrap();
    let rows = store.tokens().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].token_sha256, crate::store::hash_token(&token));
    drop(store);

    // A member missing from [[members]] is accepted (the config may lag).
    create_token(&cfg, "not-configured", "a2").unwrap();
    assert!(matches!(
        create_token(&cfg, "leap", "bad name"),
        Err(CliError::InvalidName { what: "agent", .. })
    ));
    // Nobody can send as the collector's own derived series.
    assert!(matches!(
        create_token(&cfg, "leap", crate::store::DERIVED_AGENT),
        Err(CliError::InvalidName { what: "agent", .. })
    ));

    revoke_token(&cfg, "a1").unwrap();
    let err = revoke_token(&cfg, "a1").unwrap_err();
    assert!(matches!(err, CliError::NoLiveToken(ref a) if a == "a1"));
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("a1"));
}

#[test]
fn costs_import_stores_a_focus_bill_once_and_refuses_bad_files_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[clusters]]\nid = \"leap-aws\"\nkind = \"dedicated\"\nmember = \"leap\"\nbilling_account = \"1234\"\n",
    );
    let cli = Cli::try_parse_from([
        "hubwatch-collector",
        "costs",
        "import",
        "--config",
        config.to_str().unwrap(),
        "--file",
        "bill.csv",
    ])
    .unwrap();
    assert!(matches!(
        cli.command,
        Command::Costs(CostsCommand::Import { .. })
    ));
    let cfg = load_config(&config).unwrap();
    let bill = dir.path().join("bill.csv");
    std::fs::write(
        &bill,
        "SubAccountId,BillingPeriodStart,BilledCost,BillingCurrency\n\
         1234,2026-11-01T00:00:00Z,10.25,USD\n1234,2026-11-01T00:00:00Z,0.75,USD\n",
    )
    .unwrap();
    let report = import_costs(&cfg, &bill).unwrap();
    let text = report.to_string();
    assert!(text.contains("rows: 2, bills: 1 (1 new"), "{text}");
    assert!(
        text.contains("leap-aws 2026-11: 11.000000 USD (2 rows)"),
        "{text}"
    );
    let again = import_costs(&cfg, &bill).unwrap().to_string();
    assert!(again.contains("already imported"), "{again}");

    std::fs::write(
        &bill,
        "SubAccountId,BillingPeriodStart,BilledCost,BillingCurrency\n\
         1234,2026-12-01T00:00:00Z,1,USD\n9999,2026-12-01T00:00:00Z,1,USD\n",
    )
    .unwrap();
    let e = import_costs(&cfg, &bill).unwrap_err();
    assert_eq!(e.exit_code(), 1);
    let message = e.to_string();
    assert!(
        message.contains("line 3: SubAccountId \"9999\""),
        "{message}"
    );
    let store = Store::open(&cfg.storage).unwrap();
    let dec = hubwatch_shared::config::Period::parse("2026-12").unwrap();
    use crate::cost::store::CostStore;
    assert!(
        crate::cost::store::SqliteCost::new(store)
            .bills(dec)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn costs_import_works_on_postgres() {
    use crate::cost::store::{CostStore, PgCost};
    let dir = tempfile::tempdir().unwrap();
    let url = crate::store::pg::test_server::database();
    let cfg: CollectorConfig = config::load(
        &format!(
            "[storage]\nbackend = \"postgres\"\nurl = {url:?}\n\
             [[members]]\nid = \"leap\"\ntier = \"premier\"\n\
             [[clusters]]\nid = \"leap-aws\"\nkind = \"dedicated\"\nmember = \"leap\"\n\
             billing_account = \"1234\"\n"
        ),
        &HashMap::new(),
    )
    .unwrap();
    let bill = dir.path().join("bill.csv");
    std::fs::write(
        &bill,
        "SubAccountId,BillingPeriodStart,BilledCost,BillingCurrency\n\
         1234,2026-11-01T00:00:00Z,10.25,USD\n1234,2026-11-01T00:00:00Z,0.75,USD\n",
    )
    .unwrap();
    let text = import_costs(&cfg, &bill).unwrap().to_string();
    assert!(text.contains("rows: 2, bills: 1 (1 new"), "{text}");
    let again = import_costs(&cfg, &bill).unwrap().to_string();
    assert!(again.contains("already imported"), "{again}");
    let nov = hubwatch_shared::config::Period::parse("2026-11").unwrap();
    let bills = PgCost::new(PgStore::open(&cfg.storage).unwrap())
        .bills(nov)
        .unwrap();
    assert_eq!(bills.len(), 1);
    assert_eq!(
        (
            bills[0].total.cluster.as_str(),
            bills[0].total.amount_micros
        ),
        ("leap-aws", 11_000_000)
    );
}

#[test]
fn report_prints_the_report_and_bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[members.hubs]]\nname = \"prod\"\n[[cost_pools]]\nname = \"operations\"\namount = \"90\"\nsplit = \"even\"\n",
    );
    let cli = Cli::try_parse_from([
        "hubwatch-collector",
        "report",
        "--config",
        config.to_str().unwrap(),
        "--period",
        "2026-10",
        "--member",
        "leap",
        "--format",
        "md",
    ])
    .unwrap();
    let Command::Report(args) = cli.command else {
        panic!("not the report command");
    };
    let cfg = load_config(&config).unwrap();
    let now = hubwatch_shared::config::Period::parse("2026-10")
        .unwrap()
        .start_ms()
        + 86_400_000;
    // Nothing was measured or billed (a pool alone is not data): the report
    // says so rather than printing zeros.
    let md = report(&cfg, &args, now).unwrap();
    assert!(
        md.starts_with("# Monthly report: LEAP (leap), 2026-10"),
        "{md}"
    );
    assert!(md.contains("No data was recorded for this period"), "{md}");
    let fleet = report(
        &cfg,
        &ReportArgs {
            member: None,
            format: "json".into(),
            ..args
        },
        now,
    )
    .unwrap();
    let fleet: serde_json::Value = serde_json::from_str(&fleet).unwrap();
    assert_eq!(fleet["fleet"]["no_data"], true);
    assert_eq!(fleet["members"][0]["no_data"], true);

    for (period, member, format, needle) in [
        ("2026-13", Some("leap"), "md", "--period"),
        ("october", None, "md", "--period"),
        ("2026-10", Some("nobody"), "md", "--member"),
        ("2026-10", None, "pdf", "--format"),
    ] {
        let bad = ReportArgs {
            config: config.clone(),
            period: period.into(),
            member: member.map(str::to_string),
            format: format.into(),
        };
        let e = report(&cfg, &bad, now).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn check_config_names_the_postgres_key_at_fault_and_serve_names_an_unreachable_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = "backend = \"postgres\"\nurl = \"postgres://hw:hunter2@db.example:5432/fleet\"\n";
    let cases = [
        (
            format!("{url}ca_file = {:?}\n", dir.path().join("nope.pem")),
            "storage.ca_file",
        ),
        (
            format!("{url}password_file = {:?}\n", dir.path().join("nope")),
            "storage.password_file",
        ),
        ("backend = \"postgres\"\n".to_string(), "storage.url"),
    ];
    for (keys, key) in cases {
        let path = dir.path().join("pg.toml");
        std::fs::write(&path, format!("[storage]\n{keys}")).unwrap();
        let err = run(Command::CheckConfig(ConfigArg { config: path })).unwrap_err();
        assert!(err.to_string().contains(key), "{keys}: {err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(err.exit_code(), 2, "{err}");
    }
    let cfg: CollectorConfig = config::load(&format!("[storage]\n{url}"), &HashMap::new()).unwrap();
    let summary = summary(&cfg);
    assert!(
        summary.contains("store: postgres://hw@db.example:5432/fleet"),
        "{summary}"
    );
    assert!(!summary.contains("hunter2"));
    // `serve` runs on PostgreSQL; a database it cannot reach is a store
    // error naming the database (never the password), not a panic.
    let mut unreachable = cfg.clone();
    unreachable.storage.connect_timeout = std::time::Duration::from_secs(1);
    let err = serve(&unreachable).unwrap_err();
    assert!(err.to_string().contains("postgres"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert_eq!(err.exit_code(), 1, "{err}");
}

#[test]
fn token_commands_work_on_postgres() {
    let url = crate::store::pg::test_server::database();
    let cfg: CollectorConfig = config::load(
        &format!("[storage]\nbackend = \"postgres\"\nurl = {url:?}\n"),
        &HashMap::new(),
    )
    .unwrap();
    let token = create_token(&cfg, "leap", "leap-agent").unwrap();
    let store = PgStore::open(&cfg.storage).unwrap();
    let rows = store.tokens().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].token_sha256, crate::store::hash_token(&token));
    revoke_token(&cfg, "leap-agent").unwrap();
    assert!(store.tokens().unwrap()[0].revoked);
    assert!(matches!(
        revoke_token(&cfg, "leap-agent"),
        Err(CliError::NoLiveToken(_))
    ));
}

#[test]
fn check_config_names_a_remote_write_key_whose_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("password");
    std::fs::write(&good, "pw\n").unwrap();
    let extra = format!(
        "\n[[remote_write]]\nurl = \"http://127.0.0.1:9/a\"\nbasic_auth = {{ username = \"u\", password_file = {good:?} }}\n\
         [[remote_write]]\nurl = \"http://127.0.0.1:10/b\"\nbasic_auth = {{ username = \"u\", password_file = {:?} }}\n",
        dir.path().join("missing")
    );
    let path = write_config(dir.path(), &extra);
    let err = run(Command::CheckConfig(ConfigArg { config: path })).unwrap_err();
    assert!(
        err.to_string()
            .contains("remote_write[1].basic_auth.password_file"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2);
    // With the file there, the config is fine.
    std::fs::write(dir.path().join("missing"), "pw").unwrap();
    let path = write_config(dir.path(), &extra);
    run(Command::CheckConfig(ConfigArg { config: path })).unwrap();
}

#[test]
fn maintenance_add_list_remove_through_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[[members.hubs]]\nname = \"prod\"\n");
    let parse = |args: &[&str]| -> Command {
        let mut argv = vec!["hubwatch-collector", "maintenance"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parses").command
    };
    let path = config.to_str().unwrap();
    // A bad hub names the flag and is a configuration error (exit 2).
    let err = run(parse(&[
        "add",
        "--config",
        path,
        "--member",
        "leap",
        "--hub",
        "nope",
        "--start",
        "2099-01-01T10:00",
        "--end",
        "2099-01-01T12:00",
    ]))
    .expect_err("unknown hub");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("--hub"), "{err}");
    let err = run(parse(&[
        "add",
        "--config",
        path,
        "--member",
        "leap",
        "--start",
        "2099-01-01T10:00",
        "--end",
        "2099-01-01T12:00",
        "--timezone",
        "Moon/Base",
    ]))
    .expect_err("unknown zone");
    assert!(err.to_string().contains("--timezone"), "{err}");

    let cfg = load_config(&config).unwrap();
    let now = crate::clock::system_now_ms();
    let added = crate::maintenance::cli::run(
        &cfg,
        crate::maintenance::cli::MaintenanceCommand::Add {
            config: config.clone(),
            member: "leap".into(),
            hubs: vec!["prod".into()],
            start: "2099-01-01T10:00".into(),
            end: "2099-01-01T12:00".into(),
            timezone: "Europe/Berlin".into(),
            note: "upgrade".into(),
        },
        now,
    )
    .unwrap();
    let added: serde_json::Value = serde_json::from_str(added.trim()).unwrap();
    assert_eq!(
        added["start"], "2099-01-01T09:00:00Z",
        "Berlin is UTC+1 in winter"
    );
    assert_eq!(added["hubs"], serde_json::json!(["prod"]));
    let id = added["id"].as_i64().unwrap();
    let listed = crate::maintenance::cli::run(
        &cfg,
        crate::maintenance::cli::MaintenanceCommand::List {
            config: config.clone(),
            member: Some("leap".into()),
        },
        now,
    )
    .unwrap();
    assert_eq!(listed.lines().count(), 1);
    assert!(listed.contains("\"note\":\"upgrade\""), "{listed}");
    run(parse(&[
        "remove",
        "--config",
        path,
        "--id",
        &id.to_string(),
    ]))
    .unwrap();
    let err = run(parse(&[
        "remove",
        "--config",
        path,
        "--id",
        &id.to_string(),
    ]))
    .expect_err("gone");
    assert!(err.to_string().contains("no maintenance window"), "{err}");
}

#[test]
fn token_create_with_ha_cluster_binds_the_agent_to_its_pair() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(&write_config(dir.path(), "")).unwrap();
    create_token_in_cluster(&cfg, "leap", "leap-a", Some("leap-prod")).unwrap();
    create_token(&cfg, "leap", "leap-solo").unwrap();
    assert!(matches!(
        create_token_in_cluster(&cfg, "leap", "leap-b", Some("bad cluster")),
        Err(CliError::InvalidName {
            what: "ha-cluster",
            ..
        })
    ));
    let store = Store::open(&cfg.storage).unwrap();
    let clusters: Vec<_> = store
        .tokens()
        .unwrap()
        .into_iter()
        .map(|r| (r.agent, r.ha_cluster))
        .collect();
    assert_eq!(
        clusters,
        vec![
            ("leap-a".to_string(), Some("leap-prod".to_string())),
            ("leap-solo".to_string(), None),
        ]
    );
}
