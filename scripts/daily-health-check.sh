#!/usr/bin/env bash
# Daily health check of a running Valkyrie instance.
#
# Usage: daily-health-check.sh [HOST] [PORT] [METRICS_PORT]
#   HOST          host of the instance (default localhost)
#   PORT          data-plane port, serving /health and /config/status (default 8080)
#   METRICS_PORT  metrics port, serving /metrics (default 9090)
#
# Environment:
#   VALKYRIE_PID     process id to report CPU and memory for, when the
#                    instance runs on this host. By default, the process
#                    that listens on PORT, else the oldest valkyrie-routing
#                    process.
#   VALKYRIE_CONFIG  config file to look for a [redis] table in. By default,
#                    the file named by /config/status, when readable here.
#
# Prints one section per check and exits 1 when /health fails, else 0.
set -uo pipefail

HOST="${1:-localhost}"
PORT="${2:-8080}"
METRICS_PORT="${3:-9090}"
BASE="http://${HOST}:${PORT}"
METRICS_URL="http://${HOST}:${METRICS_PORT}/metrics"
# The p99 target of the router-added latency, in seconds.
TARGET_P99=0.000082

# Prints the value of the first sample whose line starts with $1 in $METRICS.
sample() {
  awk -v prefix="$1" 'index($0, prefix) == 1 { value = $2; found = 1; exit } END { if (found) print value }' <<<"$METRICS"
}

# Prints the value of the last sample of metric $1 (the unlabelled total).
last_sample() {
  awk -v name="$1" '$1 == name || index($1, name "{") == 1 { value = $2 } END { if (value != "") print value }' <<<"$METRICS"
}

# Prints $1, or "missing" when it is empty.
or_missing() {
  if [[ -n "$1" ]]; then printf '%s' "$1"; else printf 'missing'; fi
}

# Returns 0 when HOST names this machine.
is_local_host() {
  case "$HOST" in
    localhost | 127.* | ::1 | "[::1]" | 0.0.0.0 | "$(hostname 2>/dev/null)") return 0 ;;
  esac
  local address
  for address in $(hostname -I 2>/dev/null); do
    [[ "$HOST" == "$address" ]] && return 0
  done
  return 1
}

# Prints the pid of the local Valkyrie process, or nothing.
find_pid() {
  if [[ -n "${VALKYRIE_PID:-}" ]]; then
    echo "$VALKYRIE_PID"
    return
  fi
  local pid=""
  if command -v ss >/dev/null 2>&1; then
    pid=$(ss -Hltnp "sport = :${PORT}" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  fi
  if [[ -z "$pid" ]]; then
    # Matches the executable, not commands that only name the package.
    pid=$(pgrep -o -f '(^|/)valkyrie-routing( |$)' 2>/dev/null)
  fi
  echo "$pid"
}

# Prints the CPU use of process $1 over one second, in percent of one core.
cpu_percent() {
  local pid="$1" ticks_per_second first second
  ticks_per_second=$(getconf CLK_TCK 2>/dev/null || echo 100)
  # Fields 14 and 15 of /proc/PID/stat, counted after the command name.
  first=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/${pid}/stat" 2>/dev/null) || return 1
  sleep 1
  second=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/${pid}/stat" 2>/dev/null) || return 1
  awk -v a="$first" -v b="$second" -v hz="$ticks_per_second" 'BEGIN { printf "%.1f", (b - a) * 100 / hz }'
}

echo "=== Valkyrie Daily Health Check $(date) ==="
echo "Instance: ${HOST}:${PORT}, metrics on ${HOST}:${METRICS_PORT}"

status=0

echo "1. Service Status:"
HEALTH=$(curl -sS --max-time 5 -w '\n%{http_code}' "${BASE}/health" 2>&1)
HEALTH_CODE=$(tail -n1 <<<"$HEALTH")
HEALTH_BODY=$(sed '$d' <<<"$HEALTH")
if [[ "$HEALTH_CODE" == "200" ]]; then
  echo "Health: OK (HTTP 200) ${HEALTH_BODY}"
else
  echo "FAIL: Health check failed (HTTP ${HEALTH_CODE:-none}) ${HEALTH_BODY}"
  status=1
fi

METRICS=$(curl -sS --max-time 5 "$METRICS_URL" 2>/dev/null)
if [[ -z "$METRICS" ]]; then
  echo "FAIL: no metrics from ${METRICS_URL}"
  status=1
fi

echo "2. Performance Metrics:"
LATENCY=$(sample 'valkyrie_routing_request_duration_seconds{quantile="0.99"}')
THROUGHPUT=$(last_sample valkyrie_routing_requests_total)
RATE=$(sample 'valkyrie_routing_requests_rate ')
if [[ -n "$LATENCY" ]]; then
  VERDICT=$(awk -v p99="$LATENCY" -v target="$TARGET_P99" 'BEGIN { print (p99 + 0 < target + 0) ? "OK" : "OVER TARGET" }')
  MICROSECONDS=$(awk -v p99="$LATENCY" 'BEGIN { printf "%.1f", p99 * 1e6 }')
  echo "P99 Latency: ${LATENCY}s (${MICROSECONDS}us, target: <${TARGET_P99}s) ${VERDICT}"
else
  echo "P99 Latency: missing (target: <${TARGET_P99}s)"
fi
echo "Total Requests: $(or_missing "$THROUGHPUT")"
echo "Request Rate: $(or_missing "$RATE")/s over the last 10 s"

echo "3. Resource Usage:"
if is_local_host; then
  PID=$(find_pid)
else
  PID=""
fi
if [[ -n "$PID" && -r "/proc/${PID}/status" ]]; then
  CPU=$(cpu_percent "$PID" || echo "n/a")
  MEM=$(awk '/^VmRSS:/ { print $2 }' "/proc/${PID}/status")
  echo "Process: ${PID}"
  echo "CPU Usage: ${CPU}%"
  echo "Memory Usage: $(or_missing "$MEM") KB"
else
  echo "Process: n/a (not running on this host)"
  echo "CPU Usage: n/a"
  echo "Memory Usage: n/a"
fi
ALLOCATOR=$(sample 'valkyrie_memory_usage_bytes ')
LIMIT_EXCEEDED=$(sample 'valkyrie_memory_limit_exceeded ')
echo "Allocator Resident: $(or_missing "$ALLOCATOR") bytes"
echo "Over max_heap_size: $(or_missing "$LIMIT_EXCEEDED") (1 means new connections are closed)"

echo "4. Error Rate:"
ERRORS=$(last_sample valkyrie_routing_errors_total)
echo "Total Errors: $(or_missing "$ERRORS")"
if [[ -n "$ERRORS" && -n "$THROUGHPUT" ]]; then
  echo "Error Ratio: $(awk -v e="$ERRORS" -v t="$THROUGHPUT" 'BEGIN { if (t > 0) printf "%.4f%%", e * 100 / t; else print "0%" }')"
fi

echo "5. Dependencies:"
CONFIG_FILE="${VALKYRIE_CONFIG:-}"
if [[ -z "$CONFIG_FILE" ]]; then
  CONFIG_FILE=$(curl -sS --max-time 5 "${BASE}/config/status" 2>/dev/null | sed -n 's/.*"file":"\([^"]*\)".*/\1/p')
fi
if [[ -n "$CONFIG_FILE" && -r "$CONFIG_FILE" ]] && grep -Eq '^[[:space:]]*\[redis\]' "$CONFIG_FILE"; then
  REDIS_URL=$(awk '/^[[:space:]]*\[/ { in_redis = ($0 ~ /^[[:space:]]*\[redis\]/) } in_redis && /^[[:space:]]*url[[:space:]]*=/ { sub(/^[^"]*"/, ""); sub(/".*/, ""); print; exit }' "$CONFIG_FILE")
  REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
  # The URL may carry a password: print it without the user part.
  REDIS_SHOWN=$(sed 's#//[^@/]*@#//#' <<<"$REDIS_URL")
  if ! command -v redis-cli >/dev/null 2>&1; then
    echo "Redis: not checked (redis-cli is not installed)"
  elif [[ "$(timeout 5 redis-cli -u "$REDIS_URL" ping 2>/dev/null)" == "PONG" ]]; then
    echo "Redis: OK (${REDIS_SHOWN})"
  else
    echo "Redis: FAIL (${REDIS_SHOWN})"
  fi
else
  echo "Redis: not configured"
fi

echo "=== Health Check Complete ==="
exit "$status"
