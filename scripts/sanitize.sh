#!/usr/bin/env bash
# Runs the whole test suite (unit tests, the fuzz corpus replay, integration and hostile-client
# tests) under AddressSanitizer with LeakSanitizer, every crate instrumented, the server binary
# that the integration tests start included. Fails on any invalid memory access or leak, in the
# test processes or in any server they started: every process writes its report to its own file
# under a scratch directory, and a single report fails the run. Needs the nightly toolchain
# (-Zsanitizer) and redis-server on PATH, as scripts/test.sh does. Extra arguments go to
# `cargo test` (e.g. `--test hostile`).
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain="${SANITIZE_TOOLCHAIN:-nightly}"
host="$(rustc +"$toolchain" -vV | sed -n 's/^host: //p')"
reports="$(mktemp -d)"
trap 'rm -rf "$reports"' EXIT

# --target keeps build scripts and proc macros uninstrumented; the build lands in target/<host>/.
export RUSTFLAGS="-Zsanitizer=address ${RUSTFLAGS:-}"
export ASAN_OPTIONS="detect_leaks=1:log_path=$reports/asan:${ASAN_OPTIONS:-}"
# The hostile tests' memory bounds mean nothing with ASan's quarantine and shadow: they print them.
export ZAYZOON_SANITIZER=address

# Negative control: a program that leaks must leave a report, or this script could never fail.
control="$reports/control"
mkdir -p "$control"
printf 'fn main() { std::mem::forget(vec![7u8; 4096]); }\n' >"$control/leak.rs"
rustc +"$toolchain" -Zsanitizer=address --target "$host" -o "$control/leak" "$control/leak.rs"
if ASAN_OPTIONS="detect_leaks=1:log_path=$control/asan" "$control/leak" \
    || ! grep -q "LeakSanitizer: detected memory leaks" "$control"/asan.*; then
    echo "sanitize: the negative control's leak went unreported; this setup detects nothing"
    exit 1
fi

status=0
cargo +"$toolchain" test --target "$host" --all-targets --no-fail-fast "$@" || status=$?

if compgen -G "$reports/asan*" >/dev/null; then
    echo "sanitizer reports:"
    for report in "$reports"/asan*; do
        echo "--- $report"
        head -n 60 "$report"
    done
    exit 1
fi
[ "$status" -eq 0 ] || exit "$status"
echo "sanitize: no invalid access, no leak (AddressSanitizer + LeakSanitizer)"
