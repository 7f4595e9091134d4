#!/usr/bin/env bash
# hubwatch's benchmarks. Results and how to read them: BENCHMARKS.md.
#
#   scripts/bench.sh ingest            collector ingest load test (cargo bench --bench ingest_load):
#                                      paced at 500k samples/s, unpaced, and with 5,000-sample batches
#   scripts/bench.sh backlog           ingest latency while every derivation stage catches up on a
#                                      48 h backlog, against the same load once caught up (issue 7;
#                                      cargo bench --bench ingest_load with BENCH_MODE=backlog)
#   scripts/bench.sh usage             usage ledger (issue 8): CPU of the usage.ledger stage deriving
#                                      1,000 hubs x 500 servers every 15 s, and the ledger's size on
#                                      disk per row and per year (cargo bench --bench usage_ledger)
#   scripts/bench.sh report            a month's report for 100 members (issue 8: < 1 s), with every
#                                      minute of the month's SLIs seeded (BENCH_SLI=1; set BENCH_SLI=0
#                                      to skip the ~4.5 M-row seeding) (cargo bench --bench report_render)
#   scripts/bench.sh rollup            usage ledger size after the rollup of closed months (issue 8):
#                                      bytes per row and a year of the fleet (cargo bench --bench usage_rollup)
#   scripts/bench.sh remote-write-in   remote write in (issue 10): samples/s of POST /api/v1/write
#                                      against Prometheus' own receiver on the same payloads
#                                      (cargo bench --bench remote_write_in; BENCH_SERIES, BENCH_ROUNDS)
#   scripts/bench.sh metrics           hub-level series (issue 9): time and memory of one /metrics
#                                      render for 1,000 hubs of ~50 series (cargo bench --bench hub_metrics)
#   scripts/bench.sh federate          GET /federate of 200,000 series in 50 families over loopback
#                                      (issue 9: < 1 s; cargo bench --bench federate)
#   scripts/bench.sh remote-write-out  remote write out (issue 10: 500k samples/s): 2M samples over 10k
#                                      series drained by the real stage to a real single-node
#                                      VictoriaMetrics, then to an in-process blackhole (cargo bench
#                                      --bench remote_write_out; BENCH_SAMPLES, BENCH_SERIES, BENCH_SHARDS)
#   scripts/bench.sh remote-write-backlog  ingest p99 while a remote write destination (a real
#                                      VictoriaMetrics) and every stage catch up on the 48 h backlog
#                                      (issue 10: <= 2x; `backlog` with BENCH_REMOTE_WRITE)
#   scripts/bench.sh status            the network status page for 100 members x 3 hubs x 90 days
#                                      from state in memory (issue 12: < 50 ms, < 200 KB), the member
#                                      page and the JSON (cargo bench --bench status_render; BENCH_MEMBERS)
#   scripts/bench.sh journey           the synthetic journey's cost to the agent against a real JupyterHub:
#                                      peak RSS with and without it, CPU between runs (issue 11: < 2 MiB,
#                                      nothing between runs; cargo bench --bench journey_memory; BENCH_SECONDS)
#   scripts/bench.sh hub-down          a real JupyterHub SIGKILLed -> the page in a real Alertmanager at
#                                      the default intervals, hubwatch's HubDown against Prometheus'
#                                      up == 0 with for: 0s and for: 15s (issue 15: <= 10 s; cargo bench
#                                      --profile dev --bench hub_down_page; BENCH_RUNS, default 5)
#   scripts/bench.sh faults            fault injection with the oracle (issue 15): the collector SIGKILLed
#                                      10 times under 50 agents for 5 min, agents SIGKILLed, the collector
#                                      unreachable for a simulated hour, its disk full, bits flipped in the
#                                      agents' spools and in the collector's store (verify-store); prints
#                                      produced, delivered, duplicated, lost (cargo
#                                      bench --profile dev --bench fault_injection; BENCH_AGENTS, BENCH_SECONDS,
#                                      BENCH_KILLS, BENCH_FLIPS, BENCH_SCENARIOS)
#   scripts/bench.sh restart           restart to ready (issue 15: < 10 s): 1,000 hubs x 65 days of SLI
#                                      minutes (~94 M rows, ~7.5 GB under /tmp, deleted after), then
#                                      serve's start to /readyz and the SLO engine's load with and
#                                      without hourly rollups, 3 runs each (cargo bench --bench
#                                      restart_ready; BENCH_HUBS, BENCH_DAYS, BENCH_RUNS, BENCH_MODES,
#                                      BENCH_STORE_DIR keeps the ~7.5 GB store for reuse, BENCH_COLD=1 drops
#                                      the page cache before each start)
#   scripts/bench.sh fleet             10,000 hubs on one collector (issue 15): 1,000 agents post every
#                                      15 s; ingest rate, derivation lag, SLO and alert evaluation
#                                      rounds, memory (cargo bench --bench fleet_scale; BENCH_HUBS,
#                                      BENCH_SPEEDUP, BENCH_ROUNDS, BENCH_HUBS_PER_AGENT)
#   scripts/bench.sh side-by-side      native ingest vs Prometheus 2.42's remote write receiver and
#                                      VictoriaMetrics single-node (issue 15: >= 3x Prometheus' samples/s,
#                                      <= 1/3 of its memory per series): the same hubwatch-loadgen workload
#                                      (100 agents x 10 hubs, ~105k series) to each, samples/s, CPU-s per
#                                      million samples, RSS per series, medians of 3 interleaved runs
#                                      (cargo bench --bench ingest_side_by_side; BENCH_AGENTS, BENCH_HUBS,
#                                      BENCH_ROUNDS, BENCH_RUNS, BENCH_SYSTEMS)
#   scripts/bench.sh agent [SECONDS]   agent footprint: RSS and CPU of a release agent streaming the
#                                      host source every 15 s to a release collector (default 120 s)
#   scripts/bench.sh agent-side-by-side  hubwatch-agent (release) against prometheus --enable-feature=agent
#                                      and vmagent, concurrently on one real JupyterHub and host metrics
#                                      every 15 s, all sending to one collector: RSS (mean, peak) and
#                                      CPU-seconds, node_exporter counted on their side, medians and
#                                      ratios (issue 15: <= 1/5 of Prometheus agent mode; cargo bench
#                                      --profile dev --bench agent_side_by_side; BENCH_SECONDS, default
#                                      600, BENCH_RUNS, default 3)
#   scripts/bench.sh fuzz [SECONDS]    every fuzz target for SECONDS each (scripts/fuzz.sh)
#   scripts/bench.sh all               ingest, then agent
#
# Everything binds to 127.0.0.1 only and stops by itself. Environment for `ingest`: BENCH_SECONDS,
# BENCH_AGENTS, BENCH_BATCH, BENCH_RATE, ... (see collector/benches/ingest_load.rs); set any of
# them and `ingest` runs one configuration with them instead of its three. `backlog` takes the same
# load knobs and BENCH_BACKLOG_HOURS, BENCH_BACKLOG_AGENTS, BENCH_BACKLOG_INTERVAL_SECONDS, ...
# `federate` takes BENCH_SERIES, BENCH_FAMILIES, BENCH_AGENTS, BENCH_REQUESTS.
# `usage` takes BENCH_HUBS, BENCH_SERVERS, BENCH_INTERVALS, BENCH_CHURN (collector/benches/usage_ledger.rs).
# `rollup` takes BENCH_HUBS, BENCH_SERVERS, BENCH_USERS, BENCH_DAYS, BENCH_HORIZON_HOURS (collector/benches/usage_rollup.rs).
# `metrics` takes BENCH_HUBS, BENCH_RUNS (collector/benches/hub_metrics.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# utime + stime of a process, in clock ticks.
cpu_ticks() {
  # Field 2 (comm) may hold spaces: cut at the last ')'.
  local stat
  stat=$(cat "/proc/$1/stat")
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo $(( ${12} + ${13} ))
}

status_kib() { # PID FIELD -> the value in KiB from /proc/PID/status
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

bench_ingest() {
  local base=(cargo bench -p hubwatch-collector --bench ingest_load)
  if env | grep -q '^BENCH_'; then
    echo "== ingest_load with $(env | grep '^BENCH_' | tr '\n' ' ')"
    "${base[@]}"
    return
  fi
  echo "== ingest_load: 100 agents, 1,000-sample batches, paced at 500,000 samples/s"
  "${base[@]}"
  echo "== ingest_load: 100 agents, 1,000-sample batches, unpaced (maximum throughput)"
  BENCH_RATE=0 "${base[@]}"
  echo "== ingest_load: 100 agents, 5,000-sample batches, paced at 500,000 samples/s"
  BENCH_BATCH=5000 "${base[@]}"
}

bench_backlog() {
  # 100k samples/s by default: at 500k the stages do not keep up with the live load, so there is
  # no caught-up state to compare with (BENCHMARKS.md). BENCH_RATE=500000 shows that.
  local rate="${BENCH_RATE:-100000}" seconds="${BENCH_SECONDS:-30}"
  echo "== ingest_load, backlog mode: paced at $rate samples/s while the stages catch up on 48 h of"
  echo "   10 agents every 15 s, then $seconds s once caught up"
  BENCH_MODE=backlog BENCH_RATE="$rate" BENCH_SECONDS="$seconds" \
    cargo bench -p hubwatch-collector --bench ingest_load
}

bench_metrics() {
  echo "== hub_metrics: /metrics for ${BENCH_HUBS:-1000} hubs"
  cargo bench -p hubwatch-collector --bench hub_metrics
}

bench_usage() {
  # One simulated hour of 4 hubs by default (about 4 minutes here): the cost per snapshot grows
  # through the hour, so a short run of the whole fleet understates it; the figure is scaled to
  # 1,000 hubs (each hub's work is its own). BENCH_HUBS=1000 BENCH_INTERVALS=3 is the full width.
  local hubs="${BENCH_HUBS:-4}" intervals="${BENCH_INTERVALS:-250}"
  echo "== usage_ledger: the usage.ledger stage alone, $hubs hubs x ${BENCH_SERVERS:-500} servers, $intervals intervals"
  BENCH_HUBS="$hubs" BENCH_INTERVALS="$intervals" \
    cargo bench -p hubwatch-collector --bench usage_ledger
}

bench_report() {
  echo "== report_render: a month's report for ${BENCH_MEMBERS:-100} members, SLI minutes: ${BENCH_SLI:-1}"
  BENCH_SLI="${BENCH_SLI:-1}" cargo bench -p hubwatch-collector --bench report_render
}

bench_agent() {
  local seconds="${1:-120}"
  local interval=15
  echo "== building release binaries"
  cargo build --release --locked -p hubwatch-agent -p hubwatch-collector --bins
  local agent_bin="$root/target/release/hubwatch-agent"
  local collector_bin="$root/target/release/hubwatch-collector"

  # Globals, not locals: the EXIT trap runs after this function has returned.
  work=$(mktemp -d -t hubwatch-agent-bench-XXXXXX)
  collector_pid="" agent_pid=""
  cleanup() {
    local pid
    for pid in $agent_pid $collector_pid; do
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
  }
  trap cleanup EXIT

  local collector_port agent_port
  collector_port=$(free_port)
  agent_port=$(free_port)
  cat >"$work/collector.toml" <<EOF
[server]
listen = "127.0.0.1:$collector_port"
[storage]
path = "$work/collector-data"
[[members]]
id = "bench"
tier = "member"
EOF
  local token
  token=$("$collector_bin" --log-level warn token create --config "$work/collector.toml" \
    --member bench --agent bench-agent)
  "$collector_bin" --log-level warn serve --config "$work/collector.toml" \
    >"$work/collector.log" 2>&1 &
  collector_pid=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$collector_port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done

  cat >"$work/agent.toml" <<EOF
[agent]
id = "bench-agent"
member = "bench"
interval = "${interval}s"
spool_dir = "$work/spool"
spool_max_bytes = "64MiB"
listen = "127.0.0.1:$agent_port"
[collector]
url = "http://127.0.0.1:$collector_port"
[host]
enabled = true
EOF
  echo "== agent footprint: ${seconds} s at a ${interval} s interval, host source, streaming to a local collector"
  HUBWATCH_COLLECTOR__TOKEN="$token" "$agent_bin" --log-level warn run --config "$work/agent.toml" \
    >"$work/agent.log" 2>&1 &
  agent_pid=$!
  local ticks_per_sec
  ticks_per_sec=$(getconf CLK_TCK)
  local start_ns start_ticks steady_ns steady_ticks max_rss=0 rss
  start_ns=$(date +%s%N)
  start_ticks=$(cpu_ticks "$agent_pid")
  # Steady state starts after the first collection and send.
  local settle=$(( interval < seconds / 2 ? interval : seconds / 4 ))
  steady_ns="" steady_ticks=""
  for ((t = 1; t <= seconds; t++)); do
    sleep 1
    if ! kill -0 "$agent_pid" 2>/dev/null; then
      echo "!! the agent exited early; its log:"
      cat "$work/agent.log"
      return 1
    fi
    rss=$(status_kib "$agent_pid" VmRSS)
    (( rss > max_rss )) && max_rss=$rss
    if (( t == settle )); then
      steady_ns=$(date +%s%N)
      steady_ticks=$(cpu_ticks "$agent_pid")
    fi
  done
  local end_ns end_ticks hwm
  end_ns=$(date +%s%N)
  end_ticks=$(cpu_ticks "$agent_pid")
  rss=$(status_kib "$agent_pid" VmRSS)
  hwm=$(status_kib "$agent_pid" VmHWM)

  local agents_json
  agents_json=$(curl -fsS "http://127.0.0.1:$collector_port/api/v1/agents")
  local spool_bytes
  spool_bytes=$(du -sb "$work/spool" | cut -f1)

  python3 - "$start_ns" "$steady_ns" "$end_ns" "$start_ticks" "$steady_ticks" "$end_ticks" \
    "$ticks_per_sec" "$rss" "$hwm" "$max_rss" "$spool_bytes" "$agents_json" <<'EOF'
import json, sys
(start_ns, steady_ns, end_ns, start_t, steady_t, end_t, hz, rss, hwm, max_rss,
 spool) = map(int, sys.argv[1:12])
agents = json.loads(sys.argv[12])["agents"]
def pct(t0, t1, n0, n1):
    return (t1 - t0) / hz / ((n1 - n0) / 1e9) * 100
print(f"  VmRSS at end     : {rss / 1024:6.2f} MiB   (target < 16 MiB)")
print(f"  VmRSS max seen   : {max_rss / 1024:6.2f} MiB   (sampled every second)")
print(f"  VmHWM (peak RSS) : {hwm / 1024:6.2f} MiB")
print(f"  CPU, whole run   : {pct(start_t, end_t, start_ns, end_ns):6.3f} % of one core over {(end_ns - start_ns) / 1e9:.0f} s "
      f"({(end_t - start_t) / hz:.2f} s CPU; the kernel counts in 1/{hz} s ticks)")
print(f"  CPU, steady state: {pct(steady_t, end_t, steady_ns, end_ns):6.3f} % of one core over {(end_ns - steady_ns) / 1e9:.0f} s "
      f"(after the first collection; target < 1 %)")
print(f"  spool on disk    : {spool} bytes (bound 64 MiB)")
for a in agents:
    print(f"  collector stored : agent {a['agent']}: {a['batches']} batches, {a['records']} records, "
          f"last_seq {a['last_seq']}, dropped_by_agent {a['dropped_by_agent']}")
if not agents or agents[0]["batches"] == 0:
    print("!! the collector stored nothing from the agent")
    sys.exit(1)
EOF
}

# Starts a single-node VictoriaMetrics on a free port; sets vm_pid, vm_data, vm_url.
start_victoria() {
  local vm port
  vm=$(command -v victoria-metrics || true)
  [[ -n "$vm" ]] || { echo "!! no victoria-metrics on PATH (scripts/install-test-deps.sh)"; return 1; }
  port=$(free_port)
  vm_data=$(mktemp -d)
  "$vm" -storageDataPath="$vm_data" -httpListenAddr="127.0.0.1:$port" -loggerLevel=ERROR \
    >"$vm_data.log" 2>&1 &
  vm_pid=$!
  for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.2
  done
  vm_url="http://127.0.0.1:$port/api/v1/write"
}

stop_victoria() {
  kill "$vm_pid"
  wait "$vm_pid" 2>/dev/null || true
  rm -rf "$vm_data" "$vm_data.log"
}

bench_remote_write_backlog() {
  start_victoria
  echo "== backlog mode with a remote write destination ($vm_url) catching up too"
  BENCH_REMOTE_WRITE="$vm_url" bench_backlog || true
  echo "  VictoriaMetrics CPU for the run: $(( $(cpu_ticks "$vm_pid") / $(getconf CLK_TCK) )) s"
  stop_victoria
}

bench_remote_write_out() {
  if start_victoria; then
    echo "== remote_write_out: to a real VictoriaMetrics single node (pid $vm_pid, $vm_url)"
    BENCH_RECEIVER="$vm_url" cargo bench -p hubwatch-collector --bench remote_write_out || true
    echo "  VictoriaMetrics CPU for the run: $(( $(cpu_ticks "$vm_pid") / $(getconf CLK_TCK) )) s"
    stop_victoria
  fi
  echo "== remote_write_out: to an in-process blackhole (the collector's own ceiling)"
  cargo bench -p hubwatch-collector --bench remote_write_out
}

cmd="${1:-}"
shift || true
case "$cmd" in
  ingest) bench_ingest ;;
  backlog) bench_backlog ;;
  usage) bench_usage ;;
  report) bench_report ;;
  rollup)
    echo "== usage_rollup: one month of ${BENCH_HUBS:-4} hubs x ${BENCH_SERVERS:-500} servers rolled up"
    cargo bench -p hubwatch-collector --bench usage_rollup
    ;;
  remote-write-in)
    echo "== remote_write_in: ${BENCH_SERIES:-100000} series, side by side with Prometheus"
    cargo bench -p hubwatch-collector --bench remote_write_in
    ;;
  metrics) bench_metrics ;;
  journey)
    echo "== journey_memory: the synthetic journey's memory and its CPU between runs (real JupyterHub)"
    cargo build --release --locked -p hubwatch-agent --bins
    cargo bench --locked -p hubwatch-tests --bench journey_memory
    ;;
  status)
    echo "== status_render: GET /status for ${BENCH_MEMBERS:-100} members x 3 hubs x 90 days"
    cargo bench -p hubwatch-collector --bench status_render
    ;;
  restart)
    echo "== restart_ready: ${BENCH_HUBS:-1000} hubs x ${BENCH_DAYS:-65} days of SLI minutes"
    cargo bench -p hubwatch-collector --bench restart_ready
    ;;
  fleet)
    echo "== fleet_scale: ${BENCH_HUBS:-10000} hubs, speedup ${BENCH_SPEEDUP:-1}x"
    cargo bench -p hubwatch-collector --bench fleet_scale
    ;;
  federate)
    echo "== federate: GET /federate of ${BENCH_SERIES:-200000} series"
    cargo bench -p hubwatch-collector --bench federate
    ;;
  hub-down)
    echo "== hub_down_page: hub SIGKILLed -> page in Alertmanager, hubwatch vs Prometheus (real JupyterHub)"
    cargo build --locked -p hubwatch-agent -p hubwatch-collector --bins
    cargo bench --locked --profile dev -p hubwatch-tests --bench hub_down_page
    ;;
  side-by-side)
    echo "== ingest_side_by_side: hubwatch native ingest vs Prometheus and VictoriaMetrics remote write (same loadgen samples)"
    cargo build --release --locked -p hubwatch-collector -p hubwatch-loadgen --bins
    nice -n 10 cargo bench --locked -p hubwatch-tests --bench ingest_side_by_side
    ;;
  faults)
    echo "== fault_injection: produced, delivered, duplicated, lost under injected faults"
    cargo build --locked -p hubwatch-agent -p hubwatch-collector --bins
    cargo bench --locked --profile dev -p hubwatch-tests --bench fault_injection
    ;;
  agent-side-by-side)
    echo "== agent_side_by_side: hubwatch-agent vs Prometheus agent mode vs vmagent (real JupyterHub)"
    # node_exporter (Debian's prometheus-node-exporter): the host metrics of Prometheus agent mode
    # and vmagent; the bench starts it on a free loopback port (apt does not start its service).
    # Not a test dependency, so not in install-test-deps.sh.
    if ! command -v prometheus-node-exporter >/dev/null; then
      if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
      "${sudo[@]}" apt-get install -y --no-install-recommends prometheus-node-exporter
    fi
    # The agent measured is a release build; the harness and the collector (the receiver, not
    # measured) are debug builds.
    cargo build --release --locked -p hubwatch-agent --bins
    cargo build --locked -p hubwatch-collector --bins
    BENCH_SECONDS="${BENCH_SECONDS:-600}" BENCH_RUNS="${BENCH_RUNS:-3}" \
      cargo bench --locked --profile dev -p hubwatch-tests --bench agent_side_by_side
    ;;
  remote-write-out) bench_remote_write_out ;;
  remote-write-backlog) bench_remote_write_backlog ;;
  agent) bench_agent "$@" ;;
  fuzz) exec scripts/fuzz.sh "$@" ;;
  all)
    bench_ingest
    bench_agent "$@"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
