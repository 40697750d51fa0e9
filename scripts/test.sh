#!/usr/bin/env bash
# Sets up the machine, then runs every check CI runs: formatting, clippy, and
# all tests (unit, doc and end-to-end over loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
