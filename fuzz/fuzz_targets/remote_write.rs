//! cargo-fuzz target `remote_write`: the check in `fuzz/checks/remote_write.rs`, which
//! the test suite's smoke (`tests/tests/fuzz_smoke.rs`) also runs.
#![no_main]

#[path = "../checks/remote_write.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
