#!/usr/bin/env bash
# The generated-client contract check: what a caller gets from the OpenAPI document the server
# serves.
#
#   1. starts `vpp-broker dev` (in-process Apple simulator, demo space) on a free port with a
#      database of its own, dropped on exit;
#   2. downloads the served document (/openapi.json) and lints it: `redocly lint`
#      (recommended-strict, redocly.yaml) and `spectral lint` (spectral:oas, .spectral.yaml);
#      any error or warning fails;
#   3. generates a Python client (openapi-python-client) and TypeScript types
#      (openapi-typescript, used through openapi-fetch), type-checks scenario.py
#      (`mypy --strict`, no Any) and scenario.ts (`tsc --strict`, tsconfig.json);
#   4. runs both scenarios against the server: spaces, accounts, policies with If-Match (and
#      412), allocations with Idempotency-Key, typed 403/409 problems, paging, revocations, the
#      read side (the asset inventory and detail, the device and user, the activity log), and
#      keeping the ledger true to Apple: a manual sync polled to its end, the drift report, an
#      Adopt plan applied (the previous MDM's licenses the demo location starts with), a
#      notification raised, acknowledged and cleared, and the (empty) dead letters;
#   5. validates every event of the feed against the document's `webhooks` schema of its type
#      (payloads.py, jsonschema draft 2020-12).
#
# The pinned tools live outside the clone and are installed on first use, again only when the
# pinned lists (requirements.txt, package.json, package-lock.json) change:
#   VPP_CONTRACT_TOOLS   tools cache (default /var/tmp/vpp-broker-contract-tools): venv/, node/
#   VPP_CONTRACT_KEEP    a directory to keep the work files in (document, lint reports,
#                        generated clients, server log); default: a temp dir deleted on exit
#   VPP_CONTRACT_BIN     the vpp-broker binary to test, built with `--features dev` (default:
#                        `cargo build --features dev --bin vpp-broker`,
#                        then ${CARGO_TARGET_DIR:-target}/debug/vpp-broker)
#   DATABASE_URL         as for `vpp-broker dev`: the server to create the scratch database on
#                        (default: 127.0.0.1:5432 as postgres, else dev's private cluster)
#
# Usage: scripts/contract/run.sh        (exit status 0 = everything passed)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

TOOLS="${VPP_CONTRACT_TOOLS:-/var/tmp/vpp-broker-contract-tools}"
VENV="$TOOLS/venv"
NODE_PREFIX="$TOOLS/node"
NODE_BIN="$NODE_PREFIX/node_modules/.bin"
START=$(date +%s)

declare -a SUMMARY=()
FAILED=0
step() { printf '\n== %s (%ss)\n' "$*" "$(($(date +%s) - START))"; }
record() { # record <ok|FAIL> <text>
    SUMMARY+=("$(printf '%-4s %s' "$1" "$2")")
    if [[ "$1" != ok ]]; then FAILED=1; fi
}
die() {
    record FAIL "$*"
    exit 1
}

if [[ -n "${VPP_CONTRACT_KEEP:-}" ]]; then
    WORK="$VPP_CONTRACT_KEEP"
    # Only a directory this script made (it carries the marker) is emptied.
    if [[ -e "$WORK" && -n "$(ls -A "$WORK" 2>/dev/null)" && ! -f "$WORK/.vpp-contract" ]]; then
        echo "VPP_CONTRACT_KEEP=$WORK exists and was not made by this script; not touching it" >&2
        exit 2
    fi
    rm -rf "$WORK"
    mkdir -p "$WORK"
    touch "$WORK/.vpp-contract"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/vpp-contract.XXXXXX")"
fi

SERVER_PID=""
# Unique across processes, runs and machines sharing a server: dev accepts an existing database,
# and the scenarios assume a new one.
DB_NAME="vpp_contract_$(date +%s)_$$_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
DB_ADMIN_URL=""
cleanup() {
    local status=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n "$DB_ADMIN_URL" ]]; then
        psql "$DB_ADMIN_URL" -qAtX -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 ||
            echo "warning: could not drop database $DB_NAME" >&2
    fi
    if [[ -z "${VPP_CONTRACT_KEEP:-}" ]]; then
        rm -rf "$WORK"
    fi
    printf '\n== contract summary (%ss)\n' "$(($(date +%s) - START))"
    for line in "${SUMMARY[@]}"; do echo "$line"; done
    if [[ $FAILED -ne 0 && $status -eq 0 ]]; then status=1; fi
    if [[ $status -eq 0 ]]; then echo "contract: all passed"; else echo "contract: FAILED"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
step "tools: $TOOLS"
mkdir -p "$TOOLS"
exec 9>"$TOOLS/.lock"
flock 9 # one installer at a time; released when this script exits

ensure_python() {
    local want stamp="$VENV/.contract-stamp"
    want=$({ python3 --version; cat "$HERE/requirements.txt"; } | sha256sum | cut -d' ' -f1)
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    echo "installing the Python tools into $VENV"
    # Every command checked: `set -e` does not apply inside a function called from `if`, and a
    # stamp written after a failed install would make later runs trust a broken venv.
    rm -rf "$VENV" || return 1
    python3 -m venv "$VENV" || return 1
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        -r "$HERE/requirements.txt" || return 1
    "$VENV/bin/pip" check --disable-pip-version-check || return 1
    echo "$want" >"$stamp"
}
ensure_node() {
    local want stamp="$NODE_PREFIX/.contract-stamp"
    want=$({ node --version; cat "$HERE/package.json" "$HERE/package-lock.json"; } |
        sha256sum | cut -d' ' -f1)
    if [[ -d "$NODE_PREFIX/node_modules" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    echo "installing the Node tools into $NODE_PREFIX"
    rm -rf "$NODE_PREFIX" || return 1
    mkdir -p "$NODE_PREFIX" || return 1
    cp "$HERE/package.json" "$HERE/package-lock.json" "$NODE_PREFIX/" || return 1
    npm ci --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error || return 1
    echo "$want" >"$stamp"
}
if ensure_python; then record ok "python tools (requirements.txt)"; else die "python tools install"; fi
if ensure_node; then record ok "node tools (package-lock.json)"; else die "node tools install"; fi
flock -u 9

# Redocly CLI: no telemetry or update checks (only the package registries are reachable).
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
export NO_UPDATE_NOTIFIER=1

# ---------------------------------------------------------------------------------------------
step "server"
if [[ -n "${VPP_CONTRACT_BIN:-}" ]]; then
    BIN="$VPP_CONTRACT_BIN"
else
    # A no-op when the tests already built it; never a stale binary. `vpp-broker dev` exists
    # only with the `dev` cargo feature.
    BIN="${CARGO_TARGET_DIR:-target}/debug/vpp-broker"
    cargo build --quiet --locked --features dev --bin vpp-broker
fi
[[ -x "$BIN" ]] || die "no binary at $BIN"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
# Notifications are evaluated every second (30 s by default) so the scenario sees them raised
# and cleared within its run.
declare -a DEV_ENV=(VPP_LISTEN="127.0.0.1:$PORT" VPP_DEV_DATABASE="$DB_NAME" VPP_LOG="${VPP_LOG:-info}"
    VPP_NOTIFICATION_SECS=1)
with_database() { # with_database <url> <name>: the URL with its database replaced
    python3 - "$1" "$2" <<'EOF'
import sys
from urllib.parse import urlsplit, urlunsplit
u = urlsplit(sys.argv[1])
print(urlunsplit((u.scheme, u.netloc, "/" + sys.argv[2], u.query, u.fragment)))
EOF
}
if [[ -n "${DATABASE_URL:-}" ]]; then
    # dev uses DATABASE_URL's database as it is: give it a scratch one on that server instead.
    DB_ADMIN_URL=$(with_database "$DATABASE_URL" postgres)
    psql "$DB_ADMIN_URL" -qAtX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB_NAME\"" >/dev/null ||
        { DB_ADMIN_URL=""; die "cannot create database $DB_NAME on DATABASE_URL's server"; }
    DEV_ENV+=(DATABASE_URL="$(with_database "$DATABASE_URL" "$DB_NAME")")
elif pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    DB_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
else
    # dev starts (or reuses) its private cluster.
    DB_ADMIN_URL="postgres://postgres@127.0.0.1:${VPP_PG_PORT:-54329}/postgres"
fi

# The files exist before the readiness loop reads them (the background job's redirections may
# not have run yet when the loop starts).
: >"$WORK/server.out"
: >"$WORK/server.log"
env "${DEV_ENV[@]}" "$BIN" dev >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
TOKEN=""
for _ in $(seq 1 240); do # 60 s
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        tail -n 30 "$WORK/server.log" >&2 || true
        die "vpp-broker dev exited before it was ready"
    fi
    TOKEN=$(sed -n 's/^ *export VPP_TOKEN=//p' "$WORK/server.out" | head -n 1)
    [[ -n "$TOKEN" ]] && break
    sleep 0.25
done
if [[ -z "$TOKEN" ]]; then
    tail -n 30 "$WORK/server.log" >&2 || true
    die "vpp-broker dev was not ready within 60 s"
fi
record ok "vpp-broker dev on $BASE (database $DB_NAME)"

# ---------------------------------------------------------------------------------------------
step "served document"
DOC="$WORK/openapi.json"
curl -fsS --max-time 10 "$BASE/openapi.json" -o "$DOC" || die "GET /openapi.json"
record ok "GET /openapi.json ($(wc -c <"$DOC") bytes)"

# lint_summary <tool> <report.json>: prints the problems and their counts by rule; fails on any.
lint_summary() {
    python3 - "$1" "$2" <<'EOF'
import collections, json, sys
tool, path = sys.argv[1], sys.argv[2]
with open(path) as f:
    text = f.read()
problems = []
if tool == "redocly":
    for p in json.loads(text).get("problems", []):
        loc = p.get("location") or [{}]
        problems.append((p.get("ruleId", "?"), p.get("severity", "?"),
                         loc[0].get("pointer", ""), p.get("message", "")))
else:
    names = {0: "error", 1: "warn", 2: "info", 3: "hint"}
    if not text.strip():
        print("  spectral wrote an empty report")
        sys.exit(1)
    for p in json.loads(text):
        ptr = "#/" + "/".join(str(x).replace("~", "~0").replace("/", "~1") for x in p.get("path", []))
        problems.append((p.get("code", "?"), names.get(p.get("severity"), "?"), ptr, p.get("message", "")))
for rule, sev, ptr, msg in problems:
    print(f"  {sev:5} {rule}: {ptr}: {msg}")
counts = collections.Counter((r, s) for r, s, _, _ in problems)
for (rule, sev), n in sorted(counts.items()):
    print(f"  {n:4}  {sev:5} {rule}")
print(f"  {tool}: {len(problems)} problems")
sys.exit(1 if problems else 0)
EOF
}

step "redocly lint (recommended-strict)"
"$NODE_BIN/redocly" lint "$DOC" --config "$HERE/redocly.yaml" --format=json \
    >"$WORK/redocly.json" 2>"$WORK/redocly.err" || true
if [[ -s "$WORK/redocly.json" ]] && lint_summary redocly "$WORK/redocly.json"; then
    record ok "redocly lint: no errors, no warnings"
else
    [[ -s "$WORK/redocly.json" ]] || cat "$WORK/redocly.err" >&2
    record FAIL "redocly lint (recommended-strict)"
fi

step "spectral lint (spectral:oas)"
"$NODE_BIN/spectral" lint "$DOC" --ruleset "$HERE/.spectral.yaml" --fail-severity=warn \
    --format=json --output="$WORK/spectral.json" --quiet 2>"$WORK/spectral.err" || true
if [[ -s "$WORK/spectral.json" ]] && lint_summary spectral "$WORK/spectral.json"; then
    record ok "spectral lint: no errors, no warnings"
else
    [[ -s "$WORK/spectral.json" ]] || cat "$WORK/spectral.err" >&2
    record FAIL "spectral lint (spectral:oas)"
fi

# ---------------------------------------------------------------------------------------------
step "python client (openapi-python-client)"
PY_OUT="$WORK/py"
mkdir -p "$PY_OUT"
PY_OK=1
# The generator warns about what it could not generate: a warning is a defect of the document.
if PATH="$VENV/bin:$PATH" "$VENV/bin/openapi-python-client" generate --path "$DOC" \
    --config "$HERE/openapi-python-client.yaml" --meta none \
    --output-path "$PY_OUT/vpp_broker_client" >"$WORK/pygen.log" 2>&1; then
    if grep -qiE 'warning|could not|unable|error' "$WORK/pygen.log"; then
        cat "$WORK/pygen.log"
        record FAIL "openapi-python-client generated with warnings"
    else
        record ok "openapi-python-client generate"
    fi
else
    cat "$WORK/pygen.log"
    record FAIL "openapi-python-client generate"
    PY_OK=0
fi

# No Any, no cast, no type: ignore, no raw HTTP: the scenarios use the generated code only.
static_rules() {
    local bad=0
    # Code lines only (comments and docstring prose may name what is forbidden). Python: only
    # `httpx.Timeout` may be imported (the generated client takes one); nothing reaches the
    # generated client's httpx client. TypeScript: no `any`, `as` or `<T>` assertions, non-null
    # assertions, raw fetch or reading a response body by hand.
    if grep -nP '^(?!\s*#).*(\bAny\b|\bcast\(|type: *ignore|^\s*import (httpx|requests|urllib)|from (requests|urllib)|from httpx import (?!Timeout$)|httpx_client)' \
        "$HERE/scenario.py"; then bad=1; fi
    if grep -nP '^(?!\s*(//|\*|/\*)).*(\bany\b|\bas (?!const\b)[A-Za-z{[(]|as unknown|@ts-(ignore|expect-error|nocheck)|\bfetch\(|\.json\(\)|\.text\(\)|[\w)\]]!(?!=)|<[A-Z]\w*(\[[^\]]*\])*>\s*[\w(])' \
        "$HERE/scenario.ts"; then bad=1; fi
    return $bad
}
if static_rules; then
    record ok "scenarios: no Any, casts, ignores or raw HTTP"
else
    record FAIL "scenarios: Any, casts, ignores or raw HTTP (lines above)"
fi

if [[ $PY_OK -eq 1 ]]; then
    step "mypy --strict scenario.py"
    cp "$HERE/scenario.py" "$HERE/payloads.py" "$PY_OUT/"
    if (cd "$PY_OUT" && timeout 600 "$VENV/bin/mypy" --config-file "$HERE/mypy.ini" \
        --cache-dir "$WORK/mypy-cache" scenario.py payloads.py); then
        record ok "mypy --strict (scenario.py, payloads.py and the generated client)"
        step "python scenario"
        if (cd "$PY_OUT" && VPP_BASE_URL="$BASE" VPP_TOKEN="$TOKEN" timeout 300 "$VENV/bin/python" scenario.py); then
            record ok "python scenario"
        else
            record FAIL "python scenario"
        fi
    else
        record FAIL "mypy --strict"
        record FAIL "python scenario (not run: mypy failed)"
    fi
fi

# ---------------------------------------------------------------------------------------------
step "typescript types (openapi-typescript) and openapi-fetch"
TS_OUT="$WORK/ts"
mkdir -p "$TS_OUT"
cp "$HERE/scenario.ts" "$HERE/tsconfig.json" "$HERE/package.json" "$TS_OUT/"
ln -s "$NODE_PREFIX/node_modules" "$TS_OUT/node_modules"
if "$NODE_BIN/openapi-typescript" "$DOC" -o "$TS_OUT/schema.d.ts" >"$WORK/tsgen.log" 2>&1; then
    if grep -qiE 'warn|error' "$WORK/tsgen.log"; then
        cat "$WORK/tsgen.log"
        record FAIL "openapi-typescript generated with warnings"
    else
        record ok "openapi-typescript generate"
    fi
    step "tsc --strict scenario.ts"
    # One tsc run type-checks (strict, tsconfig.json) and emits only when there is no error.
    if (cd "$TS_OUT" && timeout 600 "$NODE_BIN/tsc" -p tsconfig.json --outDir "$TS_OUT/out"); then
        record ok "tsc --strict"
        step "typescript scenario"
        if (cd "$TS_OUT" && VPP_BASE_URL="$BASE" VPP_TOKEN="$TOKEN" timeout 300 node out/scenario.js); then
            record ok "typescript scenario"
        else
            record FAIL "typescript scenario"
        fi
    else
        record FAIL "tsc --strict"
        record FAIL "typescript scenario (not run: tsc failed)"
    fi
else
    cat "$WORK/tsgen.log"
    record FAIL "openapi-typescript generate"
fi

# ---------------------------------------------------------------------------------------------
# Last, once both scenarios made their events: every event of the feed against the document's
# `webhooks` schema of its type (jsonschema, draft 2020-12).
if [[ $PY_OK -eq 1 ]]; then
    step "webhook payloads against the document"
    if (cd "$PY_OUT" && VPP_BASE_URL="$BASE" VPP_TOKEN="$TOKEN" VPP_OPENAPI="$DOC" \
        timeout 120 "$VENV/bin/python" payloads.py); then
        record ok "webhook payloads: every feed event matches its webhooks schema"
    else
        record FAIL "webhook payloads differ from the document (above)"
    fi
fi

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    record FAIL "the server died during the run"
    tail -n 30 "$WORK/server.log" >&2 || true
fi
