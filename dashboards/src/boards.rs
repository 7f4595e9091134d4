//! The five hubwatch dashboards. Every metric name comes from
//! `hubwatch_shared::metrics` (a renamed metric breaks this build), except the
//! JupyterHub series agents forward, re-exposed by the collector's
//! `/federate`, whose names are in [`crate::FORWARDED`].
//!
//! Thresholds follow the tier targets: SLO panels show the SLI's margin over
//! `hubwatch_slo_target_ratio` (red below 0) and draw the target itself as a
//! dashed series, since one dashboard spans tiers with different targets.

use hubwatch_shared::metrics as m;

use crate::grafana::{Dashboard, Kind, MEMBER, MEMBER_HUB, Panel, q};
use crate::{JUPYTERHUB_REQUESTS, JUPYTERHUB_TOTAL_USERS};

/// The hub detail dashboard's uid: the fleet overview's tables link to it.
pub const HUB_DETAIL_UID: &str = "hubwatch-hub-detail";

/// A data link to the hub detail dashboard for the row's member and hub.
const TO_HUB_DETAIL: &str = "/d/hubwatch-hub-detail?${__url_time_range}&${datasource:queryparam}&var-member=${__field.labels.member}&var-hub=${__field.labels.hub}";

/// A data link to the SLO dashboard for the row's member and hub.
const TO_SLOS: &str = "/d/hubwatch-slos?${__url_time_range}&${datasource:queryparam}&var-member=${__field.labels.member}&var-hub=${__field.labels.hub}";

/// Every dashboard, in a stable order.
pub fn all() -> Vec<Dashboard> {
    vec![
        fleet_overview(),
        hub_detail(),
        slos(),
        usage(),
        hubwatch_itself(),
    ]
}

fn fleet_overview() -> Dashboard {
    let up = m::HUB_UP.name;
    Dashboard {
        file: "fleet-overview.json",
        uid: "hubwatch-fleet-overview",
        title: "hubwatch / Fleet overview",
        description: "Every member's hubs: up, users, SLO status, error budget left, firing alerts.",
        from: "now-6h",
        panels: vec![
            Panel::new(
                Kind::Stat,
                "Hubs up",
                "Hubs whose last health check succeeded from every vantage point (agent and outside).",
                "short",
            )
            .size(6, 5)
            .target(q(
                format!("count(min by (member, hub) ({up}{{{MEMBER_HUB}}}) == 1)"),
                "up",
            )),
            Panel::new(
                Kind::Stat,
                "Hubs down",
                "Hubs whose last health check failed from at least one vantage point.",
                "short",
            )
            .size(6, 5)
            .thresholds("green", &[("red", 1.0)])
            .target(q(
                format!("count(min by (member, hub) ({up}{{{MEMBER_HUB}}}) == 0) or vector(0)"),
                "down",
            )),
            Panel::new(
                Kind::Stat,
                "Firing alerts",
                "Alerts the collector's engine holds as firing, the Watchdog included (it always fires).",
                "short",
            )
            .size(6, 5)
            .target(q(
                format!(
                    "sum({}{{state=\"firing\"}}) or vector(0)",
                    m::COLLECTOR_ALERTS.name
                ),
                "firing",
            )),
            Panel::new(
                Kind::Stat,
                "Running servers",
                "Single-user servers running on the selected hubs.",
                "short",
            )
            .size(6, 5)
            .target(q(
                format!("sum({}{{{MEMBER_HUB}}})", m::HUB_RUNNING_SERVERS.name),
                "servers",
            )),
            Panel::new(
                Kind::Table,
                "Hubs",
                "One row per hub: up from its worst vantage point. Click a row for the hub's detail.",
                "short",
            )
            .size(24, 8)
            .thresholds("red", &[("green", 1.0)])
            .link("Hub detail", TO_HUB_DETAIL)
            .target(q(format!("min by (member, hub, tier) ({up}{{{MEMBER_HUB}}})"), "")),
            Panel::new(
                Kind::TimeSeries,
                "Up by vantage point",
                "1 when the hub's last health check from the vantage point succeeded.",
                "short",
            )
            .size(12, 8)
            .range(Some(0.0), Some(1.0))
            .link("Hub detail", TO_HUB_DETAIL)
            .target(q(
                format!("min by (member, hub, vantage) ({up}{{{MEMBER_HUB}}})"),
                "{{member}}/{{hub}} {{vantage}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Active users (24h)",
                "Users active in the last 24 hours, as each hub reports them.",
                "short",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(
                format!(
                    "sum by (member, hub) ({}{{{MEMBER_HUB}, period=\"24h\"}})",
                    m::HUB_ACTIVE_USERS.name
                ),
                "{{member}}/{{hub}}",
            )),
            Panel::new(
                Kind::BarGauge,
                "SLO margin (SLI − tier target)",
                "How far each objective's SLI is above its tier's target over the tier window; red when below target.",
                "percentunit",
            )
            .size(12, 8)
            .thresholds("red", &[("green", 0.0)])
            .link("SLOs", TO_SLOS)
            .target(q(
                format!(
                    "{}{{{MEMBER_HUB}}} - {}{{{MEMBER_HUB}}}",
                    m::SLO_SLI.name,
                    m::SLO_TARGET.name
                ),
                "{{member}}/{{hub}} {{slo}}",
            )),
            Panel::new(
                Kind::BarGauge,
                "Error budget left",
                "Share of each objective's error budget left over the tier window (negative: overspent).",
                "percentunit",
            )
            .size(12, 8)
            .range(Some(-1.0), Some(1.0))
            .thresholds("red", &[("orange", 0.0), ("yellow", 0.25), ("green", 0.5)])
            .link("SLOs", TO_SLOS)
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::SLO_BUDGET_REMAINING.name),
                "{{member}}/{{hub}} {{slo}}",
            )),
        ],
    }
}

fn hub_detail() -> Dashboard {
    Dashboard {
        file: "hub-detail.json",
        uid: HUB_DETAIL_UID,
        title: "hubwatch / Member and hub detail",
        description: "One member's hubs: probes by vantage point, spawns, users, storage, certificate, agent.",
        from: "now-6h",
        panels: vec![
            Panel::new(
                Kind::TimeSeries,
                "Up by vantage point",
                "1 when the last health check succeeded: agent = inside the cluster, outside = the collector's probe of public_url.",
                "short",
            )
            .size(12, 8)
            .range(Some(0.0), Some(1.0))
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::HUB_UP.name),
                "{{hub}} {{vantage}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Probe latency by vantage point",
                "Duration of the last health check from each vantage point.",
                "s",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .thresholds("green", &[("orange", 1.0), ("red", 5.0)])
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::HUB_PROBE_SECONDS.name),
                "{{hub}} {{vantage}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Spawns by status",
                "Server spawns the hub counted per rate interval, by status.",
                "short",
            )
            .size(8, 8)
            .range(Some(0.0), None)
            .target(q(
                format!(
                    "sum by (member, hub, status) (increase({}{{{MEMBER_HUB}}}[$__rate_interval]))",
                    m::HUB_SPAWNS.name
                ),
                "{{hub}} {{status}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Spawn latency p50 / p90 (over the range)",
                "Quantiles of successful spawn durations over the dashboard's time range, from the hub's own histogram.",
                "s",
            )
            .size(8, 8)
            .range(Some(0.0), None)
            .thresholds("green", &[("orange", 60.0), ("red", 120.0)])
            .target(q(
                format!(
                    "histogram_quantile(0.5, sum by (member, hub, le) (increase({}_bucket{{{MEMBER_HUB}}}[$__range])))",
                    m::HUB_SPAWN_SECONDS.name
                ),
                "{{hub}} p50",
            ))
            .target(q(
                format!(
                    "histogram_quantile(0.9, sum by (member, hub, le) (increase({}_bucket{{{MEMBER_HUB}}}[$__range])))",
                    m::HUB_SPAWN_SECONDS.name
                ),
                "{{hub}} p90",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Login latency",
                "Mean duration of the hub's login requests per agent interval; no data without logins.",
                "s",
            )
            .size(8, 8)
            .range(Some(0.0), None)
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::HUB_LOGIN_SECONDS.name),
                "{{hub}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Active users by period",
                "Users active in each period, as the hub reports them.",
                "short",
            )
            .size(8, 8)
            .range(Some(0.0), None)
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::HUB_ACTIVE_USERS.name),
                "{{hub}} {{period}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Running servers",
                "Single-user servers running, as the hub last reported.",
                "short",
            )
            .size(8, 8)
            .range(Some(0.0), None)
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::HUB_RUNNING_SERVERS.name),
                "{{hub}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Users known to the hub (forwarded)",
                "jupyterhub_total_users from the hub's own /hub/metrics, forwarded by the agent and re-exposed by the collector's /federate.",
                "short",
            )
            .size(8, 8)
            .range(Some(0.0), None)
            .target(q(
                format!("sum by (member, hub) ({JUPYTERHUB_TOTAL_USERS}{{{MEMBER_HUB}}})"),
                "{{hub}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Home storage",
                "Bytes used and free on the hub's home volume, as the agent last reported.",
                "bytes",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::HUB_STORAGE_USED_BYTES.name),
                "{{hub}} {{volume}} used",
            ))
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::HUB_STORAGE_FREE_BYTES.name),
                "{{hub}} {{volume}} free",
            )),
            Panel::new(
                Kind::Stat,
                "Home storage free",
                "Free share of the hub's home volume; orange under 10 %, red under 5 %.",
                "percentunit",
            )
            .size(6, 8)
            .range(Some(0.0), Some(1.0))
            .thresholds("red", &[("orange", 0.05), ("green", 0.1)])
            .target(q(
                format!(
                    "{free}{{{MEMBER_HUB}}} / ({free}{{{MEMBER_HUB}}} + {used}{{{MEMBER_HUB}}})",
                    free = m::HUB_STORAGE_FREE_BYTES.name,
                    used = m::HUB_STORAGE_USED_BYTES.name
                ),
                "{{hub}} {{volume}}",
            )),
            Panel::new(
                Kind::Stat,
                "Certificate expires in",
                "Time until the hub's TLS certificate expires, per vantage point; orange under 21 days (the usual renewal alert), red under 7.",
                "s",
            )
            .size(6, 8)
            .thresholds("red", &[("orange", 7.0 * 86400.0), ("green", 21.0 * 86400.0)])
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::HUB_CERT_SECONDS_LEFT.name),
                "{{hub}} {{vantage}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Hub API requests by status code (forwarded)",
                "Requests the hub served per second, by HTTP status code, from its own jupyterhub_request_duration_seconds (forwarded through /federate).",
                "reqps",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(
                format!(
                    "sum by (member, hub, code) (rate({JUPYTERHUB_REQUESTS}_count{{{MEMBER_HUB}}}[$__rate_interval]))"
                ),
                "{{hub}} {{code}}",
            )),
            Panel::new(
                Kind::Table,
                "Agents",
                "The member's agents: version and seconds since their last stored batch.",
                "s",
            )
            .size(12, 8)
            .thresholds("green", &[("orange", 30.0), ("red", 50.0)])
            .target(q(
                format!(
                    "time() - {}{{{MEMBER}}}",
                    m::COLLECTOR_AGENT_LAST_SEEN.name
                ),
                "{{agent}}",
            )),
        ],
    }
}

fn slos() -> Dashboard {
    Dashboard {
        file: "slos.json",
        uid: "hubwatch-slos",
        title: "hubwatch / SLOs and error budgets",
        description: "Each hub's objectives: SLI against the tier target, error budget burn-down over the tier window, burn rates per alert window.",
        from: "now-7d",
        panels: vec![
            Panel::new(
                Kind::TimeSeries,
                "SLI and tier target",
                "Good share over the tier window (solid) and the tier's target (dashed).",
                "percentunit",
            )
            .size(12, 9)
            .range(None, Some(1.0))
            .dashed("B")
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::SLO_SLI.name),
                "{{hub}} {{slo}}",
            ))
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::SLO_TARGET.name),
                "{{hub}} {{slo}} target ({{tier}})",
            )),
            Panel::new(
                Kind::Stat,
                "Margin over target",
                "SLI minus the tier's target: red when the objective is missed.",
                "percentunit",
            )
            .size(12, 9)
            .thresholds("red", &[("green", 0.0)])
            .target(q(
                format!(
                    "{}{{{MEMBER_HUB}}} - {}{{{MEMBER_HUB}}}",
                    m::SLO_SLI.name,
                    m::SLO_TARGET.name
                ),
                "{{hub}} {{slo}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Error budget burn-down",
                "Share of the error budget left over the tier window: 1 untouched, 0 spent, negative overspent.",
                "percentunit",
            )
            .size(12, 9)
            .range(None, Some(1.0))
            .thresholds("red", &[("orange", 0.0), ("green", 0.25)])
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::SLO_BUDGET_REMAINING.name),
                "{{hub}} {{slo}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Burn rate per window",
                "Error ratio over each window divided by the error budget; 1 spends the budget exactly over the tier window. The fast-burn page thresholds are 14.4 (1h) and 6 (6h).",
                "x",
            )
            .size(12, 9)
            .range(Some(0.0), None)
            .thresholds("green", &[("orange", 6.0), ("red", 14.4)])
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::SLO_BURN_RATE.name),
                "{{hub}} {{slo}} {{window}}",
            )),
            Panel::new(
                Kind::Stat,
                "Synthetic journey: latest run",
                "1 when the hub's latest synthetic journey (log in, spawn, kernel, execute, stop) passed every phase, 0 when it failed; no data for hubs without [hubs.journey].",
                "none",
            )
            .size(8, 8)
            .thresholds("red", &[("green", 1.0)])
            .target(q(
                format!("{}{{{MEMBER_HUB}}}", m::JOURNEY_UP.name),
                "{{hub}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Synthetic journey: mean phase duration",
                "Mean duration of each journey phase since the collector started (sum over count of the phase histogram); a spawn that grows towards the tier's journey_max_duration shows here before the journey fails.",
                "s",
            )
            .size(16, 8)
            .range(Some(0.0), None)
            .target(q(
                format!(
                    "sum by (member, hub, phase) ({}_sum{{{MEMBER_HUB}}}) / sum by (member, hub, phase) ({}_count{{{MEMBER_HUB}}})",
                    m::JOURNEY_PHASE_SECONDS.name,
                    m::JOURNEY_PHASE_SECONDS.name
                ),
                "{{hub}} {{phase}}",
            )),
            Panel::new(
                Kind::Table,
                "Burn rates now",
                "The latest burn rate of every objective and window.",
                "x",
            )
            .size(24, 8)
            .thresholds("green", &[("orange", 6.0), ("red", 14.4)])
            .link("Hub detail", TO_HUB_DETAIL)
            .target(q(
                format!(
                    "max by (member, hub, slo, window) ({}{{{MEMBER_HUB}}})",
                    m::SLO_BURN_RATE.name
                ),
                "",
            )),
        ],
    }
}

fn usage() -> Dashboard {
    let seconds = m::USAGE_SERVER_SECONDS.name;
    let coverage = m::USAGE_COVERAGE.name;
    Dashboard {
        file: "usage.json",
        uid: "hubwatch-usage",
        title: "hubwatch / Usage and cost recovery",
        description: "Server time per hub and member from the usage ledger (last complete UTC hour, never per user), its coverage, and each member's share for cost recovery. The monthly allocation itself is in the cost report.",
        from: "now-30d",
        panels: vec![
            Panel::new(
                Kind::TimeSeries,
                "Server hours per hub",
                "Hours users' servers ran on each hub in the last complete UTC hour.",
                "h",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(format!("{seconds}{{{MEMBER_HUB}}} / 3600"), "{{member}}/{{hub}}")),
            Panel::new(
                Kind::TimeSeries,
                "Observation coverage",
                "Share of the last complete hour the agent observed the hub; below 1 the server hours are a lower bound.",
                "percentunit",
            )
            .size(12, 8)
            .range(Some(0.0), Some(1.0))
            .thresholds("red", &[("orange", 0.9), ("green", 0.99)])
            .target(q(format!("{coverage}{{{MEMBER_HUB}}}"), "{{member}}/{{hub}}")),
            Panel::new(
                Kind::BarGauge,
                "Server hours per member",
                "Each member's server hours in the last complete hour.",
                "h",
            )
            .size(12, 8)
            .target(q(
                format!("sum by (member) ({seconds}{{{MEMBER_HUB}}}) / 3600"),
                "{{member}}",
            )),
            Panel::new(
                Kind::BarGauge,
                "Share of server time (cost recovery)",
                "Each member's share of the selected hubs' server time in the last complete hour: the usage part of a shared cluster's split.",
                "percentunit",
            )
            .size(12, 8)
            .range(Some(0.0), Some(1.0))
            .target(q(
                format!(
                    "sum by (member) ({seconds}{{{MEMBER_HUB}}}) / scalar(sum({seconds}{{{MEMBER_HUB}}}))"
                ),
                "{{member}}",
            )),
        ],
    }
}

fn hubwatch_itself() -> Dashboard {
    let rate = |name: &str, by: &str| format!("sum by ({by}) (rate({name}[$__rate_interval]))");
    let p99 = |name: &str| {
        format!("histogram_quantile(0.99, sum by (le) (rate({name}_bucket[$__rate_interval])))")
    };
    Dashboard {
        file: "hubwatch.json",
        uid: "hubwatch-itself",
        title: "hubwatch / hubwatch itself",
        description: "The monitoring's own health: agents, spools, ingest rate and latency, the store, derivation stages, alert sends.",
        from: "now-6h",
        panels: vec![
            Panel::new(
                Kind::Table,
                "Agents and versions",
                "Every agent of the selected members with the version its last batch carried.",
                "short",
            )
            .size(12, 8)
            .target(q(format!("{}{{{MEMBER}}}", m::COLLECTOR_AGENT_INFO.name), "")),
            Panel::new(
                Kind::TimeSeries,
                "Seconds since each agent's last batch",
                "An agent silent longer than alerting.agent_silent_after (50 s by default) raises AgentSilent.",
                "s",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .thresholds("green", &[("orange", 30.0), ("red", 50.0)])
            .target(q(
                format!("time() - {}{{{MEMBER}}}", m::COLLECTOR_AGENT_LAST_SEEN.name),
                "{{member}} {{agent}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Agent spools",
                "Bytes of unsent backlog in each agent's spool, as the agent last reported.",
                "bytes",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(
                format!("{}{{{MEMBER}}}", m::COLLECTOR_AGENT_SPOOL_BYTES.name),
                "{{member}} {{agent}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Records agents dropped",
                "Cumulative records each agent reports it dropped (spool full, memory full, rejected, too large).",
                "short",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .thresholds("green", &[("red", 1.0)])
            .target(q(
                format!("{}{{{MEMBER}}}", m::COLLECTOR_AGENT_DROPPED.name),
                "{{member}} {{agent}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Ingest requests by status",
                "Ingest requests per second by the HTTP status the collector answered.",
                "reqps",
            )
            .size(8, 8)
            .range(Some(0.0), None)
            .target(q(rate(m::COLLECTOR_INGEST_REQUESTS.name, "code"), "{{code}}")),
            Panel::new(
                Kind::TimeSeries,
                "Batches stored per member",
                "Batches stored durably per second (first delivery), and duplicates acknowledged without storing.",
                "short",
            )
            .size(8, 8)
            .range(Some(0.0), None)
            .target(q(
                format!(
                    "sum by (member) (rate({}{{{MEMBER}}}[$__rate_interval]))",
                    m::COLLECTOR_BATCHES_STORED.name
                ),
                "{{member}} stored",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Ingest refused",
                "Requests refused for their body or their credential, per second (0 when none).",
                "reqps",
            )
            .size(8, 8)
            .range(Some(0.0), None)
            .thresholds("green", &[("red", 0.01)])
            .target(q(
                format!(
                    "sum(rate({}[$__rate_interval])) + sum(rate({}[$__rate_interval])) or vector(0)",
                    m::COLLECTOR_INGEST_REJECTED.name,
                    m::COLLECTOR_AUTH_FAILURES.name
                ),
                "refused",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Ingest and commit latency p99",
                "From a batch fully read to its acknowledgement (after it is durable), and one group commit to the store.",
                "s",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(p99(m::COLLECTOR_ACK_SECONDS.name), "ack p99"))
            .target(q(p99(m::COLLECTOR_COMMIT_SECONDS.name), "commit p99")),
            Panel::new(
                Kind::TimeSeries,
                "Store",
                "Raw batches held, and those past raw_retention kept for a stage that has not read them.",
                "short",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(m::COLLECTOR_STORE_BATCHES.name, "raw batches"))
            .target(q(m::COLLECTOR_RETENTION_HELD.name, "held for a stage")),
            Panel::new(
                Kind::TimeSeries,
                "Derivation stages: lag",
                "Age of the oldest raw batch each stage has not derived yet (0 when caught up); DerivationBehind fires at 10 min.",
                "s",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .thresholds("green", &[("orange", 60.0), ("red", 600.0)])
            .target(q(
                format!("max by (stage) ({})", m::COLLECTOR_STAGE_LAG_SECONDS.name),
                "{{stage}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Derivation stages: batches by result",
                "Raw batches each stage consumed per second: processed, quarantined, expired.",
                "short",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(
                rate(m::COLLECTOR_STAGE_BATCHES.name, "stage, result"),
                "{{stage}} {{result}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Alert sends",
                "POSTs each Alertmanager accepted per second; the failures alongside (0 when none).",
                "reqps",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(
                rate(m::COLLECTOR_ALERTMANAGER_SENDS.name, "alertmanager"),
                "{{alertmanager}} accepted",
            ))
            .target(q(
                format!(
                    "{} or vector(0)",
                    rate(m::COLLECTOR_ALERTMANAGER_SEND_FAILURES.name, "alertmanager")
                ),
                "{{alertmanager}} failed",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Alerts held by state",
                "Alerts the engine holds: firing, or resolved and still being sent.",
                "short",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(
                format!("sum by (state, severity) ({})", m::COLLECTOR_ALERTS.name),
                "{{state}} {{severity}}",
            )),
            Panel::new(
                Kind::TimeSeries,
                "Records the derivations skipped",
                "Records the SLI and usage derivations ignored for their timestamps, per second (0 when none).",
                "short",
            )
            .size(12, 8)
            .range(Some(0.0), None)
            .target(q(
                format!(
                    "sum(rate({}[$__rate_interval])) + (sum(rate({}[$__rate_interval])) or vector(0))",
                    m::USAGE_SKIPPED_RECORDS.name,
                    m::SLO_SKIPPED_RECORDS.name
                ),
                "skipped",
            )),
        ],
    }
}
