//! The command line: `hubwatch-agent run|once|journey|check-config --config FILE`
//! (`check-config` also takes `--z2jh-values FILE`, [`crate::z2jh`]),
//! with global `--log-format` and `--log-level`. `main.rs` only calls
//! [`main`].
//!
//! Exit codes: 0 on success, 2 for a configuration that cannot be used (the
//! message names the key or the file), 1 when the agent fails while running.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hubwatch_shared::config::{self, AgentConfig, ConfigError};
use hubwatch_shared::wire::Record;
use tracing_subscriber::EnvFilter;

use crate::privacy::{self, Pseudonymiser};
use crate::runtime;
use crate::sources::collect_all;
use crate::telemetry::AgentMetrics;

/// Exit code for a configuration that cannot be used.
pub const EXIT_CONFIG: u8 = 2;

/// Exit code for a failure while running.
pub const EXIT_RUNTIME: u8 = 1;

/// hubwatch's agent: collects this cluster's figures and streams them,
/// spooled on disk, to the collector.
#[derive(Debug, Parser)]
#[command(name = "hubwatch-agent", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level (a tracing filter such as `info` or `hubwatch_agent=debug`);
    /// `RUST_LOG` wins when set.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collect and stream until SIGTERM or SIGINT.
    Run {
        /// The agent's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Collect once from every source and print each record as one JSON line
    /// on stdout: exactly what would leave the cluster. Sends nothing and
    /// does not touch the spool.
    Once {
        /// The agent's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run one synthetic user journey on a hub now (even with
    /// `journey.enabled = false`) and print its phases; exit 0 when it
    /// succeeded, 1 when it failed, 2 for a config error. Sends nothing.
    Journey {
        /// The agent's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// The hub (`[[hubs]] name`).
        #[arg(long)]
        hub: String,
        /// Print the result as one JSON line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the config and print a summary; exit 2 naming the key if it is wrong.
    CheckConfig {
        /// The agent's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Also check zero-to-jupyterhub values (`hub.services.hubwatch`,
        /// `hub.loadRoles`) against the config: missing scopes are errors,
        /// extra scopes warnings.
        #[arg(long)]
        z2jh_values: Option<PathBuf>,
    },
    /// Ask the running agent's own `/healthz` on `[agent] listen`; exit 0
    /// when it answers 200, 1 when not, 2 for a config error. For a
    /// container HEALTHCHECK (no shell or curl needed).
    Health {
        /// The agent's TOML config (the one the agent runs with).
        #[arg(long)]
        config: PathBuf,
        /// Time allowed for each step (connect, write, read), e.g. `5s`.
        #[arg(long, default_value = "5s")]
        timeout: String,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, event fields at the top level.
    Json,
    /// Human-readable.
    Pretty,
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or environment holds a bad value.
    #[error("config file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which key and why.
        source: ConfigError,
    },
}

/// Reads the config file and the environment (`HUBWATCH_<SECTION>__<KEY>`)
/// and validates the result.
pub fn load_config(path: &Path) -> Result<AgentConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let env: HashMap<String, String> = std::env::vars().collect();
    config::load::<AgentConfig>(&text, &env).map_err(|source| LoadError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

/// The binary's whole life: parse flags, set up logs, run the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    match cli.command {
        Command::Health { config, timeout } => {
            let cfg = match load_config(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let timeout = match humantime::parse_duration(&timeout) {
                Ok(timeout) => timeout,
                Err(e) => {
                    eprintln!("error: --timeout {timeout:?}: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match crate::health_check::check(cfg.agent.listen, timeout) {
                Ok(url) => {
                    println!("healthy: {url}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: health: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::CheckConfig {
            config,
            z2jh_values,
        } => match load_config(&config) {
            Ok(cfg) => {
                // The collector link's CA and client certificate are read
                // as `run` would, so a missing or mismatched file fails
                // here, naming its key.
                if let Err(e) = crate::sender::build_client(&cfg.collector) {
                    eprintln!("error: config file {}: {e}", config.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
                println!("config ok");
                println!("{}", summary(&cfg));
                match z2jh_values {
                    Some(values) => check_z2jh(&cfg, &values),
                    None => ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Once { config } => {
            let cfg = match load_config(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            once_blocking(&cfg)
        }
        Command::Journey { config, hub, json } => {
            let cfg = match load_config(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            journey_blocking(&cfg, &hub, json)
        }
        Command::Run { config } => {
            let cfg = match load_config(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            run_blocking(cfg)
        }
    }
}

/// `check-config --z2jh-values`: prints each warning and error; exit 2 on any
/// error.
fn check_z2jh(cfg: &AgentConfig, values: &Path) -> ExitCode {
    let found = match crate::z2jh::check_file(cfg, values) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in &found.warnings {
        eprintln!("warning: z2jh values {}: {warning}", values.display());
    }
    for error in &found.errors {
        eprintln!("error: z2jh values {}: {error}", values.display());
    }
    if found.errors.is_empty() {
        println!("z2jh values ok: {}", values.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CONFIG)
    }
}

/// Runs the agent on a single-threaded tokio runtime (blocking work, the
/// spool and sysinfo, goes to a small blocking pool): the agent is a guest
/// and needs little, so one thread keeps its footprint down.
fn run_blocking(cfg: AgentConfig) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .thread_keep_alive(std::time::Duration::from_secs(20))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match rt.block_on(runtime::run(cfg, shutdown_signal())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e @ runtime::AgentError::Sender(_)) => {
            tracing::error!(error = %e, "cannot start");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// `once`: one collection of every source, printed as JSON lines.
fn once_blocking(cfg: &AgentConfig) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let records = match rt.block_on(collect_once(cfg)) {
        Ok(records) => records,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for record in &records {
        let written = serde_json::to_writer(&mut out, record)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        if let Err(e) = written {
            eprintln!("error: writing stdout: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    }
    if let Err(e) = out.flush() {
        eprintln!("error: writing stdout: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    ExitCode::SUCCESS
}

/// `journey`: one journey on `hub`, printed as a table or one JSON line.
fn journey_blocking(cfg: &AgentConfig, hub: &str, json: bool) -> ExitCode {
    let Some(hub_cfg) = cfg.hubs.iter().find(|h| h.name == hub) else {
        eprintln!(
            "error: no [[hubs]] entry named {hub:?} (configured: {})",
            cfg.hubs
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    if hub_cfg.journey.token_file.is_none() {
        let i = cfg.hubs.iter().position(|h| h.name == hub).unwrap_or(0);
        eprintln!(
            "error: config key `hubs[{i}].journey.token_file`: required to run a journey \
             (the test user's own API token)"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let pseudonymiser = match once_pseudonymiser(cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let journey = match crate::sources::journey::Journey::new(hub_cfg, pseudonymiser) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = rt.block_on(journey.run());
    let text = if json {
        match serde_json::to_string(&result) {
            Ok(line) => format!("{line}\n"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        }
    } else {
        crate::sources::journey::table(&result)
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        eprintln!("error: writing stdout: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    if result.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_RUNTIME)
    }
}

/// The pseudonymiser of `once` and `journey` (see [`collect_once`]).
fn once_pseudonymiser(cfg: &AgentConfig) -> Result<Pseudonymiser, runtime::AgentError> {
    let generated = cfg.agent.spool_dir.join(privacy::GENERATED_SECRET_FILE);
    if cfg.privacy.pseudonymise_users && cfg.privacy.secret_file.is_none() && !generated.exists() {
        tracing::warn!(
            path = %generated.display(),
            "no privacy.secret_file and no generated secret yet: pseudonyms in this output use \
             a throwaway secret and will differ from the ones `run` sends"
        );
        return Ok(Pseudonymiser::with_secret(&rand::random::<[u8; 32]>()));
    }
    Pseudonymiser::from_config(&cfg.privacy, &cfg.agent.spool_dir).map_err(|e| {
        runtime::AgentError::Source {
            name: "privacy",
            source: crate::sources::SourceError::Read(e.to_string()),
        }
    })
}

/// One collection of every configured source, as `run` would make it, but
/// without the spool, the sender or the listener. The pseudonymiser reads
/// the configured `secret_file`, or the secret a running agent generated in
/// its spool directory; when neither exists yet it uses a throwaway secret
/// (so nothing is written) and says so: the pseudonyms then differ from the
/// ones `run` will send, though their shape is the same.
pub async fn collect_once(cfg: &AgentConfig) -> Result<Vec<Record>, runtime::AgentError> {
    let pseudonymiser = once_pseudonymiser(cfg)?;
    let metrics = AgentMetrics::new();
    // `once` runs no journey: nothing to hold back.
    let sources = runtime::build_sources(cfg, &metrics, &pseudonymiser, &Default::default())?;
    let outcomes = collect_all(&sources, runtime::source_timeout(cfg.agent.interval)).await;
    Ok(outcomes.into_iter().flat_map(|o| o.records).collect())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                }
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot install signal handlers; using ctrl-c only");
            }
        }
    }
    if tokio::signal::ctrl_c().await.is_ok() {
        tracing::info!(signal = "SIGINT", "shutdown requested");
    } else {
        // No way to hear a signal: run until killed.
        std::future::pending::<()>().await;
    }
}

/// A short human summary of a valid config (no secrets).
pub fn summary(cfg: &AgentConfig) -> String {
    let credential = match (
        &cfg.collector.token,
        &cfg.collector.token_file,
        &cfg.collector.client_cert,
    ) {
        (Some(_), _, _) => "token (environment or config)".to_string(),
        (None, Some(path), _) => format!("token file {}", path.display()),
        (None, None, Some(cert)) => format!("client certificate {}", cert.display()),
        (None, None, None) => "none".to_string(),
    };
    format!(
        "agent:      {} (member {})\n\
         collector:  {} via {credential}\n\
         interval:   {}\n\
         spool:      {} (max {}, memory fallback {})\n\
         listen:     {}\n\
         sources:    host {}, {} hub(s)",
        cfg.agent.id,
        if cfg.agent.member.is_empty() {
            "from the token"
        } else {
            &cfg.agent.member
        },
        cfg.collector.endpoints().join(", "),
        humantime::format_duration(cfg.agent.interval),
        cfg.agent.spool_dir.display(),
        cfg.agent.spool_max_bytes,
        cfg.agent.memory_buffer_max_bytes,
        cfg.agent.listen,
        if cfg.host.enabled { "on" } else { "off" },
        cfg.hubs.len(),
    )
}

fn init_logging(format: Option<LogFormat>, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging not set up: {e}");
    }
}
