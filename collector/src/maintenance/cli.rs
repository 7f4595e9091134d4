//! `hubwatch-collector maintenance add|list|remove`: the API's operations on
//! the store directly (an operator on the collector's host; the SQLite file
//! or the PostgreSQL database `[storage]` names). A running
//! collector picks the change up within [`super::REFRESH_INTERVAL`].

use std::path::PathBuf;

use clap::Subcommand;
use hubwatch_shared::config::CollectorConfig;

use super::api::{AddRequest, window_json};
use super::{Removal, WindowError, maintenance_store};
use crate::store::{Storage, StoreError};

/// `maintenance add|list|remove`.
#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Add a window; prints it as JSON (with its id).
    Add {
        /// The collector's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The member (an id under `[[members]]`).
        #[arg(long, value_name = "ID")]
        member: String,
        /// A hub of the member; repeat for several; none = every hub.
        #[arg(long = "hub", value_name = "NAME")]
        hubs: Vec<String>,
        /// Local start, `YYYY-MM-DDTHH:MM[:SS]` in `--timezone`.
        #[arg(long, value_name = "LOCAL")]
        start: String,
        /// Local end (exclusive), same form.
        #[arg(long, value_name = "LOCAL")]
        end: String,
        /// IANA time zone, e.g. `Europe/Berlin`.
        #[arg(long, value_name = "TZ", default_value = "UTC")]
        timezone: String,
        /// What members are told.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List windows as JSON lines, by start.
    List {
        /// The collector's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Only this member's.
        #[arg(long, value_name = "ID")]
        member: Option<String>,
    },
    /// Remove a window not started yet, or end a running one now.
    Remove {
        /// The collector's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The window's id (from `list`).
        #[arg(long)]
        id: i64,
    },
}

impl MaintenanceCommand {
    /// The `--config` file.
    pub fn config(&self) -> &std::path::Path {
        match self {
            Self::Add { config, .. } | Self::List { config, .. } | Self::Remove { config, .. } => {
                config
            }
        }
    }
}

/// Why a `maintenance` command failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceCliError {
    /// Bad input; the message names the flag.
    #[error("{0} (flag --{flag})", flag = cli_flag(.0.field()))]
    Window(#[from] WindowError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// `remove` of an unknown id.
    #[error("no maintenance window {0}")]
    NotFound(i64),
    /// `remove` of a finished window.
    #[error("maintenance window {0} is over; finished windows stay as history")]
    Past(i64),
}

/// Runs `command` against `cfg`'s store at `now_ms`; returns what to print.
pub fn run(
    cfg: &CollectorConfig,
    command: MaintenanceCommand,
    now_ms: i64,
) -> Result<String, MaintenanceCliError> {
    let store = maintenance_store(&Storage::open(&cfg.storage)?);
    match command {
        MaintenanceCommand::Add {
            member,
            hubs,
            start,
            end,
            timezone,
            note,
            ..
        } => {
            let window = AddRequest {
                member,
                hubs,
                start,
                end,
                timezone: Some(timezone),
                note,
            }
            .validate(cfg, now_ms)?;
            let added = store.add(&window, now_ms)?;
            Ok(format!("{}\n", window_json(&added)))
        }
        MaintenanceCommand::List { member, .. } => {
            let mut out = String::new();
            for w in store.windows(member.as_deref(), i64::MIN, i64::MAX)? {
                out.push_str(&window_json(&w).to_string());
                out.push('\n');
            }
            Ok(out)
        }
        MaintenanceCommand::Remove { id, .. } => match store.remove(id, now_ms)? {
            Removal::Removed => Ok(format!("removed window {id}\n")),
            Removal::CutShort(end_ms) => Ok(format!(
                "window {id} ends at {}\n",
                crate::clock::rfc3339(end_ms)
            )),
            Removal::Past => Err(MaintenanceCliError::Past(id)),
            Removal::NotFound => Err(MaintenanceCliError::NotFound(id)),
        },
    }
}

/// The flag that carries a window field.
fn cli_flag(field: &str) -> &str {
    if field == "hubs" { "hub" } else { field }
}
