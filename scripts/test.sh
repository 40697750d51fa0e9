#!/usr/bin/env bash
# Sets up the machine, then runs every check CI runs: formatting, clippy, the
# API docs' links, and all tests (unit, doc and end-to-end over loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
# One build from scratch: incremental state would only cost disk (1.4 GB).
export CARGO_INCREMENTAL=0
bash scripts/setup.sh --for-tests
# Plugins first: the tests load them from target/wasm.
bash scripts/build-plugins.sh
# Components from the Python and JavaScript toolchains (tests/toolchains).
bash scripts/build-components.sh
# Independent QUIC clients for the interop tests (tests/interop): aioquic.
bash scripts/interop-peers.sh
cargo fmt --all -- --check
for ws in plugins tests/plugins; do
  cargo fmt --manifest-path "$ws/Cargo.toml" --all -- --check
  cargo clippy --release --target wasm32-wasip2 --target-dir target/wasm --manifest-path "$ws/Cargo.toml" -- -D warnings
done
cargo clippy --workspace --all-targets -- -D warnings
# The API docs are what a library user reads first: no broken links.
RUSTDOCFLAGS="-D warnings" cargo doc -p tq-host --no-deps --quiet
cargo test --workspace
