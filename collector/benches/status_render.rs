//! The network status page for 100 members × 3 hubs × 90 days (`cargo bench
//! -p hubwatch-collector --bench status_render`; `scripts/bench.sh status`).
//! Targets (issue 12): rendered in under 50 ms from state in memory, and
//! under 200 KB.
//!
//! State in memory as `serve` holds it: a [`DayLedger`] of 90 days per hub
//! (varied up, down and no-data minutes) and a real fleet board
//! ([`FleetSource`] on a temporary store) holding an outside probe result
//! for every hub, a tenth of them failing; an incident history (one
//! resolved incident per hub in the 90 days, with three updates, and every
//! tenth member with one still open) and maintenance windows (every fifth
//! member: one running now on one hub, one scheduled next week). Measured
//! with criterion:
//! `network_page` (what `GET /status` does: the view from the ledger and
//! the board, then the HTML), `member_page` (one member's three hubs with
//! their 90-day bars) and `json` (`GET /api/v1/status`). The one-run line
//! prints each page's size. `BENCH_MEMBERS` changes the member count;
//! `BENCH_ONE_RUN=1` stops after the one timed run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hubwatch_collector::alerts::FleetSource;
use hubwatch_collector::alerts::fleet::{FleetSettings, OutsideProbeResult};
use hubwatch_collector::clock::{ManualClock, SharedClock};
use hubwatch_collector::incidents::{IncidentState, IncidentUpdate, OpenedBy, StatusIncident};
use hubwatch_collector::maintenance::{Calendar, MaintenanceWindow, Origin};
use hubwatch_collector::slo::objectives::SloSettings;
use hubwatch_collector::status::Pages;
use hubwatch_collector::status::accounting::{DayLedger, Minutes};
use hubwatch_collector::status::history::{IncidentEntry, IncidentHistory};
use hubwatch_collector::status::link::LinkKey;
use hubwatch_collector::store::Store;
use hubwatch_shared::config::CollectorConfig;

const HUBS_PER_MEMBER: usize = 3;
/// 2026-11-30T10:30:00Z.
const NOW: i64 = 1_795_996_800_000 + 630 * 60_000;

fn config(members: usize, dir: &std::path::Path) -> CollectorConfig {
    let mut text = format!("[storage]\npath = {:?}\n", dir.join("data"));
    for m in 0..members {
        let _ = write!(
            text,
            "[[members]]\nid = \"member-{m:03}\"\nname = \"Member {m:03} community hub\"\ntier = \"member\"\n"
        );
        if m % 10 == 9 {
            text.push_str("status_page = \"private\"\n");
        }
        for h in 0..HUBS_PER_MEMBER {
            let _ = write!(
                text,
                "[[members.hubs]]\nname = \"hub-{h}\"\npublic_url = \"https://m{m}-h{h}.example.org\"\n"
            );
        }
    }
    hubwatch_shared::config::load(&text, &HashMap::new()).expect("bench config")
}

const MIN: i64 = 60_000;
const DAY: i64 = 1440 * MIN;

/// One resolved incident per hub within the 90 days (three updates each),
/// and one still open on the first hub of every tenth member.
fn incidents(hubs: &[hubwatch_collector::slo::objectives::HubObjectives]) -> IncidentHistory {
    let mut entries = Vec::new();
    let mut update_id = 0;
    for (i, hub) in hubs.iter().enumerate() {
        let open = i % (10 * HUBS_PER_MEMBER) == 0;
        let started = if open {
            NOW - 40 * MIN
        } else {
            NOW - (1 + (i as i64 * 7) % 88) * DAY
        };
        let mut updates = Vec::new();
        let states = [
            IncidentState::Investigating,
            IncidentState::Identified,
            if open {
                IncidentState::Monitoring
            } else {
                IncidentState::Resolved
            },
        ];
        for (n, state) in states.into_iter().enumerate() {
            update_id += 1;
            updates.push(IncidentUpdate {
                id: update_id,
                incident_id: i as i64 + 1,
                at_ms: started + n as i64 * 10 * MIN,
                state,
                message: format!(
                    "Spawns on {} are failing: the image pull from the registry times out ({state:?}).",
                    hub.hub
                ),
                author: "ops".into(),
            });
        }
        entries.push(IncidentEntry {
            incident: StatusIncident {
                id: i as i64 + 1,
                member: hub.member.clone(),
                hub: hub.hub.clone(),
                title: format!("{} spawn failures", hub.hub),
                state: states[2],
                started_at_ms: started,
                ended_at_ms: (!open).then_some(started + 20 * MIN),
                opened_by: OpenedBy::Alert,
                alertnames: vec!["SpawnErrorBudgetBurn".into()],
            },
            updates,
        });
    }
    entries.sort_by_key(|e| (e.incident.started_at_ms, e.incident.id));
    IncidentHistory { entries }
}

/// Every fifth member: a window running now on `hub-1`, and one scheduled
/// next week on all its hubs.
fn windows(members: usize) -> Vec<MaintenanceWindow> {
    let mut out = Vec::new();
    for m in (0..members).step_by(5) {
        for (k, (start, end, hubs)) in [
            (NOW - 30 * MIN, NOW + 90 * MIN, vec!["hub-1".to_string()]),
            (NOW + 7 * DAY, NOW + 7 * DAY + 120 * MIN, Vec::new()),
        ]
        .into_iter()
        .enumerate()
        {
            out.push(MaintenanceWindow {
                id: (m * 2 + k) as i64 + 1,
                member: format!("member-{m:03}"),
                hubs,
                start_ms: start,
                end_ms: end,
                start_local: "2026-11-30 10:00".into(),
                end_local: "2026-11-30 12:00".into(),
                timezone: "Europe/Berlin".into(),
                note: "Kubernetes node pool upgrade".into(),
                origin: Origin::Api,
                created_ms: NOW - 3 * DAY,
            });
        }
    }
    out
}

fn main() {
    let members: usize = std::env::var("BENCH_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Arc::new(config(members, dir.path()));
    let store = Store::open(&cfg.storage).expect("store");
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let hubs = SloSettings::from_config(&cfg).expect("tiers").hubs;
    let mut ledger = DayLedger::empty(&hubs, NOW);
    for (i, hub) in ledger.hubs.iter_mut().enumerate() {
        for (d, day) in hub.days.iter_mut().enumerate() {
            let seed = (i * 31 + d * 7) as u64;
            // Mostly whole good days; some partial, some down, some no data.
            *day = match seed % 23 {
                0 => Minutes::default(),
                1 => Minutes {
                    good: 1300,
                    total: 1400,
                },
                2 => Minutes {
                    good: 0,
                    total: 600,
                },
                _ => Minutes {
                    good: 1440 - seed % 3,
                    total: 1440,
                },
            };
        }
    }
    let fleet = Arc::new(
        FleetSource::open(
            store.clone(),
            &cfg,
            FleetSettings::from_config(&cfg),
            &clock,
        )
        .expect("fleet"),
    );
    for (i, hub) in hubs.iter().enumerate() {
        fleet.record_outside_probe(OutsideProbeResult {
            member: hub.member.clone(),
            hub: hub.hub.clone(),
            ok: i % 10 != 3,
            at_ms: NOW - 5_000,
            status: Some(200),
            latency_us: 120_000,
            error: None,
            cert_not_after_ms: None,
        });
    }
    let calendar = Calendar::new();
    calendar.set(windows(members));
    let pages = Pages::new(
        cfg.clone(),
        ledger,
        Some(fleet),
        LinkKey::from_bytes([1; 32]),
        clock,
    )
    .with_maintenance(calendar);
    let history = incidents(&hubs);
    let (total, open) = (
        history.entries.len(),
        history.entries.iter().filter(|e| e.is_open()).count(),
    );
    pages.set_incidents(history);
    println!("state: {total} incidents ({open} open), maintenance windows on every fifth member");

    let one = Instant::now();
    let network = pages.network_html();
    let network_time = one.elapsed();
    let member = pages.member_html("member-000").unwrap_or_default();
    let json = pages.json(None);
    println!(
        "one run: network page {network_time:?}, {} bytes ({} members x {HUBS_PER_MEMBER} hubs x 90 days); \
         member page {} bytes; JSON {} bytes",
        network.len(),
        members,
        member.len(),
        json.len()
    );
    println!(
        "targets: under 50 ms: {}; under 200 KB (204,800 bytes): {}",
        network_time < Duration::from_millis(50),
        network.len() < 204_800
    );
    if std::env::var("BENCH_ONE_RUN").is_ok_and(|v| v == "1") {
        return;
    }
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let mut group = criterion.benchmark_group(format!("status_{members}_members"));
    group.bench_function("network_page", |b| b.iter(|| pages.network_html().len()));
    group.bench_function("member_page", |b| {
        b.iter(|| pages.member_html("member-000").map(|p| p.len()))
    });
    group.bench_function("json", |b| b.iter(|| pages.json(None).len()));
    group.finish();
    criterion.final_summary();
}
