#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for N seconds each (default 60).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 0 [TARGET...]   # a number of inputs instead
#   FUZZ_JOBS=2 FUZZ_RUNS=10000000 scripts/fuzz.sh 0 T  # N libFuzzer jobs in parallel on one corpus,
#                                                       # FUZZ_RUNS/N inputs each (logs ./fuzz-<i>.log)
#   FUZZ_SANITIZER=none scripts/fuzz.sh ...             # without AddressSanitizer (cargo fuzz -s):
#                                                       # safe Rust gains little from it, and the
#                                                       # slowest target, config_load, runs 5x faster
#                                                       # (440 -> 2,400 inputs/s here)
#
# The targets, one per decoder of untrusted input:
#   decode_batch         the collector's batch decoder (codec::decode)
#   roundtrip_batch      decode, re-encode, decode: same bytes
#   exposition_parse     the agent's Prometheus text parser + hub mapping
#   users_page           the JupyterHub users API JSON + the usage diff
#   prometheus_response  the Prometheus query API JSON + label mapping
#   retry_after          the sender's Retry-After parsing
#   missing_scopes       the scope names picked out of a hub's 401/403 body
#   remote_write         POST /api/v1/write: snappy, protobuf, label checks,
#                        conversion, and re-encoding to the same samples
#   config_load          the config loader (file + HUBWATCH_ env) as agent and
#                        collector config; what loads, written back, loads the same
#
# Installs cargo-fuzz if missing (about 45 s to build). The toolchain is
# stable; cargo-fuzz needs nightly-only flags (-Zsanitizer), which
# RUSTC_BOOTSTRAP=1 unlocks on stable. The checks themselves live in
# fuzz/checks/<target>.rs. Seeds (small, real inputs, fuzz/checks/seeds.rs)
# are committed under fuzz/seeds/<target>; new inputs go to
# fuzz/corpus/<target> and crashes to fuzz/artifacts/<target> (both
# git-ignored). Exits non-zero if any target found a crash. Not part of CI
# (an instrumented build takes minutes); CI runs every check over the seeds
# and seeded mutations of them instead (tests/tests/fuzz_smoke.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

failed=()
for target in "${targets[@]}"; do
  if [ -n "${FUZZ_RUNS:-}" ] && [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
    limit=(-runs="$((FUZZ_RUNS / FUZZ_JOBS))" -jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
    echo "== fuzz $target for $FUZZ_RUNS inputs in $FUZZ_JOBS jobs"
  elif [ -n "${FUZZ_RUNS:-}" ]; then
    limit=(-runs="$FUZZ_RUNS")
    echo "== fuzz $target for $FUZZ_RUNS inputs"
  else
    limit=(-max_total_time="$seconds")
    echo "== fuzz $target for ${seconds}s"
  fi
  mkdir -p "fuzz/corpus/$target"
  log="fuzz/artifacts/$target.log"
  mkdir -p fuzz/artifacts
  if cargo fuzz run --sanitizer "${FUZZ_SANITIZER:-address}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
      -- "${limit[@]}" >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true
  else
    echo "!! $target FAILED; log: $log, inputs under fuzz/artifacts/$target/"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -10 || true
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash in ${FUZZ_RUNS:-${seconds}s} ${FUZZ_RUNS:+inputs }each"
