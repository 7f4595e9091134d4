//! hubwatch's contract crate: the wire types an agent sends, the codec that
//! frames them, both binaries' configuration types, and the names of every
//! metric the system exports.
//!
//! It does no network or file IO, so every other crate, fuzz target and test
//! can depend on it freely.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod config;
pub mod metrics;
pub mod remote_write;
pub mod retry;
pub mod url;
pub mod wire;
