//! Bad input at the collector's door, each refused the way the contract says:
//! a batch claiming another member (403, and reads stay within the member),
//! wrong and revoked tokens (401; revocation and new tokens apply to a
//! running collector within seconds), an oversized body (413), malformed and
//! truncated bodies (400 with a reason), an unknown protocol version (400
//! naming the versions spoken, machine-readable), and broken config files (non-zero exit naming
//! the key, for both binaries).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::http::post_prefix;
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, binary, eventually, sample_batch,
};

fn two_members() -> Collector {
    Collector::start(CollectorOptions {
        members: vec![
            ("alpha".into(), "member".into()),
            ("beta".into(), "starter".into()),
        ],
        max_body_bytes: Some("16KiB".into()),
        ..CollectorOptions::default()
    })
}

#[test]
fn a_batch_claiming_another_member_is_refused_and_reads_stay_within_the_member() {
    let collector = two_members();
    let alpha = collector.create_token("alpha", "alpha-1");
    let beta = collector.create_token("beta", "beta-1");
    eventually("new tokens accepted", Duration::from_secs(10), || {
        let reply = collector.post_batch(Some(&alpha), &sample_batch("alpha-1", "alpha", 1, 4))?;
        ensure!(reply.status == 200, "{reply:?}");
        Ok(())
    });
    let reply = collector
        .post_batch(Some(&beta), &sample_batch("beta-1", "beta", 1, 2))
        .expect("post");
    assert_eq!(reply.status, 200, "{reply:?}");

    // alpha's token, a batch claiming beta: refused, not stored.
    let reply = collector
        .post_batch(Some(&alpha), &sample_batch("alpha-1", "beta", 2, 4))
        .expect("post");
    assert_eq!(reply.status, 403, "{reply:?}");
    // alpha's token, a batch naming beta's agent: refused too.
    let reply = collector
        .post_batch(Some(&alpha), &sample_batch("beta-1", "", 3, 4))
        .expect("post");
    assert_eq!(reply.status, 403, "{reply:?}");
    let row = collector.agent("alpha-1").expect("row");
    assert_eq!(
        (row.member.as_str(), row.batches, row.records),
        ("alpha", 1, 4)
    );
    let row = collector.agent("beta-1").expect("row");
    assert_eq!(
        (row.member.as_str(), row.batches, row.records),
        ("beta", 1, 2)
    );
    let metrics = collector.metrics().expect("metrics");
    assert!(
        metrics
            .value(
                "hubwatch_collector_ingest_rejected_total",
                &[("reason", "member_mismatch")]
            )
            .unwrap_or(0.0)
            >= 1.0,
        "a member mismatch is counted"
    );

    // With alpha's token, /api/v1/agents shows alpha's agents only.
    let seen_by_alpha = collector.agents_as(Some(&alpha)).expect("agents");
    assert!(
        seen_by_alpha.iter().any(|r| r.agent == "alpha-1"),
        "{seen_by_alpha:?}"
    );
    assert!(
        seen_by_alpha.iter().all(|r| r.member == "alpha"),
        "alpha's token must not read beta's rows: {seen_by_alpha:?}"
    );
    let seen_by_beta = collector.agents_as(Some(&beta)).expect("agents");
    assert!(
        seen_by_beta.iter().all(|r| r.member == "beta") && !seen_by_beta.is_empty(),
        "{seen_by_beta:?}"
    );
}

#[test]
fn wrong_revoked_and_new_tokens_apply_without_a_restart() {
    let mut collector = two_members();
    let pid = collector.process().pid();
    let token = collector.create_token("alpha", "rotating");
    eventually("new token accepted", Duration::from_secs(10), || {
        let reply = collector.post_batch(Some(&token), &sample_batch("rotating", "alpha", 1, 1))?;
        ensure!(reply.status == 200, "{reply:?}");
        Ok(())
    });

    let reply = collector
        .post_batch(
            Some("not-a-real-token"),
            &sample_batch("rotating", "alpha", 2, 1),
        )
        .expect("post");
    assert_eq!(reply.status, 401, "{reply:?}");
    let reply = collector
        .post_batch(None, &sample_batch("rotating", "alpha", 2, 1))
        .expect("post");
    assert_eq!(reply.status, 401, "{reply:?}");

    collector.revoke_token("rotating");
    let mut seq = 10;
    eventually("revoked token refused", Duration::from_secs(10), || {
        seq += 1;
        let reply =
            collector.post_batch(Some(&token), &sample_batch("rotating", "alpha", seq, 1))?;
        ensure!(reply.status == 401, "{reply:?}");
        Ok(())
    });

    let fresh = collector.create_token("alpha", "rotating");
    assert_ne!(fresh, token);
    eventually("a new token accepted", Duration::from_secs(10), || {
        seq += 1;
        let reply =
            collector.post_batch(Some(&fresh), &sample_batch("rotating", "alpha", seq, 1))?;
        ensure!(reply.status == 200, "{reply:?}");
        Ok(())
    });
    // The old token stays revoked.
    let reply = collector
        .post_batch(Some(&token), &sample_batch("rotating", "alpha", seq + 1, 1))
        .expect("post");
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(collector.process().pid(), pid, "no restart happened");
    let metrics = collector.metrics().expect("metrics");
    for reason in ["unknown", "revoked"] {
        assert!(
            metrics
                .value(
                    "hubwatch_collector_auth_failures_total",
                    &[("reason", reason)]
                )
                .unwrap_or(0.0)
                >= 1.0,
            "auth failure {reason} counted"
        );
    }
    let logs = collector.process().stderr();
    assert!(
        !logs.contains(&token) && !logs.contains(&fresh),
        "tokens must never be logged"
    );
}

#[test]
fn oversized_malformed_and_unknown_version_bodies_are_refused_with_reasons() {
    let collector = two_members();
    let token = collector.create_token("alpha", "sloppy");
    eventually("token accepted", Duration::from_secs(10), || {
        let reply = collector.post_batch(Some(&token), &sample_batch("sloppy", "alpha", 1, 1))?;
        ensure!(reply.status == 200, "{reply:?}");
        Ok(())
    });

    // Over the 16 KiB limit: refused on the announced length, before the
    // body is read (only its first 1 KiB is ever sent).
    let big = sample_batch("sloppy", "alpha", 2, 4000);
    assert!(big.len() > 32 * 1024, "{} bytes", big.len());
    let addr = format!("127.0.0.1:{}", collector.port());
    let reply = post_prefix(
        &addr,
        "/api/v1/ingest",
        Some(&token),
        big.len(),
        &big[..1024],
    )
    .expect("post");
    assert_eq!(reply.status, 413, "{reply:?}");

    // Garbage after a valid header.
    let mut garbage = b"HWB1\x01\x00".to_vec();
    garbage.extend_from_slice(&[0xff; 64]);
    let reply = collector.post_batch(Some(&token), &garbage).expect("post");
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(!reply.body.trim().is_empty(), "a 400 says why");

    // A valid batch cut in half.
    let whole = sample_batch("sloppy", "alpha", 3, 20);
    let reply = collector
        .post_batch(Some(&token), &whole[..whole.len() / 2])
        .expect("post");
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(!reply.body.trim().is_empty(), "a 400 says why");

    // Not a hubwatch frame at all.
    let reply = collector
        .post_batch(Some(&token), b"{\"hello\":1}")
        .expect("post");
    assert_eq!(reply.status, 400, "{reply:?}");

    // Protocol version 99.
    let mut future = sample_batch("sloppy", "alpha", 4, 3);
    future[4..6].copy_from_slice(&99u16.to_le_bytes());
    let reply = collector.post_batch(Some(&token), &future).expect("post");
    assert_eq!(reply.status, 400, "{reply:?}");
    let words: Vec<&str> = reply
        .body
        .split(|c: char| !c.is_ascii_alphanumeric())
        .collect();
    assert!(
        words.contains(&"99"),
        "the reply names the version it got: {reply:?}"
    );
    assert!(
        words.contains(&"1"),
        "the reply names the version spoken (1): {reply:?}"
    );
    // Machine-readable, so an agent keeps such a batch instead of dropping it.
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("a JSON body");
    assert_eq!(body["code"], "unsupported_version", "{body}");
    assert_eq!(
        body["accepted_versions"],
        serde_json::json!([1, 2, 3, 4]),
        "{body}"
    );

    // None of these were stored; the good one was.
    let row = collector.agent("sloppy").expect("row");
    assert_eq!((row.batches, row.records), (1, 1), "{row:?}");
    let metrics = collector.metrics().expect("metrics");
    for reason in ["too_large", "malformed", "version"] {
        assert!(
            metrics
                .value(
                    "hubwatch_collector_ingest_rejected_total",
                    &[("reason", reason)]
                )
                .unwrap_or(0.0)
                >= 1.0,
            "rejection {reason} counted"
        );
    }
}

/// Runs `binary --log-format json args… --config <path>`; (success, stdout+stderr).
fn run(binary_name: &str, args: &[&str], config: &Path) -> (bool, String) {
    let mut command = Command::new(binary(binary_name));
    command
        .args(["--log-format", "json"])
        .args(args)
        .arg("--config")
        .arg(config);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HUBWATCH_") {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("run binary");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn broken_configs_exit_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good_collector = dir.path().join("collector.toml");
    std::fs::write(
        &good_collector,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[storage]\npath = {:?}\n",
            dir.path().join("data")
        ),
    )
    .expect("write");
    let (ok, out) = run("hubwatch-collector", &["check-config"], &good_collector);
    assert!(ok, "a good collector config passes: {out}");

    let cases: [(&str, &str, &str); 4] = [
        (
            "hubwatch-collector",
            "[server]\nmax_body_bytes = \"10B\"\n",
            "server.max_body_bytes",
        ),
        (
            "hubwatch-collector",
            "[server]\nlisten = \"0.0.0.0:9470\"\n",
            "server.listen",
        ),
        (
            "hubwatch-agent",
            "[agent]\nid = \"a\"\ninterval = \"10ms\"\n[collector]\ntoken = \"t\"\n",
            "agent.interval",
        ),
        (
            "hubwatch-agent",
            "[agent]\nid = \"a\"\n[collector]\ntoken = \"t\"\nurl = \"http://198.51.100.7:9470\"\n",
            "collector.url",
        ),
    ];
    for (i, (bin, toml, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, toml).expect("write");
        let (ok, out) = run(bin, &["check-config"], &path);
        assert!(!ok, "{bin} check-config must fail on {toml:?}: {out}");
        assert!(
            out.contains(key),
            "{bin} check-config must name {key}: {out}"
        );
    }

    // `serve` with a broken config starts nothing.
    let bad = dir.path().join("bad-0.toml");
    let (ok, out) = run("hubwatch-collector", &["serve"], &bad);
    assert!(!ok && out.contains("server.max_body_bytes"), "{out}");
}

/// TLS files are read and matched by `check-config` as `serve` / `run` would
/// use them: a missing file or a key that is not the certificate's fails,
/// naming the key, before anything starts.
#[test]
fn check_config_reads_and_matches_the_tls_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = hubwatch_tests::pki::TestCa::new("check-config CA");
    let (cert, key) = ca.server_cert().write(dir.path(), "server");
    let (_, other_key) = ca.client_cert("agent-a").write(dir.path(), "client");
    let ca_file = dir.path().join("ca.pem");
    ca.write_ca(&ca_file);
    let collector = |cert: &Path, key: &Path| {
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n\
             [storage]\npath = {:?}\n",
            dir.path().join("data")
        )
    };
    let agent = |ca: &Path, cert: &Path, key: &Path| {
        format!(
            "[agent]\nid = \"agent-a\"\nspool_dir = {:?}\n[collector]\n\
             url = \"https://collector.example.org:8443\"\nca_file = {ca:?}\n\
             client_cert = {cert:?}\nclient_key = {key:?}\n",
            dir.path().join("spool")
        )
    };
    let missing = dir.path().join("missing.pem");
    let cases = [
        ("hubwatch-collector", collector(&cert, &key), None),
        (
            "hubwatch-collector",
            collector(&missing, &key),
            Some("server.tls_cert"),
        ),
        (
            "hubwatch-collector",
            collector(&cert, &other_key),
            Some("server.tls_key"),
        ),
        ("hubwatch-agent", agent(&ca_file, &cert, &key), None),
        (
            "hubwatch-agent",
            agent(&missing, &cert, &key),
            Some("collector.ca_file"),
        ),
        (
            "hubwatch-agent",
            agent(&ca_file, &cert, &other_key),
            Some("collector.client_cert"),
        ),
    ];
    for (i, (bin, toml, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("tls-{i}.toml"));
        std::fs::write(&path, toml).expect("write");
        let (ok, out) = run(bin, &["check-config"], &path);
        match key {
            None => assert!(ok, "{bin} check-config passes {toml:?}: {out}"),
            Some(key) => {
                assert!(!ok, "{bin} check-config must fail on {toml:?}: {out}");
                assert!(
                    out.contains(key),
                    "{bin} check-config must name {key}: {out}"
                );
            }
        }
    }
}

#[test]
fn an_agent_with_a_bad_config_exits_non_zero_naming_the_key() {
    let mut options = AgentOptions::new("bad-agent", "alpha", "some-token", "10ms");
    options.spool_max_bytes = Some("1MiB".into());
    let mut agent = Agent::spawn(options, "http://127.0.0.1:9");
    let status = agent
        .process()
        .wait(Duration::from_secs(10))
        .expect("the agent exits by itself");
    assert!(!status.success(), "exit status {status}");
    let logs = agent.process().stderr();
    assert!(
        logs.contains("agent.interval"),
        "the error names the key: {logs}"
    );
}
