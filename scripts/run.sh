#!/usr/bin/env bash
# Sets up the machine, builds tq-host and the example plugins, and serves the
# hello plugin over HTTP/3 on 127.0.0.1:4433 with a self-signed certificate.
# Extra arguments go to tq-host (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-plugins.sh
# One profile (dev, with optimised dependencies) for running and testing, so
# BoringSSL is built once.
exec cargo run -p tq-host -- --plugin target/wasm/wasm32-wasip2/release/hello.wasm "$@"
