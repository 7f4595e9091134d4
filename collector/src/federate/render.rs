//! The Prometheus text exposition format (0.0.4) of the held series that
//! match: one `# TYPE <family> untyped` line per family with a matching
//! series (families in name order), then `name{labels} value timestamp_ms`
//! lines, as Prometheus's own `/federate` writes them.

use std::io::Write;

use hubwatch_shared::wire::Label;

use super::selector::Selector;
use super::state::SeriesState;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Who may see which series.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// `Some(member)`: only series whose `member` label is this one.
    pub member: Option<&'a str>,
    /// Samples older than this (Unix ms) are not served.
    pub min_timestamp_ms: i64,
}

/// Appends every held series matching any of `selectors` within `scope` to
/// `out`; returns how many series were written.
pub fn render(
    state: &SeriesState,
    selectors: &[Selector],
    scope: Scope<'_>,
    out: &mut Vec<u8>,
) -> usize {
    // When every selector names its family, only those families are walked.
    let only: Option<Vec<&str>> = selectors.iter().map(Selector::only_family).collect();
    let mut written = 0usize;
    for (name, family) in state.families() {
        if only.as_ref().is_some_and(|names| !names.contains(&name)) {
            continue;
        }
        let mut typed = false;
        for (labels, point) in family {
            if point.timestamp_ms < scope.min_timestamp_ms {
                continue;
            }
            if let Some(member) = scope.member {
                let own = labels
                    .iter()
                    .any(|l| l.name == "member" && l.value == member);
                if !own {
                    continue;
                }
            }
            if !selectors.iter().any(|s| s.matches(name, labels)) {
                continue;
            }
            if !typed {
                out.extend_from_slice(b"# TYPE ");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b" untyped\n");
                typed = true;
            }
            write_series(out, name, labels, point.value, point.timestamp_ms);
            written += 1;
        }
    }
    written
}

fn write_series(out: &mut Vec<u8>, name: &str, labels: &[Label], value: f64, timestamp_ms: i64) {
    out.extend_from_slice(name.as_bytes());
    if !labels.is_empty() {
        out.push(b'{');
        for (i, label) in labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(label.name.as_bytes());
            out.extend_from_slice(b"=\"");
            escape_value(out, &label.value);
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b' ');
    write_value(out, value);
    out.push(b' ');
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{timestamp_ms}");
    out.push(b'\n');
}

/// Label values escape `\`, `"` and newlines.
fn escape_value(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            b => out.push(b),
        }
    }
}

/// Values as the text format spells them (`NaN`, `+Inf`, `-Inf`).
fn write_value(out: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if value == f64::INFINITY {
        out.extend_from_slice(b"+Inf");
    } else if value == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Inf");
    } else {
        let _ = write!(out, "{value}");
    }
}
