use super::*;

#[test]
fn names_follow_the_rules() {
    let mut seen = std::collections::HashSet::new();
    for m in ALL {
        assert!(m.name.starts_with("hubwatch_"), "{}", m.name);
        assert!(seen.insert(m.name), "{} defined twice", m.name);
        assert_eq!(
            m.kind == MetricKind::Counter,
            m.name.ends_with("_total"),
            "{}: counters and only counters end in _total",
            m.name
        );
        assert!(!m.help.is_empty());
        if m.kind == MetricKind::Histogram {
            assert!(!m.buckets.is_empty(), "{} has no buckets", m.name);
        }
    }
}

#[test]
fn docs_metrics_md_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let want = render_markdown();
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::write(path, &want).expect("write docs/metrics.md");
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/metrics.md is stale: run UPDATE_GENERATED=1 cargo test -p hubwatch-shared"
    );
}

#[test]
fn every_definition_registers() {
    let r = Registry::new();
    for m in ALL {
        match (m.kind, m.labels.is_empty()) {
            (MetricKind::Counter, true) => drop(m.counter(&r)),
            (MetricKind::Counter, false) => drop(m.counter_vec(&r)),
            (MetricKind::Gauge, true) => drop(m.gauge(&r)),
            (MetricKind::Gauge, false) => drop(m.gauge_vec(&r)),
            (MetricKind::Histogram, true) => drop(m.histogram(&r)),
            (MetricKind::Histogram, false) => drop(m.histogram_vec(&r)),
        }
    }
}
