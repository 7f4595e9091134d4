#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need
# (idempotent), checks formatting and lints, builds, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

scripts/install-test-deps.sh

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build (binaries the end-to-end tests start)"
cargo build --workspace --bins --locked
echo "== test"
cargo test --workspace --locked
