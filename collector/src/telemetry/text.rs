//! Writing Prometheus text exposition by hand, for series the collector
//! writes at scrape time from state it already holds (the fleet board's
//! hub-level series, the SLO engine's objectives) instead of keeping a
//! `prometheus` registry copy of it. Names, types and help come from
//! [`hubwatch_shared::metrics`].

use std::fmt::Write;

use hubwatch_shared::metrics::{MetricDef, MetricKind};

/// `# HELP` and `# TYPE` of `def`.
pub fn header(out: &mut String, def: &MetricDef) {
    let kind = match def.kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    };
    let help = def.help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {} {help}", def.name);
    let _ = writeln!(out, "# TYPE {} {kind}", def.name);
}

/// `name{prefix,extra} value`.
pub fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    prefix: &str,
    extra: (&str, &str),
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    out.push('{');
    out.push_str(prefix);
    if !extra.0.is_empty() {
        if !prefix.is_empty() {
            out.push(',');
        }
        push_label(out, extra.0, extra.1);
    }
    out.push_str("} ");
    push_value(out, value);
    out.push('\n');
}

/// `name="value"`, the value escaped as the text format requires.
pub fn push_label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as the text format writes it (`+Inf`, `NaN`, integers without a
/// fraction).
pub fn push_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}
