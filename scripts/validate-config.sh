#!/usr/bin/env bash
# Pre-deployment validation of a Valkyrie config file.
#
# Usage: validate-config.sh FILE
#
# 1. Runs `valkyrie-routing --validate-config FILE` (syntax, keys, values).
# 2. Rejects a [routing] performance_budget above 82us, compared as a
#    duration: "0.05ms" passes, "100us" and "1ms" fail.
# 3. Warns when TLS is not enabled.
#
# The binary is $VALKYRIE_BIN when set, else the first of target/release,
# target/debug (beside this script), ./valkyrie-routing and `valkyrie-routing`
# on the PATH. Exits 0 when the file passes, 1 otherwise.
set -uo pipefail

CONFIG_FILE="${1:-}"
if [[ -z "$CONFIG_FILE" ]]; then
  echo "usage: $0 FILE" >&2
  exit 1
fi
if [[ ! -r "$CONFIG_FILE" ]]; then
  echo "ERROR: cannot read $CONFIG_FILE" >&2
  exit 1
fi

# The largest router-added p99 target accepted, in nanoseconds (82us).
MAX_BUDGET_NANOS=82000

find_binary() {
  local root candidate
  if [[ -n "${VALKYRIE_BIN:-}" ]]; then
    echo "$VALKYRIE_BIN"
    return
  fi
  root="$(cd "$(dirname "$0")/.." && pwd)"
  for candidate in "$root/target/release/valkyrie-routing" "$root/target/debug/valkyrie-routing" ./valkyrie-routing; do
    if [[ -x "$candidate" ]]; then
      echo "$candidate"
      return
    fi
  done
  command -v valkyrie-routing
}

# Prints the nanoseconds of a duration such as "82us", "0.5ms" or "1s",
# or nothing when the text is not one.
duration_nanos() {
  awk -v text="$1" 'BEGIN {
    if (!match(text, /^[0-9]+(\.[0-9]+)?/)) exit
    number = substr(text, 1, RLENGTH)
    unit = substr(text, RLENGTH + 1)
    if (unit == "ns") scale = 1
    else if (unit == "us" || unit == "µs") scale = 1e3
    else if (unit == "ms") scale = 1e6
    else if (unit == "s" || unit == "sec") scale = 1e9
    else if (unit == "m" || unit == "min") scale = 60e9
    else if (unit == "h" || unit == "hour") scale = 3600e9
    else if (unit == "d" || unit == "day") scale = 86400e9
    else exit
    printf "%.0f\n", number * scale
  }'
}

# Prints the value of `key = "..."` in [section] of the config, unquoted.
toml_string() {
  local section="$1" key="$2"
  awk -v section="$section" -v key="$key" '
    /^[[:space:]]*\[/ {
      header = $0
      sub(/^[[:space:]]*\[+[[:space:]]*/, "", header)
      sub(/[[:space:]]*\]+.*$/, "", header)
      current = header
      next
    }
    current == section {
      line = $0
      sub(/#.*/, "", line)
      if (line ~ "^[[:space:]]*" key "[[:space:]]*=") {
        sub(/^[^=]*=[[:space:]]*/, "", line)
        gsub(/["'\'']/, "", line)
        sub(/[[:space:]]+$/, "", line)
        print line
        exit
      }
    }' "$CONFIG_FILE"
}

echo "Validating configuration: $CONFIG_FILE"

# Syntax validation
BINARY=$(find_binary)
if [[ -z "$BINARY" ]]; then
  echo "ERROR: valkyrie-routing not found; build it with cargo build --release or set VALKYRIE_BIN" >&2
  exit 1
fi
"$BINARY" --validate-config "$CONFIG_FILE" || exit 1

# Performance validation
BUDGET=$(toml_string routing performance_budget)
BUDGET="${BUDGET:-82us}"
BUDGET_NANOS=$(duration_nanos "$BUDGET")
if [[ -z "$BUDGET_NANOS" ]]; then
  echo "ERROR: performance_budget \"$BUDGET\" is not a duration such as \"82us\""
  exit 1
fi
if ((BUDGET_NANOS > MAX_BUDGET_NANOS)); then
  echo "ERROR: Performance budget $BUDGET exceeds 82µs requirement"
  exit 1
fi
echo "Performance budget: $BUDGET (${BUDGET_NANOS}ns, limit 82us)"

# Security validation
if [[ "$(toml_string security enable_tls)" != "true" ]]; then
  echo "WARNING: TLS not enabled"
fi

echo "Configuration validation passed"
