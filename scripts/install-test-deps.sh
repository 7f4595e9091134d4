#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine. Idempotent:
# anything already present is left alone, so running it twice changes nothing.
#
# Today: a C compiler (ring and the bundled SQLite build C), curl, and the Rust
# toolchain with rustfmt and clippy. Later issues add Prometheus, Alertmanager
# and JupyterHub here.
#
# The end-to-end tests also expect to run as root (or with CAP_SYS_ADMIN):
# the disk-full test mounts a small tmpfs under the system temp directory.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
command -v setsid >/dev/null || need_apt+=(util-linux)

if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need_apt[@]}"
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
