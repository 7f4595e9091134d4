//! A backup taken while agents stream restores into a collector that serves
//! the same `/api/v1/agents` and SLO state (issue 13).
//!
//! Collector A runs with a real agent streaming host figures every 150 ms
//! and the harness posting hub `lab`'s health (good and bad checks) from
//! another thread, both throughout the backup. `hubwatch-collector backup`
//! runs meanwhile. Collector B starts empty; `restore` is refused while it
//! runs, then, stopped, puts the backup in place, and B starts on it.
//!
//! What "the same" can honestly mean when streaming continues past the
//! backup: the backup is A's store as of one moment inside the backup's run.
//! - The posted agent: every batch A acknowledged before the backup started
//!   is in B, none acknowledged after it ended is. Then streaming stops and
//!   the posted agent's full history is sent to B again (as an agent
//!   resending its spool would): B stores what it missed, answers the rest
//!   as duplicates, and its `/api/v1/agents` row then equals A's (batches,
//!   records, last_seq), and `/api/v1/slo` equals A's, field for field.
//! - The real agent (its acknowledged batches are gone from its spool, so
//!   nothing can refill B): B's row lies between A's row read just before
//!   the backup and A's row read just after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, PROTOCOL_VERSION, Record};
use hubwatch_tests::{Agent, AgentOptions, AgentRow, Collector, CollectorOptions, eventually};
use serde_json::Value;

const MEMBER: &str = "alpha";
const POSTER: &str = "lab-poster";
const STREAMER: &str = "streamer";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn options() -> CollectorOptions {
    CollectorOptions {
        members: Vec::new(),
        extra_server_toml: format!(
            "\n[[members]]\nid = {MEMBER:?}\ntier = \"member\"\n[[members.hubs]]\nname = \"lab\"\n"
        ),
        ..CollectorOptions::default()
    }
}

/// One posted batch: hub `lab`'s health, good unless `seq` is a multiple of
/// 7 (so the SLI is neither 0 nor 1).
fn health_frame(seq: u64, at_ms: i64) -> Vec<u8> {
    let ok = !(seq / 1024).is_multiple_of(7);
    let batch = Batch {
        agent_id: POSTER.into(),
        member: MEMBER.into(),
        seq,
        created_ms: at_ms,
        dropped_records: 0,
        agent_version: format!("tests-{PROTOCOL_VERSION}"),
        records: vec![Record::Health(HealthCheck {
            target: "http://127.0.0.1:8000/hub/health".into(),
            hub: Some("lab".into()),
            kind: CheckKind::HubHealth,
            ok,
            status: ok.then_some(200),
            latency_us: 1500,
            failure: None,
            error: (!ok).then(|| "connect: connection refused".into()),
            cert_expiry_days: None,
            timestamp_ms: at_ms,
        })],
    };
    hubwatch_shared::codec::encode(&batch).expect("encode")
}

/// A batch the poster sent: its frame and when A acknowledged it.
struct Posted {
    seq: u64,
    frame: Vec<u8>,
    acked: Instant,
}

fn post(collector: &Collector, token: &str, frame: &[u8]) -> anyhow::Result<()> {
    let reply = collector.post_batch(Some(token), frame)?;
    ensure!(reply.status == 200, "{}: {}", reply.status, reply.body);
    Ok(())
}

fn row(rows: &[AgentRow], agent: &str) -> anyhow::Result<AgentRow> {
    rows.iter()
        .find(|r| r.agent == agent)
        .cloned()
        .with_context(|| format!("no row for {agent}"))
}

/// `/api/v1/slo`'s objectives for hub `lab`, sorted.
fn slo(collector: &Collector) -> anyhow::Result<Vec<Value>> {
    let body = collector.http().get_ok("/api/v1/slo", None)?;
    let page: Value = serde_json::from_str(&body)?;
    let mut rows: Vec<Value> = page["objectives"]
        .as_array()
        .context("objectives")?
        .iter()
        .filter(|o| o["hub"] == "lab")
        .cloned()
        .collect();
    rows.sort_by_key(|o| o["slo"].to_string());
    Ok(rows)
}

#[test]
fn a_backup_taken_while_agents_stream_restores_the_same_agents_and_slo_state() {
    let a = Arc::new(Collector::start(options()));
    let poster_token = a.create_token(MEMBER, POSTER);
    let streamer_token = a.create_token(MEMBER, STREAMER);
    let mut streamer = Agent::start(
        AgentOptions::new(STREAMER, MEMBER, &streamer_token, "150ms"),
        a.url(),
    );

    // The poster: one health batch every 20 ms until told to stop.
    let posted: Arc<Mutex<Vec<Posted>>> = Arc::default();
    let streaming = Arc::new(AtomicBool::new(true));
    let poster = {
        let (a, posted, streaming) = (Arc::clone(&a), Arc::clone(&posted), Arc::clone(&streaming));
        let token = poster_token.clone();
        std::thread::spawn(move || {
            let mut seq = 0;
            while streaming.load(Ordering::Relaxed) {
                seq += 1024;
                let frame = health_frame(seq, now_ms());
                eventually(
                    "a posted batch is acknowledged",
                    Duration::from_secs(10),
                    || post(&a, &token, &frame),
                );
                let acked = Instant::now();
                posted
                    .lock()
                    .expect("lock")
                    .push(Posted { seq, frame, acked });
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    eventually(
        "both agents have batches stored and lab has an SLO",
        Duration::from_secs(30),
        || {
            let rows = a.agents()?;
            ensure!(row(&rows, STREAMER)?.batches >= 3, "streamer");
            ensure!(row(&rows, POSTER)?.batches >= 20, "poster");
            ensure!(
                slo(&a)?
                    .iter()
                    .any(|o| o["events"].as_u64().unwrap_or(0) > 0),
                "no SLO events for lab yet"
            );
            Ok(())
        },
    );

    let backup = a.dir().join("backup.db");
    let streamer_before = row(&a.agents().expect("agents"), STREAMER).expect("row");
    let started = Instant::now();
    let backup_arg = backup.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = a.run_cli(&["backup", "--out", &backup_arg]);
    let ended = Instant::now();
    assert!(ok, "backup failed: {stderr}");
    assert!(
        stdout.contains("schema version") && stdout.contains("integrity ok"),
        "backup printed {stdout:?}"
    );
    let streamer_after = row(&a.agents().expect("agents"), STREAMER).expect("row");
    let batches_during = posted
        .lock()
        .expect("lock")
        .iter()
        .filter(|p| p.acked > started && p.acked < ended)
        .count();
    eprintln!(
        "backup: {} ({batches_during} posted batches acknowledged during it)",
        stdout.trim()
    );

    // Go on streaming a little past the backup, then stop everything.
    std::thread::sleep(Duration::from_millis(500));
    streaming.store(false, Ordering::Relaxed);
    poster.join().expect("poster thread");
    streamer.sigterm();
    let posted = std::mem::take(&mut *posted.lock().expect("lock"));
    assert!(
        posted.iter().any(|p| p.acked > ended),
        "some batches must be acknowledged after the backup"
    );

    // B: refuses a restore while it runs, then starts on the backup.
    let mut b = Collector::start(options());
    let (ok, _, stderr) = b.run_cli(&["restore", "--from", &backup_arg]);
    assert!(
        !ok && stderr.contains("in use"),
        "restore into a running collector: {stderr}"
    );
    b.sigterm();
    let (ok, stdout, stderr) = b.run_cli(&["restore", "--from", &backup_arg]);
    assert!(ok, "restore failed: {stderr}");
    assert!(stdout.contains("schema version"), "{stdout}");
    b.restart();

    // As of the backup: the poster's batches acknowledged before it started
    // are all there, none acknowledged after it ended.
    let b_rows = b.agents().expect("agents");
    let b_poster = row(&b_rows, POSTER).expect("poster row in B");
    let before: Vec<u64> = posted
        .iter()
        .filter(|p| p.acked < started)
        .map(|p| p.seq)
        .collect();
    let after_first = posted
        .iter()
        .find(|p| p.acked > ended)
        .map(|p| p.seq)
        .expect("a batch after the backup");
    assert!(
        b_poster.last_seq >= before.last().copied().unwrap_or(0) && b_poster.last_seq < after_first,
        "B's poster last_seq {} not within [{:?}, {after_first})",
        b_poster.last_seq,
        before.last()
    );
    assert!(b_poster.batches >= before.len() as u64, "{b_poster:?}");
    // The real agent: between A's rows read just before and just after.
    let b_streamer = row(&b_rows, STREAMER).expect("streamer row in B");
    assert!(
        b_streamer.batches >= streamer_before.batches
            && b_streamer.batches <= streamer_after.batches
            && b_streamer.last_seq >= streamer_before.last_seq
            && b_streamer.last_seq <= streamer_after.last_seq,
        "B {b_streamer:?} not between A before {streamer_before:?} and after {streamer_after:?}"
    );

    // The poster resends its whole history (as from a spool): B stores what
    // it missed after the backup and dedupes the rest.
    for p in &posted {
        eventually(
            "a resent batch is answered",
            Duration::from_secs(10),
            || post(&b, &poster_token, &p.frame),
        );
    }
    let a_poster = row(&a.agents().expect("agents"), POSTER).expect("row");
    let b_poster = row(&b.agents().expect("agents"), POSTER).expect("row");
    assert_eq!(
        (b_poster.batches, b_poster.records, b_poster.last_seq),
        (a_poster.batches, a_poster.records, a_poster.last_seq),
        "poster: B {b_poster:?} vs A {a_poster:?}"
    );
    assert!(b_poster.duplicates > 0, "{b_poster:?}");

    // The same SLO state: both engines over the same health records (read
    // close together, as the windows move with the clock).
    eventually("B's SLO state equals A's", Duration::from_secs(30), || {
        let (from_a, from_b) = (slo(&a)?, slo(&b)?);
        ensure!(!from_a.is_empty(), "no SLO rows in A");
        ensure!(from_a == from_b, "A {from_a:?}\nB {from_b:?}");
        Ok(())
    });
}
