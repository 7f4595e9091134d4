//! Harness for the end-to-end tests in `tests/tests/`: starts the real
//! `hubwatch-collector` and `hubwatch-agent` binaries and the real components
//! the project's scripts install, and waits for what they should do.
#![forbid(unsafe_code)]
