//! `GET /federate` of 200k series (issue 9 target: streams in under 1 s):
//! `scripts/bench.sh federate`, or
//! `cargo bench -p hubwatch-collector --bench federate`.
//!
//! `BENCH_SERIES` series (200,000) in `BENCH_FAMILIES` metric families (50),
//! each with `member`, `agent`, `hub`, `instance` and a `series` label, are
//! stored as 1,000-sample batches from `BENCH_AGENTS` agents (20) before an
//! in-process collector (core endpoints + the federate component, store
//! `Durability::Off` in a temporary directory) starts; its `federate.latest`
//! stage re-derives them at start. Once every series is served, the bench
//! times `BENCH_REQUESTS` (10) requests of
//! `/federate?match[]={__name__=~"jupyterhub_.*"}` over loopback, each from
//! sending the request to the last byte of the body (every series goes
//! through the regex matcher), and prints the fastest, median and slowest
//! time and the body size. The time the stage took to derive them is printed
//! too.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hubwatch_collector::store::{Durability, IngestItem, Store};
use hubwatch_shared::codec;
use hubwatch_shared::config::CollectorConfig;
use hubwatch_shared::wire::{Batch, Label, Record, Sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "GET {path}: {}",
            String::from_utf8_lossy(&response[..response.len().min(300)])
        );
    }
    Ok(response)
}

fn count_series(body: &[u8]) -> usize {
    body.split(|b| *b == b'\n')
        .filter(|l| l.starts_with(b"jupyterhub_"))
        .count()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let series = env_or("BENCH_SERIES", 200_000)?;
    let families = env_or("BENCH_FAMILIES", 50)?.max(1);
    let agents = env_or("BENCH_AGENTS", 20)?.max(1);
    let requests = env_or("BENCH_REQUESTS", 10)?.max(1);
    let dir = tempfile::tempdir()?;
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = dir.path().join("data");
    cfg.server.listen = "127.0.0.1:0".parse()?;
    let store = Store::open_with(&cfg.storage, Durability::Off)?;
    let now_ms = hubwatch_collector::clock::system_now_ms();

    // Series i: family i % families, agent i % agents.
    let mut batches: Vec<Batch> = Vec::new();
    let per_agent = series.div_ceil(agents);
    for a in 0..agents {
        let (agent, member) = (format!("agent-{a}"), format!("member-{}", a % 10));
        let mut records = Vec::new();
        let mut seq = 1024u64;
        for j in 0..per_agent {
            let i = a * per_agent + j;
            if i >= series {
                break;
            }
            records.push(Record::Sample(Sample {
                name: format!("jupyterhub_bench_metric_{}_total", i % families),
                labels: vec![
                    Label::new("hub", format!("hub-{}", i % 37)),
                    Label::new("instance", "hub.example.org:8081"),
                    Label::new("series", i.to_string()),
                ],
                value: i as f64 * 1.5,
                timestamp_ms: now_ms,
            }));
            if records.len() == 1_000 {
                batches.push(batch(
                    &agent,
                    &member,
                    seq,
                    std::mem::take(&mut records),
                    now_ms,
                ));
                seq += 1024;
            }
        }
        if !records.is_empty() {
            batches.push(batch(&agent, &member, seq, records, now_ms));
        }
    }
    for b in &batches {
        store
            .ingest(IngestItem {
                member: b.member.clone(),
                agent: b.agent_id.clone(),
                seq: b.seq,
                created_ms: now_ms,
                dropped_records: 0,
                agent_version: "bench".into(),
                records: b.records.len() as u64,
                frame: codec::encode(b)?.into(),
                received_ms: now_ms,
            })
            .await?;
    }

    let mut components = hubwatch_collector::server::http_components();
    components.push(Box::new(hubwatch_collector::federate::FederateComponent));
    let started = Instant::now();
    let running = hubwatch_collector::Collector::new(cfg, store)
        .components(components)
        .start()
        .await?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], running.local_addr.port()));
    let path = "/federate?match[]=%7B__name__%3D~%22jupyterhub_.*%22%7D";
    let want = usize::try_from(series)?;
    loop {
        let body = get(addr, path).await?;
        if count_series(&body) >= want {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {want} series served after 300 s",
                count_series(&body)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "federate: {series} series in {families} families derived and served {:.2} s after start",
        started.elapsed().as_secs_f64()
    );

    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..requests {
        let t = Instant::now();
        let body = get(addr, path).await?;
        times.push(t.elapsed());
        bytes = body.len();
        if count_series(&body) != want {
            bail!("a response held {} series, not {want}", count_series(&body));
        }
    }
    times.sort();
    println!(
        "federate: GET /federate of {series} series ({:.1} MiB): fastest {:.0} ms, median {:.0} ms, slowest {:.0} ms over {requests} requests (target < 1000 ms)",
        bytes as f64 / 1024.0 / 1024.0,
        times[0].as_secs_f64() * 1000.0,
        times[times.len() / 2].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0,
    );
    running.shutdown().await;
    if times[times.len() / 2] > Duration::from_secs(1) {
        bail!("the median is over the 1 s target");
    }
    Ok(())
}

fn batch(agent: &str, member: &str, seq: u64, records: Vec<Record>, now_ms: i64) -> Batch {
    Batch {
        agent_id: agent.into(),
        member: member.into(),
        seq,
        created_ms: now_ms,
        dropped_records: 0,
        agent_version: "bench".into(),
        records,
    }
}
