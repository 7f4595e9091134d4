#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for N seconds each (default 60).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Installs cargo-fuzz if missing (about 45 s to build). The toolchain is
# stable; cargo-fuzz needs nightly-only flags (-Zsanitizer), which
# RUSTC_BOOTSTRAP=1 unlocks on stable. Seeds (small, real encoded batches)
# live in fuzz/seeds/<target>; new inputs go to fuzz/corpus/<target> and
# crashes to fuzz/artifacts/<target> (both git-ignored). Exits non-zero if any
# target found a crash. Not part of CI: the proptest in shared feeds random
# bytes to the decoder on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

echo "== seeds"
cargo run --quiet --manifest-path fuzz/Cargo.toml --example make_seeds -- fuzz/seeds

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

failed=()
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  log="fuzz/artifacts/$target.log"
  mkdir -p fuzz/artifacts
  if cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
      -- -max_total_time="$seconds" >"$log" 2>&1; then
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
echo "fuzz: ${#targets[@]} targets, no crash in ${seconds}s each"
