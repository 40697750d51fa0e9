#!/usr/bin/env bash
# Installs the independent QUIC clients the interop tests (tests/interop)
# drive: aioquic from PyPI, in a venv under target/toolchains/interop.
set -euo pipefail
cd "$(dirname "$0")/.."
AIOQUIC=1.7.2
venv=target/toolchains/interop
if ! "$venv/bin/python" -c "import aioquic, sys; sys.exit(aioquic.__version__ != '$AIOQUIC')" 2>/dev/null; then
  echo "interop: installing aioquic $AIOQUIC"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "aioquic==$AIOQUIC"
fi
