#!/usr/bin/env bash
# Put the image the Dockerfile's builder stage starts FROM (rust:<version>-<debian suite>) into the
# Docker engine that `docker` talks to (DOCKER_HOST), so that a plain `docker build .` runs the
# Dockerfile as users run it (SPEC.md §5). scripts/scratch-check.sh calls this before it builds.
#
# CI machines here can pull no image, so by default the base is assembled, in the official image's
# layout, from what the machine has:
#
#   - a Debian root of the FROM tag's suite: debootstrap --variant=minbase
#     --include=gcc,libc6-dev,ca-certificates (the official image adds more: curl, git, ...; and
#     debootstrap takes the suite's point release, without bookworm-security's newer packages);
#   - this machine's Rust toolchain of the FROM tag's version, as rustup's minimal profile installs
#     it (rustc, cargo, rust-std) plus rust-std for this architecture's musl target, copied file by
#     file from rustup's own component manifests into /usr/local/rustup, with rustup and its proxies
#     in /usr/local/cargo/bin;
#   - this machine's /etc/ssl/certs/ca-certificates.crt in place of Debian's, as a company's base
#     image carries its proxy's CA, so cargo in the builder can reach crates.io here;
#   - `docker import` with the official image's ENV: RUSTUP_HOME, CARGO_HOME, PATH, RUST_VERSION.
#
# The Dockerfile is not changed for any of this: the image gets the exact name its FROM line uses.
# The musl target is installed in the base, so the Dockerfile's `rustup target add` finds it up to
# date instead of downloading it (the official image downloads it).
#
# Cache: the assembled root is kept as a tar in ZAYZOON_BASE_CACHE (default
# ~/.cache/zayzoon/builder-base), named by a hash of what it is made of: the FROM name, the Debian
# suite, mirror, architecture and package list, rustc -vV / cargo -V / rustup --version, the
# toolchain components' manifests, the CA bundle and this script. Any change to one of those makes
# a new base. Debian's packages change under the same names (point releases), so a cached root
# older than ZAYZOON_BASE_MAX_AGE_DAYS (default 7) is made again, as the official image is rebuilt.
# The tar is written under a temporary name and renamed, so concurrent runs never read half a file.
#
# ZAYZOON_BUILDER_BASE=pull pulls the real image instead (for engines that can, e.g. GitHub's
# runners): that tests exactly what users get, including the `rustup target add` download.
#
# Nothing is skipped: if the base can be neither found nor made (no debootstrap, no toolchain of
# that version, not root), this says why and exits 1.
#
# Needs: a Docker engine; to assemble, root (debootstrap, and files owned by root in the image) and
# Debian's debootstrap (installed with apt-get if missing).
set -euo pipefail

cd "$(dirname "$0")/.."

PACKAGES=gcc,libc6-dev,ca-certificates
MIRROR="${ZAYZOON_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
MAX_AGE_DAYS="${ZAYZOON_BASE_MAX_AGE_DAYS:-7}"
CACHE="${ZAYZOON_BASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/zayzoon/builder-base}"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
KEY_LABEL=org.zayzoon.builder-base.key
# The official image's rustup proxies (rustup-init makes them as hard links to rustup).
PROXIES=(cargo cargo-clippy cargo-fmt cargo-miri clippy-driver rls rust-analyzer rust-gdb
  rust-gdbgui rust-lldb rustc rustdoc rustfmt)

log() { printf '==> builder base: %s\n' "$*"; }
die() { printf 'builder-base: FAILED: %s\n' "$*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }'; }

# ---- what the Dockerfile asks for ------------------------------------------------------------------
# The first FROM's image (flags such as --platform= skipped).
from="$(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; exit } }' Dockerfile)"
[ -n "$from" ] || die "no FROM line in the Dockerfile"
log "the Dockerfile's builder stage is FROM $from"

if [ "${ZAYZOON_BUILDER_BASE:-assemble}" = pull ]; then
  log "ZAYZOON_BUILDER_BASE=pull: docker pull $from"
  docker pull -q "$from" || die "docker pull $from failed"
  log "pulled $(docker image inspect -f '{{index .RepoDigests 0}}' "$from")"
  exit 0
fi
[ "${ZAYZOON_BUILDER_BASE:-assemble}" = assemble ] \
  || die "ZAYZOON_BUILDER_BASE must be 'assemble' (default) or 'pull', not '$ZAYZOON_BUILDER_BASE'"

if ! [[ "$from" =~ ^rust:([0-9]+\.[0-9]+\.[0-9]+)-([a-z]+)$ ]]; then
  die "can't assemble '$from': only rust:<x.y.z>-<debian suite> (the official image's tags) is known"
fi
version="${BASH_REMATCH[1]}"
suite="${BASH_REMATCH[2]}"

case "$(uname -m)" in
  x86_64) arch=x86_64 dpkg_arch=amd64 ;;
  aarch64 | arm64) arch=aarch64 dpkg_arch=arm64 ;;
  *) die "no Rust musl target for this machine's architecture $(uname -m)" ;;
esac
host="$arch-unknown-linux-gnu"
musl="$arch-unknown-linux-musl"

# ---- this machine's toolchain of that version --------------------------------------------------------
# By its version name first; else any installed toolchain (stable, say) whose rustc is exactly that
# version; else rustup installs it. No other version will do: the FROM tag pins the compiler.
toolchain=""
for tc in "$version-$host" "$version" stable; do
  if [ "$(rustc "+$tc" -V 2> /dev/null | awk '{print $2}')" = "$version" ]; then toolchain="$tc"; break; fi
done
if [ -z "$toolchain" ]; then
  log "no Rust $version toolchain installed: rustup toolchain install $version --profile minimal"
  if rustup toolchain install "$version" --profile minimal \
    && [ "$(rustc "+$version" -V 2> /dev/null | awk '{print $2}')" = "$version" ]; then
    toolchain="$version"
  else
    die "no Rust $version toolchain on this machine and rustup could not install it: can't assemble $from"
  fi
fi
sysroot="$(rustc "+$toolchain" --print sysroot)"
if ! rustup target list --toolchain "$toolchain" --installed | grep -qx "$musl"; then
  log "rustup target add --toolchain $toolchain $musl"
  rustup target add --toolchain "$toolchain" "$musl" || die "rustup could not add $musl to Rust $version"
fi
components=("rustc-$host" "cargo-$host" "rust-std-$host" "rust-std-$musl")
for c in "${components[@]}"; do
  [ -f "$sysroot/lib/rustlib/manifest-$c" ] || die "toolchain $toolchain ($sysroot) has no component $c"
done
rustup_bin="$(readlink -f "$(command -v rustup)")"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
settings_version="$(sed -nE 's/^version = "([0-9]+)"$/\1/p' "$rustup_home/settings.toml" 2> /dev/null)"
[ -f "$CA_BUNDLE" ] || die "no CA bundle at $CA_BUNDLE"

# ---- the cache key: everything the base is made of ----------------------------------------------------
recipe="$(
  echo "from $from"
  echo "debian $suite $dpkg_arch $MIRROR minbase $PACKAGES"
  rustc "+$toolchain" -vV
  cargo "+$toolchain" -V
  rustup --version 2> /dev/null
  echo "rustup settings version ${settings_version:-12}"
  for c in "${components[@]}"; do
    printf '%s %s\n' "$c" "$(sha256sum < "$sysroot/lib/rustlib/manifest-$c" | cut -c1-64)"
  done
  echo "ca-bundle $(sha256sum < "$CA_BUNDLE" | cut -c1-64)"
  echo "recipe $(sha256sum < scripts/builder-base.sh | cut -c1-64)"
)"
key="$(printf '%s\n' "$recipe" | sha256sum | cut -c1-16)"

# An image of that name already in the engine: ours with the same key, or one that was not
# assembled here at all (the real image, pulled earlier), is used as it is.
if existing="$(docker image inspect -f "{{index .Config.Labels \"$KEY_LABEL\"}}" "$from" 2> /dev/null)"; then
  if [ "$existing" = "$key" ]; then
    log "$from is in the engine already (assembled, key $key)"
    exit 0
  elif [ -z "$existing" ] || [ "$existing" = "<no value>" ]; then
    log "$from is in the engine already and was not assembled here: using it as it is"
    exit 0
  fi
  log "$from in the engine was assembled from something else (key $existing): replacing it"
fi

# ---- assemble, or take the cached root -------------------------------------------------------------
work="$(mktemp -d /tmp/zayzoon-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT

assemble() {
  local out="$1" root="$work/root" t
  [ "$(id -u)" -eq 0 ] \
    || die "assembling $from needs root (debootstrap); run as root, or with ZAYZOON_BUILDER_BASE=pull where the engine can pull"
  if ! command -v debootstrap > /dev/null; then
    log "installing debootstrap"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        debootstrap debian-archive-keyring > /dev/null; } \
      || die "no debootstrap, and apt-get could not install it: can't assemble $from"
  fi

  t="$EPOCHREALTIME"
  log "debootstrap --variant=minbase --include=$PACKAGES $suite ($dpkg_arch, $MIRROR)"
  if ! debootstrap --variant=minbase --arch="$dpkg_arch" --include="$PACKAGES" \
    "$suite" "$root" "$MIRROR" > "$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" | sed 's/^/    /'
    die "debootstrap of $suite failed: can't assemble $from"
  fi
  # As Debian's own images: no downloaded packages, no package lists.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
  log "debootstrap: $(since "$t") s"

  # The toolchain, component by component, from the file lists rustup keeps for each.
  t="$EPOCHREALTIME"
  local tc_dir="$root/usr/local/rustup/toolchains/$version-$host" rustlib c
  rustlib="$tc_dir/lib/rustlib"
  mkdir -p "$rustlib" "$root/usr/local/cargo/bin"
  for c in "${components[@]}"; do
    sed -nE 's/^(file|dir)://p' "$sysroot/lib/rustlib/manifest-$c" > "$work/files"
    tar -C "$sysroot" -cf - -T "$work/files" | tar -C "$tc_dir" -xpf -
    cp "$sysroot/lib/rustlib/manifest-$c" "$rustlib/"
  done
  cp "$sysroot/lib/rustlib/multirust-channel-manifest.toml" "$sysroot/lib/rustlib/rust-installer-version" "$rustlib/"
  printf '%s\n' "${components[@]}" > "$rustlib/components"
  {
    echo 'config_version = "1"'
    for c in rustc cargo rust-std; do
      printf '\n[[components]]\npkg = "%s"\ntarget = "%s"\nis_extension = false\n' "$c" "$host"
    done
    printf '\n[[components]]\npkg = "rust-std"\ntarget = "%s"\nis_extension = false\n' "$musl"
  } > "$rustlib/multirust-config.toml"
  printf 'version = "%s"\ndefault_toolchain = "%s"\nprofile = "minimal"\n\n[overrides]\n' \
    "${settings_version:-12}" "$version-$host" > "$root/usr/local/rustup/settings.toml"
  install -m 0755 "$rustup_bin" "$root/usr/local/cargo/bin/rustup"
  for c in "${PROXIES[@]}"; do ln "$root/usr/local/cargo/bin/rustup" "$root/usr/local/cargo/bin/$c"; done
  chmod -R a+w "$root/usr/local/rustup" "$root/usr/local/cargo"
  log "Rust $version ($toolchain: ${components[*]}): $(since "$t") s"

  t="$EPOCHREALTIME"
  tar --numeric-owner -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$out" .
  log "root tar: $(du -m "$out" | cut -f1) MiB in $(since "$t") s"
}

mkdir -p "$CACHE"
cached="$CACHE/$key.tar"
if [ -f "$cached" ] && [ -n "$(find "$cached" -mmin "-$((MAX_AGE_DAYS * 1440))")" ]; then
  log "cached root $cached (key $key, made $(date -u -r "$cached" '+%Y-%m-%d %H:%M') UTC)"
else
  [ -f "$cached" ] && log "cached root $cached is older than $MAX_AGE_DAYS days: making it again"
  log "assembling $from (key $key)"
  assemble "$work/base.tar"
  printf '%s\n' "$recipe" > "$work/base.txt"
  mv "$work/base.txt" "$CACHE/$key.txt.tmp$$" && mv "$CACHE/$key.txt.tmp$$" "$CACHE/$key.txt"
  mv "$work/base.tar" "$cached.tmp$$" && mv "$cached.tmp$$" "$cached"
  # Bases made of something else are no use any more (a reader that has one open keeps it).
  find "$CACHE" -maxdepth 1 -type f \( -name '*.tar' -o -name '*.txt' \) ! -name "$key.*" -delete
fi

t="$EPOCHREALTIME"
docker import \
  -c "ENV RUSTUP_HOME=/usr/local/rustup" \
  -c "ENV CARGO_HOME=/usr/local/cargo" \
  -c "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  -c "ENV RUST_VERSION=$version" \
  -c "LABEL $KEY_LABEL=$key" \
  -c 'CMD ["bash"]' \
  -m "assembled by scripts/builder-base.sh: debootstrap $suite + this machine's Rust $version" \
  "$cached" "$from" > /dev/null || die "docker import of $cached failed"
log "docker import: $(since "$t") s"

# The base must do what the Dockerfile asks of it, offline: the toolchain it names is the default,
# the musl target is there (rustup target add has nothing to download), and gcc links.
if ! docker run --rm --network none "$from" sh -c "
    set -e
    rustup show active-toolchain
    rustc -vV | sed -n 1p
    cargo -V
    rustup target add $musl 2>&1
    gcc --version | sed -n 1p
  " > "$work/verify.log" 2>&1; then
  sed 's/^/    /' "$work/verify.log"
  rm -f "$cached"
  die "the assembled $from does not work (cached root removed)"
fi
sed 's/^/    /' "$work/verify.log"
log "$from ready: $(docker image inspect -f '{{.Size}}' "$from" | awk '{ printf "%.0f MiB", $1 / 1048576 }')"
