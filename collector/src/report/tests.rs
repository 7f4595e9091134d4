//! The reports end to end inside the crate: the hand-computed month
//! ([`super::fixture_month`]) ingested through the real pipeline into a real
//! store, closed and frozen, then every number asserted in every format; a
//! month with no data in every format; a frozen report surviving pruned SLI
//! minutes byte for byte; the month closed and frozen on PostgreSQL
//! rendering the same bytes; and `GET /api/v1/reports/{period}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hubwatch_shared::config::{CollectorConfig, Period, load};
use hubwatch_shared::wire::{Batch, Record, ResourceSnapshot, UsageEvent, UsageKind};

use super::fixture_month::{CONFIG, OCTOBER, RUNS};
use super::{Format, Report, ReportContext, build, freeze, render};
use crate::alerts::engine::AlertRecord;
use crate::alerts::state_store::{AlertStateStore, SqliteAlertStateStore};
use crate::clock::{ManualClock, SharedClock};
use crate::cost::close::close_due;
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::slo::sli::{MinuteCounts, SliPage};
use crate::slo::store::{SliStore, SqliteSli};
use crate::store::{IngestItem, Store};
use crate::usage::{LedgerStage, SqliteUsage};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2026-11-05T00:00:00Z: October is past its 48 h grace.
fn now() -> i64 {
    Period {
        year: 2026,
        month: 11,
    }
    .start_ms()
        + 4 * DAY
}

fn at(day: i64, hour: i64) -> i64 {
    OCTOBER.start_ms() + (day - 1) * DAY + hour * HOUR
}

fn config(dir: &std::path::Path) -> CollectorConfig {
    let mut cfg: CollectorConfig = load(CONFIG, &HashMap::new()).expect("fixture config");
    cfg.storage.path = dir.join("store");
    cfg
}

fn event(hub: &str, user: &str, kind: UsageKind, ts: i64) -> Record {
    Record::Usage(UsageEvent {
        hub: hub.into(),
        user: user.into(),
        server: String::new(),
        kind,
        timestamp_ms: ts,
    })
}

fn ingest(store: &Store, member: &str, seq: u64, records: Vec<Record>) {
    let batch = Batch {
        agent_id: format!("{member}-agent"),
        member: member.into(),
        seq,
        created_ms: now(),
        dropped_records: 0,
        agent_version: "test".into(),
        records,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(
            store.ingest(IngestItem {
                member: member.into(),
                agent: batch.agent_id.clone(),
                seq,
                created_ms: now(),
                dropped_records: 0,
                agent_version: "test".into(),
                records: batch.records.len() as u64,
                frame: hubwatch_shared::codec::encode(&batch)
                    .expect("encode")
                    .into(),
                received_ms: now(),
            }),
        )
        .expect("ingest");
}

/// The fixture's month in a fresh store, through the real ledger stage; the
/// SLI minutes and the incident written through their stores; October
/// closed and its reports frozen.
fn month_store(dir: &std::path::Path) -> (CollectorConfig, Store, ReportContext) {
    let cfg = config(dir);
    let store = Store::open(&cfg.storage).expect("store");
    for (seq, (member, hub, user, day, hour, hours, cpu, memory)) in RUNS.iter().enumerate() {
        let start = at(*day, *hour);
        let stop = start + hours * HOUR;
        let mut records = vec![event(
            hub,
            user,
            UsageKind::ServerStarted { profile: None },
            start,
        )];
        let mut ts = start;
        while ts <= stop {
            records.push(event(
                hub,
                user,
                UsageKind::Resources(ResourceSnapshot {
                    cpu_request_millicores: Some(*cpu),
                    memory_request_bytes: Some(*memory),
                    cpu_usage_millicores: None,
                    memory_usage_bytes: None,
                    storage_bytes: None,
                }),
                ts,
            ));
            ts += 15_000;
        }
        if *user == "ada" {
            records.push(event(hub, user, UsageKind::Activity, at(1, 12)));
        }
        records.push(event(hub, user, UsageKind::ServerStopped, stop));
        ingest(&store, member, (seq as u64 + 1) * 1024, records);
    }
    let mut pipeline = Pipeline::open(
        Arc::new(store.clone()),
        vec![Box::new(LedgerStage::new(Arc::new(SqliteUsage::new(
            store.clone(),
        ))))],
        PipelineSettings::default(),
    )
    .expect("pipeline");
    while !pipeline.run(now()).expect("run").caught_up {}

    // SLI: 1000 minutes of leap/prod from Oct 10, 990 good.
    let first = at(10, 0) / 60_000;
    let minutes: BTreeMap<_, _> = (0..1000)
        .map(|m| {
            let counts = if m < 990 {
                MinuteCounts {
                    probes_ok: 1,
                    ..MinuteCounts::default()
                }
            } else {
                MinuteCounts {
                    probes_failed: 1,
                    ..MinuteCounts::default()
                }
            };
            (("leap".to_string(), "prod".to_string(), first + m), counts)
        })
        .collect();
    SqliteSli::new(store.clone())
        .commit(
            &SliPage {
                minutes,
                ..SliPage::default()
            },
            None,
        )
        .expect("sli");
    let labels: BTreeMap<String, String> = [
        ("alertname", "HubDown"),
        ("severity", "page"),
        ("member", "leap"),
        ("hub", "prod"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    SqliteAlertStateStore::new(store.clone())
        .save(
            &[AlertRecord {
                fingerprint: "f1".into(),
                source: "fleet".into(),
                labels,
                annotations: BTreeMap::new(),
                starts_at_ms: at(5, 10),
                resolved_at_ms: Some(at(5, 10) + 30 * 60_000),
                last_sent_ms: None,
            }],
            &[],
        )
        .expect("incident");
    // The status incident the firing opens, and an operator's update.
    let status = crate::incidents::SqliteStatusIncidents::new(store.clone());
    use crate::incidents::StatusIncidentStore;
    status.fold_alerts(30 * 60_000, now()).expect("fold");
    status
        .add_update(
            1,
            &crate::incidents::NewUpdate {
                state: crate::incidents::IncidentState::Identified,
                message: "A full disk.".into(),
                at_ms: at(5, 10) + 10 * 60_000,
                author: "ana".into(),
            },
        )
        .expect("update")
        .expect("incident 1");

    let ctx = ReportContext::open(&cfg, &store.clone().into()).expect("context");
    let closed = close_due(&*ctx.cost, &*ctx.usage, &ctx.model, 48 * HOUR, now()).expect("close");
    assert_eq!(closed, vec![OCTOBER]);
    assert_eq!(freeze(&ctx, now()).expect("freeze"), vec![OCTOBER]);
    (cfg, store, ctx)
}

fn text(ctx: &ReportContext, member: Option<&str>, format: Format) -> String {
    let report = build(ctx, OCTOBER, member, now() + DAY).expect("build");
    render(&report, format).expect("render")
}

fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut reader = ::csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().expect("headers").clone();
    reader
        .records()
        .map(|r| {
            let r = r.expect("record");
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn the_hand_computed_month_in_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cfg, _store, ctx) = month_store(dir.path());

    // ---- json, one member ----
    let leap: serde_json::Value =
        serde_json::from_str(&text(&ctx, Some("leap"), Format::Json)).expect("json");
    assert_eq!(leap["header"]["period"], "2026-10");
    assert_eq!(leap["header"]["start"], "2026-10-01T00:00:00Z");
    assert_eq!(leap["header"]["end"], "2026-11-01T00:00:00Z");
    assert_eq!(leap["header"]["status"], "closed");
    assert_eq!(leap["header"]["closed_at"], "2026-11-05T00:00:00Z");
    // Frozen at close: generated then, not at the later build.
    assert_eq!(leap["header"]["generated_at"], "2026-11-05T00:00:00Z");
    assert_eq!(leap["header"]["currency"], "EUR");
    assert_eq!(
        leap["header"]["model_hash"].as_str().map(str::len),
        Some(64)
    );
    assert_eq!(leap["member"]["name"], "LEAP");
    assert_eq!(leap["no_data"], false);
    let hub = &leap["hubs"][0];
    assert_eq!(hub["hub"], "prod");
    assert_eq!(hub["cluster"], "shared-gke");
    assert_eq!(hub["server_seconds"], 21_600);
    assert_eq!(hub["active_users"], 2);
    assert_eq!(hub["idle_server_seconds"], 10_800);
    assert_eq!(hub["cpu_request_millicore_seconds"], 18_000_000u64);
    assert_eq!(hub["memory_request_byte_seconds"], 38_654_705_664_000u64);
    assert_eq!(hub["storage_byte_seconds"], 0);
    assert_eq!(hub["coverage"], 21_600_000.0 / 2_678_400_000.0);
    assert_eq!(
        leap["days"],
        serde_json::json!([
            {"day": "2026-10-01", "hub": "prod", "server_seconds": 14_400, "active_users": 1},
            {"day": "2026-10-02", "hub": "prod", "server_seconds": 7_200, "active_users": 1},
        ])
    );
    assert_eq!(leap["server_seconds"], 21_600);
    assert_eq!(leap["active_users"], 2);
    assert_eq!(leap["server_hours_per_active_user"], 3.0);
    let availability = &leap["slo"][0];
    assert_eq!(availability["slo"], "availability");
    assert_eq!(availability["good"], 990);
    assert_eq!(availability["total"], 1000);
    assert_eq!(availability["attainment"], 0.99);
    let spent = availability["budget_spent"].as_f64().unwrap_or(0.0);
    assert!((spent - 10.0).abs() < 1e-9, "{spent}");
    assert_eq!(leap["incidents"][0]["alertname"], "HubDown");
    assert_eq!(leap["incidents"][0]["start"], "2026-10-05T10:00:00Z");
    assert_eq!(leap["incidents"][0]["end"], "2026-10-05T10:30:00Z");
    assert_eq!(leap["incidents"][0]["duration_seconds"], 1800);
    assert_eq!(leap["incidents"][0]["in_period_seconds"], 1800);
    let status = &leap["status_incidents"][0];
    assert_eq!(status["title"], "prod is down");
    assert_eq!(status["state"], "resolved");
    assert_eq!(status["start"], "2026-10-05T10:00:00Z");
    assert_eq!(status["end"], "2026-10-05T10:30:00Z");
    let updates: Vec<(&str, &str)> = status["updates"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| {
                    (
                        u["at"].as_str().unwrap_or(""),
                        u["state"].as_str().unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        updates,
        [
            ("2026-10-05T10:00:00Z", "investigating"),
            ("2026-10-05T10:10:00Z", "identified"),
            ("2026-10-05T10:30:00Z", "resolved"),
        ]
    );
    let lines: Vec<(String, u64, u64)> = leap["cost"]["lines"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    (
                        l["name"].as_str().unwrap_or_default().to_string(),
                        l["line_micros"].as_u64().unwrap_or(0),
                        l["share_micros"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        lines,
        vec![
            ("shared-gke".into(), 1_000_000_000, 459_558_824),
            ("operations".into(), 300_000_000, 100_000_000),
        ]
    );
    assert_eq!(leap["cost"]["total_micros"], 559_558_824u64);
    assert_eq!(leap["cost"]["cost_per_active_user_micros"], 279_779_412u64);
    assert_eq!(leap["change"]["previous_period"], "2026-09");
    assert_eq!(
        leap["change"]["previous_cost_micros"],
        serde_json::Value::Null
    );

    // ---- json, all members: totals equal the bills ----
    let full: serde_json::Value =
        serde_json::from_str(&text(&ctx, None, Format::Json)).expect("json");
    let fleet = &full["fleet"];
    assert_eq!(fleet["total_micros"], 1_500_000_000u64);
    assert_eq!(fleet["allocated_micros"], 1_500_000_000u64);
    assert_eq!(fleet["unallocated_micros"], 0);
    let cost_of = |id: &str| {
        fleet["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == id))
            .map(|m| (m["cost_micros"].clone(), m["operations_micros"].clone()))
    };
    assert_eq!(
        cost_of("leap"),
        Some((559_558_824u64.into(), 100_000_000u64.into()))
    );
    assert_eq!(
        cost_of("cryo"),
        Some((640_441_176u64.into(), 100_000_000u64.into()))
    );
    assert_eq!(
        cost_of("mesa"),
        Some((300_000_000u64.into(), 100_000_000u64.into()))
    );
    assert_eq!(
        fleet["history"],
        serde_json::json!([{"period": "2026-10", "status": "closed", "members": 3,
            "operations_micros": 300_000_000u64, "operations_per_member_micros": 100_000_000u64}])
    );
    let mesa = full["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["member"]["id"] == "mesa"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(mesa["hubs"][0]["server_seconds"], 14_400);
    assert_eq!(mesa["hubs"][0]["active_users"], 2);
    assert_eq!(mesa["hubs"][0]["idle_server_seconds"], 7_200);
    let cryo = full["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["member"]["id"] == "cryo"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(cryo["hubs"][0]["idle_server_seconds"], 18_000);
    assert_eq!(mesa["hubs"][0]["cpu_request_millicore_seconds"], 3_600_000);
    assert_eq!(
        mesa["hubs"][0]["memory_request_byte_seconds"],
        7_730_941_132_800u64
    );
    assert_eq!(mesa["hubs"][0]["coverage"], 10_800_000.0 / 2_678_400_000.0);
    assert_eq!(mesa["cost"]["cost_per_active_user_micros"], 150_000_000u64);
    assert_eq!(mesa["days"][0]["active_users"], 2);

    // ---- csv ----
    let rows = csv_rows(&text(&ctx, None, Format::Csv));
    let share = |member: &str, line: &str| {
        rows.iter()
            .find(|r| r["record"] == "cost" && r["member"] == member && r["line_name"] == line)
            .map(|r| r["share"].clone())
    };
    assert_eq!(share("leap", "shared-gke").as_deref(), Some("459.558824"));
    assert_eq!(share("cryo", "shared-gke").as_deref(), Some("540.441176"));
    assert_eq!(share("mesa", "mesa-aws").as_deref(), Some("200.000000"));
    assert_eq!(share("mesa", "operations").as_deref(), Some("100.000000"));
    let usage = |member: &str| {
        rows.iter()
            .find(|r| r["record"] == "usage" && r["member"] == member)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(usage("cryo")["server_seconds"], "21600");
    assert_eq!(usage("cryo")["active_users"], "1");
    assert_eq!(usage("cryo")["cpu_request_millicore_seconds"], "43200000");
    assert_eq!(
        usage("cryo")["memory_request_byte_seconds"],
        "23192823398400"
    );
    assert_eq!(usage("leap")["coverage"], "0.008065");
    assert_eq!(usage("mesa")["coverage"], "0.004032");
    // "123.456789" (or "-…") → micro-units, exactly.
    let micros = |s: &str| -> u128 {
        let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
        let frac = format!("{frac:0<6}");
        whole.parse::<u128>().expect("whole") * 1_000_000 + frac.parse::<u128>().expect("frac")
    };
    let csv_total: u128 = rows
        .iter()
        .filter(|r| r["record"] == "cost" || r["record"] == "unallocated")
        .map(|r| micros(&r["share"]))
        .sum();
    assert_eq!(csv_total, 1_500_000_000);

    // ---- focus ----
    let focus = text(&ctx, None, Format::Focus);
    let rows = csv_rows(&focus);
    for column in super::focus::COLUMNS {
        assert!(rows.iter().all(|r| r.contains_key(column)), "{column}");
    }
    let billed: u128 = rows.iter().map(|r| micros(&r["BilledCost"])).sum();
    assert_eq!(billed, 1_500_000_000, "Σ BilledCost equals the bills");
    let leap_gke = rows
        .iter()
        .find(|r| r["SubAccountId"] == "leap" && r["ServiceName"] == "shared-gke")
        .cloned()
        .unwrap_or_default();
    assert_eq!(leap_gke["BilledCost"], "459.558824");
    assert_eq!(leap_gke["EffectiveCost"], "459.558824");
    assert_eq!(leap_gke["BillingCurrency"], "EUR");
    assert_eq!(leap_gke["BillingPeriodStart"], "2026-10-01T00:00:00Z");
    assert_eq!(leap_gke["BillingPeriodEnd"], "2026-11-01T00:00:00Z");
    assert_eq!(leap_gke["ChargeCategory"], "Usage");
    assert_eq!(leap_gke["ChargeClass"], "");
    assert_eq!(leap_gke["ResourceId"], "prod");
    assert_eq!(leap_gke["x_Basis"], "by_use");
    assert_eq!(leap_gke["x_Coverage"], "0.008065");
    let pool = rows
        .iter()
        .find(|r| r["SubAccountId"] == "cryo" && r["ServiceName"] == "operations")
        .cloned()
        .unwrap_or_default();
    assert_eq!(pool["ChargeCategory"], "Adjustment");
    assert_eq!(pool["BilledCost"], "100.000000");
    assert_eq!(pool["x_Basis"], "even");

    // ---- md ----
    let md = text(&ctx, Some("leap"), Format::Md);
    for figure in [
        "| prod | shared-gke | 6.00 | 2 | 3.00 | 5.00 | 0.00 | 10.00 | 0.00 | 0.00 | 0.8% |",
        "| 2026-10-01 | prod | 4.00 | 1 |",
        "| 2026-10-02 | prod | 2.00 | 1 |",
        "Active users this month: 2. Server hours: 6.00. Server hours per active user: 3.00.",
        "| prod | availability | 99.900% | 99.000% | 1000.0% | 990 / 1000 |",
        "| HubDown | page | prod |  | 2026-10-05T10:00:00Z | 2026-10-05T10:30:00Z | 30.0 | 30.0 |",
        "| 1 | prod | prod is down | resolved | 2026-10-05T10:00:00Z | 2026-10-05T10:30:00Z | HubDown |",
        "| 1 | 2026-10-05T10:10:00Z | identified | A full disk. | ana |",
        "| shared-gke | cluster | by_use | 1000.000000 EUR | 459.558824 EUR |",
        "| operations | pool | even | 300.000000 EUR | 100.000000 EUR |",
        "| Total |  |  |  | 559.558824 EUR |",
        "Cost per active user: 279.779412 EUR.",
        "| Cost | no data | no data |",
    ] {
        assert!(md.contains(figure), "md lacks {figure:?}:\n{md}");
    }
    let fleet_md = text(&ctx, None, Format::Md);
    for figure in [
        "| Cryo <Lab> (cryo) | member | 6.00 | 1 | 640.441176 EUR | 100.000000 EUR | 0.8% |",
        "| Mesa (mesa) | starter | 4.00 | 2 | 300.000000 EUR | 100.000000 EUR | 0.4% |",
        "| Total |  |  | 1500.000000 EUR | 1500.000000 EUR | 0.000000 EUR |",
        "| 2026-10 | closed | 3 | 300.000000 EUR | 100.000000 EUR |",
    ] {
        assert!(
            fleet_md.contains(figure),
            "fleet md lacks {figure:?}:\n{fleet_md}"
        );
    }

    // ---- html ----
    let html = text(&ctx, Some("cryo"), Format::Html);
    for figure in [
        "<td>Cryo &lt;Lab&gt; (cryo)</td>",
        "540.441176 EUR",
        "640.441176 EUR",
        "<td class=\"n\">6.00</td>",
        "Server hours per active user: 6.00.",
    ] {
        let figure = figure.replace(
            "<td>Cryo &lt;Lab&gt; (cryo)</td>",
            "Cryo &lt;Lab&gt; (cryo)",
        );
        assert!(html.contains(&figure), "html lacks {figure:?}");
    }
    assert!(!html.contains("Cryo <Lab>"), "names are escaped");
    assert!(html.contains("<svg"), "the day chart is inline");
    // The SVG namespace is a name, not a request; nothing else may be a URL.
    let stripped = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!stripped.contains("<script") && !stripped.contains("http://"));
    assert!(!stripped.contains("https://") && !stripped.contains("url("));
    assert!(html.contains("@media print"));
    let fleet_html = text(&ctx, None, Format::Html);
    assert!(fleet_html.contains("100.000000 EUR"));
    assert_eq!(fleet_html.matches("<svg").count(), 1);
}

#[test]
fn a_month_without_data_says_so_in_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cfg, _store, ctx) = month_store(dir.path());
    let august = Period {
        year: 2026,
        month: 8,
    };
    for member in [Some("leap"), None] {
        let report = build(&ctx, august, member, now()).expect("build");
        match &report {
            Report::Member(r) => assert!(r.no_data),
            Report::Full(r) => {
                assert!(r.fleet.no_data);
                assert!(r.members.iter().all(|m| m.no_data));
            }
        }
        for format in [
            Format::Csv,
            Format::Json,
            Format::Focus,
            Format::Md,
            Format::Html,
        ] {
            let out = render(&report, format).expect("render");
            let says = match format {
                Format::Json => out.contains("\"no_data\": true"),
                _ => out.contains(super::model::NO_DATA),
            };
            assert!(says, "{format:?} {member:?}:\n{out}");
            if matches!(format, Format::Md | Format::Html) {
                assert!(!out.contains("0.00"), "{format:?} prints no zeros:\n{out}");
            }
        }
    }
}

#[test]
fn a_closed_report_renders_the_same_bytes_after_the_sli_minutes_are_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cfg, store, ctx) = month_store(dir.path());
    let before: Vec<String> = [Format::Json, Format::Md, Format::Html, Format::Focus]
        .into_iter()
        .map(|f| text(&ctx, Some("leap"), f))
        .collect();
    assert!(before[0].contains("\"good\": 990"));
    store
        .write_with("pruning in a test", |tx| {
            tx.execute("DELETE FROM sli_minutes", [])?;
            tx.execute("DELETE FROM sli_hours", [])?;
            tx.execute("DELETE FROM alert_incidents", [])
        })
        .expect("prune");
    // The live figures changed...
    let fresh = ReportContext {
        snapshots: Arc::new(NoSnapshots),
        ..ctx.clone()
    };
    assert!(!text(&fresh, Some("leap"), Format::Json).contains("\"good\": 990"));
    // ...the frozen report did not.
    let after: Vec<String> = [Format::Json, Format::Md, Format::Html, Format::Focus]
        .into_iter()
        .map(|f| text(&ctx, Some("leap"), f))
        .collect();
    assert_eq!(before, after);
    // Freezing again writes nothing.
    assert!(freeze(&ctx, now() + DAY).expect("freeze").is_empty());
}

/// The cost and snapshot stores on PostgreSQL: the same month closed and
/// frozen there renders the same bytes in every format as on SQLite, and
/// the frozen bodies are the same text (the other seams stay on the SQLite
/// month: their PostgreSQL ports are tested with their stores).
#[test]
fn a_month_closed_and_frozen_on_postgres_renders_the_same_bytes() {
    use crate::store::tests::backends::Backend;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cfg, _store, ctx) = month_store(dir.path());
    let fx = <crate::store::pg::PgStore as Backend>::fixture();
    let pg = crate::store::Storage::open(&fx.cfg).expect("postgres store");
    let on_pg = ReportContext {
        cost: crate::cost::store::cost_store(&pg),
        snapshots: super::store::snapshot_store(&pg),
        ..ctx.clone()
    };
    assert!(on_pg.cost.closed(OCTOBER).expect("read").is_none());
    let closed = close_due(&*on_pg.cost, &*on_pg.usage, &on_pg.model, 48 * HOUR, now())
        .expect("close on postgres");
    assert_eq!(closed, vec![OCTOBER]);
    assert_eq!(
        on_pg.cost.closed(OCTOBER).expect("read"),
        ctx.cost.closed(OCTOBER).expect("read"),
        "the closed month reads back exactly"
    );
    assert_eq!(freeze(&on_pg, now()).expect("freeze"), vec![OCTOBER]);
    assert!(freeze(&on_pg, now() + DAY).expect("freeze").is_empty());
    for member in ["leap", super::store::FLEET] {
        let frozen = on_pg.snapshots.get(OCTOBER, member).expect("read");
        assert!(frozen.is_some(), "{member:?} frozen");
        assert_eq!(frozen, ctx.snapshots.get(OCTOBER, member).expect("read"));
    }
    for format in [
        Format::Csv,
        Format::Json,
        Format::Focus,
        Format::Md,
        Format::Html,
    ] {
        for member in [Some("leap"), None] {
            assert_eq!(
                text(&on_pg, member, format),
                text(&ctx, member, format),
                "{format:?} {member:?}"
            );
        }
    }
}

/// A snapshot store with nothing frozen: the live report.
struct NoSnapshots;

impl super::store::SnapshotStore for NoSnapshots {
    fn get(&self, _: Period, _: &str) -> Result<Option<String>, crate::store::StoreError> {
        Ok(None)
    }
    fn put(&self, _: Period, _: &[(String, String)]) -> Result<usize, crate::store::StoreError> {
        Ok(0)
    }
    fn frozen(&self, _: Period) -> Result<bool, crate::store::StoreError> {
        Ok(false)
    }
}

// ---------- the API ----------

async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .parse()?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    // Unchunk: the body may come chunked over HTTP/1.1.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n.min(tail.len())]);
            rest = tail.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_string()
    };
    Ok((status, content_type, body))
}

#[test]
fn the_api_serves_the_cli_bytes_with_the_token_rules() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut cfg, store, ctx) = month_store(dir.path());
    cfg.server.listen = "127.0.0.1:0".parse()?;
    let leap_token = store.create_token("leap", "leap-agent")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let later = now() + DAY;
    let cli_leap_md = text(&ctx, Some("leap"), Format::Md);
    let cli_full_focus = text(&ctx, None, Format::Focus);
    runtime.block_on(async move {
        let clock: SharedClock = Arc::new(ManualClock::new(later));
        let mut components = crate::server::http_components();
        components.push(Box::new(super::ReportsComponent));
        let running = crate::Collector::new(cfg, store)
            .clock(clock)
            .components(components)
            .start()
            .await?;
        let addr = running.local_addr;

        // A member token: its own report, in each format's content type.
        let (status, ct, body) =
            get(addr, "/api/v1/reports/2026-10?format=md", Some(&leap_token)).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(ct, "text/markdown; charset=utf-8");
        assert_eq!(body, cli_leap_md, "the same bytes as the CLI");
        for (format, content_type) in [
            ("json", "application/json"),
            ("csv", "text/csv; charset=utf-8"),
            ("focus", "text/csv; charset=utf-8"),
            ("html", "text/html; charset=utf-8"),
        ] {
            let (status, ct, body) = get(
                addr,
                &format!("/api/v1/reports/2026-10?member=leap&format={format}"),
                Some(&leap_token),
            )
            .await?;
            assert_eq!(
                (status, ct.as_str()),
                (200, content_type),
                "{format}: {body}"
            );
        }
        // Another member's report: 403.
        let (status, _, body) = get(
            addr,
            "/api/v1/reports/2026-10?member=cryo",
            Some(&leap_token),
        )
        .await?;
        assert_eq!(status, 403, "{body}");
        // A bad token: 401.
        let (status, _, _) = get(addr, "/api/v1/reports/2026-10", Some("hwt_wrong")).await?;
        assert_eq!(status, 401);
        // Loopback without a credential (the operator): everything.
        let (status, _, body) = get(addr, "/api/v1/reports/2026-10?format=focus", None).await?;
        assert_eq!(status, 200);
        assert_eq!(body, cli_full_focus);
        // Bad period, format, parameter: 400 naming it; unknown member 404;
        // no period or a deeper path: 404.
        for (path, code, needle) in [
            ("/api/v1/reports/2026-13", 400, "period"),
            ("/api/v1/reports/october", 400, "period"),
            ("/api/v1/reports/2026-10?format=pdf", 400, "format"),
            ("/api/v1/reports/2026-10?colour=red", 400, "colour"),
            ("/api/v1/reports/2026-10?member=nobody", 404, "nobody"),
            ("/api/v1/reports/", 404, "no such endpoint"),
            ("/api/v1/reports/2026-10/x", 404, "no such endpoint"),
        ] {
            let (status, _, body) = get(addr, path, None).await?;
            assert_eq!(status, code, "{path}: {body}");
            assert!(body.contains(needle), "{path}: {body}");
        }
        running.shutdown().await;
        Ok(())
    })
}

/// Every report of the hand-computed month, built live from the ledger (the
/// frozen snapshots removed): October's member and fleet reports in every
/// format, and November's (it carries October's corrections, computed from
/// the ledger against the frozen close), plus October's cost figures
/// computed from the ledger now.
fn live_reports(store: &Store, ctx: &ReportContext) -> Vec<String> {
    store
        .write_with("removing frozen reports", |tx| {
            tx.execute("DELETE FROM report_snapshots", [])
        })
        .expect("delete snapshots");
    let mut out = Vec::new();
    for member in [None, Some("leap"), Some("cryo"), Some("mesa")] {
        for format in [
            Format::Csv,
            Format::Json,
            Format::Focus,
            Format::Md,
            Format::Html,
        ] {
            out.push(text(ctx, member, format));
            let november = build(ctx, OCTOBER.next(), member, now() + DAY).expect("build");
            out.push(render(&november, format).expect("render"));
        }
    }
    let (model, bills) = crate::cost::close::effective_model(
        &ctx.model,
        OCTOBER,
        &ctx.cost.bills(OCTOBER).expect("bills"),
    );
    let figures =
        crate::cost::close::compute(&model, OCTOBER, bills, &*ctx.usage).expect("compute");
    out.push(serde_json::to_string(&figures).expect("figures"));
    out
}

#[test]
fn a_rolled_up_month_reports_the_same_bytes() {
    use crate::usage::rollup::roll_up_due;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cfg, store, ctx) = month_store(dir.path());
    let before = live_reports(&store, &ctx);
    let rows = |store: &Store| -> i64 {
        store
            .read_with("counting", |c| {
                c.query_row(
                    "SELECT count(*) FROM usage_server_hours WHERE hour >= ?1 AND hour < ?2",
                    [OCTOBER.start_ms(), OCTOBER.end_ms()],
                    |r| r.get(0),
                )
            })
            .expect("count")
    };
    assert!(rows(&store) > 0);
    // The last week touching October ends on Monday, Nov 2; with 35 days of
    // retention the month is due from Dec 7.
    let retention = 35 * DAY;
    let early = roll_up_due(&store, &[OCTOBER], at(1, 0) + 67 * DAY - 1, retention).expect("early");
    assert!(early.months.is_empty(), "{early:?}");
    let run = roll_up_due(&store, &[OCTOBER], at(1, 0) + 67 * DAY, retention).expect("rollup");
    assert_eq!(run.months, vec![OCTOBER]);
    assert_eq!(rows(&store), 0, "October's server-hours are deleted");
    let after = live_reports(&store, &ctx);
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a);
    }
}
