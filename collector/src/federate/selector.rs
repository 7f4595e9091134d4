//! `match[]` series selectors, parsed by `promql-parser` (the PromQL grammar
//! is not ours to re-implement), matched as Prometheus does: `=`, `!=`, and
//! fully anchored `=~` / `!~` regular expressions; a missing label matches as
//! the empty string; several `match[]` are a union.

use hubwatch_shared::wire::Label;
use promql_parser::label::Matcher;
use promql_parser::parser::{self, Expr};

/// A `match[]` value that is not a plain series selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("match[] {selector:?} is not a series selector: {reason}")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// Why.
    pub reason: String,
}

/// One parsed `match[]`.
#[derive(Debug, Clone)]
pub struct Selector {
    name: Option<String>,
    matchers: Vec<Matcher>,
    /// `{a="1" or b="2"}`: any group matches (empty = no `or`).
    or_groups: Vec<Vec<Matcher>>,
}

impl Selector {
    /// Parses a series selector such as `up`, `{__name__=~"jupyterhub_.*"}`
    /// or `x{member="m",hub!~"test.*"}`; any other expression (a function, a
    /// range, an offset) is refused, as Prometheus's federation does.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let fail = |reason: String| SelectorError {
            selector: text.to_string(),
            reason,
        };
        match parser::parse(text).map_err(fail)? {
            Expr::VectorSelector(vs) => {
                if vs.offset.is_some() || vs.at.is_some() {
                    return Err(fail("offset and @ modifiers are not allowed".to_string()));
                }
                Ok(Self {
                    name: vs.name,
                    matchers: vs.matchers.matchers,
                    or_groups: vs.matchers.or_matchers,
                })
            }
            _ => Err(fail("only a series selector is allowed".to_string())),
        }
    }

    /// Whether the series `name` + `labels` matches.
    pub fn matches(&self, name: &str, labels: &[Label]) -> bool {
        if self.name.as_deref().is_some_and(|n| n != name) {
            return false;
        }
        let all = |group: &[Matcher]| {
            group.iter().all(|m| {
                let value = if m.name == "__name__" {
                    name
                } else {
                    labels
                        .iter()
                        .find(|l| l.name == m.name)
                        .map_or("", |l| l.value.as_str())
                };
                m.is_match(value)
            })
        };
        all(&self.matchers) && (self.or_groups.is_empty() || self.or_groups.iter().any(|g| all(g)))
    }

    /// The metric name this selector is limited to, if any (`name` or
    /// `__name__="name"`): lets `/federate` skip other families.
    pub fn only_family(&self) -> Option<&str> {
        if let Some(name) = &self.name {
            return Some(name);
        }
        if !self.or_groups.is_empty() {
            return None;
        }
        self.matchers
            .iter()
            .find(|m| m.name == "__name__" && m.op == promql_parser::label::MatchOp::Equal)
            .map(|m| m.value.as_str())
    }
}

/// Every `match[]` of a query string (percent-decoded, `+` as a space), in
/// order; other parameters are ignored, as Prometheus does.
pub fn match_params(query: Option<&str>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name).ok_or_else(|| {
            format!("query parameter {raw_name:?} is not valid percent-encoded UTF-8")
        })?;
        if name == "match[]" {
            out.push(decode(raw_value).ok_or_else(|| {
                format!("match[] {raw_value:?} is not valid percent-encoded UTF-8")
            })?);
        }
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` decoding of one name or value.
fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}
