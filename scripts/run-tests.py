#!/usr/bin/env python3
"""Runs the workspace's test binaries, several at a time.

`cargo test` runs test binaries one after another, and most of this suite's
time is end-to-end binaries waiting on real components (a hub's interval, a
scrape, an alert's group_wait), not CPU. This runner builds every test binary
once (`cargo test --no-run`), then runs them `HUBWATCH_TEST_JOBS` at a time
(default 2), longest first when an earlier run left its timings in
`target/test-durations.json`, each in its package's directory as cargo would.
A binary's output is printed whole when it ends, so logs never interleave;
every binary runs even after a failure, and the end lists the failures and
the slowest binaries. Exits 1 if any test failed. Arguments after `--` go to
every test binary (e.g. `-- --test-threads 1`).
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = int(os.environ.get("HUBWATCH_TEST_JOBS", "2"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
if not TARGET.is_absolute():
    TARGET = ROOT / TARGET
DURATIONS = TARGET / "test-durations.json"


def build(extra):
    """Builds every test binary; returns [(label, executable, cwd)]."""
    cmd = ["cargo", "test", "--workspace", "--locked", "--no-run",
           "--message-format=json-render-diagnostics"] + extra
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    binaries = []
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        target = msg["target"]
        package_dir = Path(msg["manifest_path"]).parent
        src = Path(target["src_path"])
        try:
            src = src.relative_to(package_dir)
        except ValueError:
            pass
        package = package_dir.name
        if "test" in target["kind"]:
            label = f"{package}/{src}"
        else:
            label = f"{package} unittests {src}"
        binaries.append((label, msg["executable"], str(package_dir)))
    return binaries


def run(label, executable, cwd, args):
    started = time.monotonic()
    proc = subprocess.run([executable] + args, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    return label, proc.returncode, proc.stdout, time.monotonic() - started


def main():
    argv = sys.argv[1:]
    extra, args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    binaries = build(extra)
    try:
        known = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        known = {}
    # Longest first (unknown ones first of all: they may be long), so the
    # last to finish is a short one.
    binaries.sort(key=lambda b: -known.get(b[0], float("inf")))
    print(f"== {len(binaries)} test binaries, {JOBS} at a time", flush=True)
    started = time.monotonic()
    durations, failed = {}, []
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        futures = [pool.submit(run, label, exe, cwd, args) for label, exe, cwd in binaries]
        for future in as_completed(futures):
            label, code, output, seconds = future.result()
            durations[label] = round(seconds, 1)
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            print(f"     Running {label} ({seconds:.1f} s, {status})", flush=True)
            sys.stdout.write(output)
            sys.stdout.flush()
            if code != 0:
                failed.append(label)
    try:
        DURATIONS.write_text(json.dumps(durations, indent=1, sort_keys=True))
    except OSError:
        pass
    wall = time.monotonic() - started
    slowest = sorted(durations.items(), key=lambda kv: -kv[1])[:8]
    print(f"== test binaries: {wall:.0f} s wall, {sum(durations.values()):.0f} s summed; slowest:")
    for label, seconds in slowest:
        print(f"   {seconds:7.1f} s  {label}")
    if failed:
        print("== FAILED: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
