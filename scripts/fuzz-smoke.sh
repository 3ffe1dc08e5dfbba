#!/usr/bin/env bash
# Fuzz smoke run: builds every cargo-fuzz target in fuzz/ with the nightly toolchain and runs each
# for FUZZ_SECONDS (default 60) on a scratch copy of its committed seeds, so that CI never dirties
# the tree. Fails on any crash, failed invariant, timeout (>10 s for one input) or out-of-memory
# that libFuzzer reports; the input that did it is left in fuzz/artifacts/<target>/ (ignored by
# git). See fuzz/README.md for longer runs.
#
# The seed is fixed (FUZZ_SEED, default 1), so that CI replays (for the same code and toolchain)
# a prefix of the sequence of inputs that a longer local run with the same seed has already been
# through, instead of a new random one each time. Hunting for new bugs is what long runs with
# FUZZ_SEED=0 (a random seed) are for.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
seed="${FUZZ_SEED:-1}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
# The fuzz crate's lock starts from the server's, so that the fuzzer builds the very versions of
# httparse, mio, redis... that the server ships; cargo adds libFuzzer's own. It is not committed
# (fuzz/.gitignore): a committed copy would go stale with every change to the server's.
cp ../Cargo.lock Cargo.lock
cargo +"$toolchain" fuzz build
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for target in $(cargo +"$toolchain" fuzz list); do
    mkdir -p "$work/$target"
    cp corpus/"$target"/* "$work/$target/"
    log="$work/$target.log"
    if ! cargo +"$toolchain" fuzz run "$target" "$work/$target" -- \
        -max_total_time="$seconds" -seed="$seed" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        echo "FAIL $target: libFuzzer's last words:"
        tail -n 60 "$log"
        exit 1
    fi
    # libFuzzer's last status line (executions, coverage, features, corpus) and average speed.
    status="$(grep -E '^#[0-9]+.* cov: ' "$log" | tail -n 1 || true)"
    speed="$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)"
    printf 'ok %-14s %ss  %s  (average %s exec/s)\n' "$target" "$seconds" "$status" "$speed"
done
