#!/usr/bin/env bash
# The benchmark harness, in one command: builds tq-host (release), the
# example plugins, and bench/ (the load generator and the peers,
# tokio-quiche and quinn + h3, in a workspace of their own), then runs
# `tq-bench`, which prints Markdown tables and writes JSON to target/bench/.
#
#   bash scripts/bench.sh            # every scenario and server, 3 rounds (about 13 min on 2 cores)
#   bash scripts/bench.sh --quick    # 1 short round, to check the set-up
#   bash scripts/bench.sh --scenarios small --servers tq-native,tokio-quiche
#
# See BENCHMARKS.md for what each scenario measures and the recorded results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
command -v taskset >/dev/null 2>&1 || echo "bench: no taskset; servers and load generator share the CPUs"
cargo build --release -p tq-host --quiet
bash scripts/build-plugins.sh
# The same target dir: BoringSSL is built once for both workspaces.
cargo build --release --manifest-path bench/Cargo.toml --target-dir target --quiet
exec target/release/tq-bench --repo . "$@"
