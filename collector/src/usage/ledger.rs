//! The usage ledger's arithmetic, with no IO: which observations a batch
//! holds ([`UsagePage`], keyed by the servers' interned ids, which
//! [`ServerIds`] keeps in memory) and how one server's observations integrate into
//! per-hour integer quantities ([`integrate_server`]) and one hub's into
//! observed time ([`integrate_observed`]).
//!
//! Every result is a function of the *set* of observations only (never of
//! the order they arrived in), so a replay, a late backlog or batches in
//! another order give the same rows:
//!
//! - **Server time**: a server runs at instant `t` when the latest lifecycle
//!   event at or before `t` is a start. A second start without a stop changes
//!   nothing (no double count); a stop without a start neither. A server
//!   whose latest lifecycle event overall is a start is *open*: it is counted
//!   up to its last observation only, never guessed beyond it.
//! - **Inferred stops**: a stop the agent inferred after a restart (the
//!   server ran at its last listing before the outage and was gone at the
//!   first one after) ends the server there like any stop, but its true end
//!   lies anywhere between the server's last observation before it and the
//!   stop: the hours of that span are *bounded* ([`bounded_hours`]).
//! - **Resources**: a snapshot that says since when it holds
//!   ([`UsageKind::ResourcesSince`], wire protocol 3: the agent's previous
//!   snapshot of the server) adds its levels over `(since, ts]` when that is
//!   no longer than `max_gap_ms` ([`UsagePage::added`]; addition commutes and
//!   each batch is derived once, so no point is stored for it). An old
//!   agent's plain snapshots are stored: between two consecutive ones no
//!   more than `max_gap_ms` apart, the earlier snapshot's level holds (a step
//!   function); a longer gap is not bridged, it stays a gap.
//! - **Open servers** count to their hub's last observation (the agent
//!   lists the hub's servers every interval, so a hub observed with no stop
//!   means the server still runs): the stored rows count to the server's own
//!   last observation and the store adds the rest when read.
//! - **Observed time** of a hub: between two consecutive observations of the
//!   hub (any usage event or hub health check) no more than `max_gap_ms`
//!   apart; `coverage` is observed time over the period's length.
//!
//! Everything from input is clamped or saturating: no overflow, no panic.

use std::collections::{BTreeMap, BTreeSet};

use hubwatch_shared::wire::{Batch, Record, ResourceSnapshot, UsageKind};

/// One hour, in ms: the ledger's row period.
pub const HOUR_MS: i64 = 3_600_000;

/// The default longest gap between two observations that is still
/// integrated (`usage.max_gap`): two intervals of the agent's default
/// `interval` (15 s). Configured rather than learnt from the spacing, so that the result for an hour never depends
/// on which other hours' observations have arrived yet.
pub const DEFAULT_MAX_GAP_MS: i64 = 2 * 15_000;

/// Observations older than this (against the collector's clock) are skipped:
/// they would only widen recomputation windows without bound.
pub const MAX_AGE_MS: i64 = 400 * 24 * HOUR_MS;

/// Observations further than this in the future are skipped (a wrong clock).
pub const MAX_FUTURE_MS: i64 = HOUR_MS;

/// One user's server on one member's hub.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerKey {
    /// Member, from the credential.
    pub member: String,
    /// The hub's configured name.
    pub hub: String,
    /// The user's pseudonym.
    pub user: String,
    /// The server name (`""` for the default server).
    pub server: String,
}

/// What an observation of a server says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PointKind {
    /// The server started.
    Started,
    /// The server was gone.
    Stopped,
    /// The server was active.
    Activity,
    /// Its resources (the levels of the point).
    Resources,
    /// The server was gone at the agent's first listing after a restart:
    /// a stop, at some instant since its previous observation.
    StopInferred,
}

impl PointKind {
    /// The stored code.
    pub fn code(self) -> i64 {
        match self {
            Self::Started => 0,
            Self::Stopped => 1,
            Self::Activity => 2,
            Self::Resources => 3,
            Self::StopInferred => 4,
        }
    }

    /// From the stored code.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Started),
            1 => Some(Self::Stopped),
            2 => Some(Self::Activity),
            3 => Some(Self::Resources),
            4 => Some(Self::StopInferred),
            _ => None,
        }
    }

    /// Whether it is a start or a stop (observed or inferred).
    pub fn is_lifecycle(self) -> bool {
        matches!(self, Self::Started | Self::Stopped | Self::StopInferred)
    }

    /// The stored codes of the lifecycle kinds, for SQL `kind IN (...)`.
    pub const LIFECYCLE_CODES: &'static str = "0, 1, 4";
}

/// The resource levels of a snapshot; `None` is unknown (not integrated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Levels {
    /// CPU requested, millicores.
    pub cpu_request_millicores: Option<u64>,
    /// Memory requested, bytes.
    pub memory_request_bytes: Option<u64>,
    /// CPU used, millicores.
    pub cpu_usage_millicores: Option<u64>,
    /// Memory in use, bytes.
    pub memory_usage_bytes: Option<u64>,
    /// Bytes stored in the user's home.
    pub storage_bytes: Option<u64>,
}

impl Levels {
    /// From the wire.
    pub fn from_snapshot(s: &ResourceSnapshot) -> Self {
        Self {
            cpu_request_millicores: s.cpu_request_millicores,
            memory_request_bytes: s.memory_request_bytes,
            cpu_usage_millicores: s.cpu_usage_millicores,
            memory_usage_bytes: s.memory_usage_bytes,
            storage_bytes: s.storage_bytes,
        }
    }

    /// Two snapshots of the same server at the same instant: the larger of
    /// each level (commutative, so the order they arrive in does not matter).
    pub fn merge(self, other: Self) -> Self {
        fn max(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        }
        Self {
            cpu_request_millicores: max(self.cpu_request_millicores, other.cpu_request_millicores),
            memory_request_bytes: max(self.memory_request_bytes, other.memory_request_bytes),
            cpu_usage_millicores: max(self.cpu_usage_millicores, other.cpu_usage_millicores),
            memory_usage_bytes: max(self.memory_usage_bytes, other.memory_usage_bytes),
            storage_bytes: max(self.storage_bytes, other.storage_bytes),
        }
    }
}

/// One observation of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// When, Unix ms.
    pub ts: i64,
    /// What.
    pub kind: PointKind,
    /// Levels (resources only; default otherwise).
    pub levels: Levels,
}

/// Integer quantities of one server (or a sum of them) in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quantities {
    /// Time the server ran, ms.
    pub server_ms: u64,
    /// CPU requested, millicore-seconds.
    pub cpu_request_millicore_seconds: u64,
    /// Memory requested, byte-seconds.
    pub memory_request_byte_seconds: u64,
    /// CPU used, millicore-seconds.
    pub cpu_usage_millicore_seconds: u64,
    /// Memory used, byte-seconds.
    pub memory_usage_byte_seconds: u64,
    /// Home storage, byte-seconds.
    pub storage_byte_seconds: u64,
}

impl Quantities {
    /// Adds `other`, saturating.
    pub fn add(&mut self, other: &Self) {
        self.server_ms = self.server_ms.saturating_add(other.server_ms);
        self.cpu_request_millicore_seconds = self
            .cpu_request_millicore_seconds
            .saturating_add(other.cpu_request_millicore_seconds);
        self.memory_request_byte_seconds = self
            .memory_request_byte_seconds
            .saturating_add(other.memory_request_byte_seconds);
        self.cpu_usage_millicore_seconds = self
            .cpu_usage_millicore_seconds
            .saturating_add(other.cpu_usage_millicore_seconds);
        self.memory_usage_byte_seconds = self
            .memory_usage_byte_seconds
            .saturating_add(other.memory_usage_byte_seconds);
        self.storage_byte_seconds = self
            .storage_byte_seconds
            .saturating_add(other.storage_byte_seconds);
    }

    /// Whether every quantity is zero (such rows are not stored).
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// The start of the hour holding `ts`.
pub fn hour_of(ts: i64) -> i64 {
    ts.saturating_sub(ts.rem_euclid(HOUR_MS))
}

/// Calls `f(hour, ms)` for each piece of `[from, to)` split at hour
/// boundaries.
pub fn split_hours(from: i64, to: i64, mut f: impl FnMut(i64, u64)) {
    let mut at = from;
    while at < to {
        let hour = hour_of(at);
        let end = hour.saturating_add(HOUR_MS).min(to);
        if end <= at {
            break;
        }
        f(hour, u64::try_from(end - at).unwrap_or(0));
        at = end;
    }
}

/// `level` held for `ms`, in level-seconds (truncated to an integer).
fn level_seconds(level: Option<u64>, ms: u64) -> u64 {
    level.map_or(0, |level| {
        let product = u128::from(level) * u128::from(ms) / 1000;
        u64::try_from(product).unwrap_or(u64::MAX)
    })
}

/// `levels` held for `ms`, as quantities (no server time).
fn held(levels: &Levels, ms: u64) -> Quantities {
    Quantities {
        server_ms: 0,
        cpu_request_millicore_seconds: level_seconds(levels.cpu_request_millicores, ms),
        memory_request_byte_seconds: level_seconds(levels.memory_request_bytes, ms),
        cpu_usage_millicore_seconds: level_seconds(levels.cpu_usage_millicores, ms),
        memory_usage_byte_seconds: level_seconds(levels.memory_usage_bytes, ms),
        storage_byte_seconds: level_seconds(levels.storage_bytes, ms),
    }
}

/// Calls `f(hour, quantities)` for what a snapshot held over `(since, ts]`
/// adds per hour: nothing when `since` is unknown or the span is empty or
/// longer than `max_gap_ms`.
pub fn additive_hours(
    levels: &Levels,
    since: Option<i64>,
    ts: i64,
    max_gap_ms: i64,
    mut f: impl FnMut(i64, Quantities),
) {
    if let Some(since) = since {
        let span = ts.saturating_sub(since);
        if span > 0 && span <= max_gap_ms {
            split_hours(since, ts, |hour, ms| f(hour, held(levels, ms)));
        }
    }
}

/// What the integration of one server over a window needs.
#[derive(Debug, Clone, Copy)]
pub struct ServerHistory<'a> {
    /// Every point with `ts` in `[window.0 - max_gap, window.1 + max_gap]`,
    /// sorted by `(ts, kind)`, one per `(ts, kind)`.
    pub points: &'a [Point],
    /// Whether the latest lifecycle event before the window is a start.
    pub running_before: bool,
    /// The server's last observation, when its latest lifecycle event overall
    /// is a start (it is open); `None` when it stopped.
    pub open_until: Option<i64>,
}

/// The quantities of one server for each hour of `window` (`[start, end)`,
/// hour-aligned), only the hours with something in them.
pub fn integrate_server(
    history: &ServerHistory<'_>,
    window: (i64, i64),
    max_gap_ms: i64,
) -> BTreeMap<i64, Quantities> {
    let (w0, w1) = window;
    let mut hours: BTreeMap<i64, Quantities> = BTreeMap::new();
    // Server time: a step function of the lifecycle events in the window.
    let limit = history.open_until.map_or(w1, |until| until.min(w1));
    let mut running = history.running_before;
    let mut since = w0;
    let add_running = |from: i64, to: i64, hours: &mut BTreeMap<i64, Quantities>| {
        split_hours(from, to.min(limit), |hour, ms| {
            let q = hours.entry(hour).or_default();
            q.server_ms = q.server_ms.saturating_add(ms);
        });
    };
    for p in history
        .points
        .iter()
        .filter(|p| p.kind.is_lifecycle() && p.ts >= w0 && p.ts < w1)
    {
        if running {
            add_running(since, p.ts, &mut hours);
        }
        running = p.kind == PointKind::Started;
        since = p.ts;
    }
    if running {
        add_running(since, w1, &mut hours);
    }
    // Resources: the earlier snapshot's levels hold until the next one.
    let snapshots: Vec<&Point> = history
        .points
        .iter()
        .filter(|p| p.kind == PointKind::Resources)
        .collect();
    for pair in snapshots.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let gap = b.ts.saturating_sub(a.ts);
        if gap <= 0 || gap > max_gap_ms {
            continue;
        }
        split_hours(a.ts.max(w0), b.ts.min(w1), |hour, ms| {
            hours.entry(hour).or_default().add(&held(&a.levels, ms));
        });
    }
    hours.retain(|_, q| !q.is_zero());
    hours
}

/// The hours of `window` in which the server's time is bounded rather than
/// observed: for each inferred stop that ends a run, the hours from the
/// server's previous observation to the stop, clamped to the window. A stop
/// after the window counts too when its span reaches back into it, so the
/// history must run to the first lifecycle event at or after the window's
/// end (with every point before it). The store marks only those of the hours
/// that hold a row.
///
/// Not from the hub's last observation: `usage_seen` also holds the hub's
/// own event times (a `last_activity` reported after an outage), which are
/// no proof the agent saw this server then. Conservative: with additive
/// snapshots (not stored) the span may be longer than one interval.
pub fn bounded_hours(history: &ServerHistory<'_>, window: (i64, i64)) -> BTreeSet<i64> {
    let (w0, w1) = window;
    let mut out = BTreeSet::new();
    let mut running = history.running_before;
    let mut previous: Option<i64> = None;
    for p in history.points {
        if p.kind == PointKind::StopInferred && running && p.ts >= w0 {
            let from = previous.unwrap_or(w0).max(w0);
            let to = p.ts.min(w1);
            if from < to {
                split_hours(from, to, |hour, _| {
                    out.insert(hour);
                });
            }
        }
        if p.kind.is_lifecycle() && p.ts >= w0 {
            if p.ts >= w1 {
                // The first lifecycle event past the window: what follows
                // cannot reach back into it.
                break;
            }
            running = p.kind == PointKind::Started;
        }
        previous = Some(p.ts);
    }
    out
}

/// Observed ms of one hub for each hour of `window`, from its observation
/// instants (sorted, distinct, covering `[window.0 - max_gap, window.1 +
/// max_gap]`).
pub fn integrate_observed(
    ticks: &[i64],
    window: (i64, i64),
    max_gap_ms: i64,
) -> BTreeMap<i64, u64> {
    let mut hours: BTreeMap<i64, u64> = BTreeMap::new();
    for pair in ticks.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let gap = b.saturating_sub(a);
        if gap <= 0 || gap > max_gap_ms {
            continue;
        }
        split_hours(a.max(window.0), b.min(window.1), |hour, ms| {
            let observed = hours.entry(hour).or_default();
            *observed = observed.saturating_add(ms);
        });
    }
    hours
}

/// Interned servers held in memory by [`ServerIds`] before the oldest are
/// forgotten: about 200 B each, so at most ~200 MiB (a fleet of 1,000 hubs ×
/// 500 running servers holds 500,000). Forgetting is safe: a server not in
/// memory is looked up in the store again at the next commit.
pub const MAX_SERVER_IDS: usize = 1 << 20;

/// A server's id as a page holds it: the interned `usage_servers` id when
/// positive; when negative, a *provisional* id for a server not yet known to
/// be in the store, which the page maps to its key
/// ([`UsagePage::new_servers`]) and the commit resolves.
pub type ServerId = i64;

/// The `usage_servers` ids of servers in memory, so that deriving a snapshot
/// costs one look-up of its pseudonym in its hub's table (the member and hub
/// are found once per run of records of the same hub), not an allocation and
/// a comparison of the whole four-part key.
///
/// Consistency with the store: an id is only ever *confirmed* here
/// ([`ServerIds::confirm`]) after the commit that found or created it in
/// `usage_servers` has committed. A server seen before that gets a
/// provisional (negative) id; a failed commit leaves it provisional, so the
/// page derived again still carries its key and nothing here names an id the
/// store does not have. Provisional ids are never reused, also when the
/// table is forgotten past [`MAX_SERVER_IDS`].
#[derive(Debug, Clone, Default)]
pub struct ServerIds {
    /// member → hub → index in `hubs`.
    index: std::collections::HashMap<String, std::collections::HashMap<String, u32>>,
    hubs: Vec<HubIds>,
    /// The hub of the previous look-up: consecutive records of a batch share it.
    last_hub: Option<u32>,
    /// Where each provisional id sits, to confirm it.
    provisional: std::collections::HashMap<ServerId, (u32, Box<str>, Box<str>)>,
    /// The last provisional id handed out (0 before the first).
    last_provisional: ServerId,
    /// Servers held (confirmed or provisional).
    len: usize,
    /// Servers held before all are forgotten; `None` is [`MAX_SERVER_IDS`].
    limit: Option<usize>,
}

/// One hub's servers: pseudonym → the user's servers.
#[derive(Debug, Clone)]
struct HubIds {
    member: String,
    hub: String,
    users: std::collections::HashMap<Box<str>, UserServers>,
}

/// One user's servers: the default one (`""`, what most users run) held in
/// the map's slot itself, so its look-up follows no further pointer.
#[derive(Debug, Clone, Default)]
struct UserServers {
    default: Option<ServerId>,
    named: Vec<(Box<str>, ServerId)>,
}

impl UserServers {
    fn get(&self, server: &str) -> Option<ServerId> {
        if server.is_empty() {
            return self.default;
        }
        self.named
            .iter()
            .find(|(name, _)| &**name == server)
            .map(|(_, id)| *id)
    }

    fn slot(&mut self, server: &str) -> Option<&mut ServerId> {
        if server.is_empty() {
            return self.default.as_mut();
        }
        self.named
            .iter_mut()
            .find(|(name, _)| &**name == server)
            .map(|(_, id)| id)
    }

    fn insert(&mut self, server: &str, id: ServerId) {
        if server.is_empty() {
            self.default = Some(id);
        } else {
            self.named.push((server.into(), id));
        }
    }
}

impl ServerIds {
    /// Holding at most `limit` servers instead of [`MAX_SERVER_IDS`].
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    /// The index of `(member, hub)` (stable for the life of `self`).
    pub fn hub(&mut self, member: &str, hub: &str) -> u32 {
        if let Some(last) = self.last_hub
            && let Some(h) = self.hubs.get(last as usize)
            && h.hub == hub
            && h.member == member
        {
            return last;
        }
        let found = self
            .index
            .get(member)
            .and_then(|hubs| hubs.get(hub))
            .copied();
        let index = match found {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.hubs.len()).unwrap_or(u32::MAX);
                self.hubs.push(HubIds {
                    member: member.to_string(),
                    hub: hub.to_string(),
                    users: Default::default(),
                });
                self.index
                    .entry(member.to_string())
                    .or_default()
                    .insert(hub.to_string(), index);
                index
            }
        };
        self.last_hub = Some(index);
        index
    }

    /// The member and hub of hub `index`.
    pub fn hub_names(&self, index: u32) -> Option<(&str, &str)> {
        self.hubs
            .get(index as usize)
            .map(|h| (h.member.as_str(), h.hub.as_str()))
    }

    /// The id of `user`'s server `server` on hub `hub` (from [`Self::hub`]):
    /// its interned id, or a provisional (negative) one, new if needed.
    pub fn server(&mut self, hub: u32, user: &str, server: &str) -> ServerId {
        if self.len >= self.limit.unwrap_or(MAX_SERVER_IDS) {
            self.forget();
        }
        let Some(table) = self.hubs.get_mut(hub as usize) else {
            // Not an index `hub()` gave: a fresh provisional id is still right.
            self.last_provisional = self.last_provisional.saturating_sub(1);
            return self.last_provisional;
        };
        let servers = match table.users.get_mut(user) {
            Some(servers) => {
                if let Some(id) = servers.get(server) {
                    return id;
                }
                servers
            }
            None => table.users.entry(user.into()).or_default(),
        };
        self.last_provisional = self.last_provisional.saturating_sub(1);
        servers.insert(server, self.last_provisional);
        self.len = self.len.saturating_add(1);
        self.provisional
            .insert(self.last_provisional, (hub, user.into(), server.into()));
        self.last_provisional
    }

    /// Records that provisional ids are now interned in the store as the
    /// given ids: call only once the commit that created them committed.
    pub fn confirm(&mut self, interned: &[(ServerId, ServerId)]) {
        for (provisional, id) in interned {
            let Some((hub, user, server)) = self.provisional.remove(provisional) else {
                continue;
            };
            let slot = self
                .hubs
                .get_mut(hub as usize)
                .and_then(|h| h.users.get_mut(&user))
                .and_then(|servers| servers.slot(&server));
            if let Some(slot) = slot {
                *slot = *id;
            }
        }
    }

    /// Servers held in memory.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no server is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every server (not the hubs: pages index them): each is found
    /// in the store again at its next commit.
    fn forget(&mut self) {
        for hub in &mut self.hubs {
            hub.users = Default::default();
        }
        self.provisional = Default::default();
        self.len = 0;
    }
}

/// One hub's observation instants in a page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenHub {
    /// Member.
    pub member: String,
    /// Hub.
    pub hub: String,
    /// Instants, Unix ms.
    pub ticks: BTreeSet<i64>,
}

/// The observations one page of batches holds, before they are stored.
/// Servers are keyed by [`ServerId`] and hubs by their [`ServerIds::hub`]
/// index, so pages merged together must come from the same [`ServerIds`].
#[derive(Debug, Clone, Default)]
pub struct UsagePage {
    /// Server observations, merged per `(server, ts, kind)`.
    pub points: BTreeMap<(ServerId, i64, PointKind), Levels>,
    /// Hub observation instants per hub index.
    pub seen: BTreeMap<u32, SeenHub>,
    /// What snapshots with `since_ms` add, per `(server, hour)`: summed,
    /// never stored as points.
    pub added: BTreeMap<(ServerId, i64), Quantities>,
    /// The key of every provisional (negative) id the page uses.
    pub new_servers: BTreeMap<ServerId, ServerKey>,
    /// Records skipped for a timestamp out of range.
    pub skipped: u64,
    /// The longest span a snapshot's `since_ms` may bridge; `None` is
    /// [`DEFAULT_MAX_GAP_MS`]. The stage sets it from `usage.max_gap`.
    pub max_gap_ms: Option<i64>,
    /// Observations older than this (ms before `now_ms`) are skipped;
    /// `None` is [`MAX_AGE_MS`]. The stage sets it below `usage.points_retention`
    /// so a late observation never recomputes hours whose observations were
    /// pruned.
    pub max_age_ms: Option<i64>,
    /// The ids [`UsagePage::add_batch`] interns in (a page committed alone).
    own_ids: ServerIds,
}

impl UsagePage {
    /// [`Self::add_batch_with`] on the page's own [`ServerIds`], so every
    /// server is provisional and resolved at commit: for a page committed
    /// alone (tests, tools). Pages merged together must come from one
    /// `ServerIds`, which the stage keeps across pages
    /// ([`Self::add_batch_with`]).
    pub fn add_batch(&mut self, member: &str, batch: &Batch, now_ms: i64) {
        let mut ids = std::mem::take(&mut self.own_ids);
        self.add_batch_with(&mut ids, member, batch, now_ms);
        self.own_ids = ids;
    }

    /// Adds the usage events and hub health checks of `batch` (from
    /// `member`, per the credential), skipping timestamps older than
    /// [`MAX_AGE_MS`] or more than [`MAX_FUTURE_MS`] ahead of `now_ms`.
    /// Servers and hubs are interned in `ids`.
    pub fn add_batch_with(
        &mut self,
        ids: &mut ServerIds,
        member: &str,
        batch: &Batch,
        now_ms: i64,
    ) {
        let max_age = self.max_age_ms.unwrap_or(MAX_AGE_MS).min(MAX_AGE_MS);
        let in_range = |ts: i64| {
            ts >= now_ms.saturating_sub(max_age) && ts <= now_ms.saturating_add(MAX_FUTURE_MS)
        };
        for record in &batch.records {
            match record {
                Record::Usage(event) => {
                    if !in_range(event.timestamp_ms) {
                        self.skipped = self.skipped.saturating_add(1);
                        continue;
                    }
                    let hub = ids.hub(member, &event.hub);
                    let id = ids.server(hub, &event.user, &event.server);
                    if id < 0 {
                        self.new_servers.entry(id).or_insert_with(|| ServerKey {
                            member: member.to_string(),
                            hub: event.hub.clone(),
                            user: event.user.clone(),
                            server: event.server.clone(),
                        });
                    }
                    self.see(hub, member, &event.hub, event.timestamp_ms);
                    let (kind, levels) = match &event.kind {
                        UsageKind::ResourcesSince { snapshot, since_ms } => {
                            let max_gap = self.max_gap_ms.unwrap_or(DEFAULT_MAX_GAP_MS);
                            let levels = Levels::from_snapshot(snapshot);
                            let added = &mut self.added;
                            additive_hours(
                                &levels,
                                *since_ms,
                                event.timestamp_ms,
                                max_gap,
                                |hour, q| added.entry((id, hour)).or_default().add(&q),
                            );
                            continue;
                        }
                        UsageKind::ServerStarted { .. } => (PointKind::Started, Levels::default()),
                        UsageKind::ServerStopped => (PointKind::Stopped, Levels::default()),
                        UsageKind::Activity => (PointKind::Activity, Levels::default()),
                        UsageKind::Resources(s) => (PointKind::Resources, Levels::from_snapshot(s)),
                        UsageKind::ServerStopInferred => {
                            (PointKind::StopInferred, Levels::default())
                        }
                    };
                    let slot = self
                        .points
                        .entry((id, event.timestamp_ms, kind))
                        .or_default();
                    *slot = slot.merge(levels);
                }
                Record::Health(check) => {
                    if let Some(name) = &check.hub {
                        if in_range(check.timestamp_ms) {
                            let hub = ids.hub(member, name);
                            self.see(hub, member, name, check.timestamp_ms);
                        } else {
                            self.skipped = self.skipped.saturating_add(1);
                        }
                    }
                }
                // The journey's test identity is left out of usage by the
                // agent; its result says nothing about coverage.
                Record::Sample(_) | Record::Journey(_) => {}
            }
        }
    }

    fn see(&mut self, index: u32, member: &str, hub: &str, ts: i64) {
        self.seen
            .entry(index)
            .or_insert_with(|| SeenHub {
                member: member.to_string(),
                hub: hub.to_string(),
                ticks: BTreeSet::new(),
            })
            .ticks
            .insert(ts);
    }

    /// Adds `other`'s observations (a later page, from the same
    /// [`ServerIds`]) to this one: points merge per instant and kind,
    /// instants unite, additive quantities sum.
    pub fn merge(&mut self, other: UsagePage) {
        if self.is_empty() && self.new_servers.is_empty() && self.skipped == 0 {
            // The common case of a deferred flush's first page: no re-insert.
            let (max_gap_ms, max_age_ms) = (self.max_gap_ms, self.max_age_ms);
            *self = other;
            self.max_gap_ms = max_gap_ms;
            self.max_age_ms = max_age_ms;
            return;
        }
        for (key, levels) in other.points {
            let slot = self.points.entry(key).or_default();
            *slot = slot.merge(levels);
        }
        for (index, hub) in other.seen {
            match self.seen.entry(index) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(hub);
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    slot.get_mut().ticks.extend(hub.ticks);
                }
            }
        }
        for (key, q) in other.added {
            self.added.entry(key).or_default().add(&q);
        }
        self.new_servers.extend(other.new_servers);
        self.skipped = self.skipped.saturating_add(other.skipped);
    }

    /// Rows the page would write: points and additive server-hours.
    pub fn len(&self) -> usize {
        self.points.len().saturating_add(self.added.len())
    }

    /// Whether the page holds nothing to write.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.seen.is_empty() && self.added.is_empty()
    }
}
