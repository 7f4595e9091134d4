//! The agent's spool disk fills up mid-run (a real, small tmpfs filled to the
//! last byte): the agent keeps collecting, holds batches in memory and says
//! so in its metrics; when space returns the held batches are spooled and
//! delivered, and everything produced is stored.

use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{Agent, AgentOptions, Collector, CollectorOptions, Tmpfs, eventually};

#[test]
fn a_full_spool_disk_is_survived_in_memory_and_recovered() {
    let collector = Collector::start(CollectorOptions::default());
    let token = collector.create_token("alpha", "diskfull");
    let mount_dir = tempfile::tempdir().expect("tempdir");
    let disk = Tmpfs::mount(&mount_dir.path().join("spool-disk"), 2 * 1024 * 1024)
        .expect("mount a tmpfs for the spool");

    let mut options = AgentOptions::new("diskfull", "alpha", &token, "200ms");
    options.spool_dir = Some(disk.path().join("spool"));
    options.spool_max_bytes = Some("1MiB".into());
    let mut agent = Agent::start(options, collector.url());
    eventually("first batches stored", Duration::from_secs(30), || {
        let row = collector.agent("diskfull")?;
        ensure!(row.batches >= 3, "{} batches", row.batches);
        Ok(())
    });

    let filled = disk.fill().expect("fill the spool disk");
    eprintln!("filled the spool disk with {filled} bytes");
    let produced_when_full = agent.records_produced().expect("metrics");
    let acked_when_full = agent
        .metrics()
        .and_then(|m| m.sum("hubwatch_agent_records_acked_total"))
        .expect("metrics");
    // Batches that cannot be spooled wait in memory; the sender also sends
    // from there, so with the collector up they may be delivered between two
    // looks at the gauge: either is the memory path at work.
    let (write_errors, held, acked) = eventually(
        "the agent reports spool write errors and holds or delivers batches from memory",
        Duration::from_secs(15),
        || {
            let metrics = agent.metrics()?;
            let errors = metrics.sum("hubwatch_agent_spool_write_errors_total")?;
            let held = metrics.sum("hubwatch_agent_memory_buffer_bytes")?;
            let acked = metrics.sum("hubwatch_agent_records_acked_total")?;
            ensure!(
                errors > 0.0 && (held > 0.0 || acked > acked_when_full),
                "write errors {errors}, held {held}, acked {acked_when_full} -> {acked}"
            );
            Ok((errors, held, acked))
        },
    );
    eprintln!(
        "disk full: {write_errors} spool write errors, {held} bytes held in memory, \
         {acked} records acknowledged (from {acked_when_full})"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(agent.is_running(), "the agent must survive a full disk");
    let produced_later = agent.records_produced().expect("metrics");
    assert!(
        produced_later > produced_when_full,
        "collection goes on with a full disk: {produced_when_full} -> {produced_later}"
    );

    disk.free().expect("free the spool disk");
    eventually(
        "held batches spooled and delivered once space returns",
        Duration::from_secs(30),
        || {
            let metrics = agent.metrics()?;
            let held = metrics.sum("hubwatch_agent_memory_buffer_bytes")?;
            let pending = metrics.sum("hubwatch_agent_spool_pending_batches")?;
            ensure!(
                held == 0.0 && pending == 0.0,
                "held {held}, pending {pending}"
            );
            Ok(())
        },
    );
    let summary = agent.sigterm();
    let row = collector.agent("diskfull").expect("row");
    assert_eq!(summary.pending_batches, 0, "{summary:?}");
    assert_eq!(
        row.records, summary.records_produced,
        "stored vs produced across the full disk ({row:?}, {summary:?})"
    );
    assert_eq!(row.dropped_by_agent, 0, "{row:?}");
    drop(agent);
    drop(disk);
}

/// The spool directory cannot even be created when the agent starts (a file
/// stands where its parent should be): the agent still starts, collects and
/// delivers from memory, and takes the directory over once it is usable.
#[test]
fn an_unusable_spool_directory_at_start_is_survived_in_memory() {
    let collector = Collector::start(CollectorOptions::default());
    let token = collector.create_token("alpha", "nospool");
    let scratch = tempfile::tempdir().expect("tempdir");
    let blocker = scratch.path().join("blocked");
    std::fs::write(&blocker, b"a file, not a directory").expect("blocker");
    let spool_dir = blocker.join("spool");

    let mut options = AgentOptions::new("nospool", "alpha", &token, "200ms");
    options.spool_dir = Some(spool_dir.clone());
    let mut agent = Agent::start(options, collector.url());
    eventually(
        "batches held in memory are delivered while the spool is unusable",
        Duration::from_secs(30),
        || {
            let metrics = agent.metrics()?;
            let errors = metrics.sum("hubwatch_agent_spool_write_errors_total")?;
            ensure!(errors > 0.0, "no spool write errors yet");
            let row = collector.agent("nospool")?;
            ensure!(row.batches >= 3, "{} batches stored", row.batches);
            Ok(())
        },
    );
    assert!(agent.is_running(), "the agent must start without its spool");

    std::fs::remove_file(&blocker).expect("remove the blocker");
    eventually(
        "the spool attaches once its directory can be created",
        Duration::from_secs(30),
        || {
            ensure!(spool_dir.join("cursor").exists(), "no cursor yet");
            let metrics = agent.metrics()?;
            let held = metrics.sum("hubwatch_agent_memory_buffer_bytes")?;
            let pending = metrics.sum("hubwatch_agent_spool_pending_batches")?;
            ensure!(
                held == 0.0 && pending == 0.0,
                "held {held}, pending {pending}"
            );
            Ok(())
        },
    );
    let summary = agent.sigterm();
    let row = collector.agent("nospool").expect("row");
    assert_eq!(summary.pending_batches, 0, "{summary:?}");
    assert_eq!(
        row.records, summary.records_produced,
        "stored vs produced ({row:?}, {summary:?})"
    );
    assert_eq!(row.dropped_by_agent, 0, "{row:?}");
}
