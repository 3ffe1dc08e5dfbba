#!/usr/bin/env bash
# Runs every test: unit tests, integration tests against the real binary, and the Redis store's
# tests against a real redis-server, which must be on PATH. Arguments go to cargo test:
# `scripts/test.sh --features tls` adds the Redis-over-TLS tests, which also need openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "scripts/test.sh: redis-server and redis-cli are needed (Debian/Ubuntu: apt-get install redis-server)" >&2
    exit 1
fi
case " $* " in
*tls* | *--all-features*)
    if ! command -v openssl >/dev/null; then
        echo "scripts/test.sh: the TLS tests need the openssl command line (Debian/Ubuntu: apt-get install openssl)" >&2
        exit 1
    fi
    ;;
esac
cargo test --all-targets "$@"
