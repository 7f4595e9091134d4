#!/usr/bin/env bash
# Runs hubwatch on this machine from a fresh clone, showing what it is for: a
# small real fleet on loopback, in the foreground, until Ctrl-C.
#
#   scripts/run.sh              a real JupyterHub (dummy authenticator, local
#                               single-user servers) where alice and bob start
#                               and stop servers on a schedule; an agent
#                               watching it; a collector with the hub's member
#                               in the premier tier and a small cost model; an
#                               Alertmanager when one is installed
#   scripts/run.sh --host-only  no Python needed: a collector and an agent
#                               streaming this host's CPU, memory, disks,
#                               network and uptime
#   --clean                     delete the run directory first (start afresh)
#
# JupyterHub comes from the venv scripts/install-jupyterhub.sh makes (the one
# the tests use, HUBWATCH_JH_VENV or /opt/hubwatch-test/jh-venv); it is
# installed on first use when python3 (with venv) and npm are present.
#
# Everything it writes lives under one directory, HW_RUN_DIR [./run-data]:
# configs, tokens, the collector's store, the agent's spool, the hub's
# database and users' homes, and every log. Ports (all on 127.0.0.1):
#   HW_RUN_COLLECTOR_PORT [9470]  HW_RUN_AGENT_PORT [9471]
#   HW_RUN_HUB_PORT [8000] (the hub, through its proxy)
#   HW_RUN_HUB_API_PORT [8081] (the hub itself)  HW_RUN_PROXY_API_PORT [8001]
#   HW_RUN_ALERTMANAGER_PORT [9093]
# HW_RUN_PROFILE [release]: the cargo profile to build and run (debug builds
# faster, runs slower).
#
# Every process runs in its own session, so Ctrl-C reaches only this script,
# which then stops them in order: the driver (it stops its users' servers
# first, and the agent gets an interval to see that), the agent (it flushes
# its spool to the collector), the hub (it stops its servers and proxy), Alertmanager,
# and the collector last; whatever outlives its grace is killed.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

mode=fleet
clean=""
for arg in "$@"; do
  case "$arg" in
    --host-only) mode=host ;;
    --clean) clean=yes ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "run.sh: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

run="${HW_RUN_DIR:-$root/run-data}"
case "$run" in /*) ;; *) run="$root/$run" ;; esac
profile="${HW_RUN_PROFILE:-release}"
collector_port="${HW_RUN_COLLECTOR_PORT:-9470}"
agent_port="${HW_RUN_AGENT_PORT:-9471}"
hub_port="${HW_RUN_HUB_PORT:-8000}"
hub_api_port="${HW_RUN_HUB_API_PORT:-8081}"
proxy_api_port="${HW_RUN_PROXY_API_PORT:-8001}"
am_port="${HW_RUN_ALERTMANAGER_PORT:-9093}"
collector_url="http://127.0.0.1:${collector_port}"
agent_url="http://127.0.0.1:${agent_port}"
hub_url="http://127.0.0.1:${hub_port}"
am_url="http://127.0.0.1:${am_port}"
jh_venv="${HUBWATCH_JH_VENV:-/opt/hubwatch-test/jh-venv}"

command -v curl >/dev/null || { echo "run.sh needs curl" >&2; exit 1; }
command -v cargo >/dev/null || { echo "run.sh needs cargo (https://rustup.rs)" >&2; exit 1; }
command -v setsid >/dev/null || { echo "run.sh needs setsid (util-linux)" >&2; exit 1; }
command -v ps >/dev/null || { echo "run.sh needs ps (procps)" >&2; exit 1; }

if [ "$mode" = fleet ]; then
  if [ ! -x "$jh_venv/bin/jupyterhub" ] || [ ! -x "$jh_venv/bin/jupyterhub-singleuser" ] \
    || ! command -v configurable-http-proxy >/dev/null; then
    if command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
      && command -v npm >/dev/null; then
      echo "== installing JupyterHub into $jh_venv (once; scripts/install-jupyterhub.sh)"
      HUBWATCH_JH_VENV="$jh_venv" scripts/install-jupyterhub.sh
    else
      cat >&2 <<EOF
run.sh brings up a real JupyterHub, which needs Python 3 (with venv) and npm;
this machine lacks them, and JupyterHub is not installed at $jh_venv.
Either install them (Debian/Ubuntu: scripts/install-test-deps.sh), or run
    scripts/run.sh --host-only
for a collector and an agent streaming this host's metrics.
EOF
      exit 1
    fi
  fi
fi

if [ -n "$clean" ]; then
  case "$run" in
    "$root"/?* | /tmp/?*) ;;
    *) [ -f "$run/.hubwatch-run" ] || {
      echo "refusing to delete $run: not made by run.sh" >&2
      exit 1
    } ;;
  esac
  echo "== deleting $run"
  rm -rf "$run"
fi

echo "== building $profile binaries"
bin="${CARGO_TARGET_DIR:-$root/target}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
case "$profile" in
  release) cargo build --release --locked --bins && bin="$bin/release" ;;
  debug | dev) cargo build --locked --bins && bin="$bin/debug" ;;
  *) cargo build --profile "$profile" --locked --bins && bin="$bin/$profile" ;;
esac

am_bin=""
if [ "$mode" = fleet ]; then
  for candidate in "${HUBWATCH_ALERTMANAGER:-}" prometheus-alertmanager alertmanager; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null; then
      am_bin="$(command -v "$candidate")"
      break
    fi
  done
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=("$collector_port" "$agent_port")
[ "$mode" = fleet ] && ports+=("$hub_port" "$hub_api_port" "$proxy_api_port")
[ -n "$am_bin" ] && ports+=("$am_port")
for port in "${ports[@]}"; do
  if port_busy "$port"; then
    echo "port $port on 127.0.0.1 is in use (another run.sh?); stop it or set the" \
      "HW_RUN_*_PORT variables (see scripts/run.sh --help)" >&2
    exit 1
  fi
done

mkdir -p "$run"
chmod 700 "$run"
touch "$run/.hubwatch-run"
# Fleet and host-only runs keep separate stores, so switching modes never mixes them.
if [ "$mode" = fleet ]; then state="$run"; else state="$run/host-only"; fi
mkdir -p "$state/tokens"

# A random secret, created once and kept (tokens, the pseudonymisation key).
secret() {
  if [ ! -s "$1" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$1")
  fi
}

month="$(date -u +%Y-%m)"
if [ "$mode" = fleet ]; then
  member="demo"
  agent_id="demo-cluster"
  hub_dir="$run/hub"
  mkdir -p "$hub_dir/home"
  secret "$hub_dir/agent.token"
  secret "$hub_dir/driver.token"
  secret "$run/pseudonym-secret"
  cat >"$hub_dir/jupyterhub_config.py" <<EOF
# Written by scripts/run.sh; rewritten on every run. A JupyterHub on loopback:
# the dummy authenticator (any password), local single-user servers, and two
# service tokens: hubwatch-agent (the scopes the agent needs) and fleet-driver
# (admin, for scripts/fleet-driver.py).
import os, sys
c = get_config()  # noqa: F821
here = ${hub_dir@Q}
venv_bin = os.path.dirname(sys.executable)

def token(name):
    with open(os.path.join(here, name)) as f:
        return f.read().strip()

c.JupyterHub.bind_url = "${hub_url}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:${hub_api_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:${proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = os.path.join(here, "jupyterhub-proxy.pid")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(here, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(here, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(here, "jupyterhub.pid")

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(here, "home", "{username}")
c.Spawner.cmd = [os.path.join(venv_bin, "jupyterhub-singleuser")]
c.Spawner.args = ["--allow-root"]
c.Spawner.ip = "127.0.0.1"
# Keep single-user servers in the hub's process group (JupyterHub starts
# each in a session of its own), so run.sh can kill any the hub leaves.
c.Spawner.popen_kwargs = {"start_new_session": False}

c.JupyterHub.services = [
    {"name": "hubwatch-agent", "api_token": token("agent.token")},
    {"name": "fleet-driver", "api_token": token("driver.token")},
]
c.JupyterHub.load_roles = [
    {"name": "hubwatch-agent", "services": ["hubwatch-agent"],
     "scopes": ["list:users", "read:users", "read:servers", "read:metrics"]},
    {"name": "fleet-driver", "services": ["fleet-driver"],
     "scopes": ["admin:users", "admin:servers", "users:activity"]},
]
c.PeriodicMetricsCollector.active_users_update_interval = 60
EOF

  cat >"$run/alertmanager.yml" <<EOF
# Written by scripts/run.sh: every alert to one receiver that sends nothing;
# look at them in the UI.
route:
  receiver: ui-only
  group_by: [alertname, member, hub]
  group_wait: 5s
  group_interval: 30s
  repeat_interval: 4h
receivers:
  - name: ui-only
EOF

  alertmanagers=""
  [ -n "$am_bin" ] && alertmanagers=$'\n[[alertmanagers]]\nurl = "'"${am_url}"$'"\n'
  cat >"$run/collector.toml" <<EOF
# Written by scripts/run.sh; rewritten on every run.
currency = "USD"

[server]
listen = "127.0.0.1:${collector_port}"
shutdown_grace = "10s"

[storage]
path = "${run}/data"

[alerting]
evaluation_interval = "5s"
outside_probe_interval = "5s"
${alertmanagers}
[[members]]
id = "${member}"
name = "Demo community"
tier = "premier"
[[members.hubs]]
name = "lab"
public_url = "${hub_url}"   # the collector probes /hub/health from outside

# A second member without a hub of its own: it shares the operations pool.
[[members]]
id = "neighbour"
name = "Neighbour community"
tier = "member"

# The cost model: the hub's cluster, this month's bill for it, and a pool.
[[clusters]]
id = "loopback"
kind = "shared"
hubs = ["${member}/lab"]
cpu_weight = 1
memory_weight = 3
storage_weight = 1

[[costs]]
cluster = "loopback"
period = "${month}"
amount = "730.00"

[[cost_pools]]
name = "operations"
amount = "2000"
split = "even"
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
token_file = "${run}/tokens/${agent_id}.token"

[[hubs]]
name = "lab"
url = "${hub_url}"
api_token_file = "${hub_dir}/agent.token"

[host]
enabled = true

[privacy]
pseudonymise_users = true
secret_file = "${run}/pseudonym-secret"
EOF
else
  member="local"
  agent_id="local-host"
  cat >"$state/collector.toml" <<EOF
# Written by scripts/run.sh --host-only; rewritten on every run.
[server]
listen = "127.0.0.1:${collector_port}"
shutdown_grace = "10s"

[storage]
path = "${state}/data"

[[members]]
id = "${member}"
name = "This machine"
tier = "member"
EOF

  cat >"$state/agent.toml" <<EOF
# Written by scripts/run.sh --host-only; rewritten on every run.
[agent]
id = "${agent_id}"
member = "${member}"
interval = "5s"
spool_dir = "${state}/spool"
spool_max_bytes = "64MiB"
listen = "127.0.0.1:${agent_port}"

[collector]
url = "${collector_url}"
token_file = "${state}/tokens/${agent_id}.token"

[host]
enabled = true
EOF
fi

collector_toml="$state/collector.toml"
agent_toml="$state/agent.toml"
token_file="$state/tokens/${agent_id}.token"
"$bin/hubwatch-collector" check-config --config "$collector_toml" >/dev/null
# The token is created once and reused; a new one only if the store is new.
if [ ! -s "$token_file" ] || [ ! -d "$state/data" ]; then
  echo "== creating the agent's token (hubwatch-collector token create)"
  (
    umask 077
    "$bin/hubwatch-collector" token create --config "$collector_toml" \
      --member "$member" --agent "$agent_id" >"$token_file.new" 2>>"$state/collector.log"
  ) || { tail -n 20 "$state/collector.log" >&2; exit 1; }
  mv "$token_file.new" "$token_file"
fi
"$bin/hubwatch-agent" check-config --config "$agent_toml" >/dev/null

# --- processes ---------------------------------------------------------------

# Whether pid runs (a child that exited stays a zombie until waited for).
alive() {
  local stat
  stat="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ $stat != Z* ]]
}

# TERM, up to `grace` seconds to exit, then KILL; reaps it.
stop_process() {
  local name="$1" pid="$2" grace="$3" i
  [ -n "$pid" ] || return 0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      echo "  $name did not stop within ${grace}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  echo "  $name stopped"
}

driver_pid=""
agent_pid=""
hub_pid=""
am_pid=""
collector_pid=""
stop() {
  local code="${1:-$?}" proxy_pid
  # A second Ctrl-C must not cut the clean stop short.
  trap "" INT TERM
  trap - EXIT
  echo
  echo "== stopping"
  # The driver stops its users' servers before it exits; the agent then gets
  # one more interval to see them gone, so no server's time runs on in the
  # ledger while everything is down.
  stop_process "fleet driver (stopping its users' servers)" "$driver_pid" 40
  if [ -n "$driver_pid" ] && alive "$agent_pid"; then sleep 6; fi
  stop_process "agent" "$agent_pid" 15
  stop_process "JupyterHub" "$hub_pid" 30
  if [ -n "$hub_pid" ]; then
    # Servers and the proxy the hub left behind: its process group (the
    # servers, kept there by popen_kwargs) and the proxy, by its pid file.
    kill -KILL -- "-$hub_pid" 2>/dev/null || true
    if [ -s "$hub_dir/jupyterhub-proxy.pid" ]; then
      proxy_pid="$(cat "$hub_dir/jupyterhub-proxy.pid")"
      if [[ $proxy_pid =~ ^[0-9]+$ ]] && alive "$proxy_pid" \
        && grep -q configurable-http-proxy "/proc/$proxy_pid/cmdline" 2>/dev/null; then
        kill -KILL "$proxy_pid" 2>/dev/null || true
      fi
      rm -f "$hub_dir/jupyterhub-proxy.pid"
    fi
  fi
  stop_process "Alertmanager" "$am_pid" 10
  stop_process "collector" "$collector_pid" 15
  echo "stopped; data kept in $run (scripts/run.sh --clean starts afresh)"
  exit "$code"
}
trap 'stop 0' INT TERM
trap stop EXIT

# wait_for NAME PID LOG URL SECONDS: until URL answers 2xx.
wait_for() {
  local name="$1" pid="$2" log="$3" url="$4" seconds="$5" i
  for ((i = 0; i < seconds * 10; i++)); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    if ! alive "$pid"; then
      echo "$name exited during start-up; the end of $log:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "$name not ready after ${seconds}s ($url); see $log" >&2
  exit 1
}

if [ "$mode" = fleet ] && [ -n "$am_bin" ]; then
  echo "== starting Alertmanager ($am_bin; logs: $run/alertmanager.log)"
  setsid "$am_bin" --config.file="$run/alertmanager.yml" --storage.path="$run/alertmanager" \
    --web.listen-address="127.0.0.1:${am_port}" --cluster.listen-address= \
    --web.external-url="${am_url}/" >>"$run/alertmanager.log" 2>&1 &
  am_pid=$!
  wait_for Alertmanager "$am_pid" "$run/alertmanager.log" "$am_url/-/ready" 30
elif [ "$mode" = fleet ]; then
  echo "== no Alertmanager installed (prometheus-alertmanager or alertmanager): skipped;" \
    "alerts show at /api/v1/alerts only"
fi

if [ "$mode" = fleet ]; then
  echo "== starting JupyterHub ($jh_venv; logs: $run/hub.log)"
  (cd "$hub_dir" && exec setsid "$jh_venv/bin/jupyterhub" -f "$hub_dir/jupyterhub_config.py") \
    >>"$run/hub.log" 2>&1 &
  hub_pid=$!
  wait_for JupyterHub "$hub_pid" "$run/hub.log" "$hub_url/hub/health" 90
fi

echo "== starting the collector (logs: $state/collector.log)"
setsid "$bin/hubwatch-collector" serve --config "$collector_toml" >>"$state/collector.log" 2>&1 &
collector_pid=$!
wait_for collector "$collector_pid" "$state/collector.log" "$collector_url/readyz" 30

echo "== starting the agent (logs: $state/agent.log)"
setsid "$bin/hubwatch-agent" run --config "$agent_toml" >>"$state/agent.log" 2>&1 &
agent_pid=$!

if [ "$mode" = fleet ]; then
  echo "== starting the fleet driver: alice's server runs 2 of every 5 minutes, bob's 4 of 6" \
    "(logs: $run/driver.log)"
  setsid "$jh_venv/bin/python" "$root/scripts/fleet-driver.py" --hub "$hub_url" \
    --token-file "$hub_dir/driver.token" alice:120:300 bob:240:360 >>"$run/driver.log" 2>&1 &
  driver_pid=$!
fi

echo "== waiting for the agent's first batch to be stored"
stored=""
for _ in $(seq 1 300); do
  alive "$agent_pid" || { tail -n 20 "$state/agent.log" >&2; exit 1; }
  # The agent counts a batch as acknowledged only once the collector has it
  # durably stored.
  if curl -fsS "$agent_url/metrics" 2>/dev/null \
    | grep -Eq '^hubwatch_agent_batches_acked_total [1-9]'; then
    stored=yes
    break
  fi
  sleep 0.1
done
[ -n "$stored" ] || { echo "no batch stored after 30 s; see $state/*.log" >&2; exit 1; }

if [ "$mode" = fleet ]; then
  hubs_line=""
  # /api/v1/hubs is in the contract but not in every build yet.
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "$collector_url/api/v1/hubs")" = 200 ]; then
    hubs_line="  curl ${collector_url}/api/v1/hubs                  # the fleet: up, active users, running servers"
  fi
  if [ -n "$am_bin" ]; then
    am_line="  ${am_url}/#/alerts                  # Alertmanager's UI: the alerts the collector sent"
  else
    am_line="  (no Alertmanager installed: install prometheus-alertmanager to see them routed)"
  fi
  cat <<EOF

hubwatch is running a small fleet on loopback:
  JupyterHub  ${hub_url}   (any password; alice and bob start and stop servers on a schedule)
  agent       ${agent_id}, watching hub "lab" every 5 s for member "${member}" (premier tier)
  collector   ${collector_url}, with a cost model: cluster "loopback" (USD 730.00 for ${month})
              and an "operations" pool of USD 2000 split evenly with member "neighbour"

Where to look (usage rows appear once a server has run for an interval or two):
  curl ${collector_url}/api/v1/slo                   # SLOs: availability, spawn success, spawn latency
  curl ${collector_url}/api/v1/alerts                # alerts the collector holds (Watchdog always fires)
  curl '${collector_url}/api/v1/usage?group_by=user' # server time per (pseudonymised) user and hour
${hubs_line:+$hubs_line
}  curl -s ${collector_url}/metrics | grep hubwatch_usage   # per member and hub, for the last complete hour
  curl ${collector_url}/api/v1/agents                # batches, records, last_seq per agent
${am_line}

The month's report for the member (cost share, usage, SLOs):
  ${bin}/hubwatch-collector report --config ${collector_toml} --period \$(date -u +%Y-%m) --format html > report.html

Logs: $run/{collector,agent,hub,driver,alertmanager}.log. Ctrl-C stops everything.
EOF
else
  cat <<EOF

hubwatch is running (host only): agent ${agent_id} streams this host every 5 s to the collector.

  curl ${collector_url}/api/v1/agents   # the fleet: batches, records, last_seq per agent
  curl ${collector_url}/metrics         # the collector's Prometheus metrics
  curl ${agent_url}/metrics         # the agent's own metrics (records, spool, retries)

Logs: $state/collector.log, $state/agent.log. Ctrl-C stops both.
EOF
fi

# Foreground until Ctrl-C, or until a process exits by itself.
while :; do
  for entry in "collector:$collector_pid" "agent:$agent_pid" "JupyterHub:$hub_pid" \
    "Alertmanager:$am_pid" "fleet driver:$driver_pid"; do
    pid="${entry##*:}"
    if [ -n "$pid" ] && ! alive "$pid"; then
      echo "the ${entry%%:*} exited by itself; see the logs under $run" >&2
      exit 1
    fi
  done
  sleep 1
done
