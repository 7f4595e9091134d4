//! `write_relabel`: keep or drop series by metric name and by label before
//! they are sent.

use hubwatch_shared::config::{WriteRelabelConfig, anchored_regex};
use hubwatch_shared::wire::{Label, label};
use regex::Regex;

/// The compiled `write_relabel` of one destination.
#[derive(Debug, Clone, Default)]
pub struct Relabel {
    keep: Vec<Regex>,
    drop: Vec<Regex>,
    keep_labels: Vec<(String, Regex)>,
    drop_labels: Vec<(String, Regex)>,
}

impl Relabel {
    /// Compiles `cfg` (validated with the config, so an error here names
    /// the pattern that failed anyway).
    pub fn new(cfg: &WriteRelabelConfig) -> Result<Self, regex::Error> {
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| anchored_regex(p))
                .collect::<Result<Vec<_>, _>>()
        };
        let compile_labels = |patterns: &std::collections::BTreeMap<String, String>| {
            patterns
                .iter()
                .map(|(name, p)| Ok((name.clone(), anchored_regex(p)?)))
                .collect::<Result<Vec<_>, regex::Error>>()
        };
        Ok(Self {
            keep: compile(&cfg.keep_names)?,
            drop: compile(&cfg.drop_names)?,
            keep_labels: compile_labels(&cfg.keep_labels)?,
            drop_labels: compile_labels(&cfg.drop_labels)?,
        })
    }

    /// Whether a series with these (sent) labels passes the label rules:
    /// every `keep_labels` label matches and no `drop_labels` label does (a
    /// missing label is the empty value).
    pub fn keeps_labels(&self, labels: &[Label]) -> bool {
        let value = |name: &str| label(labels, name).unwrap_or("");
        self.keep_labels.iter().all(|(n, r)| r.is_match(value(n)))
            && !self.drop_labels.iter().any(|(n, r)| r.is_match(value(n)))
    }

    /// Whether a series named `name` is sent: it matches a `keep_names`
    /// pattern (or there are none) and no `drop_names` pattern.
    pub fn keeps(&self, name: &str) -> bool {
        (self.keep.is_empty() || self.keep.iter().any(|r| r.is_match(name)))
            && !self.drop.iter().any(|r| r.is_match(name))
    }
}
