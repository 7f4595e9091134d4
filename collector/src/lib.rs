//! hubwatch's collector: authenticates each agent as its member, stores what it
//! sends durably in an embedded store before acknowledging it, and serves the
//! fleet's state over HTTP.
//!
//! `main.rs` only parses flags; everything runs from here so integration tests
//! and benchmarks can drive it in-process: [`Collector`] starts the listener
//! and every feature wired as a [`component`].
#![forbid(unsafe_code)]

pub mod alerts;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod component;
pub mod cost;
pub mod federate;
pub mod health_check;
pub mod incidents;
pub mod maintenance;
pub mod pipeline;
pub mod remote_write_out;
pub mod report;
pub mod server;
pub mod slo;
pub mod status;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod usage;

pub use server::{Collector, RunningCollector};
