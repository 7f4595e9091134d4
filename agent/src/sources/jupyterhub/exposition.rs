//! A parser for the Prometheus text exposition format 0.0.4 (what
//! `prometheus_client` serves, so what JupyterHub's `/hub/metrics` serves),
//! line by line: a line that cannot be parsed is skipped and reported, the
//! rest of the page is kept.
//!
//! Why not a crate (evaluated with `cargo info` and by reading the sources):
//! `prometheus-parse` 0.2.5 splits label sets on `,` and `=`, so an escaped
//! label value holding either (`handler="a,b"`, `\"`) is cut wrongly, and it
//! drops bad lines without saying so; `openmetrics-parser` 0.5 is LGPL-3.0
//! (not for a statically linked Apache-2.0 binary) and refuses a whole page
//! for one bad line; `prom_text_format_parser` 0.1.0 is a single release on
//! winnow 0.5 that also stops at a bad family; `prometheus` and
//! `prometheus-client` only encode. The format is small, so this module
//! implements it exactly (escapes `\\`, `\"`, `\n`; `NaN`, `±Inf`; optional
//! timestamps; trailing commas; `# HELP`/`# TYPE`), and property tests check
//! it against the `prometheus` crate's own encoder.

use std::collections::HashMap;

/// A `# TYPE` declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// `counter`
    Counter,
    /// `gauge`
    Gauge,
    /// `histogram`
    Histogram,
    /// `summary`
    Summary,
    /// `untyped`
    Untyped,
}

impl MetricType {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "summary" => Self::Summary,
            "untyped" | "unknown" => Self::Untyped,
            _ => return None,
        })
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample {
    /// The series name as written (`x_bucket`, `x_sum`, ... for histograms).
    pub name: String,
    /// Labels in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
    /// The optional timestamp, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// Why a line was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// The metric or label name has a character names cannot have.
    BadName,
    /// A label set is not `{name="value",...}`.
    BadLabels,
    /// A label value has an escape other than `\\`, `\"`, `\n`.
    BadEscape,
    /// A label name appears twice.
    DuplicateLabel,
    /// The value is missing or not a number.
    BadValue,
    /// The timestamp is not an integer.
    BadTimestamp,
    /// Something follows the timestamp.
    TrailingText,
    /// A `# TYPE` line names no known type.
    BadType,
}

/// A skipped line: where and why (never its text, which could be anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub error: LineError,
}

/// A parsed page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedPage {
    /// Every valid sample line, in page order.
    pub samples: Vec<ParsedSample>,
    /// `# TYPE` declarations by family name.
    pub types: HashMap<String, MetricType>,
    /// Lines that were skipped.
    pub skipped: Vec<SkippedLine>,
}

impl ParsedPage {
    /// The declared type of the family a series belongs to: its own name, or
    /// its name without `_bucket`/`_sum`/`_count`/`_total`/`_created`.
    pub fn family_type(&self, series: &str) -> Option<MetricType> {
        if let Some(t) = self.types.get(series) {
            return Some(*t);
        }
        ["_bucket", "_sum", "_count", "_total", "_created"]
            .iter()
            .filter_map(|suffix| series.strip_suffix(suffix))
            .find_map(|family| self.types.get(family).copied())
    }
}

/// Parses a whole page. Never fails: bad lines land in `skipped`.
pub fn parse(text: &str) -> ParsedPage {
    let mut page = ParsedPage::default();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let outcome = if let Some(comment) = line.strip_prefix('#') {
            parse_comment(comment, &mut page.types)
        } else {
            parse_sample(line).map(|sample| page.samples.push(sample))
        };
        if let Err(error) = outcome {
            page.skipped.push(SkippedLine {
                line: index + 1,
                error,
            });
        }
    }
    page
}

/// `# HELP name text`, `# TYPE name type`, or any other comment.
fn parse_comment(comment: &str, types: &mut HashMap<String, MetricType>) -> Result<(), LineError> {
    let mut words = comment.split_whitespace();
    match words.next() {
        Some("TYPE") => {
            let name = words.next().ok_or(LineError::BadName)?;
            if !is_metric_name(name) {
                return Err(LineError::BadName);
            }
            let kind = words
                .next()
                .and_then(MetricType::parse)
                .ok_or(LineError::BadType)?;
            if words.next().is_some() {
                return Err(LineError::TrailingText);
            }
            types.insert(name.to_string(), kind);
            Ok(())
        }
        Some("HELP") => match words.next() {
            Some(name) if is_metric_name(name) => Ok(()),
            _ => Err(LineError::BadName),
        },
        // Free comments (and OpenMetrics' `# EOF`) carry nothing.
        _ => Ok(()),
    }
}

fn parse_sample(line: &str) -> Result<ParsedSample, LineError> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(LineError::BadName);
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    // Value and optional timestamp, separated by blanks; an OpenMetrics
    // exemplar (` # {...} v`) after them is ignored.
    let rest = match rest.find(" #") {
        Some(i) => &rest[..i],
        None => rest,
    };
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return Err(LineError::BadValue);
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .and_then(parse_value)
        .ok_or(LineError::BadValue)?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(ts) => Some(ts.parse::<i64>().map_err(|_| LineError::BadTimestamp)?),
    };
    if fields.next().is_some() {
        return Err(LineError::TrailingText);
    }
    Ok(ParsedSample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `name="value",...}` (the `{` already consumed) into `labels`;
/// returns what follows the `}`.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, LineError> {
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let name_end = rest.find(['=', ' ', '\t']).ok_or(LineError::BadLabels)?;
        let name = &rest[..name_end];
        if !is_label_name(name) {
            return Err(LineError::BadName);
        }
        rest = rest[name_end..].trim_start_matches([' ', '\t']);
        rest = rest.strip_prefix('=').ok_or(LineError::BadLabels)?;
        rest = rest.trim_start_matches([' ', '\t']);
        rest = rest.strip_prefix('"').ok_or(LineError::BadLabels)?;
        let (value, after) = parse_quoted(rest)?;
        if labels.iter().any(|(n, _)| n == name) {
            return Err(LineError::DuplicateLabel);
        }
        labels.push((name.to_string(), value));
        rest = after.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(LineError::BadLabels);
        }
    }
}

/// Reads a label value up to its closing quote (the opening one already
/// consumed), unescaping; returns the value and what follows the quote.
fn parse_quoted(text: &str) -> Result<(String, &str), LineError> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                _ => return Err(LineError::BadEscape),
            },
            c => value.push(c),
        }
    }
    Err(LineError::BadLabels)
}

/// A sample value: a decimal float, `NaN`, `+Inf`, `-Inf` (any case, as Go's
/// `ParseFloat` reads them).
fn parse_value(text: &str) -> Option<f64> {
    let unsigned = text.trim_start_matches(['+', '-']);
    if unsigned.len() + 1 < text.len() {
        return None;
    }
    let lower = unsigned.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Some(if text.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if lower == "nan" {
        return Some(f64::NAN);
    }
    // Only what a decimal float can hold, so Rust's looser spellings are out.
    if !unsigned
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    text.parse::<f64>().ok()
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests;
