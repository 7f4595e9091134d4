//! `write_relabel`: keep or drop series by metric name before they are sent.

use hubwatch_shared::config::{WriteRelabelConfig, anchored_regex};
use regex::Regex;

/// The compiled `keep_names` and `drop_names` of one destination.
#[derive(Debug, Clone, Default)]
pub struct Relabel {
    keep: Vec<Regex>,
    drop: Vec<Regex>,
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
        Ok(Self {
            keep: compile(&cfg.keep_names)?,
            drop: compile(&cfg.drop_names)?,
        })
    }

    /// Whether a series named `name` is sent: it matches a `keep_names`
    /// pattern (or there are none) and no `drop_names` pattern.
    pub fn keeps(&self, name: &str) -> bool {
        (self.keep.is_empty() || self.keep.iter().any(|r| r.is_match(name)))
            && !self.drop.iter().any(|r| r.is_match(name))
    }
}
