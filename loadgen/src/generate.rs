//! The simulated fleet: what each agent's hubs and host report, round by
//! round, from a seeded random number generator.
//!
//! Every agent owns its own generator state, seeded from the run's seed and
//! the agent's index, so agents can be generated in any order or in
//! parallel and still produce the same records: the same seed gives the same
//! rounds, byte for byte. Per hub and round an agent reports what a real
//! agent sends from JupyterHub's `/hub/metrics` (running servers, users,
//! active users, the spawn-duration histogram by status, the request-duration
//! histogram by handler, cumulative buckets), one `/hub/health` check (a
//! failed one is re-checked a second later, as the agent does), and per
//! agent a few host series. Users start and stop servers on a daily cycle
//! (each hub in its own time zone); hubs have occasional outages, during
//! which their health checks fail and their metrics are absent.

use hubwatch_shared::wire::{Batch, CheckKind, FailureKind, HealthCheck, Label, Record, Sample};

#[cfg(test)]
mod tests;

/// JupyterHub's spawn-duration buckets (`jupyterhub/metrics.py`), seconds.
pub const SPAWN_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0,
];

/// prometheus_client's default buckets, which JupyterHub's request-duration
/// histogram uses, seconds.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The request handlers each hub reports, with their typical latency (s).
const HANDLERS: &[(&str, &str, f64)] = &[
    ("jupyterhub.apihandlers.users.UserAPIHandler", "GET", 0.02),
    (
        "jupyterhub.apihandlers.users.UserServerAPIHandler",
        "POST",
        0.15,
    ),
    ("jupyterhub.handlers.pages.SpawnHandler", "GET", 0.06),
    ("jupyterhub.handlers.base.UserUrlHandler", "GET", 0.01),
];

/// Metric name of the sample a health check becomes where only samples
/// travel (remote write): 1 for a passed check, 0 for a failed one.
pub const HEALTH_SAMPLE: &str = "hubwatch_hub_health_ok";

/// The re-check of a failed health check comes this long after the check.
const RECHECK_MS: i64 = 1_000;

/// What to simulate. Same model and seed, same records.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Simulated agents.
    pub agents: usize,
    /// Hubs each agent watches.
    pub hubs_per_agent: usize,
    /// Users of each hub.
    pub users_per_hub: usize,
    /// Time between an agent's rounds, milliseconds.
    pub interval_ms: i64,
    /// The first round's timestamp, Unix milliseconds.
    pub start_ms: i64,
    /// The seed.
    pub seed: u64,
    /// Chance per hub and round that an outage starts.
    pub outage_rate: f64,
}

impl Model {
    /// The agent id of agent `index` when no token file names it.
    pub fn agent_id(index: usize) -> String {
        format!("loadgen-{index:04}")
    }

    /// The timestamp of round `round`.
    pub fn round_ms(&self, round: u64) -> i64 {
        self.start_ms.saturating_add(
            self.interval_ms
                .saturating_mul(i64::try_from(round).unwrap_or(i64::MAX)),
        )
    }
}

/// SplitMix64: a tiny, fast generator whose output is fixed by its
/// definition, so a seed means the same numbers on every build and platform
/// (unlike `rand`'s `StdRng`, which may change between versions).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` and a stream number (the agent's index).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Self(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly standard normal (Irwin–Hall of 4 uniforms, rescaled).
    pub fn normal(&mut self) -> f64 {
        let sum: f64 = (0..4).map(|_| self.unit()).sum();
        (sum - 2.0) * 3.0_f64.sqrt()
    }

    /// A count with mean `mean` (Poisson for small means, normal beyond).
    pub fn count(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 30.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        // Knuth's method.
        let limit = (-mean).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= self.unit();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }
}

/// A cumulative histogram as Prometheus exposes one.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket, the last for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        let at = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[at] += 1;
        self.sum += value;
    }

    /// `_bucket` samples (cumulative, `le` ascending, `+Inf` last), `_sum`,
    /// `_count`.
    fn push(&self, out: &mut Vec<Record>, name: &str, labels: &[Label], timestamp_ms: i64) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count;
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format_le(*b));
            let mut labels = labels.to_vec();
            labels.push(Label::new("le", le));
            labels.sort();
            out.push(sample(
                format!("{name}_bucket"),
                labels,
                cumulative as f64,
                timestamp_ms,
            ));
        }
        out.push(sample(
            format!("{name}_sum"),
            labels.to_vec(),
            self.sum,
            timestamp_ms,
        ));
        out.push(sample(
            format!("{name}_count"),
            labels.to_vec(),
            cumulative as f64,
            timestamp_ms,
        ));
    }
}

/// `le` as prometheus_client writes it (`1.0`, `0.005`).
fn format_le(bound: f64) -> String {
    if bound.fract() == 0.0 {
        format!("{bound:.1}")
    } else {
        format!("{bound}")
    }
}

fn sample(name: String, labels: Vec<Label>, value: f64, timestamp_ms: i64) -> Record {
    Record::Sample(Sample {
        name,
        labels,
        value,
        timestamp_ms,
    })
}

/// One simulated hub.
#[derive(Debug, Clone)]
struct Hub {
    name: String,
    users: u64,
    /// Hours added to UTC for its users' day.
    tz_hours: f64,
    running: u64,
    active_24h: u64,
    spawn_success: Histogram,
    spawn_failure: Histogram,
    requests: Vec<Histogram>,
    /// Rounds of outage left (0: up).
    outage_left: u64,
    /// Whether its metrics were ever sent (for the distinct series count).
    metrics_sent: bool,
}

/// Series per hub while it is up: running servers, total users, active
/// users by period, the spawn histogram by status, the request histogram
/// by handler.
pub fn series_per_hub() -> usize {
    3 + 2 + 2 * (SPAWN_BUCKETS.len() + 3) + HANDLERS.len() * (REQUEST_BUCKETS.len() + 3)
}

/// Host series per agent.
pub const HOST_SERIES: usize = 9;

/// One simulated agent: its hubs and its host, advanced one round at a time.
#[derive(Debug, Clone)]
pub struct AgentSim {
    /// The agent's id (the batch's `agent_id`).
    pub agent_id: String,
    /// The member it claims (`""`: no claim).
    pub member: String,
    model: Model,
    index: usize,
    rng: Rng,
    hubs: Vec<Hub>,
    round: u64,
    network_rx: f64,
    network_tx: f64,
}

impl AgentSim {
    /// Agent `index` of `model`, at round 0.
    pub fn new(model: &Model, index: usize, agent_id: String, member: String) -> Self {
        let mut rng = Rng::new(model.seed, index as u64);
        let hubs = (0..model.hubs_per_agent)
            .map(|h| {
                let users = model.users_per_hub as u64;
                Hub {
                    name: format!("hub-{index:04}-{h:02}"),
                    users,
                    tz_hours: rng.range(0, 17) as f64 - 8.0,
                    running: users / 10,
                    active_24h: users / 2,
                    spawn_success: Histogram::new(SPAWN_BUCKETS),
                    spawn_failure: Histogram::new(SPAWN_BUCKETS),
                    requests: HANDLERS
                        .iter()
                        .map(|_| Histogram::new(REQUEST_BUCKETS))
                        .collect(),
                    outage_left: 0,
                    metrics_sent: false,
                }
            })
            .collect();
        Self {
            agent_id,
            member,
            model: model.clone(),
            index,
            rng,
            hubs,
            round: 0,
            network_rx: 0.0,
            network_tx: 0.0,
        }
    }

    /// The round the next call of [`AgentSim::next_round`] makes.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Distinct series sent so far (health series included).
    pub fn distinct_series(&self) -> usize {
        let hubs_with_metrics = self.hubs.iter().filter(|h| h.metrics_sent).count();
        let health = if self.round > 0 { self.hubs.len() } else { 0 };
        let host = if self.round > 0 { HOST_SERIES } else { 0 };
        host + health + hubs_with_metrics * series_per_hub()
    }

    /// The next round's batch (`seq` = round + 1, `created_ms` = the
    /// round's timestamp).
    pub fn next_round(&mut self) -> Batch {
        let round = self.round;
        self.round += 1;
        let ts = self.model.round_ms(round);
        let mut records =
            Vec::with_capacity(HOST_SERIES + self.hubs.len() * (series_per_hub() + 2));
        self.host(ts, &mut records);
        let interval_s = self.model.interval_ms as f64 / 1000.0;
        let outage_rate = self.model.outage_rate;
        for hub in &mut self.hubs {
            step_hub(hub, &mut self.rng, ts, interval_s, outage_rate);
            push_hub(hub, ts, &mut records);
        }
        Batch {
            agent_id: self.agent_id.clone(),
            member: self.member.clone(),
            seq: round + 1,
            created_ms: ts,
            dropped_records: 0,
            agent_version: format!("loadgen-{}", env!("CARGO_PKG_VERSION")),
            records,
        }
    }

    fn host(&mut self, ts: i64, out: &mut Vec<Record>) {
        let rng = &mut self.rng;
        let busy: u64 = self.hubs.iter().map(|h| h.running).sum();
        let load = 0.2 + busy as f64 * 0.05 + rng.unit() * 0.3;
        self.network_rx += 1.0e6 * (1.0 + busy as f64) * rng.unit();
        self.network_tx += 4.0e5 * (1.0 + busy as f64) * rng.unit();
        let memory_total = 64.0 * 1024.0 * 1024.0 * 1024.0;
        let uptime = 86_400.0 * 3.0 + (ts - self.model.start_ms) as f64 / 1000.0;
        let node = format!("node-{:04}", self.index);
        let plain = vec![Label::new("node", node.clone())];
        let iface = vec![Label::new("interface", "eth0"), Label::new("node", node)];
        let figures: [(&str, &Vec<Label>, f64); HOST_SERIES] = [
            (
                "hubwatch_host_cpu_usage_ratio",
                &plain,
                (load / 16.0).min(1.0),
            ),
            ("hubwatch_host_memory_total_bytes", &plain, memory_total),
            (
                "hubwatch_host_memory_used_bytes",
                &plain,
                (memory_total * (0.2 + busy as f64 * 0.01)).min(memory_total),
            ),
            ("hubwatch_host_load1", &plain, load),
            ("hubwatch_host_load5", &plain, load * 0.9),
            ("hubwatch_host_load15", &plain, load * 0.8),
            ("hubwatch_host_uptime_seconds", &plain, uptime),
            (
                "hubwatch_host_network_receive_bytes_total",
                &iface,
                self.network_rx.floor(),
            ),
            (
                "hubwatch_host_network_transmit_bytes_total",
                &iface,
                self.network_tx.floor(),
            ),
        ];
        for (name, labels, value) in figures {
            out.push(sample(name.to_string(), labels.clone(), value, ts));
        }
    }
}

/// The fraction of a hub's users with a server at `hour` (their local
/// time): a working-day curve, a tenth at night, about 60 % mid-afternoon.
pub fn daily_fraction(hour: f64) -> f64 {
    let phase = (hour - 8.0) / 12.0 * std::f64::consts::PI;
    let day = if (0.0..=std::f64::consts::PI).contains(&phase) {
        phase.sin()
    } else {
        0.0
    };
    0.1 + 0.5 * day
}

fn step_hub(hub: &mut Hub, rng: &mut Rng, ts: i64, interval_s: f64, outage_rate: f64) {
    if hub.outage_left > 0 {
        hub.outage_left -= 1;
    } else if rng.unit() < outage_rate {
        hub.outage_left = rng.range(2, 41);
    }
    let hour = ((ts as f64 / 3_600_000.0) + hub.tz_hours).rem_euclid(24.0);
    let target = (hub.users as f64 * daily_fraction(hour)).round() as u64;
    // Users drift toward the day's level, with some churn either way.
    let churn = hub.users as f64 * 0.002 * interval_s / 15.0;
    let gap = target as f64 - hub.running as f64;
    let starts = rng.count(gap.max(0.0) * 0.3 + churn);
    let stops = rng
        .count((-gap).max(0.0) * 0.3 + churn)
        .min(hub.running + starts);
    if hub.outage_left == 0 {
        for _ in 0..starts {
            // Spawns take ~8 s, log-normally spread; 2 % fail (timeouts).
            let seconds = 8.0 * (0.7 * rng.normal()).exp();
            if rng.unit() < 0.02 {
                hub.spawn_failure.observe(seconds.max(300.0));
            } else {
                hub.spawn_success.observe(seconds);
            }
        }
        hub.running = (hub.running + starts - stops).min(hub.users);
        hub.active_24h = hub
            .users
            .min(hub.active_24h.max(hub.running) + rng.count(churn));
        let activity = 1.0 + hub.running as f64 * interval_s / 15.0;
        for ((_, _, typical), histogram) in HANDLERS.iter().zip(&mut hub.requests) {
            for _ in 0..rng.count(activity) {
                histogram.observe(typical * (0.8 * rng.normal()).exp());
            }
        }
    }
}

fn push_hub(hub: &mut Hub, ts: i64, out: &mut Vec<Record>) {
    let down = hub.outage_left > 0;
    let check = |ok: bool, at: i64| {
        Record::Health(HealthCheck {
            target: format!("http://{}.hubs.invalid/hub/health", hub.name),
            hub: Some(hub.name.clone()),
            kind: CheckKind::HubHealth,
            ok,
            status: Some(if ok { 200 } else { 503 }),
            latency_us: if ok { 4_000 } else { 1_500 },
            failure: (!ok).then_some(FailureKind::Http),
            error: (!ok).then(|| "HTTP 503 Service Unavailable".to_string()),
            cert_expiry_days: None,
            timestamp_ms: at,
        })
    };
    out.push(check(!down, ts));
    if down {
        // The agent re-checks a failed check at once and sends both.
        out.push(check(false, ts + RECHECK_MS));
        return;
    }
    hub.metrics_sent = true;
    let base = vec![
        Label::new("hub", hub.name.clone()),
        Label::new("job", "jupyterhub"),
    ];
    let with = |name: &str, value: &str| {
        let mut labels = base.clone();
        labels.push(Label::new(name, value));
        labels.sort();
        labels
    };
    out.push(sample(
        "jupyterhub_running_servers".into(),
        base.clone(),
        hub.running as f64,
        ts,
    ));
    out.push(sample(
        "jupyterhub_total_users".into(),
        base.clone(),
        hub.users as f64,
        ts,
    ));
    for (period, value) in [
        ("24h", hub.active_24h),
        ("7d", (hub.active_24h * 3 / 2).min(hub.users)),
        ("30d", (hub.active_24h * 2).min(hub.users)),
    ] {
        out.push(sample(
            "jupyterhub_active_users".into(),
            with("period", period),
            value as f64,
            ts,
        ));
    }
    hub.spawn_success.push(
        out,
        "jupyterhub_server_spawn_duration_seconds",
        &with("status", "success"),
        ts,
    );
    hub.spawn_failure.push(
        out,
        "jupyterhub_server_spawn_duration_seconds",
        &with("status", "failure"),
        ts,
    );
    for ((handler, method, _), histogram) in HANDLERS.iter().zip(&hub.requests) {
        let mut labels = base.clone();
        labels.push(Label::new("code", "200"));
        labels.push(Label::new("handler", *handler));
        labels.push(Label::new("method", *method));
        labels.sort();
        histogram.push(out, "jupyterhub_request_duration_seconds", &labels, ts);
    }
}

/// A record as the one sample remote write carries for it: a sample as it
/// is; a health check as [`HEALTH_SAMPLE`] (1 passed, 0 failed) with its
/// hub, kind and target. Other records (the generator makes none) give
/// `None`.
pub fn as_sample(record: &Record) -> Option<Sample> {
    match record {
        Record::Sample(sample) => Some(sample.clone()),
        Record::Health(check) => {
            let mut labels = vec![
                Label::new("kind", "hub_health"),
                Label::new("target", check.target.clone()),
            ];
            if let Some(hub) = &check.hub {
                labels.push(Label::new("hub", hub.clone()));
            }
            labels.sort();
            Some(Sample {
                name: HEALTH_SAMPLE.to_string(),
                labels,
                value: if check.ok { 1.0 } else { 0.0 },
                timestamp_ms: check.timestamp_ms,
            })
        }
        _ => None,
    }
}
