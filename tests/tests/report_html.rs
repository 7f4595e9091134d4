//! The headless-Chromium harness the html report is checked with: a
//! self-contained page holding one of the report's SVG charts loads with no
//! request beyond itself and no console error, its chart has elements and a
//! screenshot is written; and a page that requests a remote image and calls
//! `console.error` is caught doing both, so the checks cannot pass vacuously.

use std::path::Path;
use std::time::Duration;

use hubwatch_collector::report::svg::{Series, StackedBars, stacked_bars};
use hubwatch_tests::chromium::Chromium;

/// Where screenshots are kept as test artifacts.
fn artifact(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = hubwatch_tests::target_dir().join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

const SVG_CHILDREN: &str = "(() => { const s = document.querySelector('svg'); \
     return s ? [s.childElementCount, s.querySelectorAll('rect').length, \
     Math.round(s.getBoundingClientRect().width)] : null; })()";

#[test]
fn a_self_contained_chart_page_makes_no_request_and_no_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let chart = stacked_bars(&StackedBars {
        title: "Server-hours per day <test> & more".into(),
        x_label: "day".into(),
        y_label: "server-hours".into(),
        categories: (1..=30).map(|d| format!("11-{d:02}")).collect(),
        series: vec![
            Series {
                name: "prod".into(),
                values: (0..30).map(|d| f64::from(d % 7) * 3.0).collect(),
            },
            Series {
                name: "staging".into(),
                values: vec![1.5; 30],
            },
        ],
    });
    let page = dir.path().join("report.html");
    std::fs::write(
        &page,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>report</title></head><body><h1>Report</h1>{chart}</body></html>"
        ),
    )?;
    let shot = artifact("report_html_chart.png")?;
    let _ = std::fs::remove_file(&shot);
    let report = Chromium::open(&page, SVG_CHILDREN, &shot, Duration::from_millis(300))?;

    let page_url = format!("file://{}", page.canonicalize()?.display());
    assert_eq!(report.requests, [page_url], "only the page itself");
    assert!(
        report.console_errors.is_empty(),
        "{:?}",
        report.console_errors
    );
    // Rectangles: 25 prod bars (5 days are zero: no bar), 30 staging bars,
    // the background and 2 legend keys.
    let children = report.probe.as_array().cloned().unwrap_or_default();
    assert!(
        children.first().and_then(|v| v.as_u64()).unwrap_or(0) > 58,
        "{children:?}"
    );
    assert_eq!(
        children.get(1).and_then(|v| v.as_u64()),
        Some(25 + 30 + 1 + 2)
    );
    assert_eq!(children.get(2).and_then(|v| v.as_u64()), Some(720));
    assert!(report.dom.contains("<svg"), "the DOM holds the chart");
    assert!(
        report
            .dom
            .contains("Server-hours per day &lt;test&gt; &amp; more")
    );
    assert_png(&shot)?;
    Ok(())
}

#[test]
fn a_page_that_requests_the_network_and_logs_an_error_is_caught() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let page = dir.path().join("leaky.html");
    std::fs::write(
        &page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>leaky</title></head><body>\
         <img src=\"http://127.0.0.1:1/x.png\" alt=\"x\">\
         <script>console.error('deliberate', 42);</script></body></html>",
    )?;
    let shot = artifact("report_html_leaky.png")?;
    let report = Chromium::open(&page, "null", &shot, Duration::from_millis(300))?;
    assert!(
        report
            .requests
            .iter()
            .any(|r| r == "http://127.0.0.1:1/x.png"),
        "{:?}",
        report.requests
    );
    assert!(
        report
            .console_errors
            .iter()
            .any(|e| e.contains("console.error: deliberate 42")),
        "{:?}",
        report.console_errors
    );
    assert_png(&shot)?;
    Ok(())
}

fn assert_png(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)?;
    assert!(bytes.len() > 1000, "{} bytes", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    Ok(())
}

/// A month of usage for one member with two hubs, written through the
/// collector's own ledger seam into a real store, October closed.
fn seeded_store(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use hubwatch_collector::cost::CostModel;
    use hubwatch_collector::cost::close::close_due;
    use hubwatch_collector::cost::store::SqliteCost;
    use hubwatch_collector::store::Store;
    use hubwatch_collector::usage::ledger::{DEFAULT_MAX_GAP_MS, UsagePage};
    use hubwatch_collector::usage::{SqliteUsage, UsageStore};
    use hubwatch_shared::config::{CollectorConfig, Period};
    use hubwatch_shared::wire::{Batch, Record, ResourceSnapshot, UsageEvent, UsageKind};

    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "currency = \"EUR\"\n[storage]\npath = {:?}\n\
             [[members]]\nid = \"leap\"\nname = \"LEAP <Climate>\"\ntier = \"premier\"\n\
             [[members.hubs]]\nname = \"prod\"\n[[members.hubs]]\nname = \"staging\"\n\
             [[clusters]]\nid = \"gke\"\nkind = \"dedicated\"\nmember = \"leap\"\n\
             hubs = [\"leap/prod\", \"leap/staging\"]\n\
             [[costs]]\ncluster = \"gke\"\nperiod = \"2026-10\"\namount = \"120.50\"\n\
             [[cost_pools]]\nname = \"operations\"\namount = \"30\"\nsplit = \"even\"\n",
            dir.join("data")
        ),
    )?;
    let cfg: CollectorConfig = hubwatch_shared::config::load(
        &std::fs::read_to_string(&config)?,
        &std::collections::HashMap::new(),
    )?;
    let october = Period {
        year: 2026,
        month: 10,
    };
    let now = october.next().start_ms() + 4 * 86_400_000;
    let store = Store::open(&cfg.storage)?;
    let usage = SqliteUsage::new(store.clone());
    let mut records = Vec::new();
    for day in 0..20i64 {
        for (hub, hours) in [("prod", 1 + day % 5), ("staging", 1 + day % 2)] {
            let start = october.start_ms() + day * 86_400_000 + 9 * 3_600_000;
            let stop = start + hours * 3_600_000;
            let event = |kind, ts| {
                Record::Usage(UsageEvent {
                    hub: hub.into(),
                    user: format!("user{}", day % 3),
                    server: String::new(),
                    kind,
                    timestamp_ms: ts,
                })
            };
            records.push(event(UsageKind::ServerStarted { profile: None }, start));
            let mut ts = start;
            while ts <= stop {
                records.push(event(
                    UsageKind::Resources(ResourceSnapshot {
                        cpu_request_millicores: Some(1000),
                        memory_request_bytes: Some(1 << 30),
                        cpu_usage_millicores: Some(200),
                        memory_usage_bytes: Some(1 << 28),
                        storage_bytes: None,
                    }),
                    ts,
                ));
                ts += 15_000;
            }
            records.push(event(UsageKind::ServerStopped, stop));
        }
    }
    let mut page = UsagePage::default();
    page.add_batch(
        "leap",
        &Batch {
            agent_id: "leap-agent".into(),
            member: "leap".into(),
            seq: 1024,
            created_ms: now,
            dropped_records: 0,
            agent_version: "test".into(),
            records,
        },
        now,
    );
    usage.commit(&page, None, DEFAULT_MAX_GAP_MS)?;
    let model = CostModel::from_config(&cfg)?;
    let closed = close_due(
        &SqliteCost::new(store.clone()),
        &usage,
        &model,
        48 * 3_600_000,
        now,
    )?;
    assert_eq!(closed, [october]);
    Ok(config)
}

const PAGE_PROBE: &str = "(() => { const svgs = [...document.querySelectorAll('svg')]; \
     return { svgs: svgs.length, rects: svgs.map(s => s.querySelectorAll('rect').length), \
     widths: svgs.map(s => Math.round(s.getBoundingClientRect().width)), \
     tables: document.querySelectorAll('table').length }; })()";

#[test]
fn the_report_command_writes_an_html_page_that_loads_alone_with_its_charts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = seeded_store(dir.path())?;
    for (member, name) in [
        (Some("leap"), "report_html_member.png"),
        (None, "report_html_fleet.png"),
    ] {
        let mut command = std::process::Command::new(hubwatch_tests::binary("hubwatch-collector"));
        command
            .args(["report", "--config"])
            .arg(&config)
            .args(["--period", "2026-10", "--format", "html"]);
        if let Some(member) = member {
            command.args(["--member", member]);
        }
        let output = command.output()?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let html = String::from_utf8(output.stdout)?;
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        let page = dir
            .path()
            .join(format!("{}.html", member.unwrap_or("fleet")));
        std::fs::write(&page, &html)?;
        let shot = artifact(name)?;
        let _ = std::fs::remove_file(&shot);
        let report = Chromium::open(&page, PAGE_PROBE, &shot, Duration::from_millis(300))?;
        let page_url = format!("file://{}", page.canonicalize()?.display());
        assert_eq!(report.requests, [page_url], "only the page itself");
        assert!(
            report.console_errors.is_empty(),
            "{:?}",
            report.console_errors
        );
        let probe = &report.probe;
        assert_eq!(probe["svgs"], 1, "{probe}");
        // A chart with bars: more than its background and legend keys.
        assert!(probe["rects"][0].as_u64().unwrap_or(0) > 3, "{probe}");
        assert!(probe["widths"][0].as_u64().unwrap_or(0) > 100, "{probe}");
        assert!(probe["tables"].as_u64().unwrap_or(0) >= 2, "{probe}");
        if member.is_some() {
            assert!(report.dom.contains("LEAP &lt;Climate&gt;"), "escaped name");
            // 20 days × 2 hubs of bars, the background and 2 legend keys.
            assert_eq!(probe["rects"][0], 43, "{probe}");
        }
        assert_png(&shot)?;
    }
    Ok(())
}
