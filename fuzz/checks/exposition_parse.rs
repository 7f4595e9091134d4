//! Fuzz target: arbitrary text into the Prometheus text exposition parser,
//! then through the JupyterHub mapping that forwards its samples.
//!
//! `exposition::parse` reads `/hub/metrics` and every `[[scrape]]` page, both
//! served by software the agent does not control. Beyond "no panic" it must:
//! - be deterministic (the same page parses to the same result, compared
//!   bit for bit so NaN values count as equal);
//! - give only samples with a valid, non-empty metric name, valid label
//!   names and no label name twice;
//! - account for every non-blank line at most once (a sample, a skipped line
//!   or a comment), with skipped line numbers rising and inside the page;
//! - round-trip: the samples written back as exposition text parse again to
//!   exactly the same samples, with nothing skipped (so what the parser
//!   accepts is what the format means, not an artefact of the input);
//! - and `metrics::hub_samples` must label every forwarded series with the
//!   hub, sorted, each label name once (a series repeated by name would be
//!   refused by anything downstream that speaks Prometheus).

use std::fmt::Write as _;

use hubwatch_agent::sources::jupyterhub::exposition::{
    self, ParsedPage, ParsedSample, is_label_name, is_metric_name,
};
use hubwatch_agent::sources::jupyterhub::metrics;

/// A sample with its value as bits, so NaN compares equal to itself.
fn key(s: &ParsedSample) -> (&str, &[(String, String)], u64, Option<i64>) {
    (&s.name, &s.labels, s.value.to_bits(), s.timestamp_ms)
}

fn same_samples(a: &ParsedPage, b: &ParsedPage) -> bool {
    a.samples.len() == b.samples.len()
        && a.samples
            .iter()
            .zip(&b.samples)
            .all(|(x, y)| key(x) == key(y))
}

/// Writes samples back in the exposition format.
fn render(samples: &[ParsedSample]) -> String {
    let mut out = String::new();
    for s in samples {
        out.push_str(&s.name);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (name, value)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(out, "{name}=\"{escaped}\"");
            }
            out.push('}');
        }
        // Rust's `Display` for f64 is exact and round-trips (`NaN`, `inf`,
        // `-inf`, plain decimals), all spellings the parser must accept.
        let _ = write!(out, " {}", s.value);
        if let Some(ts) = s.timestamp_ms {
            let _ = write!(out, " {ts}");
        }
        out.push('\n');
    }
    out
}

/// One input: a panic is a finding.
pub fn check(data: &[u8]) {
    // The scrape source reads pages lossily; the hub source rejects
    // non-UTF-8. Lossy covers both and never discards an input.
    let text = String::from_utf8_lossy(data);
    let page = exposition::parse(&text);

    let again = exposition::parse(&text);
    assert!(same_samples(&page, &again), "parse is not deterministic");
    assert_eq!(
        page.types, again.types,
        "parse is not deterministic (types)"
    );
    assert_eq!(
        page.skipped, again.skipped,
        "parse is not deterministic (skipped)"
    );

    let lines = text.lines().count();
    let non_blank = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(
        page.samples.len() + page.skipped.len() <= non_blank,
        "{} samples + {} skipped from {non_blank} non-blank lines",
        page.samples.len(),
        page.skipped.len()
    );
    let mut previous = 0;
    for skipped in &page.skipped {
        assert!(
            skipped.line > previous && skipped.line <= lines,
            "skipped line {} after {previous}, page of {lines} lines",
            skipped.line
        );
        previous = skipped.line;
    }

    for sample in &page.samples {
        assert!(!sample.name.is_empty(), "a sample with an empty name");
        assert!(
            is_metric_name(&sample.name),
            "bad metric name {:?}",
            sample.name
        );
        for (i, (name, _)) in sample.labels.iter().enumerate() {
            assert!(is_label_name(name), "bad label name {name:?}");
            assert!(
                sample.labels[..i].iter().all(|(other, _)| other != name),
                "label {name:?} twice in {:?}",
                sample.name
            );
        }
        // Must not panic, whatever the declared types.
        let _ = page.family_type(&sample.name);
    }
    for name in page.types.keys() {
        assert!(is_metric_name(name), "bad # TYPE name {name:?}");
    }

    let rendered = render(&page.samples);
    let reparsed = exposition::parse(&rendered);
    assert!(
        reparsed.skipped.is_empty(),
        "re-rendered samples skipped: {:?}\n{rendered}",
        reparsed.skipped
    );
    assert!(
        same_samples(&page, &reparsed),
        "samples changed across render and re-parse:\n{rendered}"
    );

    let forwarded = metrics::hub_samples(&page, "prod", 1_760_000_000_000);
    assert!(forwarded.len() <= page.samples.len());
    for sample in &forwarded {
        assert!(sample.name.starts_with(metrics::JUPYTERHUB_PREFIX));
        assert!(
            sample
                .labels
                .iter()
                .any(|l| l.name == "hub" && l.value == "prod"),
            "{} lacks hub=\"prod\"",
            sample.name
        );
        assert!(
            sample.labels.windows(2).all(|w| w[0].name < w[1].name),
            "labels of {} not sorted by unique name: {:?}",
            sample.name,
            sample.labels
        );
    }
}
