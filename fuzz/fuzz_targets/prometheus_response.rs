//! cargo-fuzz target `prometheus_response`: the check in `fuzz/checks/prometheus_response.rs`, which
//! the test suite's smoke (`tests/tests/fuzz_smoke.rs`) also runs.
#![no_main]

#[path = "../checks/prometheus_response.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
