#!/usr/bin/env bash
# Installs what building tq-host needs and is missing, on Debian with Rust by
# rustup; with --for-tests, also what the tests need. Safe to run again: it
# only installs what is absent.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)           # BoringSSL's build
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev) # bindgen for boring-sys
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
if [ "${1:-}" = "--for-tests" ]; then
  # The test components from other toolchains (scripts/build-components.sh):
  # componentize-py in a venv, ComponentizeJS through npm.
  python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need_apt+=(python3-venv)
  command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
  # A real browser as an HTTP/3 client (host/tests/browser.rs).
  command -v chromium >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 \
    || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Plugins are built for WebAssembly components.
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi
