//! The PostgreSQL backend through the real `hubwatch-collector` binary,
//! against a private PostgreSQL 15 started by the harness
//! (`hubwatch_tests::Postgres`): `check-config` names the database (never the
//! password) and `token create`/`token revoke` write to it. `serve` on it,
//! as two replicas, is `collector_replicas.rs`.

use std::process::Command;

use hubwatch_tests::{Postgres, binary};

fn collector(config: &std::path::Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(binary("hubwatch-collector"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()?)
}

#[test]
fn the_collector_binary_uses_a_real_postgres_for_tokens_and_never_prints_the_password()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let url = pg.create_database("hubwatch_e2e")?;
    let dir = tempfile::tempdir()?;
    let password = dir.path().join("pg-password");
    // Trust auth ignores it, but it must be read and never printed.
    std::fs::write(&password, "never-printed\n")?;
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"postgres\"\nurl = {url:?}\npassword_file = {password:?}\n\
             [[members]]\nid = \"leap\"\nname = \"LEAP\"\ntier = \"premier\"\n"
        ),
    )?;

    let check = collector(&config, &["check-config"])?;
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        stdout.contains(&format!(
            "store: postgres://hubwatch@127.0.0.1:{}/hubwatch_e2e",
            pg.port()
        )),
        "{stdout}"
    );

    let created = collector(
        &config,
        &["token", "create", "--member", "leap", "--agent", "a1"],
    )?;
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    assert!(token.starts_with("hwt_"), "{token}");
    // Only the SHA-256 is in the database.
    let stored = pg.psql(
        "hubwatch_e2e",
        "SELECT agent, member, encode(token_sha256, 'hex') FROM tokens",
    )?;
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    assert_eq!(stored.trim(), format!("a1|leap|{digest}"));

    let revoked = collector(&config, &["token", "revoke", "--agent", "a1"])?;
    assert!(revoked.status.success(), "{revoked:?}");
    let live = pg.psql(
        "hubwatch_e2e",
        "SELECT count(*) FROM tokens WHERE revoked_ms IS NULL",
    )?;
    assert_eq!(live.trim(), "0");

    for output in [&check, &created, &revoked] {
        let all = format!("{output:?}");
        assert!(!all.contains("never-printed"), "{all}");
    }

    // Dropping the harness's server stops it and removes its directory.
    let (port, server_dir) = (pg.port(), pg.dir().to_path_buf());
    drop(pg);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!server_dir.exists());
    Ok(())
}
