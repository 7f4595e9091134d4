//! The `hubwatch-collector` command line: `serve`, `check-config`,
//! `token create`, `token revoke`, `replay`, `costs import`, `report` and
//! `incident` (see
//! INTERFACES.md). `main.rs` only calls
//! [`main`]; everything here is a library so tests can drive it.
//!
//! Exit codes: 0 success, 1 an operation failed (e.g. no live token to
//! revoke, the store cannot be opened), 2 the configuration is unusable (the
//! message names the key). Logs go to stderr; `token create` writes only the
//! token to stdout, `costs import` what it imported, `report` the report.
//! A bad `--period`, `--member` or `--format` of `report` exits 2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hubwatch_shared::config::{self, CollectorConfig, ConfigError, StorageBackend, StorageConfig};

use crate::server::ServerError;
use crate::store::pg::PgStore;
use crate::store::{Storage, Store, StoreError};

#[cfg(test)]
mod tests;

/// `hubwatch-collector`: authenticates agents, stores their batches durably,
/// serves the fleet's state.
#[derive(Debug, Parser)]
#[command(name = "hubwatch-collector", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `hubwatch_collector=debug,info`.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the collector until SIGTERM or SIGINT.
    Serve(ConfigArg),
    /// Load and validate the config, print a summary, start nothing.
    CheckConfig(ConfigArg),
    /// Manage agent tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Feed recorded batches (or the scenario library) through the SLO
    /// engine on a simulated clock and print the alert transitions.
    Replay(crate::slo::replay::ReplayArgs),
    /// Cost recovery: import a FOCUS bill.
    #[command(subcommand)]
    Costs(CostsCommand),
    /// Print a month's report: one member's (`--member`), else the fleet's
    /// (md, html) or every member's rows (csv, json, focus). See docs/reports.md.
    Report(ReportArgs),
    /// Maintenance windows: add, list, remove (docs/maintenance.md).
    #[command(subcommand)]
    Maintenance(crate::maintenance::cli::MaintenanceCommand),
    /// Print a signed link to a member's status page (for a private page:
    /// anyone holding it reads the page until it expires). See docs/status.md.
    StatusLink(StatusLinkArgs),
    /// Status incidents: list, show, open, update, resolve (docs/incidents.md).
    #[command(subcommand)]
    Incident(crate::incidents::cli::IncidentCommand),
    /// Copy the store to FILE while the collector runs (SQLite online
    /// backup of one snapshot), check it, print its size and schema version.
    Backup(BackupArgs),
    /// Put a backup in place as the store; refused while a collector holds
    /// it (docs/operations.md).
    Restore(RestoreArgs),
    /// Read every raw batch frame in the SQLite store and check it (CRC-32,
    /// decode, record count) with SQLite's quick_check; per agent: intact,
    /// damaged, unreadable. Exit 0 when clean, 1 when damage is found. Safe
    /// beside a running collector (one read snapshot).
    VerifyStore(VerifyStoreArgs),
    /// Ask the running collector's own `/readyz` (at `server.listen`, TLS
    /// pinned to `server.tls_cert`); exit 0 when ready, 1 when not, 2 for a
    /// config error. For a container HEALTHCHECK (no shell or curl needed).
    Health(HealthArgs),
}

/// `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The collector's TOML config file (its `storage.path`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Where to write the copy; never overwritten.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The collector's TOML config file (its `storage.path`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The backup to put in place.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

/// `verify-store`.
#[derive(Debug, Args)]
pub struct VerifyStoreArgs {
    /// The collector's TOML config file (its `storage.path`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// `text` for people, `json` for scripts.
    #[arg(long, value_enum, default_value = "text")]
    pub format: VerifyFormat,
}

/// `verify-store --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyFormat {
    /// A summary and one line per damaged batch.
    Text,
    /// The whole report as one JSON object.
    Json,
}

/// `health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The collector's TOML config file (the one the server runs with).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Time allowed for the whole request, e.g. `5s`.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub timeout: String,
}

/// `status-link`.
#[derive(Debug, Args)]
pub struct StatusLinkArgs {
    /// The collector's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The member (an id under `[[members]]`).
    #[arg(long, value_name = "ID")]
    pub member: String,
    /// How long the link is valid, e.g. `7d`, `12h`.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub ttl: String,
}

/// `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The collector's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The month, `YYYY-MM` (UTC).
    #[arg(long, value_name = "YYYY-MM")]
    pub period: String,
    /// One member's report (an id under `[[members]]`).
    #[arg(long, value_name = "ID")]
    pub member: Option<String>,
    /// csv, json, focus, md or html.
    #[arg(long, value_name = "FORMAT")]
    pub format: String,
}

/// `costs import`.
#[derive(Debug, Subcommand)]
pub enum CostsCommand {
    /// Import a FOCUS 1.x cost and usage CSV: one bill per cluster and month
    /// (docs/costs.md). Refused whole, with the line number, on bad input;
    /// importing the same file again changes nothing.
    Import {
        /// The collector's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The FOCUS CSV file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

/// `--config FILE`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The collector's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `token create|revoke`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for an agent of a member; prints the token once on stdout.
    Create {
        /// The collector's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The member the agent belongs to (an id under `[[members]]`).
        #[arg(long, value_name = "ID")]
        member: String,
        /// The agent's name (its `[agent] id`).
        #[arg(long, value_name = "NAME")]
        agent: String,
        /// Makes the agent a replica of this HA agent pair: per member and
        /// cluster the collector stores the batches of one elected replica.
        #[arg(long, value_name = "CLUSTER")]
        ha_cluster: Option<String>,
    },
    /// Revoke an agent's live token; a running collector refuses it within seconds.
    Revoke {
        /// The collector's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The agent's name.
        #[arg(long, value_name = "NAME")]
        agent: String,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config is unusable; the message names the key.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// `backup` or `restore` failed.
    #[error("{0}")]
    Backup(#[from] crate::store::backup::BackupError),
    /// The server could not start.
    #[error("{0}")]
    Server(#[from] ServerError),
    /// A `[[remote_write]]` file (token, password, CA, client certificate)
    /// cannot be used; the message names the key.
    #[error("{0}")]
    RemoteWrite(#[from] crate::remote_write_out::client::DestinationError),
    /// `verify-store` found damage (the report went to stdout).
    #[error("the store is damaged: {0} damaged batches, {1} unreadable rows (the report above)")]
    StoreDamaged(u64, u64),
    /// `token revoke` for an agent without a live token.
    #[error("agent {0:?} has no live token to revoke")]
    NoLiveToken(String),
    /// An agent or member name that cannot be used.
    #[error("{what} {value:?} must be 1-128 characters of a-z, A-Z, 0-9, '-', '_' or '.'")]
    InvalidName {
        /// `member` or `agent`.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// Self-telemetry could not be set up (names the key or variable).
    #[error("{0}")]
    Telemetry(#[from] crate::telemetry::otlp::TelemetryError),
    /// A replica on PostgreSQL stopped leading (lost or could not renew
    /// the lease) and shut down; its supervisor restarts it as a follower.
    #[error(
        "stopped leading ({0}); exiting so this collector restarts as a follower of the replica \
         that leads now"
    )]
    LeaderLost(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// `replay` failed.
    #[error("replay: {0}")]
    Replay(#[from] crate::slo::replay::ReplayError),
    /// The bill file could not be read.
    #[error("cannot read bill file {}: {source}", path.display())]
    ReadBill {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `report` argument that cannot be used (names the flag).
    #[error("{0}")]
    BadArgument(String),
    /// The report could not be built.
    #[error("report: {0}")]
    Report(#[from] crate::report::ReportError),
    /// The report could not be rendered.
    #[error("report: {0}")]
    Render(#[from] crate::report::RenderError),
    /// A `maintenance` command failed.
    #[error("maintenance: {0}")]
    Maintenance(#[from] crate::maintenance::cli::MaintenanceCliError),
    /// `health`: not ready, or could not ask.
    #[error("health: {0}")]
    Health(#[from] crate::health_check::HealthError),
    /// `incident show|update|resolve` of an id that does not exist.
    #[error("no incident {0}")]
    NoIncident(i64),
    /// `costs import` refused the file or could not store it.
    #[error("costs import {}: {source}", path.display())]
    Import {
        /// The file.
        path: PathBuf,
        /// Why (boxed: a store error is large, and every command returns this enum).
        source: Box<crate::cost::import::ImportError>,
    },
}

impl CliError {
    /// The process exit code for this error: 2 for configuration, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::ReadConfig { .. }
            | Self::Config(_)
            | Self::BadArgument(_)
            | Self::RemoteWrite(_)
            | Self::Telemetry(_)
            | Self::Store(StoreError::PostgresConfig { .. }) => 2,
            Self::Report(crate::report::ReportError::UnknownMember(_))
            | Self::Report(crate::report::ReportError::Config(_)) => 2,
            Self::Server(ServerError::Bind { .. } | ServerError::Tls { .. }) => 2,
            Self::Maintenance(crate::maintenance::cli::MaintenanceCliError::Window(_)) => 2,
            Self::Health(crate::health_check::HealthError::Certificate { .. }) => 2,
            Self::Server(ServerError::Component(e)) if e.is_config() => 2,
            _ => 1,
        }
    }
}

/// Parses the process arguments, sets up logging, runs the command, and
/// returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One report, in the format asked for: JSON consumers get an
            // event, people get a plain line.
            match cli.log_format {
                LogFormat::Json => tracing::error!(error = %e, "hubwatch-collector failed"),
                LogFormat::Pretty => eprintln!("error: {e}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs to stderr, as JSON lines or human-readable, filtered by `level`
/// (falling back to `info` when the filter does not parse). The subscriber
/// also holds an empty slot for the OTLP span exporter, which `serve` fills
/// when `[telemetry]` asks for it (`telemetry::otlp::install`).
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Pretty => fmt.boxed(),
    };
    // Each layer has its own filter: the log level does not decide which
    // spans are exported, and the exporter sees only the collector's spans.
    let subscriber = tracing_subscriber::registry()
        .with(crate::telemetry::otlp::slot().with_filter(crate::telemetry::otlp::span_filter()))
        .with(fmt.with_filter(filter));
    // A second initialisation (tests) keeps the first subscriber.
    let _ = subscriber.try_init();
}

/// Runs one command.
pub fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Serve(arg) => serve(&load_config(&arg.config)?),
        Command::Health(args) => {
            let cfg = load_config(&args.config)?;
            let timeout = humantime::parse_duration(&args.timeout)
                .map_err(|e| CliError::BadArgument(format!("--timeout {:?}: {e}", args.timeout)))?;
            let url = crate::health_check::check(&cfg, timeout)?;
            println!("ready: {url}");
            Ok(())
        }
        Command::CheckConfig(arg) => {
            let cfg = load_config(&arg.config)?;
            // Files named by [[remote_write]] keys are read as serve would.
            crate::remote_write_out::check_files(&cfg)?;
            // The listener's certificate, key and client CA are read and
            // matched as serve would, so a missing or mismatched file fails
            // here, naming its key, not at the next restart.
            crate::server::server_tls_config(&cfg.server)?;
            // The PostgreSQL keys as serve would use them: the URL parsed
            // by the driver, password_file and ca_file read.
            if cfg.storage.backend == StorageBackend::Postgres {
                crate::store::pg::connect::check(&cfg.storage)?;
            }
            println!("config ok");
            println!("{}", summary(&cfg));
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            config,
            member,
            agent,
            ha_cluster,
        }) => {
            let cfg = load_config(&config)?;
            let token = create_token_in_cluster(&cfg, &member, &agent, ha_cluster.as_deref())?;
            println!("{token}");
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { config, agent }) => {
            let cfg = load_config(&config)?;
            revoke_token(&cfg, &agent)
        }
        Command::Replay(args) => {
            let cfg = load_config(&args.config)?;
            Ok(crate::slo::replay::run_cli(&cfg, &args)?)
        }
        Command::Costs(CostsCommand::Import { config, file }) => {
            let cfg = load_config(&config)?;
            let report = import_costs(&cfg, &file)?;
            print!("{report}");
            Ok(())
        }
        Command::Incident(command) => crate::incidents::cli::run(
            command,
            load_config,
            crate::clock::system_now_ms(),
            &mut std::io::stdout().lock(),
        ),
        Command::Report(args) => {
            let cfg = load_config(&args.config)?;
            let text = report(&cfg, &args, crate::clock::system_now_ms())?;
            print!("{text}");
            Ok(())
        }
        Command::Maintenance(command) => {
            let cfg = load_config(command.config())?;
            let text = crate::maintenance::cli::run(&cfg, command, crate::clock::system_now_ms())?;
            print!("{text}");
            Ok(())
        }
        Command::Backup(args) => {
            let cfg = load_config(&args.config)?;
            let report = crate::store::backup::backup(&cfg.storage.path, &args.out)?;
            println!("{report}");
            Ok(())
        }
        Command::VerifyStore(args) => {
            let cfg = load_config(&args.config)?;
            if cfg.storage.backend == StorageBackend::Postgres {
                return Err(CliError::BadArgument(
                    "verify-store reads the embedded SQLite store; PostgreSQL checks its own \
                     pages (initdb --data-checksums, pg_amcheck; docs/operations.md)"
                        .to_string(),
                ));
            }
            let report = crate::store::verify::verify(&cfg.storage.path)?;
            match args.format {
                VerifyFormat::Text => println!("{report}"),
                VerifyFormat::Json => println!(
                    "{}",
                    serde_json::to_string(&report)
                        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                ),
            }
            if report.is_clean() {
                Ok(())
            } else {
                Err(CliError::StoreDamaged(
                    report.damaged_total,
                    report.unreadable_total,
                ))
            }
        }
        Command::Restore(args) => {
            let cfg = load_config(&args.config)?;
            let report = crate::store::backup::restore(
                &cfg.storage.path,
                &args.from,
                crate::clock::system_now_ms(),
            )?;
            println!("restored {report}");
            Ok(())
        }
        Command::StatusLink(args) => {
            let cfg = load_config(&args.config)?;
            println!(
                "{}",
                status_link(&cfg, &args, crate::clock::system_now_ms())?
            );
            Ok(())
        }
    }
}

/// `status-link`: the member's page URL (under `alerting.external_url`
/// when set, else the path alone) with `exp` and `sig`, signed with the
/// store's link key (made on first use).
pub fn status_link(
    cfg: &CollectorConfig,
    args: &StatusLinkArgs,
    now_ms: i64,
) -> Result<String, CliError> {
    if cfg.member(&args.member).is_none() {
        return Err(CliError::BadArgument(format!(
            "--member {:?}: not listed under [[members]]",
            args.member
        )));
    }
    let ttl = humantime::parse_duration(&args.ttl)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            CliError::BadArgument(format!(
                "--ttl {:?}: not a duration such as 7d or 12h",
                args.ttl
            ))
        })?;
    let store = Storage::open(&cfg.storage)?;
    let key = crate::status::link::LinkKey::load_or_create(&store)?;
    let expires_s =
        (now_ms / 1000).saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let base = cfg
        .alerting
        .external_url
        .as_deref()
        .map(|u| u.trim_end_matches('/'))
        .unwrap_or_default();
    Ok(format!(
        "{base}/status/{}?{}",
        args.member,
        key.query(&args.member, expires_s)
    ))
}

/// `report`: checks the arguments, opens the store of either backend (a
/// running collector may hold a SQLite file; every connection waits on
/// it), freezes any closed month not frozen yet, then builds and renders
/// the report.
pub fn report(cfg: &CollectorConfig, args: &ReportArgs, now_ms: i64) -> Result<String, CliError> {
    let period = config::Period::parse(&args.period)
        .map_err(|e| CliError::BadArgument(format!("--period {:?}: {e}", args.period)))?;
    let format = crate::report::Format::parse(&args.format).ok_or_else(|| {
        CliError::BadArgument(format!(
            "--format {:?}: not one of csv, json, focus, md, html",
            args.format
        ))
    })?;
    if let Some(member) = &args.member
        && cfg.member(member).is_none()
    {
        return Err(CliError::BadArgument(format!(
            "--member {member:?}: not listed under [[members]]"
        )));
    }
    let store = Storage::open(&cfg.storage)?;
    let ctx = crate::report::ReportContext::open(cfg, &store)?;
    crate::report::freeze(&ctx, now_ms)?;
    let report = crate::report::build(&ctx, period, args.member.as_deref(), now_ms)?;
    Ok(crate::report::render(&report, format)?)
}

/// `costs import`: parses the FOCUS file against the config's cost model
/// and stores its bills (nothing when refused).
pub fn import_costs(
    cfg: &CollectorConfig,
    file: &Path,
) -> Result<crate::cost::import::ImportReport, CliError> {
    let model = crate::cost::CostModel::from_config(cfg).map_err(|e| match e {
        crate::cost::ModelError::Config(c) => CliError::Config(c),
    })?;
    let data = std::fs::read(file).map_err(|source| CliError::ReadBill {
        path: file.to_path_buf(),
        source,
    })?;
    let store = Storage::open(&cfg.storage)?;
    let cost = crate::cost::store::cost_store(&store);
    let now_ms = crate::clock::system_now_ms();
    let name = file.display().to_string();
    crate::cost::import::import_file(
        &*cost,
        &model,
        &crate::cost::import::account_map(cfg),
        &name,
        &data,
        now_ms,
    )
    .map_err(|source| CliError::Import {
        path: file.to_path_buf(),
        source: Box::new(source),
    })
}

/// Reads the file and the process environment and loads the config.
pub fn load_config(path: &Path) -> Result<CollectorConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    let env: HashMap<String, String> = std::env::vars().collect();
    Ok(config::load::<CollectorConfig>(&text, &env)?)
}

/// The lines `check-config` prints after "config ok".
pub fn summary(cfg: &CollectorConfig) -> String {
    let s = &cfg.server;
    format!(
        "listen: {}\ntls: {}\nmtls: {}\nstore: {}\nraw_retention: {}\nmax_body_bytes: {}\nmembers: {}\nalertmanagers: {}",
        s.listen,
        on_off(s.tls_enabled()),
        on_off(s.client_ca.is_some()),
        store_summary(&cfg.storage),
        humantime::format_duration(cfg.storage.raw_retention),
        s.max_body_bytes,
        cfg.members.len(),
        cfg.alertmanagers.len(),
    )
}

/// Where the store is, never with a password.
fn store_summary(storage: &StorageConfig) -> String {
    match storage.backend {
        StorageBackend::Sqlite => storage.path.display().to_string(),
        StorageBackend::Postgres => match crate::store::pg::connect::check(storage) {
            Ok(()) => crate::store::pg::connect::display_name(storage),
            Err(e) => format!("postgres ({e})"),
        },
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Creates a token and returns it (the caller prints it once). Warns when the
/// member is not under `[[members]]`: the config may lag, so it is allowed.
pub fn create_token(cfg: &CollectorConfig, member: &str, agent: &str) -> Result<String, CliError> {
    create_token_in_cluster(cfg, member, agent, None)
}

/// [`create_token`] binding the agent to the HA agent pair `ha_cluster`
/// (`--ha-cluster`).
pub fn create_token_in_cluster(
    cfg: &CollectorConfig,
    member: &str,
    agent: &str,
    ha_cluster: Option<&str>,
) -> Result<String, CliError> {
    check_name("member", member)?;
    check_name("agent", agent)?;
    if let Some(cluster) = ha_cluster {
        check_name("ha-cluster", cluster)?;
    }
    if cfg.member(member).is_none() {
        tracing::warn!(
            member,
            "member is not listed under [[members]] in the config; creating the token anyway"
        );
    }
    let token = match cfg.storage.backend {
        StorageBackend::Sqlite => {
            Store::open(&cfg.storage)?.create_token_in_cluster(member, agent, ha_cluster)?
        }
        StorageBackend::Postgres => {
            PgStore::open(&cfg.storage)?.create_token_in_cluster(member, agent, ha_cluster)?
        }
    };
    tracing::info!(member, agent, ha_cluster, store = %store_summary(&cfg.storage), "token created; it is shown once, on stdout");
    Ok(token)
}

/// Revokes an agent's live token.
pub fn revoke_token(cfg: &CollectorConfig, agent: &str) -> Result<(), CliError> {
    let revoked = match cfg.storage.backend {
        StorageBackend::Sqlite => Store::open(&cfg.storage)?.revoke_token(agent)?,
        StorageBackend::Postgres => PgStore::open(&cfg.storage)?.revoke_token(agent)?,
    };
    if !revoked {
        return Err(CliError::NoLiveToken(agent.to_string()));
    }
    tracing::info!(
        agent,
        "token revoked; a running collector refuses it within seconds"
    );
    Ok(())
}

fn check_name(what: &'static str, value: &str) -> Result<(), CliError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CliError::InvalidName {
            what,
            value: value.to_string(),
        })
    }
}

/// `serve`: opens the store, starts every feature ([`crate::Collector`]),
/// runs until SIGTERM/SIGINT, then drains: the listener, then every task;
/// the store closes last.
fn serve(cfg: &CollectorConfig) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let metrics = crate::telemetry::CollectorMetrics::new();
    let telemetry =
        crate::telemetry::otlp::install(&cfg.telemetry, &metrics, runtime.handle().clone())?;
    let served = runtime.block_on(async {
        let store = {
            let storage = cfg.storage.clone();
            tokio::task::spawn_blocking(move || Storage::open(&storage))
                .await
                .map_err(|e| CliError::Server(ServerError::Task(e.to_string())))??
        };
        let store_name = store.describe();
        let running = crate::Collector::new(cfg.clone(), store)
            .metrics(metrics)
            .start()
            .await?;
        tracing::info!(
            listen = %running.local_addr,
            tls = on_off(cfg.server.tls_enabled()),
            mtls = on_off(cfg.server.client_ca.is_some()),
            store = %store_name,
            "hubwatch-collector serving"
        );
        running.wait().await.map_err(CliError::LeaderLost)?;
        tracing::info!("hubwatch-collector stopped");
        Ok(())
    });
    // Flush queued spans while the runtime (which runs the export's request)
    // is still alive; this thread is not one of its workers.
    if let Some(guard) = telemetry {
        guard.shutdown();
    }
    served
}
