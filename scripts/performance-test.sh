#!/usr/bin/env bash
# Performance baseline for the weekly health check. Drives a fixed number of
# requests through Valkyrie and prints a short report with figures rounded
# into bands. Two runs on the same machine print the same text unless a
# figure moved into another band.
#
#   ./scripts/performance-test.sh > /tmp/current-perf.txt
#   diff /tmp/baseline-perf.txt /tmp/current-perf.txt || echo "Performance deviation detected"
#
# Usage: performance-test.sh [HOST] [PORT] [METRICS_PORT]
#   Without HOST, the script starts its own upstream (a small python3 HTTP
#   server) and router on free 127.0.0.1 ports, and stops both at the end.
#   With HOST, it sends the requests to HOST:PORT (default 8080) and reads
#   the router's latency summary from HOST:METRICS_PORT (default 9090).
#
# Environment:
#   PERF_REQUESTS  requests sent (default 2000)
#   PERF_PATH      request path (default /perf with the script's own router,
#                  / with HOST)
#   VALKYRIE_BIN   router binary for the own-router run (default: the first
#                  of target/release, target/debug, `valkyrie-routing` on PATH)
#
# Requests go one after another on one keep-alive connection (curl), and the
# load step is cut off after 300 s. Bands follow the 1-2-5 series: a p99 of
# 130us prints as "100us-200us". Only the report goes to stdout; progress
# and errors go to stderr. Exits 1 when the load could not run, and after
# the report when every request got a status other than 2xx.
set -uo pipefail

REQUESTS="${PERF_REQUESTS:-2000}"
LOAD_TIME_LIMIT=300
WARMUP_REQUESTS=50

if [[ ! "$REQUESTS" =~ ^[1-9][0-9]*$ ]]; then
  echo "PERF_REQUESTS must be a positive whole number, not \"$REQUESTS\"" >&2
  exit 1
fi
if ! command -v curl >/dev/null 2>&1; then
  echo "curl is required" >&2
  exit 1
fi

WORK=$(mktemp -d)
ROUTER_PID=""
UPSTREAM_PID=""

cleanup() {
  if [[ -n "$ROUTER_PID" ]]; then
    kill "$ROUTER_PID" 2>/dev/null
    wait "$ROUTER_PID" 2>/dev/null
  fi
  if [[ -n "$UPSTREAM_PID" ]]; then
    kill "$UPSTREAM_PID" 2>/dev/null
    wait "$UPSTREAM_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

find_binary() {
  local root candidate
  if [[ -n "${VALKYRIE_BIN:-}" ]]; then
    echo "$VALKYRIE_BIN"
    return
  fi
  root="$(cd "$(dirname "$0")/.." && pwd)"
  for candidate in "$root/target/release/valkyrie-routing" "$root/target/debug/valkyrie-routing"; do
    if [[ -x "$candidate" ]]; then
      echo "$candidate"
      return
    fi
  done
  command -v valkyrie-routing
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A keep-alive HTTP/1.1 upstream that responds 200 "ok" to every GET.
UPSTREAM_PROGRAM='
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and body go out in two writes. Without TCP_NODELAY the
    # second waits for the delayed ACK of the router, about 40 ms.
    disable_nagle_algorithm = True

    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'

# Starts the upstream and the router; sets HOST, PORT and METRICS_PORT.
start_own_router() {
  local binary upstream_port attempt
  if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 is required for the upstream server; pass HOST to test a running router" >&2
    exit 1
  fi
  binary=$(find_binary)
  if [[ -z "$binary" ]]; then
    echo "valkyrie-routing not found; build it with cargo build --release or set VALKYRIE_BIN" >&2
    exit 1
  fi
  case "$binary" in
    */debug/*) BUILD="debug build" ;;
    *) BUILD="release build" ;;
  esac
  upstream_port=$(free_port)
  PORT=$(free_port)
  METRICS_PORT=$(free_port)
  HOST=127.0.0.1

  python3 -c "$UPSTREAM_PROGRAM" "$upstream_port" >"$WORK/upstream.log" 2>&1 &
  UPSTREAM_PID=$!

  cat >"$WORK/valkyrie.toml" <<EOF
[server]
listen = ["127.0.0.1:${PORT}"]
worker_threads = 1
graceful_shutdown_timeout = "2s"

[metrics]
listen = "127.0.0.1:${METRICS_PORT}"

[logging]
level = "warn"
access_log = false

[[upstreams]]
name = "perf"
endpoints = ["127.0.0.1:${upstream_port}"]

[[routes]]
name = "perf"
path_prefix = "/"
upstream = "perf"
EOF
  (cd "$WORK" && exec "$binary" --config "$WORK/valkyrie.toml") >"$WORK/router.log" 2>&1 &
  ROUTER_PID=$!

  for ((attempt = 0; attempt < 100; attempt++)); do
    if ! kill -0 "$ROUTER_PID" 2>/dev/null; then
      echo "the router exited during start-up:" >&2
      cat "$WORK/router.log" >&2
      exit 1
    fi
    if curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:${PORT}/ready" &&
      curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:${PORT}${PERF_PATH:-/perf}"; then
      return
    fi
    sleep 0.1
  done
  echo "the router did not become ready within 10 s:" >&2
  cat "$WORK/router.log" >&2
  exit 1
}

# Sends $1 requests on one connection; writes "STATUS SECONDS" lines to $2.
send_requests() {
  local count="$1" output="$2" url="http://${HOST}:${PORT}${REQUEST_PATH}" i
  : >"$WORK/curl.conf"
  for ((i = 0; i < count; i++)); do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$url" >>"$WORK/curl.conf"
  done
  timeout "$LOAD_TIME_LIMIT" curl -s --max-time 10 --config "$WORK/curl.conf" \
    -w '%{http_code} %{time_total}\n' >"$output" 2>/dev/null
}

# Prints the 1-2-5 band that contains $1 microseconds, such as "50us-100us".
microsecond_band() {
  awk -v value="$1" '
    function show(us) {
      if (us >= 1e6) return (us / 1e6) "s"
      if (us >= 1e3) return (us / 1e3) "ms"
      return us "us"
    }
    BEGIN {
      if (value < 1) { print "under 1us"; exit }
      low = 1
      while (1) {
        if (value < low * 2) { print show(low) "-" show(low * 2); exit }
        if (value < low * 5) { print show(low * 2) "-" show(low * 5); exit }
        if (value < low * 10) { print show(low * 5) "-" show(low * 10); exit }
        low *= 10
      }
    }'
}

# Prints the 1-2-5 band that contains $1 requests per second.
rate_band() {
  awk -v value="$1" 'BEGIN {
    if (value < 1) { print "under 1 req/s"; exit }
    low = 1
    while (1) {
      if (value < low * 2) { print low "-" low * 2 " req/s"; exit }
      if (value < low * 5) { print low * 2 "-" low * 5 " req/s"; exit }
      if (value < low * 10) { print low * 5 "-" low * 10 " req/s"; exit }
      low *= 10
    }
  }'
}

# Prints the value of quantile $1 of the router-added latency summary.
router_quantile() {
  awk -v name="valkyrie_routing_request_duration_seconds{quantile=\"$1\"}" \
    'index($0, name) == 1 { print $2; exit }' <<<"$METRICS"
}

HOST="${1:-}"
BUILD=""
if [[ -z "$HOST" ]]; then
  REQUEST_PATH="${PERF_PATH:-/perf}"
  echo "starting an upstream and a router on 127.0.0.1" >&2
  start_own_router
  TARGET="own router and upstream on 127.0.0.1, ${BUILD}, 1 worker thread"
else
  PORT="${2:-8080}"
  METRICS_PORT="${3:-9090}"
  REQUEST_PATH="${PERF_PATH:-/}"
  TARGET="${HOST}:${PORT}"
fi

echo "warming up with ${WARMUP_REQUESTS} requests" >&2
send_requests "$WARMUP_REQUESTS" "$WORK/warmup.txt"

echo "sending ${REQUESTS} requests to http://${HOST}:${PORT}${REQUEST_PATH}" >&2
STARTED=$(date +%s.%N)
send_requests "$REQUESTS" "$WORK/results.txt"
FINISHED=$(date +%s.%N)

COMPLETED=$(grep -c . "$WORK/results.txt")
if ((COMPLETED == 0)); then
  echo "no request completed; is the router at http://${HOST}:${PORT} running?" >&2
  exit 1
fi
ERRORS=$(awk '$1 !~ /^2/ { errors++ } END { print errors + 0 }' "$WORK/results.txt")
RATE=$(awk -v n="$COMPLETED" -v a="$STARTED" -v b="$FINISHED" 'BEGIN { print (b > a) ? n / (b - a) : 0 }')
sort -n -k2 "$WORK/results.txt" | awk '{ print $2 * 1e6 }' >"$WORK/sorted.txt"
# The sample at rank ceil(q * n), the nearest-rank percentile.
percentile() {
  awk -v q="$1" -v n="$COMPLETED" 'BEGIN { rank = int(q * n); if (rank < q * n) rank++; if (rank < 1) rank = 1 } NR == rank { print; exit }' "$WORK/sorted.txt"
}
P50=$(percentile 0.5)
P99=$(percentile 0.99)

METRICS=$(curl -sS --max-time 5 "http://${HOST}:${METRICS_PORT}/metrics" 2>/dev/null)
ROUTER_P50=$(router_quantile 0.5)
ROUTER_P99=$(router_quantile 0.99)

echo "measured: ${COMPLETED} requests, ${ERRORS} errors, ${RATE} req/s, client p50 ${P50}us p99 ${P99}us, router-added p50 ${ROUTER_P50:-?}s p99 ${ROUTER_P99:-?}s" >&2

echo "Valkyrie performance test"
echo "target: ${TARGET}"
echo "load: curl, 1 connection, ${REQUESTS} requests of GET ${REQUEST_PATH} after ${WARMUP_REQUESTS} warm-up requests"
echo "requests: ${COMPLETED}"
echo "errors: ${ERRORS}"
echo "throughput: $(rate_band "$RATE")"
echo "client latency p50: $(microsecond_band "$P50")"
echo "client latency p99: $(microsecond_band "$P99")"
if [[ -n "$ROUTER_P50" && -n "$ROUTER_P99" ]]; then
  echo "router-added p50: $(microsecond_band "$(awk -v s="$ROUTER_P50" 'BEGIN { print s * 1e6 }')")"
  echo "router-added p99: $(microsecond_band "$(awk -v s="$ROUTER_P99" 'BEGIN { print s * 1e6 }')")"
else
  echo "router-added p50: unavailable (no metrics at ${HOST}:${METRICS_PORT})"
  echo "router-added p99: unavailable (no metrics at ${HOST}:${METRICS_PORT})"
fi

if ((ERRORS == COMPLETED)); then
  STATUS=$(awk '{ print $1; exit }' "$WORK/results.txt")
  echo "every request got a non-2xx status (the first: ${STATUS}); check that the router routes ${REQUEST_PATH} to a running upstream, or set PERF_PATH to a path that it routes" >&2
  exit 1
fi
