//! `hubwatch-loadgen`: parse the flags, build the runtime, run, print.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use hubwatch_loadgen::client::Endpoint;
use hubwatch_loadgen::generate::Model;
use hubwatch_loadgen::{Run, Target, parse_token_file};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// The collector's native ingest (`POST /api/v1/ingest`).
    Hubwatch,
    /// Prometheus remote write 1.0 (`POST /api/v1/write`).
    RemoteWrite,
    /// Send nothing: print counts and the digest.
    StdoutSummary,
}

/// Simulated hubwatch agents with JupyterHub-shaped, seeded data.
#[derive(Debug, Parser)]
#[command(name = "hubwatch-loadgen", version)]
struct Cli {
    /// Simulated agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Hubs each agent watches.
    #[arg(long, default_value_t = 10)]
    hubs_per_agent: usize,
    /// Users of each hub.
    #[arg(long, default_value_t = 200)]
    users_per_hub: usize,
    /// Time between an agent's rounds (`15s`).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long to simulate (rounds = duration / interval, rounded up).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "rounds")]
    duration: Option<Duration>,
    /// Rounds per agent, counted from round 0.
    #[arg(long)]
    rounds: Option<u64>,
    /// Generate the first N rounds without sending them (continue an
    /// earlier run of the same model: same state, seq from N + 1).
    #[arg(long, default_value_t = 0)]
    skip_rounds: u64,
    /// The seed: the same seed and flags give the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Round 0's timestamp: Unix milliseconds, `now`, or `now-DURATION`
    /// (`now-10m`, to backfill up to about now).
    #[arg(long, default_value = "now")]
    start: String,
    /// Chance per hub and round that an outage (2 to 40 rounds of failed
    /// health checks, no metrics) starts.
    #[arg(long, default_value_t = 0.0005)]
    outage_rate: f64,
    /// Where to send.
    #[arg(long, value_enum, default_value = "stdout-summary")]
    target: TargetKind,
    /// Receiver URL: `http://HOST:PORT` (the target's usual path is added)
    /// or the whole endpoint.
    #[arg(long)]
    url: Option<String>,
    /// Agents' tokens, a line each: `AGENT_ID TOKEN` or `TOKEN`.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The member batches claim (`""`: none; the collector takes the
    /// token's member).
    #[arg(long, default_value = "")]
    member: String,
    /// Rounds back to back with synthetic timestamps instead of one per
    /// interval in real time.
    #[arg(long)]
    as_fast_as_possible: bool,
    /// Digest what is sent (always on for stdout-summary).
    #[arg(long)]
    digest: bool,
    /// Attempts per request on a 5xx, a 429 or no answer.
    #[arg(long, default_value_t = 10)]
    attempts: u32,
    /// Generate and encode every round before the clock starts (for
    /// benchmarks: the figures then measure the receiver, not the
    /// generator).
    #[arg(long)]
    pregenerate: bool,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn now_ms() -> anyhow::Result<i64> {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(i64::try_from(since.as_millis())?)
}

fn parse_start(text: &str) -> anyhow::Result<i64> {
    if text == "now" {
        return now_ms();
    }
    if let Some(back) = text.strip_prefix("now-") {
        let back = humantime::parse_duration(back).with_context(|| format!("--start {text}"))?;
        return Ok(now_ms()? - i64::try_from(back.as_millis())?);
    }
    text.parse()
        .with_context(|| format!("--start {text:?}: Unix ms, `now` or `now-DURATION`"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let interval_ms = i64::try_from(cli.interval.as_millis())?;
    if interval_ms <= 0 {
        bail!("--interval must be positive");
    }
    let rounds = match (cli.rounds, cli.duration) {
        (Some(rounds), _) => rounds,
        (None, Some(duration)) => {
            u64::try_from(duration.as_millis())?.div_ceil(u64::try_from(interval_ms)?)
        }
        (None, None) => bail!("give --rounds N or --duration D"),
    };
    if cli.skip_rounds > rounds {
        bail!(
            "--skip-rounds {} exceeds --rounds {rounds}",
            cli.skip_rounds
        );
    }
    let model = Model {
        agents: cli.agents,
        hubs_per_agent: cli.hubs_per_agent,
        users_per_hub: cli.users_per_hub,
        interval_ms,
        start_ms: parse_start(&cli.start)?,
        seed: cli.seed,
        outage_rate: cli.outage_rate,
    };
    let url = || cli.url.clone().context("--url is required for this target");
    let target = match cli.target {
        TargetKind::Hubwatch => Target::Hubwatch {
            endpoint: Endpoint::parse(&url()?, "/api/v1/ingest")?,
        },
        TargetKind::RemoteWrite => Target::RemoteWrite {
            endpoint: Endpoint::parse(&url()?, "/api/v1/write")?,
        },
        TargetKind::StdoutSummary => Target::Summary,
    };
    let identities = match &cli.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            let identities =
                parse_token_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if identities.len() < cli.agents {
                bail!(
                    "{} names {} agents, --agents is {}",
                    path.display(),
                    identities.len(),
                    cli.agents
                );
            }
            identities
        }
        None if cli.target == TargetKind::Hubwatch => {
            bail!("--target hubwatch needs --token-file (one token per agent)")
        }
        None => Vec::new(),
    };
    let run = Run {
        model,
        rounds,
        skip_rounds: cli.skip_rounds,
        as_fast_as_possible: cli.as_fast_as_possible,
        target,
        identities,
        member: cli.member,
        digest: cli.digest,
        attempts: cli.attempts,
        pregenerate: cli.pregenerate,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(hubwatch_loadgen::run(run));
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    // Exit non-zero when anything went unacknowledged, so scripts notice.
    if report.samples_refused + report.samples_failed > 0 {
        std::process::exit(2);
    }
    Ok(())
}
