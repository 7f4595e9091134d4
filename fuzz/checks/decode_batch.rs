//! Fuzz target: arbitrary bytes into the collector's decoder.
//!
//! `hubwatch_shared::codec::decode` reads bodies straight off the network, so
//! any input must give a batch or an error: a panic, an abort on a huge
//! allocation or a hang is a bug (libFuzzer reports each).

/// One input: a panic is a finding.
pub fn check(frame: &[u8]) {
    let _ = hubwatch_shared::codec::decode(frame);
}
