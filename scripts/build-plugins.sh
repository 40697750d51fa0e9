#!/usr/bin/env bash
# Builds the example plugins and the test plugins as WebAssembly components
# into target/wasm/wasm32-wasip2/release/*.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
for ws in plugins tests/plugins; do
  cargo build --release --target wasm32-wasip2 --target-dir target/wasm --manifest-path "$ws/Cargo.toml"
done
