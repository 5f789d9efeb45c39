#!/usr/bin/env bash
# Samples the router-added p99 latency and the request rate of a running
# Valkyrie instance as CSV lines on stdout.
#
# Usage: performance-monitor.sh [HOST] [INTERVAL] [COUNT] [METRICS_PORT]
#   HOST          host of the instance (default localhost)
#   INTERVAL      seconds between samples (default 60)
#   COUNT         number of samples before the script exits (default 60)
#   METRICS_PORT  metrics port (default 9090)
#
# Each line reads
#   YYYY-MM-DD HH:MM:SS,P99_LATENCY,<seconds>,THROUGHPUT,<requests per second>
# where the p99 is over the last minute and the rate over the last 10 s.
# A sample whose scrape failed shows NaN in both fields. To keep a log:
#   performance-monitor.sh localhost 60 1440 >> /var/log/valkyrie-performance.csv
set -uo pipefail

HOST="${1:-localhost}"
INTERVAL="${2:-60}"
COUNT="${3:-60}"
METRICS_PORT="${4:-9090}"
URL="http://${HOST}:${METRICS_PORT}/metrics"

for value in "$INTERVAL" "$COUNT" "$METRICS_PORT"; do
  if [[ ! "$value" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [HOST] [INTERVAL] [COUNT] [METRICS_PORT] (whole numbers)" >&2
    exit 1
  fi
done

for ((sample = 1; sample <= COUNT; sample++)); do
  TIMESTAMP=$(date '+%Y-%m-%d %H:%M:%S')
  METRICS=$(curl -sS --max-time 5 "$URL" 2>/dev/null)
  LATENCY=$(awk 'index($0, "valkyrie_routing_request_duration_seconds{quantile=\"0.99\"}") == 1 { print $2; exit }' <<<"$METRICS")
  THROUGHPUT=$(awk '$1 == "valkyrie_routing_requests_rate" { print $2; exit }' <<<"$METRICS")
  echo "$TIMESTAMP,P99_LATENCY,${LATENCY:-NaN},THROUGHPUT,${THROUGHPUT:-NaN}"
  if ((sample < COUNT)); then
    sleep "$INTERVAL"
  fi
done
