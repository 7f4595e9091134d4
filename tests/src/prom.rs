//! A small reader of the Prometheus text exposition format, enough to read the
//! agent's and the collector's `/metrics` in tests.

use anyhow::{Context, anyhow};

/// One sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    /// Series name, e.g. `hubwatch_agent_records_acked_total`.
    pub name: String,
    /// Labels in the order they were written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct PromText {
    /// Every sample line, in page order.
    pub samples: Vec<PromSample>,
}

impl PromText {
    /// Parses a page; comment lines are skipped, a malformed line is an error.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).with_context(|| format!("line {}: {line}", n + 1))?);
        }
        Ok(Self { samples })
    }

    /// Sum of every series called `name` (over all label sets). An error when
    /// no series has that name, so a renamed metric fails the test.
    pub fn sum(&self, name: &str) -> anyhow::Result<f64> {
        let mut found = false;
        let mut total = 0.0;
        for s in self.samples.iter().filter(|s| s.name == name) {
            found = true;
            total += s.value;
        }
        if found {
            Ok(total)
        } else {
            Err(anyhow!("no series named {name} on the page"))
        }
    }

    /// The value of the series `name` whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
    }
}

fn parse_line(line: &str) -> anyhow::Result<PromSample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| anyhow!("no value"))?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        // name="value" pairs separated by commas, up to the closing brace.
        loop {
            body = body.trim_start_matches([',', ' ']);
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = body.find('=').ok_or_else(|| anyhow!("label without ="))?;
            let label_name = body[..eq].trim().to_string();
            let quoted = body[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| anyhow!("label {label_name} value is not quoted"))?;
            let mut value = String::new();
            let mut escaped = false;
            let mut end = None;
            for (i, c) in quoted.char_indices() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i + 1);
                        break;
                    }
                    (false, c) => value.push(c),
                }
            }
            let end = end.ok_or_else(|| anyhow!("unterminated label value"))?;
            labels.push((label_name, value));
            body = &quoted[end..];
        }
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no value"))?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().with_context(|| format!("value {v:?}"))?,
    };
    Ok(PromSample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests;
