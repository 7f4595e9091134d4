//! `/hub/api/users?state=active`: reading the pages, and turning what they
//! show into usage events by comparing each listing with the previous one.
//!
//! Usernames are pseudonymised the moment a page is decoded
//! ([`decode_page`]); nothing after that sees a raw name, and no error
//! built here quotes the body (a decoding error says where, never what).

use std::collections::{BTreeMap, HashMap, HashSet};

use hubwatch_shared::wire::{UsageEvent, UsageKind};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::privacy::Pseudonymiser;

/// Longest profile name forwarded (longer ones are cut, on a char boundary).
const MAX_PROFILE_CHARS: usize = 128;

/// One user as `/hub/api/users` lists it (only the fields used).
#[derive(Debug, Deserialize)]
struct ApiUser {
    name: String,
    /// Present only with the `read:servers` scope. Ordered by name so a
    /// body always decodes to the same list (a `HashMap` listed a user's
    /// servers in a different order each time, found by the `users_page`
    /// fuzz target).
    #[serde(default)]
    servers: Option<BTreeMap<String, ApiServer>>,
}

/// One server of a user.
#[derive(Debug, Deserialize)]
struct ApiServer {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    stopped: bool,
    #[serde(default)]
    started: Option<String>,
    #[serde(default)]
    last_activity: Option<String>,
    #[serde(default)]
    user_options: Option<serde_json::Value>,
}

/// The paginated shape (`Accept: application/jupyterhub-pagination+json`).
#[derive(Debug, Deserialize)]
struct PaginatedUsers {
    items: Vec<ApiUser>,
    #[serde(rename = "_pagination", default)]
    pagination: Option<Pagination>,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    #[serde(default)]
    total: Option<u64>,
    #[serde(default)]
    next: Option<NextPage>,
}

#[derive(Debug, Deserialize)]
struct NextPage {
    offset: u64,
}

/// A server seen in a listing, its user already pseudonymised.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenServer {
    /// The user's pseudonym (or name, with pseudonyms off).
    pub user: String,
    /// The server's name: `""` for the default server; a named server's
    /// name is pseudonymised too (users name servers after themselves).
    pub server: String,
    /// The server answers; a server spawning or stopping is listed but not
    /// ready, and counts as running (it holds resources) until it is gone.
    pub ready: bool,
    /// The hub's `started`, Unix ms.
    pub started_ms: Option<i64>,
    /// The hub's `last_activity`, Unix ms.
    pub last_activity_ms: Option<i64>,
    /// The profile chosen at spawn, from `user_options`.
    pub profile: Option<String>,
}

/// One decoded page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsersPage {
    /// Users on this page.
    pub users: usize,
    /// Users listed without a `servers` field: the token lacks `read:servers`.
    pub users_without_servers: usize,
    /// Their active servers: users in page order, each user's servers in
    /// name order (before pseudonymising).
    pub servers: Vec<SeenServer>,
    /// The offset of the next page, if the hub says there is one.
    pub next_offset: Option<u64>,
    /// Whether the hub answered with the paginated shape (a plain list means
    /// it ignored the `Accept` header; then a full page means "maybe more").
    pub paginated: bool,
    /// The total the hub reports, when paginated.
    pub total: Option<u64>,
}

/// Why a page could not be decoded. Says where, never what (the body holds
/// usernames).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Not JSON at all (an HTML error page, say).
    #[error("not JSON (first byte {0:?})")]
    NotJson(char),
    /// Empty body.
    #[error("empty body")]
    Empty,
    /// JSON, but broken or of the wrong shape.
    #[error("{category} JSON at line {line} column {column}")]
    Json {
        /// syntax, EOF (truncated), or data (wrong shape).
        category: &'static str,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
}

impl From<serde_json::Error> for PageError {
    fn from(e: serde_json::Error) -> Self {
        let category = match e.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "invalid",
            serde_json::error::Category::Data => "unexpected",
            serde_json::error::Category::Eof => "truncated",
        };
        Self::Json {
            category,
            line: e.line(),
            column: e.column(),
        }
    }
}

/// Decodes one page, in either shape, pseudonymising every name.
pub fn decode_page(body: &[u8], privacy: &Pseudonymiser) -> Result<UsersPage, PageError> {
    let first = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .ok_or(PageError::Empty)?;
    let (users, pagination, paginated) = match first {
        b'[' => (serde_json::from_slice::<Vec<ApiUser>>(body)?, None, false),
        b'{' => {
            let page: PaginatedUsers = serde_json::from_slice(body)?;
            (page.items, page.pagination, true)
        }
        other => return Err(PageError::NotJson(char::from(*other))),
    };
    let mut out = UsersPage {
        users: users.len(),
        paginated,
        total: pagination.as_ref().and_then(|p| p.total),
        next_offset: pagination.and_then(|p| p.next).map(|n| n.offset),
        ..UsersPage::default()
    };
    for user in users {
        let Some(servers) = user.servers else {
            out.users_without_servers += 1;
            continue;
        };
        let pseudonym = privacy.user(&user.name);
        for (server_name, server) in servers {
            if server.stopped {
                continue;
            }
            let server_label = if server_name.is_empty() || !privacy.enabled() {
                server_name.clone()
            } else {
                // Same key, distinct input and prefix: a named server cannot
                // be mistaken for (or matched against) a user pseudonym.
                let hashed = privacy.user(&format!("{}\u{0}{server_name}", user.name));
                format!("s-{}", hashed.trim_start_matches("u-"))
            };
            out.servers.push(SeenServer {
                user: pseudonym.clone(),
                server: server_label,
                ready: server.ready,
                started_ms: server.started.as_deref().and_then(parse_time_ms),
                last_activity_ms: server.last_activity.as_deref().and_then(parse_time_ms),
                profile: server.user_options.as_ref().and_then(profile_of),
            });
        }
    }
    Ok(out)
}

/// The resource class chosen at spawn: KubeSpawner's `profile` (a slug), or
/// the common alternatives.
fn profile_of(options: &serde_json::Value) -> Option<String> {
    ["profile", "profile_slug", "profile_name", "resource_class"]
        .iter()
        .find_map(|key| options.get(key)?.as_str())
        .filter(|p| !p.is_empty())
        .map(|p| p.chars().take(MAX_PROFILE_CHARS).collect())
}

/// A JupyterHub timestamp (`2024-05-01T12:00:00.123456Z`; older hubs omit
/// the `Z`, meaning UTC) as Unix ms.
pub fn parse_time_ms(text: &str) -> Option<i64> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok().or_else(|| {
        let with_zone = format!("{text}Z");
        OffsetDateTime::parse(&with_zone, &Rfc3339).ok()
    })?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

/// What one complete listing showed, in totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListingTotals {
    /// Users listed (active ones).
    pub users: usize,
    /// Users with at least one server.
    pub users_with_servers: usize,
    /// Servers ready.
    pub ready_servers: usize,
    /// Servers spawning or stopping.
    pub pending_servers: usize,
}

impl ListingTotals {
    /// Totals of `servers` among `users` listed.
    pub fn of(users: usize, servers: &[SeenServer]) -> Self {
        let with_servers: HashSet<&str> = servers.iter().map(|s| s.user.as_str()).collect();
        let ready = servers.iter().filter(|s| s.ready).count();
        Self {
            users,
            users_with_servers: with_servers.len(),
            ready_servers: ready,
            pending_servers: servers.len() - ready,
        }
    }
}

/// What the agent remembers of a server between collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    started_ms: i64,
    last_activity_ms: Option<i64>,
    /// Loaded from the file of a previous run, not seen in this one yet.
    restored: bool,
}

/// One running server as the agent persists it between runs
/// ([`UsageTracker::running`], [`UsageTracker::restore`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct RunningServer {
    /// The user's pseudonym.
    pub user: String,
    /// The server's (pseudonymised) name.
    pub server: String,
    /// Its start, Unix ms (the hub's `started`, or when it was first seen).
    pub started_ms: i64,
}

/// Remembers the servers of the previous complete listing and says what
/// changed. The set of running servers is also persisted by the source
/// (`servers_file.rs`) and [`restore`](Self::restore)d on start, so the
/// first listing after an agent restart still knows which servers ran
/// before it: one that is gone gets a [`UsageKind::ServerStopInferred`] at
/// that first listing (it stopped while the agent was down); one still
/// running is reported as started again with the hub's own `started` time,
/// so the events repeat exactly and the collector drops the repeats (it
/// dedupes on hub, user, server, kind and time), which also covers events
/// lost with a crash before they were spooled.
#[derive(Debug, Default, Clone)]
pub struct UsageTracker {
    known: HashMap<(String, String), Known>,
}

impl UsageTracker {
    /// Servers currently known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no server is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The servers known to run, sorted (what the source persists).
    pub fn running(&self) -> Vec<RunningServer> {
        let mut out: Vec<RunningServer> = self
            .known
            .iter()
            .map(|((user, server), known)| RunningServer {
                user: user.clone(),
                server: server.clone(),
                started_ms: known.started_ms,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.user, &a.server, a.started_ms).cmp(&(&b.user, &b.server, b.started_ms))
        });
        out
    }

    /// Takes `servers` (persisted by a previous run) as known but not yet
    /// seen by this one. Only before the first [`update`](Self::update).
    pub fn restore(&mut self, servers: Vec<RunningServer>) {
        for s in servers {
            self.known.insert(
                (s.user, s.server),
                Known {
                    started_ms: s.started_ms,
                    last_activity_ms: None,
                    restored: true,
                },
            );
        }
    }

    /// Compares a complete listing taken at `now_ms` with the previous one:
    /// - a server not seen before: `ServerStarted` at the hub's `started`
    ///   (or `now_ms` if the hub gives none), with its profile, then
    ///   `Activity` if the hub has a `last_activity` for it;
    /// - a server whose `started` changed: it was stopped and started again
    ///   between two listings: `ServerStopped` (at its new start, the latest
    ///   it can have stopped) and `ServerStarted`;
    /// - `last_activity` moved forward: `Activity` at the new time;
    /// - a known server missing: `ServerStopped` at `now_ms` (the first
    ///   listing where it is gone), or `ServerStopInferred` when it was
    ///   known only from a previous run ([`restore`](Self::restore)).
    ///
    /// Only a complete listing may be passed: a partial one would stop every
    /// server on the pages that were not read.
    pub fn update(&mut self, hub: &str, servers: &[SeenServer], now_ms: i64) -> Vec<UsageEvent> {
        let mut events = Vec::new();
        let event = |user: &str, server: &str, kind, timestamp_ms| UsageEvent {
            hub: hub.to_string(),
            user: user.to_string(),
            server: server.to_string(),
            kind,
            timestamp_ms,
        };
        let mut present = HashSet::with_capacity(servers.len());
        for seen in servers {
            let key = (seen.user.clone(), seen.server.clone());
            let started_ms = seen.started_ms.unwrap_or(now_ms);
            match self.known.get_mut(&key) {
                Some(known)
                    if !known.restored
                        && (seen.started_ms.is_none() || known.started_ms == started_ms) =>
                {
                    if let Some(activity) = seen.last_activity_ms
                        && known.last_activity_ms.is_none_or(|prev| activity > prev)
                    {
                        events.push(event(
                            &seen.user,
                            &seen.server,
                            UsageKind::Activity,
                            activity,
                        ));
                        known.last_activity_ms = Some(activity);
                    }
                }
                previous => {
                    // A restored server still running with the same start is
                    // reported as started again (repeats are dropped); with
                    // another start it stopped while the agent was down.
                    let stop = match previous {
                        Some(k)
                            if k.restored
                                && (seen.started_ms.is_none() || k.started_ms == started_ms) =>
                        {
                            None
                        }
                        Some(k) if k.restored => Some(UsageKind::ServerStopInferred),
                        Some(_) => Some(UsageKind::ServerStopped),
                        None => None,
                    };
                    if let Some(kind) = stop {
                        events.push(event(
                            &seen.user,
                            &seen.server,
                            kind,
                            started_ms.min(now_ms),
                        ));
                    }
                    events.push(event(
                        &seen.user,
                        &seen.server,
                        UsageKind::ServerStarted {
                            profile: seen.profile.clone(),
                        },
                        started_ms,
                    ));
                    if let Some(activity) = seen.last_activity_ms {
                        events.push(event(
                            &seen.user,
                            &seen.server,
                            UsageKind::Activity,
                            activity,
                        ));
                    }
                    self.known.insert(
                        key.clone(),
                        Known {
                            started_ms,
                            last_activity_ms: seen.last_activity_ms,
                            restored: false,
                        },
                    );
                }
            }
            present.insert(key);
        }
        let mut gone: Vec<(String, String)> = self
            .known
            .keys()
            .filter(|key| !present.contains(*key))
            .cloned()
            .collect();
        gone.sort();
        for key in gone {
            // Gone since a previous run's listing: the stop happened while
            // the agent was down, somewhere before this first listing.
            let kind = match self.known.remove(&key) {
                Some(known) if known.restored => UsageKind::ServerStopInferred,
                _ => UsageKind::ServerStopped,
            };
            events.push(event(&key.0, &key.1, kind, now_ms));
        }
        events
    }
}

#[cfg(test)]
mod tests;
