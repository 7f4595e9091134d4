//! cargo-fuzz target `roundtrip_batch`: the check in `fuzz/checks/roundtrip_batch.rs`, which
//! the test suite's smoke (`tests/tests/fuzz_smoke.rs`) also runs.
#![no_main]

#[path = "../checks/roundtrip_batch.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
