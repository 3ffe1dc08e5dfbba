#!/usr/bin/env bash
# arm64 (Graviton): build the binary the Dockerfile's builder stage builds, for
# aarch64-unknown-linux-musl, and run it under QEMU's user-mode emulation (Debian's
# qemu-user-static) the way the image runs it: `serve` answers GET /health with 200,
# `healthcheck` exits 0, and SIGTERM ends it with exit 0.
#
# Why a cross-build and not `docker build --platform linux/arm64 .`: that runs the whole builder
# stage, rustc included, under emulation (the Dockerfile's builder runs on the target platform),
# from an arm64 base that can't be pulled here. What this checks is the part that could differ on
# arm64 and that nothing else runs: our code and its dependencies compiled for aarch64 musl,
# linked static, and answering.
#
# Toolchain: the Rust version the Dockerfile's FROM tag pins, with the aarch64 musl target from
# rustup. C compiler and linker: Debian's gcc-aarch64-linux-gnu (with libc6-dev-arm64-cross for its
# headers). `ring` (the tls feature) compiles C and assembly for the target and looks for a C
# compiler named for it, so a cross gcc is needed anyway; the same gcc as the linker is what
# rustc's musl targets expect (linker = cc), with Rust's self-contained musl crt objects and libc.a.
# rust-lld also links it, but would add a second tool for no gain.
#
# The cargo build arguments are read from the Dockerfile's own `cargo build ... --target` line, so
# a feature added there (--features tls) is built here too.
#
# Fails, never skips: no aarch64 target, no cross compiler or no QEMU is a failure that says so.
# Installs what is missing with apt-get (Debian/Ubuntu; sudo when not root).
set -euo pipefail

cd "$(dirname "$0")/.."

TRIPLE=aarch64-unknown-linux-musl
LISTEN_WITHIN_S=20       # under emulation start-up is slower
STOP_EXPECTED_S=5

passed=0
failures=()
pass() { passed=$((passed + 1)); printf '  ok    %s\n' "$*"; }
fail() { failures+=("$*"); printf '  FAIL  %s\n' "$*"; }
log() { printf '==> %s\n' "$*"; }
die() { printf 'arm64-check: FAILED: %s\n' "$*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

work="$(mktemp -d /tmp/zayzoon-arm64.XXXXXX)"
server_pid=""
cleanup() {
  set +e
  if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2> /dev/null; wait "$server_pid" 2> /dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- what the Dockerfile builds ---------------------------------------------------------------------
from="$(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; exit } }' Dockerfile)"
[[ "$from" =~ ^rust:([0-9]+\.[0-9]+\.[0-9]+)- ]] || die "the builder's FROM ($from) names no Rust version"
version="${BASH_REMATCH[1]}"
build_args="$(sed -nE 's/.*cargo build (.*)--target[ =]"?\$\{?triple\}?"?.*/\1/p' Dockerfile)"
[ -n "$build_args" ] || die "no 'cargo build ... --target \"\$triple\"' line in the Dockerfile"
read -r -a build_args <<< "$build_args"

# ---- cross compiler, QEMU, target ---------------------------------------------------------------------
missing=()
command -v aarch64-linux-gnu-gcc > /dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/include/stdint.h ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static > /dev/null || missing+=(qemu-user-static)
command -v readelf > /dev/null || missing+=(binutils)
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get > /dev/null || die "needs ${missing[*]} (Debian/Ubuntu package names), and there is no apt-get here"
  log "installing ${missing[*]} (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null \
    || die "apt-get could not install ${missing[*]}"
fi

# Rust of the FROM tag's version: by that name, else an installed toolchain of exactly that
# version (stable, say), else rustup installs it.
toolchain=""
for tc in "$version" stable; do
  if [ "$(rustc "+$tc" -V 2> /dev/null | awk '{print $2}')" = "$version" ]; then toolchain="$tc"; break; fi
done
if [ -z "$toolchain" ]; then
  rustup toolchain install "$version" --profile minimal || die "no Rust $version here and rustup could not install it"
  toolchain="$version"
fi
if ! rustup target list --toolchain "$toolchain" --installed | grep -qx "$TRIPLE"; then
  log "rustup target add --toolchain $toolchain $TRIPLE"
  rustup target add --toolchain "$toolchain" "$TRIPLE" \
    || die "rustup could not add $TRIPLE to Rust $version: the arm64 build can't be made here"
fi

# ---- build -------------------------------------------------------------------------------------------
log "cargo +$toolchain build ${build_args[*]} --target $TRIPLE   (Rust $version, C compiler and linker aarch64-linux-gnu-gcc)"
start="$EPOCHREALTIME"
CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
  cargo "+$toolchain" build "${build_args[@]}" --target "$TRIPLE"
build_after="$(since "$start")"
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/')"
binary="$target_dir/$TRIPLE/release/zayzoon"
[ -x "$binary" ] || die "no binary at $binary"
binary_bytes="$(stat -c %s "$binary")"

log "checks"
machine="$(readelf -hW "$binary" | sed -nE 's/^ *Machine: *//p')"
if [ "$machine" = AArch64 ]; then pass "binary is for $machine ($binary_bytes bytes)"; else fail "binary is for '$machine'"; fi
if readelf -lW "$binary" | grep -q 'program interpreter' || readelf -dW "$binary" | grep -q '(NEEDED)'; then
  fail "binary is static: it needs a loader or shared libraries"
else
  pass "binary is static: no interpreter, no shared libraries"
fi

# ---- run it under QEMU ---------------------------------------------------------------------------------
port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }
port=$((20000 + RANDOM % 40000))
while ! port_free "$port"; do port=$((20000 + RANDOM % 40000)); done

http_status() {
  local line
  exec 5<> "/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$1" >&5
  IFS= read -r -t 10 line <&5 || line=""
  exec 5>&-
  line="${line#HTTP/1.1 }"
  printf '%s' "${line%% *}"
}

qemu="$(command -v qemu-aarch64-static)"
log "$("$qemu" --version | sed -n 1p)"
: > "$work/server.log"   # there before the first grep, whichever process runs first
env -i PORT="$port" BIND_ADDR=127.0.0.1 "$qemu" "$binary" serve > "$work/server.log" 2>&1 &
server_pid=$!
start="$EPOCHREALTIME"
until grep -q 'listening on' "$work/server.log"; do
  if ! kill -0 "$server_pid" 2> /dev/null || awk -v a="$start" -v b="$EPOCHREALTIME" -v t="$LISTEN_WITHIN_S" 'BEGIN { exit !(b - a > t) }'; then
    tail -n 5 "$work/server.log" | sed 's/^/    /'
    die "no 'listening on' line within $LISTEN_WITHIN_S s under QEMU"
  fi
  sleep 0.2
done
pass "serve under QEMU: listening after $(since "$start") s"
status="$(http_status /health)"
if [ "$status" = 200 ]; then pass "GET /health -> 200"; else fail "GET /health -> '$status'"; fi
status="$(http_status /status)"
if [ "$status" = 200 ]; then pass "GET /status -> 200"; else fail "GET /status -> '$status'"; fi
if env -i PORT="$port" "$qemu" "$binary" healthcheck > /dev/null 2>&1; then
  pass "healthcheck (the image's HEALTHCHECK command) exits 0"
else
  fail "healthcheck exits non-zero against a running server"
fi
start="$EPOCHREALTIME"
kill -TERM "$server_pid"
code=0
for _ in $(seq 1 $((STOP_EXPECTED_S * 10))); do kill -0 "$server_pid" 2> /dev/null || break; sleep 0.1; done
if kill -0 "$server_pid" 2> /dev/null; then
  fail "SIGTERM: still running after $STOP_EXPECTED_S s"
else
  wait "$server_pid" || code=$?
  server_pid=""
  if [ "$code" = 0 ]; then pass "SIGTERM: exit 0 after $(since "$start") s"; else fail "SIGTERM: exit $code"; fi
fi
log "server log"
tail -n 6 "$work/server.log" | cut -c1-160 | sed 's/^/    /'

echo
echo "arm64-check summary"
echo "  build       cargo build ${build_args[*]} --target $TRIPLE in $build_after s (Rust $version)"
echo "  binary      $binary_bytes bytes ($(awk -v b="$binary_bytes" 'BEGIN { printf "%.2f MiB", b / 1048576 }')), $machine"
echo "arm64-check: $passed passed, ${#failures[@]} failed"
[ "${#failures[@]}" -eq 0 ]
