#!/usr/bin/env bash
# Runs hubwatch on this machine from a fresh clone: builds release binaries,
# starts a collector with its embedded store and an agent streaming this
# host's CPU, memory, disks, network and uptime to it every 5 s, waits until
# the first batch is stored, prints where to look, and stays in the
# foreground until Ctrl-C, then stops both cleanly (the agent flushes first).
#
# Everything it writes lives under ./.run/ (gitignored): configs, the token,
# the store (.run/data), the agent's spool (.run/spool) and the logs.
# Ports: HW_RUN_COLLECTOR_PORT [9470], HW_RUN_AGENT_PORT [9471].
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
run="$root/.run"
collector_port="${HW_RUN_COLLECTOR_PORT:-9470}"
agent_port="${HW_RUN_AGENT_PORT:-9471}"
collector_url="http://127.0.0.1:${collector_port}"
agent_url="http://127.0.0.1:${agent_port}"
member="local"
agent_id="local-host"

command -v curl >/dev/null || { echo "run.sh needs curl" >&2; exit 1; }
command -v cargo >/dev/null || { echo "run.sh needs cargo (https://rustup.rs)" >&2; exit 1; }

echo "== building release binaries"
cargo build --release --locked --bins
bin="${CARGO_TARGET_DIR:-$root/target}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
bin="$bin/release"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$collector_port" "$agent_port"; do
  if port_busy "$port"; then
    echo "port $port on 127.0.0.1 is in use (another hubwatch?); stop it or set" \
      "HW_RUN_COLLECTOR_PORT / HW_RUN_AGENT_PORT" >&2
    exit 1
  fi
done

mkdir -p "$run"
chmod 700 "$run"

cat >"$run/collector.toml" <<EOF
# Written by scripts/run.sh; rewritten on every run.
[server]
listen = "127.0.0.1:${collector_port}"
shutdown_grace = "10s"

[storage]
path = "${run}/data"

[[members]]
id = "${member}"
name = "This machine"
tier = "member"
EOF

cat >"$run/agent.toml" <<EOF
# Written by scripts/run.sh; rewritten on every run.
[agent]
id = "${agent_id}"
member = "${member}"
interval = "5s"
spool_dir = "${run}/spool"
spool_max_bytes = "64MiB"
listen = "127.0.0.1:${agent_port}"

[collector]
url = "${collector_url}"
token_file = "${run}/agent.token"

[host]
enabled = true
EOF

"$bin/hubwatch-collector" check-config --config "$run/collector.toml" >/dev/null
# The token is created once and reused; a new one only if the store is new.
if [ ! -s "$run/agent.token" ] || [ ! -d "$run/data" ]; then
  echo "== creating the agent's token"
  umask 077
  "$bin/hubwatch-collector" token create --config "$run/collector.toml" \
    --member "$member" --agent "$agent_id" >"$run/agent.token.new" 2>>"$run/collector.log" \
    || { tail -n 20 "$run/collector.log" >&2; exit 1; }
  mv "$run/agent.token.new" "$run/agent.token"
  umask 022
fi
"$bin/hubwatch-agent" check-config --config "$run/agent.toml" >/dev/null

# Each process in its own session, so Ctrl-C reaches only this script, which
# then stops the agent first (it flushes to the collector) and the collector last.
detach=""
command -v setsid >/dev/null && detach="setsid"
collector_pid=""
agent_pid=""
stop() {
  local code="${1:-$?}"
  # A second Ctrl-C must not cut the clean stop short.
  trap "" INT TERM
  trap - EXIT
  echo
  echo "== stopping"
  if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  if [ -n "$collector_pid" ] && kill -0 "$collector_pid" 2>/dev/null; then
    kill -TERM "$collector_pid" 2>/dev/null || true
    wait "$collector_pid" 2>/dev/null || true
  fi
  echo "stopped; data kept in $run (delete it to start afresh)"
  exit "$code"
}
trap 'stop 0' INT TERM
trap stop EXIT

echo "== starting the collector (logs: $run/collector.log)"
$detach "$bin/hubwatch-collector" serve --config "$run/collector.toml" >>"$run/collector.log" 2>&1 &
collector_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$collector_url/readyz" >/dev/null 2>&1 && break
  kill -0 "$collector_pid" 2>/dev/null || { tail -n 20 "$run/collector.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$collector_url/readyz" >/dev/null || { echo "collector not ready" >&2; exit 1; }

echo "== starting the agent (logs: $run/agent.log)"
$detach "$bin/hubwatch-agent" run --config "$run/agent.toml" >>"$run/agent.log" 2>&1 &
agent_pid=$!

echo "== waiting for the agent's first batch to be stored"
stored=""
for _ in $(seq 1 300); do
  kill -0 "$agent_pid" 2>/dev/null || { tail -n 20 "$run/agent.log" >&2; exit 1; }
  # The agent counts a batch as acknowledged only once the collector has it
  # durably stored.
  if curl -fsS "$agent_url/metrics" 2>/dev/null \
    | grep -Eq '^hubwatch_agent_batches_acked_total [1-9]'; then
    stored=yes
    break
  fi
  sleep 0.1
done
[ -n "$stored" ] || { echo "no batch stored after 30 s; see $run/*.log" >&2; exit 1; }

cat <<EOF

hubwatch is running: agent ${agent_id} streams this host every 5 s to the collector.

  curl ${collector_url}/api/v1/agents   # the fleet: batches, records, last_seq per agent
  curl ${collector_url}/metrics         # the collector's Prometheus metrics
  curl ${agent_url}/metrics         # the agent's own metrics (records, spool, retries)

Logs: $run/collector.log, $run/agent.log. Ctrl-C stops both.
EOF

# Foreground until Ctrl-C, or until either process exits by itself.
while kill -0 "$collector_pid" 2>/dev/null && kill -0 "$agent_pid" 2>/dev/null; do
  sleep 1
done
echo "a process exited by itself; see $run/*.log" >&2
exit 1
