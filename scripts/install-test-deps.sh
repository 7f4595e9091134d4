#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine. Idempotent:
# anything already present is left alone, so running it twice changes nothing.
#
# Today: a C compiler (ring and the bundled SQLite build C), curl, the Rust
# toolchain with rustfmt and clippy, and Debian's Prometheus (the Prometheus
# source's tests query a real one), Debian's Alertmanager (the alert tests
# send to a real one), JupyterHub with configurable-http-proxy (below), a
# headless Chromium for the html report, for the deploy tests kubectl,
# systemd-analyze and kubernetes-validate, and PostgreSQL 15 (the PostgreSQL
# store's tests).
#
# The end-to-end tests also expect to run as root (or with CAP_SYS_ADMIN):
# the disk-full test mounts a small tmpfs under the system temp directory.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
# The collector's allocator (tikv-jemalloc-sys) builds jemalloc with its
# configure script and make.
command -v make >/dev/null || need_apt+=(make)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
command -v setsid >/dev/null || need_apt+=(util-linux)
# Prometheus: the tests start it themselves, in the foreground on a free
# loopback port with their own data directory (apt does not start it here).
command -v prometheus >/dev/null || need_apt+=(prometheus)
# Alertmanager (binary `prometheus-alertmanager`, with `amtool`): the alert
# tests start it themselves on a free loopback port with clustering off
# (--cluster.listen-address=) and a temporary storage path.
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v amtool >/dev/null || need_apt+=(prometheus-alertmanager)
# VictoriaMetrics (Debian's `victoria-metrics`: the single-node server and
# `vmagent`): the remote write tests send to it and receive from vmagent,
# each started by the test on a free loopback port with its own data path.
command -v vmagent >/dev/null || need_apt+=(victoria-metrics)
# A headless Chromium: the report tests open the html report in it and read
# its network requests, console errors, DOM and a screenshot over the
# DevTools protocol (tests/src/chromium.rs). Debian's small
# `chromium-headless-shell`, else the full `chromium` where that is missing.
if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null; then
  if apt-cache show chromium-headless-shell >/dev/null 2>&1; then
    need_apt+=(chromium-headless-shell)
  else
    need_apt+=(chromium)
  fi
fi

# kubectl (with its built-in kustomize): the deployment tests render
# deploy/kubernetes/ with `kubectl kustomize`. Debian's `kubernetes-client`,
# else upstream's `kubectl` package where that is what the apt sources have.
if ! command -v kubectl >/dev/null; then
  if apt-cache show kubernetes-client >/dev/null 2>&1; then
    need_apt+=(kubernetes-client)
  else
    need_apt+=(kubectl)
  fi
fi
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# libfaketime: the clock-skew test runs agents an hour ahead and behind
# (tests/tests/agent_clock_skew.rs, LD_PRELOAD with FAKETIME).
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || need_apt+=(libfaketime)

# PostgreSQL 15 (Debian's `postgresql-15`): the PostgreSQL store's tests
# start a private server themselves (initdb + pg_ctl from
# /usr/lib/postgresql/15/bin, a temporary directory, a free loopback port;
# collector/src/store/pg/test_server.rs and tests/src/postgres.rs), so the
# package's own `main` cluster is not wanted: it is not created.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  need_apt+=(postgresql-15)
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
fi

# JupyterHub (below) needs Python with venv and Node with npm.
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v npm >/dev/null || need_apt+=(nodejs npm)

if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need_apt[@]}"
fi

# initdb refuses to run as root, and the tests run as root: they run the
# server as the `postgres` system user (the package creates it; made here
# if missing).
if ! id -u postgres >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/sh postgres
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
      | sh -s -- -y --profile minimal --component rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

if command -v rustup >/dev/null; then
  rustfmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

# axe-core, the accessibility checker the status page test injects into
# headless Chromium (tests/tests/status_pages.rs), at a fixed version and
# path (HUBWATCH_AXE overrides the path); skipped when already there.
axe_version=4.10.3
axe_prefix=/opt/hubwatch-test
if ! grep -qs "\"version\": \"$axe_version\"" "$axe_prefix/node_modules/axe-core/package.json"; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo mkdir -p "$axe_prefix"
  $sudo npm install --no-audit --no-fund --prefix "$axe_prefix" "axe-core@$axe_version"
fi

# The OTLP test receiver (tests/otlp_receiver.py, used by
# tests/tests/otlp_telemetry.rs) decodes the collector's spans with the
# official OpenTelemetry protobuf definitions from PyPI, in their own venv at
# a fixed path (HUBWATCH_OTLP_VENV overrides it); skipped when already there.
otel_proto_version=1.45.2
otel_venv=/opt/hubwatch-test/otel-venv
if ! "$otel_venv/bin/python" -c "
import importlib.metadata as m, sys
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
sys.exit(m.version('opentelemetry-proto') != '$otel_proto_version')" 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo mkdir -p "$(dirname "$otel_venv")"
  $sudo python3 -m venv "$otel_venv"
  $sudo "$otel_venv/bin/pip" install --quiet --disable-pip-version-check \
    "opentelemetry-proto==$otel_proto_version" protobuf
fi

# JupyterHub, for the JupyterHub source's end-to-end tests (and for
# scripts/run.sh): a real hub with configurable-http-proxy and real
# single-user servers, in a venv at a fixed path the test harness looks in
# (tests/src/jupyterhub.rs; override both with HUBWATCH_JH_VENV). The tests
# start the hub themselves on free loopback ports.
"$(dirname "$0")/install-jupyterhub.sh"

# kubernetes-validate (PyPI), which checks the rendered manifests against
# the Kubernetes OpenAPI schemas of a given release
# (tests/tests/deploy_kubernetes_agent.rs), in its own venv at a fixed path
# (HUBWATCH_K8S_VALIDATE overrides the command); skipped when already there.
k8s_venv=/opt/hubwatch-test/k8s-venv
if [ ! -x "$k8s_venv/bin/kubernetes-validate" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo mkdir -p /opt/hubwatch-test
  $sudo python3 -m venv "$k8s_venv"
  $sudo "$k8s_venv/bin/pip" install --quiet "kubernetes-validate>=1.30"
fi
