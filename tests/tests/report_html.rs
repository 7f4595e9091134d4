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
