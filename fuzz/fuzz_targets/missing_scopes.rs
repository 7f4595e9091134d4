//! cargo-fuzz target `missing_scopes`: the check in `fuzz/checks/missing_scopes.rs`, which
//! the test suite's smoke (`tests/tests/fuzz_smoke.rs`) also runs.
#![no_main]

#[path = "../checks/missing_scopes.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
