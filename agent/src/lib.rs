//! hubwatch's agent: a guest on a member's cluster that collects hub health and
//! usage and streams it to the collector. Every batch is written to an on-disk
//! spool before it is sent, so an outage of the link or of the collector loses
//! nothing; memory and disk are bounded, and whatever is dropped is counted and
//! reported to the collector in the protocol itself.
//!
//! `main.rs` only parses flags; everything runs from here so integration tests
//! can drive it in-process.
#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod health_check;
pub mod privacy;
pub mod runtime;
pub mod sender;
pub mod sources;
pub mod spool;
pub mod telemetry;
pub mod z2jh;
