#!/usr/bin/env bash
# Runs every test: unit tests, integration tests against the real binary, and the Redis store's
# tests against a real redis-server, which must be on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "scripts/test.sh: redis-server and redis-cli are needed (Debian/Ubuntu: apt-get install redis-server)" >&2
    exit 1
fi
cargo test --all-targets "$@"
