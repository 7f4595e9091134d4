//! cargo-fuzz target `config_load`: the check in `fuzz/checks/config_load.rs`, which
//! the test suite's smoke (`tests/tests/fuzz_smoke.rs`) also runs.
#![no_main]

#[path = "../checks/config_load.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
