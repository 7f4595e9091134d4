//! Sources: what the agent collects each interval.

pub mod host;
