#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need
# (idempotent), checks formatting and lints, builds, and runs every test:
# unit and property tests, and the end-to-end tests in tests/ that start the
# real binaries built here (debug profile, in $CARGO_TARGET_DIR or ./target,
# which is where the harness looks for them).
#
# HUBWATCH_TEST_PATIENCE=2 doubles every end-to-end timeout on a slow machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

scripts/install-test-deps.sh
command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build (binaries the end-to-end tests start)"
cargo build --workspace --bins --locked
echo "== test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# Every test binary, two at a time (scripts/run-tests.py: most of the time is
# end-to-end tests waiting on real components), then the doc tests.
(
  scripts/run-tests.py
  binaries=$?
  cargo test --workspace --locked --doc
  docs=$?
  [ "$binaries" -eq 0 ] && [ "$docs" -eq 0 ]
) 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, the
# last of which is an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
