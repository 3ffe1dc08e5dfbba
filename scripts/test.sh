#!/usr/bin/env bash
# Runs every test: unit tests, integration tests against the real binary, and (when the tests
# need it) a real redis-server, which must be on PATH (Debian: apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
