#!/usr/bin/env bash
# Benchmarks zayzoon against nginx on this machine, on loopback, in one run (docs/PERFORMANCE.md).
#
#   bench/run.sh            the full run: 7 A/B pairs of 4 s rounds per row (about 6 minutes)
#   bench/run.sh --smoke    every row once, 1 s rounds (about a minute after the builds); CI runs
#                           this so the bench cannot rot: it fails when something is broken, never
#                           on a missed target
#   bench/run.sh --pairs N --duration S --idle N --starts N    other sizes
#
# Installs wrk, nginx (with the headers-more module, to drop its Server header), redis-server,
# valgrind, openssl and python3 from Debian's packages when missing (as root, or with sudo), builds
# zayzoon in release (glibc, for the throughput rows; also with --features tls, for the Redis-over-TLS
# row) and as the static musl binary, with and without tls (for their sizes), then hands over to
# bench/bench.py, which starts every server on 127.0.0.1 and stops it again.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for pair in wrk:wrk nginx:nginx redis-server:redis-server python3:python3 valgrind:valgrind openssl:openssl; do
    command -v "${pair%%:*}" > /dev/null 2>&1 || missing+=("${pair#*:}")
done
[ -e /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so ] ||
    missing+=(libnginx-mod-http-headers-more-filter)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bench: installing ${missing[*]} (Debian packages)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # --no-install-recommends: no nginx service started, no extra modules loaded.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi

# Copies, so that a build elsewhere in this tree during the run can't swap the binary under us (and
# because the builds with and without tls write the same path).
bin="$(mktemp -d /tmp/zayzoon-bench-bin.XXXXXX)"
trap 'rm -rf "$bin"' EXIT

echo "bench: building (cargo build --release, with and without --features tls; and"
echo "       --target x86_64-unknown-linux-musl, with and without tls, for the sizes)"
cargo build --release --quiet --features tls
cp target/release/zayzoon "$bin/zayzoon-tls"
cargo build --release --quiet
cp target/release/zayzoon "$bin/zayzoon"
musl=()
if rustup target list --installed 2> /dev/null | grep -qx x86_64-unknown-linux-musl ||
    rustup target add x86_64-unknown-linux-musl > /dev/null 2>&1; then
    # ring (tls) compiles C for the target; cc-rs would look for x86_64-linux-musl-gcc or musl-gcc,
    # and the host's gcc does (the Dockerfile's builder does the same).
    TARGET_CC=gcc cargo build --release --quiet --target x86_64-unknown-linux-musl --features tls
    cp target/x86_64-unknown-linux-musl/release/zayzoon "$bin/zayzoon-musl-tls"
    cargo build --release --quiet --target x86_64-unknown-linux-musl
    cp target/x86_64-unknown-linux-musl/release/zayzoon "$bin/zayzoon-musl"
    musl=(--musl "$bin/zayzoon-musl" --musl-tls "$bin/zayzoon-musl-tls")
else
    echo "bench: the x86_64-unknown-linux-musl target can't be installed: no binary size"
fi

# 10,000 idle connections need 10,000 descriptors on each side (servers inherit this limit).
ulimit -n "$(ulimit -Hn)"

python3 bench/bench.py --zayzoon "$bin/zayzoon" --zayzoon-tls "$bin/zayzoon-tls" "${musl[@]}" "$@"
