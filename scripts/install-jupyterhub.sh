#!/usr/bin/env bash
# Installs a real JupyterHub for the end-to-end tests and for `scripts/run.sh`:
# jupyterhub with jupyter_server (for `jupyterhub-singleuser`) and ipykernel
# (the kernels the synthetic journey runs code in) in a venv at a
# fixed path the test harness looks in (tests/src/jupyterhub.rs; override both
# with HUBWATCH_JH_VENV), and configurable-http-proxy from npm. Idempotent:
# anything already present is left alone.
#
# Needs python3 (with venv) and npm; scripts/install-test-deps.sh installs
# those first on Debian/Ubuntu.
set -euo pipefail

JH_VENV=${HUBWATCH_JH_VENV:-/opt/hubwatch-test/jh-venv}
if [ ! -x "$JH_VENV/bin/jupyterhub" ] || [ ! -x "$JH_VENV/bin/jupyterhub-singleuser" ] \
  || ! "$JH_VENV/bin/python" -c 'import ipykernel' 2>/dev/null; then
  sudo=""
  [ -w "$(dirname "$(dirname "$JH_VENV")")" ] || [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo mkdir -p "$(dirname "$JH_VENV")"
  $sudo python3 -m venv "$JH_VENV"
  $sudo "$JH_VENV/bin/pip" install --quiet --disable-pip-version-check \
    'jupyterhub>=6,<7' 'jupyter_server>=2,<3' 'ipykernel>=6,<8'
fi
if ! command -v configurable-http-proxy >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # 5.x declares node >= 20; 4.6 runs on older Node (Debian 12 ships 18).
  chp=configurable-http-proxy@5
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  [ "$node_major" -ge 20 ] || chp=configurable-http-proxy@4.6
  $sudo npm install -g --no-fund --no-audit "$chp"
fi
