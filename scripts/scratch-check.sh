#!/usr/bin/env bash
# Build the image as users do, `docker build .` with the Dockerfile unchanged (both stages), and run
# it the way they do (SPEC.md §5), checking what they rely on:
#
#   1. the builder stage builds, FROM the image its FROM line names (scripts/builder-base.sh puts
#      it in the engine: assembled from this machine's Debian mirror and Rust toolchain, since no
#      image can be pulled here), from the build context Docker sends (.dockerignore applied)
#   2. the binary in the image is static (no interpreter, no shared libraries)
#   3. the image holds one file, the binary, run as 65534:65534
#   4. `docker run --read-only` answers GET /health with 200, and writes nothing
#   5. the image's own HEALTHCHECK turns the container healthy (and `zayzoon healthcheck` can fail)
#   6. `docker stop` ends it with exit 0 well inside its timeout, with an idle keep-alive client
#      connected: PID 1 handles SIGTERM and drains
#   7. the sidecar setup of infra/cloudformation.yaml: the image, read-only, with REDIS_URL at a
#      redis-server started with the sidecar's own Command, counts in Redis (every key with a TTL)
#      and answers 429 past RATE_LIMIT_ENDPOINT
#
# Docker engine: the one that answers already (a GitHub runner's), else a private dockerd started
# here (Debian's docker.io, installed if missing) with its own data root, exec root, pid file and
# socket under /tmp, no bridge and no iptables rules, stopped again on exit; the build and the
# containers use --network host. No engine, or no base: the check fails, it does not skip. (It used
# to build the binary on the host and fall back to a chroot without an engine; both tested
# something other than what users build, and `docker build .` covers the host build.)
#
# Run as root on a fresh Debian machine, or as a user of an already running Docker engine that has
# the builder's base (or can pull it: ZAYZOON_BUILDER_BASE=pull, see scripts/builder-base.sh).
set -euo pipefail

cd "$(dirname "$0")/.."

STOP_TIMEOUT_S=30        # docker stop -t: what ECS gives (stopTimeout); SIGKILL after it
STOP_EXPECTED_S=5        # "well under": an idle server must be gone within this
HEALTHY_WITHIN_S=60      # first HEALTHCHECK probe runs after its 10 s interval
LISTEN_WITHIN_S=10

passed=0
failures=()
pass() { passed=$((passed + 1)); printf '  ok    %s\n' "$*"; }
fail() { failures+=("$*"); printf '  FAIL  %s\n' "$*"; }
log() { printf '==> %s\n' "$*"; }
die() { printf 'scratch-check: FAILED: %s\n' "$*" >&2; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $* (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" > /dev/null
}

work="$(mktemp -d /tmp/zayzoon-scratch.XXXXXX)"
dockerd_pid=""
container=""
image=""
redis_pid=""

cleanup() {
  set +e
  if [ -n "$container" ]; then docker rm -f "$container" > /dev/null 2>&1; fi
  if [ -n "$image" ]; then docker rmi -f "$image" > /dev/null 2>&1; fi
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2> /dev/null
    wait "$redis_pid" 2> /dev/null
  fi
  if [ -n "$dockerd_pid" ]; then
    kill -TERM "$dockerd_pid" 2> /dev/null
    for _ in $(seq 1 100); do kill -0 "$dockerd_pid" 2> /dev/null || break; sleep 0.2; done
    kill -KILL "$dockerd_pid" 2> /dev/null
    wait "$dockerd_pid" 2> /dev/null
    # dockerd unmounts its overlays when it stops; anything left would keep rm from finishing.
    grep -o " $work/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- the engine ------------------------------------------------------------------------------------
engine=""
own_dockerd=0
start_dockerd() {
  if ! command -v dockerd > /dev/null; then
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo > /dev/null; then return 1; fi
    apt_install docker.io || return 1
  fi
  [ "$(id -u)" -eq 0 ] || return 1
  local d="$work/docker"
  mkdir -p "$d"
  dockerd --data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/dockerd.pid" \
    -H "unix://$d/docker.sock" --bridge=none --iptables=false --ip-masq=false \
    > "$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST="unix://$d/docker.sock"
  for _ in $(seq 1 150); do
    if docker info > /dev/null 2>&1; then return 0; fi
    kill -0 "$dockerd_pid" 2> /dev/null || break
    sleep 0.2
  done
  echo "dockerd did not start; its last lines:"
  tail -n 5 "$work/dockerd.log" | sed 's/^/    /'
  return 1
}

if command -v docker > /dev/null && docker info > /dev/null 2>&1; then
  engine="running Docker engine $(docker version -f '{{.Server.Version}}')"
elif start_dockerd; then
  own_dockerd=1
  engine="own dockerd $(docker version -f '{{.Server.Version}}') (data root under $work, --bridge=none --iptables=false)"
else
  die "no Docker engine answers and none could be started here (root and Debian's docker.io needed)"
fi
log "engine: $engine"
# Without a bridge, the builder's RUN steps (cargo fetching crates) and the containers need the
# host's network. An engine with its own networks builds with its defaults, as users' do.
build_net=()
if [ "$own_dockerd" = 1 ]; then build_net=(--network host); fi

# ---- 1. the builder's base, then `docker build .` ------------------------------------------------
start="$(now)"
scripts/builder-base.sh || die "the builder stage's base image could not be had (above)"
base_after="$(since "$start")"
from="$(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; exit } }' Dockerfile)"
base_id="$(docker image inspect -f '{{.Id}}' "$from" | cut -c1-19)"

image="zayzoon-scratch-check:$$"
container="zayzoon-scratch-check-$$"
log "docker build ${build_net[*]} -t $image .   (the Dockerfile as it is)"
start="$(now)"
if ! docker build "${build_net[@]}" -t "$image" . > "$work/build.log" 2>&1; then
  tail -n 40 "$work/build.log" | sed 's/^/    | /'
  die "docker build . failed after $(since "$start") s: the command users run first does not work"
fi
build_after="$(since "$start")"
grep -E '^Step [0-9]+/[0-9]+ : (FROM|RUN)|Finished|^Successfully built|^#[0-9]+ \[' "$work/build.log" \
  | sed -E $'s/\x1b\\[[0-9;]*m//g' | cut -c1-160 | sed 's/^/    | /'
log "docker build: ${build_after} s"

# A free loopback port: the image's own 8443 when nothing holds it.
port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }
port=8443
if ! port_free "$port"; then
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if port_free "$port"; then break; fi
  done
fi

# GET a path over plain bash /dev/tcp (scratch has no curl, and neither need the host): prints the
# status code. With keep=1, leaves fd 5 open afterwards as an idle keep-alive connection.
http_status() {
  local path="$1" keep="${2:-0}" line conn=close
  if [ "$keep" = 1 ]; then conn="keep-alive"; fi
  exec 5<> "/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: %s\r\n\r\n' "$path" "$conn" >&5
  IFS= read -r -t 5 line <&5 || line=""
  if [ "$keep" = 1 ]; then
    # Drain the rest of the response so the connection sits idle between requests.
    local h len=0
    while IFS= read -r -t 5 h <&5; do
      h="${h%$'\r'}"
      [ -z "$h" ] && break
      case "${h,,}" in content-length:*) len="${h#*:}"; len="${len// /}" ;; esac
    done
    [ "$len" -gt 0 ] && read -r -t 5 -N "$len" _ <&5
  else
    exec 5>&-
  fi
  line="${line#HTTP/1.1 }"
  printf '%s' "${line%% *}"
}

wait_listening() {
  # $1: command printing the server's log so far
  local start; start="$(now)"
  while ! "$@" 2>&1 | grep -q 'listening on'; do
    if awk -v a="$start" -v b="$EPOCHREALTIME" -v t="$LISTEN_WITHIN_S" 'BEGIN { exit !(b - a > t) }'; then
      return 1
    fi
    sleep 0.1
  done
}

# ---- 7. the Redis sidecar, as the stack runs it ----------------------------------------------------
# redis-server with the arguments of the sidecar's Command in infra/cloudformation.yaml (the stack
# that ships is the stack tested), on a free loopback port instead of 6379.
start_sidecar_redis() {
  command -v redis-server > /dev/null || apt_install redis-server
  local args=() item in_cmd=0
  while IFS= read -r line; do
    if [ "$in_cmd" = 0 ]; then
      case "$line" in *"- Name: redis"*) in_cmd=1 ;; esac
      continue
    fi
    case "$line" in
      *"Command:"*) in_cmd=2; continue ;;
    esac
    [ "$in_cmd" = 2 ] || continue
    case "$line" in
      *"- "*)
        item="${line#*- }"
        item="${item%\"}"; item="${item#\"}"
        args+=("$item") ;;
      *) break ;;
    esac
  done < infra/cloudformation.yaml
  [ "${#args[@]}" -gt 1 ] && [ "${args[0]}" = redis-server ] || die "no redis-server Command in the template's sidecar"
  sidecar_args="$(printf '%q ' "${args[@]:1}")"
  sidecar_args="${sidecar_args% }"
  redis_port=$((20000 + RANDOM % 40000))
  while ! port_free "$redis_port" || [ "$redis_port" = "$port" ]; do redis_port=$((20000 + RANDOM % 40000)); done
  redis-server "${args[@]:1}" --port "$redis_port" --dir "$work" > "$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 50); do
    redis-cli -p "$redis_port" ping 2> /dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  die "redis-server did not start: $(tail -n 3 "$work/redis.log")"
}

# After the server (started with REDIS_URL) printed its first line: 10 GETs of /health pass, the
# 11th is over RATE_LIMIT_ENDPOINT (10/minute), and the counters sit in Redis, each with a TTL.
check_sidecar_counts() {
  local log_cmd=("$@") statuses="" key ttl keys=0 no_ttl=0
  if "${log_cmd[@]}" 2>&1 | head -n 1 | grep -q "store=redis://127.0.0.1:$redis_port"; then
    pass "with REDIS_URL=redis://127.0.0.1:$redis_port the server says store=redis (sidecar: $sidecar_args)"
  else
    fail "the server did not take REDIS_URL: $("${log_cmd[@]}" 2>&1 | head -n 1 | cut -c1-200)"
  fi
  for _ in $(seq 1 11); do statuses+="$(http_status /health) "; done
  if [ "$statuses" = "200 200 200 200 200 200 200 200 200 200 429 " ]; then
    pass "11 GETs of /health through Redis: ten 200s, then 429"
  else
    fail "11 GETs of /health through Redis: $statuses"
  fi
  while IFS= read -r key; do
    [ -n "$key" ] || continue
    keys=$((keys + 1))
    ttl="$(redis-cli -p "$redis_port" ttl "$key")"
    [ "$ttl" -gt 0 ] || no_ttl=$((no_ttl + 1))
  done < <(redis-cli -p "$redis_port" --scan)
  if [ "$keys" -gt 0 ] && [ "$no_ttl" = 0 ]; then
    pass "counters in Redis: $keys keys, every one with a TTL"
  else
    fail "counters in Redis: $keys keys, $no_ttl without a TTL"
  fi
}

# ---- 2-7 in Docker -----------------------------------------------------------------------------------
docker_checks() {
  # 2 and 3. The image's layers, as `docker save` writes them: one file, and that file static.
  docker save -o "$work/image.tar" "$image"
  mkdir -p "$work/image" "$work/binary"
  tar -xf "$work/image.tar" -C "$work/image"
  local layers files=() f listing
  layers="$(sed -E 's/.*"Layers":\[([^]]*)\].*/\1/' "$work/image/manifest.json" | tr ',' '\n' | tr -d '"')"
  for f in $layers; do
    while IFS= read -r entry; do
      case "$entry" in */ | "") ;; *) files+=("$entry") ;; esac
    done < <(tar -tf "$work/image/$f")
  done
  listing="$(for f in $layers; do tar -tvf "$work/image/$f"; done | grep -v '^d' || true)"
  if [ "${#files[@]}" -eq 1 ] && [ "${files[0]}" = zayzoon ]; then
    pass "image holds one file: $listing"
  else
    fail "image holds ${#files[@]} files: ${files[*]}"
  fi
  for f in $layers; do tar -xf "$work/image/$f" -C "$work/binary" zayzoon 2> /dev/null || true; done
  local binary="$work/binary/zayzoon"
  if [ -f "$binary" ]; then
    binary_bytes="$(stat -c %s "$binary")"
    command -v readelf > /dev/null || apt_install binutils
    if readelf -lW "$binary" | grep -q 'program interpreter' || readelf -dW "$binary" | grep -q '(NEEDED)'; then
      fail "binary is static: it needs a loader or shared libraries"
    else
      pass "binary is static: no interpreter, no shared libraries ($binary_bytes bytes, $(readelf -hW "$binary" | sed -nE 's/^ *Machine: *//p'))"
    fi
  else
    fail "no /zayzoon in the image"
  fi
  local user
  user="$(docker image inspect -f '{{.Config.User}}' "$image")"
  if [ "$user" = "65534:65534" ]; then pass "image runs as $user"; else fail "image runs as '$user'"; fi
  image_bytes="$(docker image inspect -f '{{.Size}}' "$image")"
  healthcheck_cmd="$(docker image inspect -f '{{join .Config.Healthcheck.Test " "}}' "$image")"

  # 4. Read-only root, host network (no bridge here), loopback only.
  docker run -d --name "$container" --read-only --network host \
    -e PORT="$port" -e BIND_ADDR=127.0.0.1 "$image" > /dev/null
  if ! wait_listening docker logs "$container"; then
    fail "no 'listening on' line within ${LISTEN_WITHIN_S} s"
    docker logs "$container" 2>&1 | tail -n 5 | sed 's/^/    /'
    return
  fi
  local status
  status="$(http_status /health)"
  if [ "$status" = 200 ]; then pass "docker run --read-only: GET /health -> 200"; else fail "GET /health -> '$status'"; fi
  local diff
  diff="$(docker diff "$container")"
  if [ -z "$diff" ]; then pass "container wrote nothing (docker diff is empty)"; else fail "container wrote: $diff"; fi

  # 5. The image's HEALTHCHECK, as Docker runs it.
  local start health=""
  start="$(now)"
  while :; do
    health="$(docker inspect -f '{{.State.Health.Status}}' "$container")"
    [ "$health" = healthy ] && break
    [ "$health" = unhealthy ] && break
    if awk -v a="$start" -v b="$EPOCHREALTIME" -v t="$HEALTHY_WITHIN_S" 'BEGIN { exit !(b - a > t) }'; then break; fi
    sleep 0.5
  done
  healthy_after="$(since "$start")"
  if [ "$health" = healthy ]; then
    pass "HEALTHCHECK [$healthcheck_cmd]: healthy after ${healthy_after} s"
  else
    fail "HEALTHCHECK: '$health' after ${healthy_after} s"
    docker inspect -f '{{json .State.Health}}' "$container" | sed 's/^/    /'
  fi
  if docker exec "$container" /zayzoon healthcheck "http://127.0.0.1:1/health" > /dev/null 2>&1; then
    fail "zayzoon healthcheck exits 0 when nothing answers"
  else
    pass "zayzoon healthcheck exits non-zero when nothing answers"
  fi

  # 6. docker stop with an idle keep-alive client connected.
  status="$(http_status /status 1)"
  [ "$status" = 200 ] || fail "GET /status (keep-alive) -> '$status'"
  start="$(now)"
  docker stop -t "$STOP_TIMEOUT_S" "$container" > /dev/null
  stop_after="$(since "$start")"
  exec 5>&- 5<&-
  stop_code="$(docker inspect -f '{{.State.ExitCode}}' "$container")"
  if [ "$stop_code" = 0 ] && awk -v s="$stop_after" -v t="$STOP_EXPECTED_S" 'BEGIN { exit !(s < t) }'; then
    pass "docker stop: exit $stop_code after ${stop_after} s (timeout ${STOP_TIMEOUT_S} s)"
  else
    fail "docker stop: exit $stop_code after ${stop_after} s (want 0 within ${STOP_EXPECTED_S} s)"
  fi
  log "container log"
  docker logs "$container" 2>&1 | tail -n 8 | sed 's/^/    /'

  # 7. The same image beside a Redis started as the stack's sidecar.
  start_sidecar_redis
  docker rm -f "$container" > /dev/null
  docker run -d --name "$container" --read-only --network host -e PORT="$port" \
    -e BIND_ADDR=127.0.0.1 -e REDIS_URL="redis://127.0.0.1:$redis_port" "$image" > /dev/null
  if wait_listening docker logs "$container"; then
    check_sidecar_counts docker logs "$container"
  else
    fail "with REDIS_URL: no 'listening on' line within ${LISTEN_WITHIN_S} s"
    docker logs "$container" 2>&1 | tail -n 5 | sed 's/^/    /'
  fi
  docker rm -f "$container" > /dev/null
}

image_bytes=""
binary_bytes=""
healthcheck_cmd=""
healthy_after=""
stop_after=""
stop_code=""
log "port $port"
docker_checks

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
echo
echo "scratch-check summary ($engine)"
echo "  base        $from ($base_id), ready after $base_after s"
echo "  build       docker build . in $build_after s"
[ -n "$binary_bytes" ] && echo "  binary      $binary_bytes bytes ($(mib "$binary_bytes"))"
[ -n "$image_bytes" ] && echo "  image       $image_bytes bytes ($(mib "$image_bytes")), one layer, one file"
[ -n "$healthy_after" ] && echo "  healthy     after $healthy_after s"
echo "  stop        exit ${stop_code:-?} after ${stop_after:-?} s"
echo "scratch-check: $passed passed, ${#failures[@]} failed"
[ "${#failures[@]}" -eq 0 ]
