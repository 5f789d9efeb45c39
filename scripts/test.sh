#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need on a fresh
# machine first, so a clean clone with only the Rust toolchain passes.
set -uo pipefail
cd "$(dirname "$0")/.."

# The rate-limit tests start their own redis-server on a free 127.0.0.1
# port; they fail, rather than skip, when it is missing.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing it with apt-get" >&2
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update && apt-get install -y redis-server
  else
    sudo apt-get update && sudo apt-get install -y redis-server
  fi || echo "installing redis-server failed; the rate-limit tests will fail" >&2
fi

# Integration tests start their own servers on 127.0.0.1 port 0.
cargo test --workspace --all-targets
status=$?

# Doc tests are not part of --all-targets.
cargo test --workspace --doc
doc_status=$?

if [[ $status -ne 0 || $doc_status -ne 0 ]]; then
  echo "tests failed" >&2
  exit 1
fi
