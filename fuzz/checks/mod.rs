//! The fuzz targets' checks, one module per target, and their seeds. Each
//! `fuzz_targets/<name>.rs` runs its check under libFuzzer
//! (`scripts/fuzz.sh`); `tests/tests/fuzz_smoke.rs` runs every check over the
//! committed seeds and seeded mutations of them on every test run.

pub mod config_load;
pub mod decode_batch;
pub mod exposition_parse;
pub mod missing_scopes;
pub mod prometheus_response;
pub mod remote_write;
pub mod retry_after;
pub mod roundtrip_batch;
pub mod seeds;
pub mod users_page;

/// A target's check: one input, a panic is a finding.
pub type Check = fn(&[u8]);

/// Every target: its name (`fuzz/Cargo.toml`'s `[[bin]]`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("config_load", config_load::check),
    ("decode_batch", decode_batch::check),
    ("exposition_parse", exposition_parse::check),
    ("missing_scopes", missing_scopes::check),
    ("prometheus_response", prometheus_response::check),
    ("remote_write", remote_write::check),
    ("retry_after", retry_after::check),
    ("roundtrip_batch", roundtrip_batch::check),
    ("users_page", users_page::check),
];
