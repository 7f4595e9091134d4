#!/usr/bin/env bash
# Installs real JupyterHubs for the end-to-end tests and for `scripts/run.sh`:
# jupyterhub with jupyter_server (for `jupyterhub-singleuser`) and ipykernel
# (the kernels the synthetic journey runs code in), each in a venv at a fixed
# path the test harness looks in (tests/src/jupyterhub.rs), and
# configurable-http-proxy from npm. Idempotent: anything already present is
# left alone.
#
#   /opt/hubwatch-test/jh-venv    JupyterHub 6.x (override with HUBWATCH_JH_VENV;
#                                 every test that does not ask for a version)
#   /opt/hubwatch-test/jh5-venv   JupyterHub 5.x (HUBWATCH_JH5_VENV)
#   /opt/hubwatch-test/jh41-venv  JupyterHub 4.1 (HUBWATCH_JH41_VENV)
#
# The older two are for tests/tests/jupyterhub_versions.rs: the hub source
# must keep working on the versions members still run.
#
# Needs python3 (with venv) and npm; scripts/install-test-deps.sh installs
# those first on Debian/Ubuntu.
set -euo pipefail

# install_venv DIR REQUIREMENT... : a venv at DIR holding the requirements,
# unless it already has jupyterhub, jupyterhub-singleuser and ipykernel.
install_venv() {
  local venv=$1
  shift
  if [ -x "$venv/bin/jupyterhub" ] && [ -x "$venv/bin/jupyterhub-singleuser" ] \
    && "$venv/bin/python" -c 'import ipykernel' 2>/dev/null; then
    return 0
  fi
  local sudo=""
  [ -w "$(dirname "$(dirname "$venv")")" ] || [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo mkdir -p "$(dirname "$venv")"
  $sudo python3 -m venv "$venv"
  $sudo "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
}

install_venv "${HUBWATCH_JH_VENV:-/opt/hubwatch-test/jh-venv}" \
  'jupyterhub>=6,<7' 'jupyter_server>=2,<3' 'ipykernel>=6,<8'
# jupyter_server 2 is what 5.x's singleuser extension is built for.
install_venv "${HUBWATCH_JH5_VENV:-/opt/hubwatch-test/jh5-venv}" \
  'jupyterhub>=5,<6' 'jupyter_server>=2,<3' 'ipykernel>=6,<8'
# 4.1 predates SQLAlchemy 2.1 (its models are tested on 1.4 and 2.0) and
# ipykernel 7; pin both to what it was released against.
install_venv "${HUBWATCH_JH41_VENV:-/opt/hubwatch-test/jh41-venv}" \
  'jupyterhub>=4.1,<4.2' 'jupyter_server>=2,<3' 'ipykernel>=6,<7' 'sqlalchemy>=1.4,<2.1'

if ! command -v configurable-http-proxy >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # 5.x declares node >= 20; 4.6 runs on older Node (Debian 12 ships 18).
  chp=configurable-http-proxy@5
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  [ "$node_major" -ge 20 ] || chp=configurable-http-proxy@4.6
  $sudo npm install -g --no-fund --no-audit "$chp"
fi
