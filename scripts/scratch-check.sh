#!/usr/bin/env bash
# Run the shipped image the way its users do (SPEC.md §5) and check what they rely on:
#
#   1. the binary is static (no interpreter, no shared libraries)
#   2. the image holds one file, the binary, run as 65534:65534
#   3. `docker run --read-only` answers GET /health with 200, and writes nothing
#   4. the image's own HEALTHCHECK turns the container healthy (and `zayzoon healthcheck` can fail)
#   5. `docker stop` ends it with exit 0 well inside its timeout, with an idle keep-alive client
#      connected: PID 1 handles SIGTERM and drains
#   6. the sidecar setup of infra/cloudformation.yaml: the image, read-only, with REDIS_URL at a
#      redis-server started with the sidecar's own Command, counts in Redis (every key with a TTL)
#      and answers 429 past RATE_LIMIT_ENDPOINT
#
# The Dockerfile's Rust builder stage can't run here (no image can be pulled), so the binary is
# built on the host with the builder's command, and the image is built from the Dockerfile's own
# final stage, taken from its text with `COPY --from=...` pointed at that binary: the stage that
# ships is the stage under test.
#
# Docker engine: the one that answers already (a GitHub runner's), else a private dockerd started
# here (Debian's docker.io, installed if missing) with its own data root, exec root, pid file and
# socket under /tmp, no bridge and no iptables rules, stopped again on exit; containers use
# --network host. If no engine can start, the same checks run in an empty root instead
# (unshare --pid --mount --fork around chroot --userspec=65534:65534), and the output says so.
# ZAYZOON_SCRATCH_CHECK=chroot forces that fallback.
#
# Run as root on a fresh Debian machine, or as a user of an already running Docker engine.
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
die() { printf 'scratch-check: %s\n' "$*" >&2; exit 1; }
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

# Run a command with its output kept aside, shown only if it fails.
quietly() {
  if ! "$@" > "$work/quietly.log" 2>&1; then
    sed 's/^/    /' "$work/quietly.log"
    return 1
  fi
}

work="$(mktemp -d /tmp/zayzoon-scratch.XXXXXX)"
dockerd_pid=""
container=""
image=""
ctx_container=""
ctx_image=""
chroot_pid=""
redis_pid=""

cleanup() {
  set +e
  if [ -n "$container" ]; then docker rm -f "$container" > /dev/null 2>&1; fi
  if [ -n "$image" ]; then docker rmi -f "$image" > /dev/null 2>&1; fi
  if [ -n "$ctx_container" ]; then docker rm -f "$ctx_container" > /dev/null 2>&1; fi
  if [ -n "$ctx_image" ]; then docker rmi -f "$ctx_image" > /dev/null 2>&1; fi
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2> /dev/null
    wait "$redis_pid" 2> /dev/null
  fi
  if [ -n "$chroot_pid" ]; then kill_ns "$chroot_pid"; fi
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

if [ "${ZAYZOON_SCRATCH_CHECK:-}" = chroot ]; then
  engine=""
elif command -v docker > /dev/null && docker info > /dev/null 2>&1; then
  engine="running Docker engine $(docker version -f '{{.Server.Version}}')"
elif start_dockerd; then
  engine="own dockerd $(docker version -f '{{.Server.Version}}') (data root under $work, --bridge=none --iptables=false)"
fi
if [ -n "$engine" ]; then log "engine: $engine"; fi

# ---- 1. the binary, built as the Dockerfile's builder stage builds it -----------------------------
case "$(uname -m)" in
  x86_64) triple=x86_64-unknown-linux-musl ;;
  aarch64 | arm64) triple=aarch64-unknown-linux-musl ;;
  *) die "no musl target for $(uname -m)" ;;
esac
if ! rustup target list --installed | grep -qx "$triple"; then
  log "rustup target add $triple"
  rustup target add "$triple"
fi
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/')"

# With an engine, build from the very files `docker build .` would send (.dockerignore applied by
# Docker itself), so a file the builder stage would be missing fails here too, not first in the
# deploy workflow. The binary still lands in the usual target directory.
src="$PWD"
if [ -n "$engine" ]; then
  ctx_image="zayzoon-scratch-context:$$"
  printf 'FROM scratch\nCOPY . /context\n' | quietly docker build -q -t "$ctx_image" -f - .
  ctx_container="$(docker create "$ctx_image" /none)"
  docker cp "$ctx_container:/context" "$work/build-context"
  docker rm "$ctx_container" > /dev/null && ctx_container=""
  docker rmi "$ctx_image" > /dev/null && ctx_image=""
  src="$work/build-context"
  log "build context after .dockerignore: $(cd "$src" && find . -type f | wc -l) files in $(cd "$src" && echo *)"
fi
log "cargo build --release --locked --target $triple   (in ${src/#"$PWD"/the work tree})"
(cd "$src" && CARGO_TARGET_DIR="$target_dir" cargo build --release --locked --target "$triple")
binary="$target_dir/$triple/release/zayzoon"
[ -x "$binary" ] || die "no binary at $binary"
binary_bytes="$(stat -c %s "$binary")"

log "checks"
command -v readelf > /dev/null || apt_install binutils
if readelf -lW "$binary" | grep -q 'program interpreter' || readelf -dW "$binary" | grep -q '(NEEDED)'; then
  fail "binary is static: it needs a loader or shared libraries"
else
  pass "binary is static: no interpreter, no shared libraries ($binary_bytes bytes)"
fi

# ---- the Dockerfile's final stage, around the host-built binary ------------------------------------
final_stage() {
  # From the last FROM to the end, with the one COPY --from=<stage> taking the binary from the
  # build context instead. Anything else that would add a file (ADD, other COPY) is left as it is,
  # and the one-file check below catches it.
  awk 'toupper($1) == "FROM" { n = NR } { line[NR] = $0 } END { for (i = n; i <= NR; i++) print line[i] }' Dockerfile \
    | sed -E 's#^([[:space:]]*COPY[[:space:]]+)--from=[^[:space:]]+[[:space:]]+[^[:space:]]+([[:space:]]+[^[:space:]]+[[:space:]]*)$#\1zayzoon\2#I'
}
mkdir -p "$work/context"
final_stage > "$work/context/Dockerfile"
cp "$binary" "$work/context/zayzoon"
grep -qiE '^[[:space:]]*FROM[[:space:]]+scratch([[:space:]]|$)' "$work/context/Dockerfile" \
  || die "the Dockerfile's final stage is not FROM scratch"
if grep -qiE -- '--from=' "$work/context/Dockerfile"; then
  die "could not point the final stage's COPY --from at the host-built binary"
fi
healthcheck_cmd="$(sed -nE 's/^[[:space:]]*HEALTHCHECK.*CMD[[:space:]]+\[(.*)\][[:space:]]*$/\1/Ip' "$work/context/Dockerfile" | tr -d '",')"
[ -n "$healthcheck_cmd" ] || die "the final stage has no exec-form HEALTHCHECK CMD"

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

# ---- 6. the Redis sidecar, as the stack runs it ----------------------------------------------------
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

# ---- 2-5 in Docker -----------------------------------------------------------------------------------
docker_checks() {
  image="zayzoon-scratch-check:$$"
  container="zayzoon-scratch-check-$$"
  log "docker build (the Dockerfile's final stage):"
  sed 's/^/    | /' "$work/context/Dockerfile"
  quietly docker build -q -t "$image" "$work/context"

  # 2. One file in the image: every layer's entries, directories aside.
  docker save -o "$work/image.tar" "$image"
  mkdir -p "$work/image"
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
  local user
  user="$(docker image inspect -f '{{.Config.User}}' "$image")"
  if [ "$user" = "65534:65534" ]; then pass "image runs as $user"; else fail "image runs as '$user'"; fi
  image_bytes="$(docker image inspect -f '{{.Size}}' "$image")"

  # 3. Read-only root, host network (no bridge here), loopback only.
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

  # 4. The image's HEALTHCHECK, as Docker runs it.
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

  # 5. docker stop with an idle keep-alive client connected.
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

  # 6. The same image beside a Redis started as the stack's sidecar.
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

# The PID 1 of the namespace that `unshare --fork` ($chroot_pid) made. Kill that one, not unshare:
# chroot --userspec changes credentials, which clears --kill-child's parent-death signal.
ns_init() { local c; c="$(cat "/proc/$1/task/$1/children" 2> /dev/null)"; printf '%s' "${c%% *}"; }
kill_ns() {
  local init; init="$(ns_init "$1")"
  if [ -n "$init" ]; then kill -KILL "$init" 2> /dev/null; fi
  kill -KILL "$1" 2> /dev/null
  wait "$1" 2> /dev/null || true
}

# ---- 2-5 in an empty root, when no engine runs --------------------------------------------------------
chroot_checks() {
  [ "$(id -u)" -eq 0 ] || die "no Docker engine, and the empty-root fallback needs root"
  command -v unshare > /dev/null || apt_install util-linux
  local root="$work/root" out="$work/server.log" chroot_bin
  chroot_bin="$(command -v chroot)"
  mkdir -p "$root"
  install -m 0755 "$binary" "$root/zayzoon"
  local n; n="$(find "$root" -mindepth 1 | wc -l)"
  if [ "$n" -eq 1 ]; then pass "root holds one file: $(ls -ln "$root/zayzoon")"; else fail "root holds $n entries"; fi

  # New PID and mount namespaces: the root is bind-mounted read-only, and zayzoon becomes PID 1 of
  # its namespace (exec), with no default signal dispositions, exactly as in a container.
  # shellcheck disable=SC2016 # $1..$3 belong to the inner sh
  unshare --pid --mount --fork --kill-child sh -c '
      mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" &&
      exec env -i PORT="$2" BIND_ADDR=127.0.0.1 "$3" --userspec=65534:65534 "$1" /zayzoon serve
    ' sh "$root" "$port" "$chroot_bin" > "$out" 2>&1 &
  chroot_pid=$!
  if ! wait_listening cat "$out"; then
    fail "no 'listening on' line within ${LISTEN_WITHIN_S} s"
    tail -n 5 "$out" | sed 's/^/    /'
    return
  fi
  local status
  status="$(http_status /health)"
  if [ "$status" = 200 ]; then pass "read-only empty root: GET /health -> 200"; else fail "GET /health -> '$status'"; fi

  # The Dockerfile's HEALTHCHECK command, run in the same empty root as the same user.
  # shellcheck disable=SC2086 # the command is a word list on purpose
  if env -i PORT="$port" "$chroot_bin" --userspec=65534:65534 "$root" $healthcheck_cmd > /dev/null 2>&1; then
    pass "HEALTHCHECK [$healthcheck_cmd] exits 0"
  else
    fail "HEALTHCHECK [$healthcheck_cmd] fails"
  fi
  if env -i "$chroot_bin" --userspec=65534:65534 "$root" /zayzoon healthcheck http://127.0.0.1:1/health > /dev/null 2>&1; then
    fail "zayzoon healthcheck exits 0 when nothing answers"
  else
    pass "zayzoon healthcheck exits non-zero when nothing answers"
  fi

  status="$(http_status /status 1)"
  [ "$status" = 200 ] || fail "GET /status (keep-alive) -> '$status'"
  local init start
  init="$(ns_init "$chroot_pid")"
  start="$(now)"
  kill -TERM "$init"
  for _ in $(seq 1 $((STOP_TIMEOUT_S * 10))); do kill -0 "$init" 2> /dev/null || break; sleep 0.1; done
  stop_after="$(since "$start")"
  exec 5>&- 5<&-
  if kill -0 "$init" 2> /dev/null; then
    kill -KILL "$init"
    stop_code="137 (SIGKILL after ${STOP_TIMEOUT_S} s)"
  else
    stop_code=0
    wait "$chroot_pid" || stop_code=$?
  fi
  chroot_pid=""
  if [ "$stop_code" = 0 ] && awk -v s="$stop_after" -v t="$STOP_EXPECTED_S" 'BEGIN { exit !(s < t) }'; then
    pass "SIGTERM to PID 1: exit $stop_code after ${stop_after} s (timeout ${STOP_TIMEOUT_S} s)"
  else
    fail "SIGTERM to PID 1: exit $stop_code after ${stop_after} s (want 0 within ${STOP_EXPECTED_S} s)"
  fi
  log "server log"
  tail -n 8 "$out" | sed 's/^/    /'

  # 6. The same binary beside a Redis started as the stack's sidecar.
  start_sidecar_redis
  out="$work/server-redis.log"
  # shellcheck disable=SC2016 # $1..$4 belong to the inner sh
  unshare --pid --mount --fork --kill-child sh -c '
      mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" &&
      exec env -i PORT="$2" BIND_ADDR=127.0.0.1 REDIS_URL="$4" "$3" --userspec=65534:65534 "$1" /zayzoon serve
    ' sh "$root" "$port" "$chroot_bin" "redis://127.0.0.1:$redis_port" > "$out" 2>&1 &
  chroot_pid=$!
  if wait_listening cat "$out"; then
    check_sidecar_counts cat "$out"
  else
    fail "with REDIS_URL: no 'listening on' line within ${LISTEN_WITHIN_S} s"
    tail -n 5 "$out" | sed 's/^/    /'
  fi
  kill_ns "$chroot_pid"
  chroot_pid=""
}

image_bytes=""
healthy_after=""
stop_after=""
stop_code=""
if [ -n "$engine" ]; then
  log "port $port"
  docker_checks
  mode="docker"
else
  if [ "${ZAYZOON_SCRATCH_CHECK:-}" = chroot ]; then
    echo "!!! FALLBACK forced by ZAYZOON_SCRATCH_CHECK=chroot: running the checks in an empty root"
  else
    echo "!!! FALLBACK: no Docker engine could be used here; running the same checks in an empty root"
  fi
  echo "!!! (unshare --pid --mount --fork, chroot --userspec=65534:65534, read-only bind mount)."
  echo "!!! The Dockerfile's HEALTHCHECK command is run by hand, not by an engine, and the binary"
  echo "!!! was built from the work tree, not from Docker's build context (.dockerignore not applied)."
  chroot_checks
  mode="empty-root fallback (no Docker engine)"
fi

echo
echo "scratch-check summary ($mode)"
echo "  binary      $binary_bytes bytes ($(awk -v b="$binary_bytes" 'BEGIN { printf "%.2f MiB", b / 1048576 }')), $triple"
[ -n "$image_bytes" ] && echo "  image       $image_bytes bytes ($(awk -v b="$image_bytes" 'BEGIN { printf "%.2f MiB", b / 1048576 }')), one layer, one file"
[ -n "$healthy_after" ] && echo "  healthy     after $healthy_after s"
echo "  stop        exit ${stop_code:-?} after ${stop_after:-?} s"
echo "scratch-check: $passed passed, ${#failures[@]} failed"
[ "${#failures[@]}" -eq 0 ]
