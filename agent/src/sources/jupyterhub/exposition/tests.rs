use super::*;
use proptest::prelude::*;

/// A page captured from a real JupyterHub 6.1.1 (`/hub/metrics`, one
/// server spawned).
const JUPYTERHUB_6_PAGE: &str = include_str!("../testdata/jupyterhub-6.1.1-metrics.txt");

fn label<'a>(sample: &'a ParsedSample, name: &str) -> Option<&'a str> {
    sample
        .labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_real_jupyterhub_page_parses_without_a_skipped_line() {
    let page = parse(JUPYTERHUB_6_PAGE);
    assert!(page.skipped.is_empty(), "{:?}", page.skipped);
    let data_lines = JUPYTERHUB_6_PAGE
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(page.samples.len(), data_lines);
    assert_eq!(
        page.types.get("jupyterhub_server_spawn_duration_seconds"),
        Some(&MetricType::Histogram)
    );
    assert_eq!(
        page.types.get("jupyterhub_running_servers"),
        Some(&MetricType::Gauge)
    );
    let inf_bucket = page
        .samples
        .iter()
        .find(|s| {
            s.name == "jupyterhub_server_spawn_duration_seconds_bucket"
                && label(s, "le") == Some("+Inf")
                && label(s, "status") == Some("success")
        })
        .expect("the +Inf bucket of successful spawns");
    assert_eq!(inf_bucket.value, 1.0);
    assert_eq!(label(inf_bucket, "reason"), Some(""));
    let created = page
        .samples
        .iter()
        .find(|s| s.name == "jupyterhub_csp_reports_created")
        .expect("a _created series");
    assert!(created.value > 1.7e9);
    assert_eq!(
        page.family_type("jupyterhub_server_spawn_duration_seconds_bucket"),
        Some(MetricType::Histogram)
    );
}

#[test]
fn escaped_label_values_are_unescaped_and_may_hold_separators() {
    let page =
        parse(r#"m{a="x,y=z}",b="q\"uote",c="back\\slash",d="new\nline",} 1.5 1700000000000"#);
    assert!(page.skipped.is_empty(), "{:?}", page.skipped);
    let s = &page.samples[0];
    assert_eq!(label(s, "a"), Some("x,y=z}"));
    assert_eq!(label(s, "b"), Some("q\"uote"));
    assert_eq!(label(s, "c"), Some("back\\slash"));
    assert_eq!(label(s, "d"), Some("new\nline"));
    assert_eq!(s.value, 1.5);
    assert_eq!(s.timestamp_ms, Some(1_700_000_000_000));
}

#[test]
fn special_values_and_spacing_are_read() {
    let page = parse("a NaN\nb +Inf\nc -Inf\nd{ x = \"1\" }\t-2.5e-3\ne 7 -1\n");
    assert!(page.skipped.is_empty(), "{:?}", page.skipped);
    let v: Vec<f64> = page.samples.iter().map(|s| s.value).collect();
    assert!(v[0].is_nan());
    assert_eq!(v[1], f64::INFINITY);
    assert_eq!(v[2], f64::NEG_INFINITY);
    assert_eq!(v[3], -2.5e-3);
    assert_eq!(label(&page.samples[3], "x"), Some("1"));
    assert_eq!(page.samples[4].timestamp_ms, Some(-1));
}

#[test]
fn invalid_lines_are_skipped_with_their_line_and_reason_and_the_rest_kept() {
    let text = "\
# HELP good_total fine
# TYPE good_total counter
good_total 1
9bad_name 1
no_value
bad_value{a=\"1\"} one
unclosed{a=\"1\" 2
bad_escape{a=\"\\t\"} 3
dup{a=\"1\",a=\"2\"} 4
ts_bad 1 soon
trailing 1 2 3
# TYPE weird flavour
<html><body>oops</body></html>
also_good{le=\"+Inf\"} 2
";
    let page = parse(text);
    assert_eq!(
        page.samples
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["good_total", "also_good"]
    );
    let skipped: Vec<(usize, LineError)> = page.skipped.iter().map(|s| (s.line, s.error)).collect();
    assert_eq!(
        skipped,
        [
            (4, LineError::BadName),
            (5, LineError::BadValue),
            (6, LineError::BadValue),
            (7, LineError::BadLabels),
            (8, LineError::BadEscape),
            (9, LineError::DuplicateLabel),
            (10, LineError::BadTimestamp),
            (11, LineError::TrailingText),
            (12, LineError::BadType),
            (13, LineError::BadName),
        ]
    );
}

#[test]
fn rust_only_float_spellings_are_refused() {
    for bad in ["infinity_", "0x10", "1_000", "--1", "+-1", "inf1", ""] {
        assert_eq!(parse_value(bad), None, "{bad:?}");
    }
    assert_eq!(parse_value("Inf"), Some(f64::INFINITY));
    assert_eq!(parse_value("1e3"), Some(1000.0));
}

/// Gauge families: name, then (label `lbl`, label `other`, value) series.
type Families = Vec<(String, Vec<(String, String, f64)>)>;

fn encode_with_prometheus(families: &Families) -> String {
    use prometheus::core::Collector;
    use prometheus::{Encoder, GaugeVec, Opts, TextEncoder};
    let mut gathered = Vec::new();
    for (name, series) in families {
        let gauge =
            GaugeVec::new(Opts::new(name.clone(), "help"), &["lbl", "other"]).expect("valid gauge");
        for (value_a, value_b, v) in series {
            gauge
                .with_label_values(&[value_a.as_str(), value_b.as_str()])
                .set(*v);
        }
        gathered.extend(gauge.collect());
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&gathered, &mut out)
        .expect("encodes");
    String::from_utf8(out).expect("utf-8")
}

proptest! {
    /// Whatever label values the `prometheus` crate's encoder writes, the
    /// parser reads back exactly, with no line skipped.
    #[test]
    fn reads_back_what_the_prometheus_encoder_writes(
        families in proptest::collection::btree_map(
            "[a-z_][a-z0-9_]{0,12}",
            proptest::collection::btree_map(
                (any::<String>(), "[ -~]{0,8}"),
                prop_oneof![any::<f64>(), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
                1..4,
            ),
            1..4,
        )
    ) {
        let families: Families = families
            .into_iter()
            .map(|(name, series)| {
                (format!("fam_{name}"), series.into_iter().map(|((a, b), v)| (a, b, v)).collect())
            })
            .collect();
        let text = encode_with_prometheus(&families);
        let page = parse(&text);
        prop_assert!(page.skipped.is_empty(), "skipped {:?} in {text:?}", page.skipped);
        let expected: usize = families.iter().map(|(_, s)| s.len()).sum();
        prop_assert_eq!(page.samples.len(), expected);
        for (name, series) in &families {
            for (a, b, v) in series {
                let found = page.samples.iter().find(|s| {
                    &s.name == name && label(s, "lbl") == Some(a.as_str())
                        && label(s, "other") == Some(b.as_str())
                });
                let found = found.ok_or_else(|| TestCaseError::fail(format!("{name}{{{a:?},{b:?}}} missing")))?;
                if v.is_nan() {
                    prop_assert!(found.value.is_nan());
                } else {
                    prop_assert_eq!(found.value, *v);
                }
            }
            prop_assert_eq!(page.types.get(name), Some(&MetricType::Gauge));
        }
    }

    /// Any input: no panic, and every non-empty, non-comment line is either
    /// a sample or a skipped line.
    #[test]
    fn never_panics_and_accounts_for_every_line(text in any::<String>()) {
        let page = parse(&text);
        let sample_lines = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
            .count();
        let skipped_samples = page
            .skipped
            .iter()
            .filter(|s| text.lines().nth(s.line - 1).is_some_and(|l| !l.trim().starts_with('#')))
            .count();
        prop_assert_eq!(page.samples.len() + skipped_samples, sample_lines);
    }
}
