//! `hubwatch-collector incident list|show|open|update|resolve`: operators'
//! side of status incidents, on the same store a running collector uses (the
//! SQLite file, like `token create`: every connection waits on a busy file;
//! or the PostgreSQL database). `list`
//! prints one line per incident, the others the incident as the API shows
//! it (JSON, with its updates). Bad arguments name the flag (exit 2); an
//! unknown id exits 1.

use std::io::Write;
use std::sync::Arc;

use clap::{Args, Subcommand};
use hubwatch_shared::config::CollectorConfig;

use super::api::{DEFAULT_AUTHOR, DEFAULT_RANGE_MS, incident_json};
use super::{
    IncidentFilter, IncidentState, InputError, NewIncident, NewUpdate, StatusIncidentStore,
    check_hub, check_text, parse_state, status_incident_store,
};
use crate::cli::CliError;
use crate::clock::rfc3339;
use crate::store::Storage;

/// `incident ...`.
#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Incidents of the last 90 days (open ones always), one line each:
    /// id, state, member, hub, start, end, title.
    List {
        /// The collector's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
        /// Only this member's.
        #[arg(long, value_name = "ID")]
        member: Option<String>,
        /// Only this hub's.
        #[arg(long, value_name = "NAME")]
        hub: Option<String>,
    },
    /// One incident with its updates, as JSON.
    Show(IdArgs),
    /// Open an incident (state investigating unless --state says otherwise).
    Open {
        /// The collector's TOML config file.
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
        /// The member (an id under `[[members]]`).
        #[arg(long, value_name = "ID")]
        member: String,
        /// One of the member's hubs.
        #[arg(long, value_name = "NAME")]
        hub: String,
        /// One line for people.
        #[arg(long)]
        title: String,
        /// The first update's message.
        #[arg(long)]
        message: String,
        /// investigating, identified, monitoring or resolved.
        #[arg(long, default_value = "investigating")]
        state: String,
        /// Who writes it.
        #[arg(long, default_value = DEFAULT_AUTHOR)]
        author: String,
    },
    /// Add an update: a new state and a message.
    Update {
        /// The incident and the store.
        #[command(flatten)]
        id: IdArgs,
        /// investigating, identified, monitoring or resolved (any order is allowed).
        #[arg(long)]
        state: String,
        /// What people are told.
        #[arg(long)]
        message: String,
        /// Who writes it.
        #[arg(long, default_value = DEFAULT_AUTHOR)]
        author: String,
    },
    /// Resolve an incident (an update with state resolved).
    Resolve {
        /// The incident and the store.
        #[command(flatten)]
        id: IdArgs,
        /// What people are told.
        #[arg(long, default_value = "This incident is resolved.")]
        message: String,
        /// Who writes it.
        #[arg(long, default_value = DEFAULT_AUTHOR)]
        author: String,
    },
}

/// `--config FILE --id N`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The collector's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// The incident's id.
    #[arg(long)]
    pub id: i64,
}

fn argument(e: InputError) -> CliError {
    CliError::BadArgument(format!("--{}: {}", e.field, e.reason))
}

/// Runs one `incident` command at `now_ms`, writing its output to `out`.
pub fn run(
    command: IncidentCommand,
    load: impl Fn(&std::path::Path) -> Result<CollectorConfig, CliError>,
    now_ms: i64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let open_store = |cfg: &CollectorConfig| -> Result<Arc<dyn StatusIncidentStore>, CliError> {
        Ok(status_incident_store(&Storage::open(&cfg.storage)?))
    };
    let write = |out: &mut dyn Write, text: String| {
        out.write_all(text.as_bytes())
            .map_err(|e| CliError::BadArgument(format!("writing the output: {e}")))
    };
    match command {
        IncidentCommand::List {
            config,
            member,
            hub,
        } => {
            let store = open_store(&load(&config)?)?;
            let filter = IncidentFilter {
                member: member.clone(),
                hub: hub.clone(),
                from_ms: now_ms.saturating_sub(DEFAULT_RANGE_MS),
                to_ms: now_ms.saturating_add(1),
            };
            let mut incidents = store.incidents(&filter)?;
            // An incident still open from before the range is listed too.
            for open in store.open_incidents(member.as_deref())? {
                if hub.as_ref().is_none_or(|h| *h == open.hub)
                    && !incidents.iter().any(|i| i.id == open.id)
                {
                    incidents.push(open);
                }
            }
            incidents.sort_by_key(|i| (i.started_at_ms, i.id));
            let mut text = String::new();
            for i in incidents {
                text.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    i.id,
                    i.state,
                    i.member,
                    i.hub,
                    rfc3339(i.started_at_ms),
                    i.ended_at_ms.map_or_else(|| "-".to_string(), rfc3339),
                    i.title
                ));
            }
            write(out, text)
        }
        IncidentCommand::Show(IdArgs { config, id }) => {
            let store = open_store(&load(&config)?)?;
            let incident = store.incident(id)?.ok_or(CliError::NoIncident(id))?;
            let json = incident_json(&incident, &store.updates(id)?);
            write(out, format!("{json:#}\n"))
        }
        IncidentCommand::Open {
            config,
            member,
            hub,
            title,
            message,
            state,
            author,
        } => {
            let cfg = load(&config)?;
            check_hub(&cfg, &member, &hub).map_err(argument)?;
            check_text("title", &title).map_err(argument)?;
            let update = new_update(&state, message, author, now_ms)?;
            let store = open_store(&cfg)?;
            let incident = store.open(&NewIncident {
                member,
                hub,
                title,
                update,
            })?;
            let json = incident_json(&incident, &store.updates(incident.id)?);
            write(out, format!("{json:#}\n"))
        }
        IncidentCommand::Update {
            id: IdArgs { config, id },
            state,
            message,
            author,
        } => {
            let update = new_update(&state, message, author, now_ms)?;
            add(&*open_store(&load(&config)?)?, id, &update, out)
        }
        IncidentCommand::Resolve {
            id: IdArgs { config, id },
            message,
            author,
        } => {
            let update = new_update(IncidentState::Resolved.as_str(), message, author, now_ms)?;
            add(&*open_store(&load(&config)?)?, id, &update, out)
        }
    }
}

fn new_update(
    state: &str,
    message: String,
    author: String,
    now_ms: i64,
) -> Result<NewUpdate, CliError> {
    let state = parse_state("state", state).map_err(argument)?;
    check_text("message", &message).map_err(argument)?;
    check_text("author", &author).map_err(argument)?;
    Ok(NewUpdate {
        state,
        message,
        at_ms: now_ms,
        author,
    })
}

fn add(
    store: &dyn StatusIncidentStore,
    id: i64,
    update: &NewUpdate,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let incident = store
        .add_update(id, update)?
        .ok_or(CliError::NoIncident(id))?;
    let json = incident_json(&incident, &store.updates(id)?);
    out.write_all(format!("{json:#}\n").as_bytes())
        .map_err(|e| CliError::BadArgument(format!("writing the output: {e}")))
}
