#!/usr/bin/env bash
# tq-host as an endpoint of the QUIC Interop Runner
# (github.com/quic-interop/quic-interop-runner): the image's entry point.
#
# The runner starts this with ROLE=server or ROLE=client and TESTCASE set
# to the name of a case as the endpoint sees it (testcases_quic.py's
# `testname`: the runner's multiplexing, amplificationlimit, blackhole,
# transferloss, rebind-* and ipv6 all arrive as `transfer`, handshakeloss
# as `multiconnect`, longrtt as `handshake`). The server serves /www on port
# 443 with /certs/cert.pem and /certs/priv.key. A case this endpoint cannot
# play exits 127, as the runner asks.
#
# HTTP/0.9 (ALPN hq-interop) for every case but `http3`, as the runner's
# cases expect; HTTP/3 for `http3`.
#
# Server cases:   handshake transfer multiconnect chacha20 keyupdate retry
#                 resumption zerortt http3 versionnegotiation
# Client cases:   handshake transfer retry multiconnect resumption zerortt http3
#                 (tq-host get; HTTP/0.9 but for http3)
# Unsupported:    v2 (quiche speaks QUIC v1 only), ecn (no ECN marking),
#                 connectionmigration (no preferred address); as client
#                 also chacha20 and keyupdate.
#
# Outside the runner's image the paths, port and binary can be moved with
# WWW, CERTS, DOWNLOADS, LISTEN and TQ_HOST; INTEROP_DRY_RUN=1 prints the command
# instead of running it (tests/interop checks both ways).
set -euo pipefail

ROLE=${ROLE:-server}
TESTCASE=${TESTCASE:-}
WWW=${WWW:-/www}
CERTS=${CERTS:-/certs}
LISTEN=${LISTEN:-[::]:443}
TQ_HOST=${TQ_HOST:-/tq-host/tq-host}

unsupported() {
  echo "tq-host: test case '$TESTCASE' is not supported as $ROLE: $1"
  exit 127
}

# The runner's image sets up the simulated network's routes.
if [ -x /setup.sh ] && [ -z "${INTEROP_DRY_RUN:-}" ]; then
  /setup.sh
fi

if [ "$ROLE" = "client" ]; then
  DOWNLOADS=${DOWNLOADS:-/downloads}
  # The runner's certificates are its own: the client does not check them,
  # as the other endpoints' clients do not. tq-host get fetches every URL
  # at once on one connection unless told otherwise; it writes TLS secrets
  # to $SSLKEYLOGFILE and qlogs to $QLOGDIR.
  cargs=(get -k -s --timeout 30s --output-dir "$DOWNLOADS")
  case "$TESTCASE" in
    handshake | transfer | retry) cargs+=(--hq) ;;
    # A connection per file; for resumption (two files) the second resumes.
    multiconnect | resumption) cargs+=(--hq --connection-per-url) ;;
    # The first file, then the rest in 0-RTT on a resumed connection.
    zerortt) cargs+=(--hq --reconnect-after-first --early-data) ;;
    http3) ;;
    chacha20) unsupported "tq-host's client cannot limit TLS 1.3 to ChaCha20 (BoringSSL chooses its TLS 1.3 ciphers)" ;;
    keyupdate) unsupported "quiche 0.30 has no call to start a key update" ;;
    v2) unsupported "quiche 0.30 speaks QUIC version 1 only" ;;
    ecn) unsupported "tq-host neither marks packets ECT(0) nor reports ECN counts" ;;
    connectionmigration) unsupported "quiche 0.30 reads no preferred_address to move to" ;;
    "") unsupported "TESTCASE is not set" ;;
    *) unsupported "unknown case" ;;
  esac
  if [ -n "${INTEROP_DRY_RUN:-}" ]; then
    echo "$TQ_HOST ${cargs[*]} ${REQUESTS:-}"
    exit 0
  fi
  # The runner's image: wait for the simulated network.
  if [ -x /wait-for-it.sh ]; then
    /wait-for-it.sh sim:57832 -s -t 30
  fi
  set -f
  # shellcheck disable=SC2086
  exec "$TQ_HOST" "${cargs[@]}" ${CLIENT_PARAMS:-} ${REQUESTS:?REQUESTS lists the URLs to fetch}
fi
if [ "$ROLE" != "server" ]; then
  unsupported "ROLE is neither server nor client"
fi

args=(--listen "$LISTEN" --cert "$CERTS/cert.pem" --key "$CERTS/priv.key" --www "$WWW")
app=hq
retry=off
config=""
case "$TESTCASE" in
  handshake | transfer | multiconnect | chacha20 | keyupdate | resumption | versionnegotiation) ;;
  retry) retry=on ;;
  zerortt) config=$'[quic]\nenable_early_data = true\n' ;;
  http3) app=page ;;
  v2) unsupported "quiche 0.30 speaks QUIC version 1 only" ;;
  ecn) unsupported "tq-host neither marks packets ECT(0) nor reports ECN counts" ;;
  connectionmigration) unsupported "quiche 0.30 cannot offer the client a preferred_address to move to" ;;
  "") unsupported "TESTCASE is not set" ;;
  *) unsupported "unknown case" ;;
esac
args+=(--app "$app")
[ "$retry" = off ] && args+=(--no-retry)
[ -n "${SSLKEYLOGFILE:-}" ] && args+=(--keylog-file "$SSLKEYLOGFILE")
[ -n "${QLOGDIR:-}" ] && args+=(--qlog-dir "$QLOGDIR")
if [ -n "${INTEROP_DRY_RUN:-}" ]; then
  [ -n "$config" ] && args+=(--config CONFIG.toml)
  echo "$TQ_HOST ${args[*]}"
  [ -n "$config" ] && printf '%s' "$config"
  exit 0
fi
if [ -n "$config" ]; then
  conf=$(mktemp --suffix .toml)
  printf '%s' "$config" > "$conf"
  args+=(--config "$conf")
fi
echo "tq-host: serving test case $TESTCASE: $TQ_HOST ${args[*]}"
# SERVER_PARAMS is the runner's free-form string of extra flags: split on
# spaces, never glob-expanded.
set -f
# shellcheck disable=SC2086
exec "$TQ_HOST" "${args[@]}" ${SERVER_PARAMS:-}
