//! Frame compression, measured (issue 15, part 7): what snappy (block
//! format, the `snap` crate the remote write path already uses) would save
//! on the native frames agents send and the collector stores, on the
//! load generator's JupyterHub-shaped batches. Prints, per fleet shape,
//! frames, raw and compressed bytes, the ratio, and compress / decompress
//! throughput on this machine (one core, release build). The other half of
//! the question, whether smaller frames shorten the ingest tail on a busy
//! disk, needs the collector to store compressed frames: not measured here.
//!
//! ```text
//! cargo bench -p hubwatch-loadgen --bench frame_compression
//! BENCH_ROUNDS=5 cargo bench -p hubwatch-loadgen --bench frame_compression
//! ```

use std::time::Instant;

use hubwatch_loadgen::generate::{AgentSim, Model};
use hubwatch_shared::codec;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let rounds = env("BENCH_ROUNDS", 3);
    let agents = env("BENCH_AGENTS", 100);
    println!(
        "frame compression (snappy block), {agents} agents, {rounds} rounds after one warm-up, \
         nproc {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<22} {:>7} {:>12} {:>12} {:>6} {:>14} {:>14} {:>10}",
        "shape",
        "frames",
        "raw B",
        "snappy B",
        "ratio",
        "compress MB/s",
        "decompress MB/s",
        "median B"
    );
    for (hubs, users) in [(1, 50), (10, 200), (50, 500)] {
        let model = Model {
            agents,
            hubs_per_agent: hubs,
            users_per_hub: users,
            interval_ms: 15_000,
            start_ms: 1_767_225_600_000,
            seed: 15,
            outage_rate: 0.001,
        };
        let mut frames = Vec::new();
        for index in 0..agents {
            let mut sim = AgentSim::new(&model, index, Model::agent_id(index), "m".into());
            let _ = sim.next_round();
            for _ in 0..rounds {
                frames.push(codec::encode(&sim.next_round())?);
            }
        }
        let raw: usize = frames.iter().map(Vec::len).sum();
        let mut encoder = snap::raw::Encoder::new();
        let started = Instant::now();
        let compressed: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| encoder.compress_vec(f))
            .collect::<Result<_, _>>()?;
        let compress_s = started.elapsed().as_secs_f64();
        let small: usize = compressed.iter().map(Vec::len).sum();
        let mut decoder = snap::raw::Decoder::new();
        let started = Instant::now();
        for (c, f) in compressed.iter().zip(&frames) {
            let back = decoder.decompress_vec(c)?;
            anyhow::ensure!(&back == f, "a frame did not round-trip");
        }
        let decompress_s = started.elapsed().as_secs_f64();
        let mut sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
        sizes.sort_unstable();
        println!(
            "{:<22} {:>7} {:>12} {:>12} {:>6.2} {:>14.0} {:>14.0} {:>10}",
            format!("{hubs} hubs x {users} users"),
            frames.len(),
            raw,
            small,
            raw as f64 / small as f64,
            raw as f64 / compress_s / 1e6,
            raw as f64 / decompress_s / 1e6,
            sizes[sizes.len() / 2]
        );
    }
    Ok(())
}
