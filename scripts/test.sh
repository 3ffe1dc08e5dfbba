#!/usr/bin/env bash
# The README's test command: installs the programs the tests run beside the binary when they are
# missing, then runs every test (`cargo test --all-targets`, arguments passed on).
#
# The tests run: redis-server and redis-cli (the Redis store's tests start a real server on a free
# port), kill (signals to the server under test) and prlimit (the hostile tests raise their
# open-file limit). Missing ones are installed with the platform's package manager, with sudo when
# not root and sudo is there:
#
#   Debian, Ubuntu   apt-get install redis-server procps util-linux
#   Fedora, RHEL     dnf install /usr/bin/redis-server /usr/bin/redis-cli /usr/bin/kill /usr/bin/prlimit
#                    (by path: Fedora 41 and later ship Valkey's redis-server, older ones Redis's)
#   Alpine           apk add redis procps util-linux
#   macOS            brew install redis (kill is there; prlimit and /proc are not, so the tests
#                    that use them fail: the whole suite needs Linux, a VM or a container)
#
# Elsewhere, or without root or sudo, it says exactly what to install and stops. With
# `--features tls` (`scripts/test.sh --features tls`: the Redis-over-TLS tests, against the binary
# the image ships), the openssl command line is needed too: the tests make their CA and
# certificates with it (Debian, Ubuntu, Fedora, Alpine, macOS: package openssl).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'scripts/test.sh: %s\n' "$*" >&2; }

needed=(redis-server redis-cli kill prlimit)
if [ "$(uname -s)" = Darwin ]; then needed=(redis-server redis-cli); fi
case " $* " in
  *tls* | *--all-features*) needed+=(openssl) ;;
esac
missing=()
for c in "${needed[@]}"; do
  # type -P: a file on PATH (bash's kill builtin is no use to the tests' Command::new("kill")).
  type -P "$c" > /dev/null || missing+=("$c")
done
has() { local c; for c in "${missing[@]}"; do [ "$c" = "$1" ] && return 0; done; return 1; }

# Runs one package-manager command line as root: directly, or with sudo; without either, says
# what to run as root and stops.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    say "running: $1"
    sh -c "$1"
  elif command -v sudo > /dev/null; then
    say "running: sudo sh -c '$1'"
    sudo sh -c "$1"
  else
    say "not root and no sudo here. As root, run:"
    say "  $1"
    say "then run scripts/test.sh again"
    exit 1
  fi
}

install_missing() {
  local pkgs=() c
  say "missing: ${missing[*]}"
  if [ "$(uname -s)" = Darwin ]; then
    if ! command -v brew > /dev/null; then
      say "install Homebrew (https://brew.sh), then run: brew install redis"
      exit 1
    fi
    pkgs=(redis)
    if has openssl; then pkgs+=(openssl); fi
    say "running: brew install ${pkgs[*]}"
    brew install "${pkgs[@]}"
  elif command -v apt-get > /dev/null; then
    # redis-cli is in redis-tools, which redis-server depends on.
    if has redis-server || has redis-cli; then pkgs+=(redis-server); fi
    if has kill; then pkgs+=(procps); fi
    if has prlimit; then pkgs+=(util-linux); fi
    if has openssl; then pkgs+=(openssl); fi
    as_root "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${pkgs[*]}"
  elif command -v dnf > /dev/null; then
    for c in "${missing[@]}"; do pkgs+=("/usr/bin/$c"); done
    as_root "dnf install -y ${pkgs[*]}"
  elif command -v apk > /dev/null; then
    if has redis-server || has redis-cli; then pkgs+=(redis); fi
    if has kill; then pkgs+=(procps); fi
    if has prlimit; then pkgs+=(util-linux); fi
    if has openssl; then pkgs+=(openssl); fi
    as_root "apk add --no-cache ${pkgs[*]}"
  else
    say "no apt-get, dnf, apk or brew here. Install these, then run scripts/test.sh again:"
    say "  redis-server and redis-cli (Redis 6 or newer, or Valkey), kill (procps or util-linux), prlimit (util-linux)"
    if has openssl; then say "  and, for --features tls, the openssl command line"; fi
    exit 1
  fi
  for c in "${missing[@]}"; do
    if ! type -P "$c" > /dev/null; then
      say "$c is still missing after the install above; install it, then run scripts/test.sh again"
      exit 1
    fi
  done
}

if [ "${#missing[@]}" -gt 0 ]; then install_missing; fi
if [ "$(uname -s)" = Darwin ]; then
  say "note: tests that read /proc or run prlimit fail on macOS; the whole suite needs Linux"
fi
cargo test --all-targets "$@"
