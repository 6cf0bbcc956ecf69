#!/usr/bin/env bash
# Runs the scim2-tester compliance checks (PyPI `scim2-cli`, `scim2-tester`) against a fresh
# `lk server --dev` on 127.0.0.1, and fails unless every check reports SUCCESS.
#
# Usage: tests/scim/run.sh    (from the repository root; builds `lk` in debug mode)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/scim-venv"
work="$(mktemp -d)"
server_pid=""

cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ ! -x "$venv/bin/scim2" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet scim2-cli scim2-tester
fi

(cd "$root" && CARGO_INCREMENTAL=0 cargo build --quiet -p latchkey-cli --bin lk)
lk="$target/debug/lk"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$lk" server --dev --data-dir "$work/data" --listen "127.0.0.1:$port" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!

for _ in $(seq 1 100); do
    if grep -q '^export LATCHKEY_TOKEN=' "$work/server.out" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "lk server exited early; its log:" >&2
        cat "$work/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
export LATCHKEY_ADDR="http://127.0.0.1:$port"
LATCHKEY_TOKEN="$(sed -n 's/^export LATCHKEY_TOKEN=//p' "$work/server.out")"
export LATCHKEY_TOKEN
if [ -z "$LATCHKEY_TOKEN" ]; then
    echo "lk server printed no root token; its log:" >&2
    cat "$work/server.log" >&2
    exit 1
fi

scim_token="$("$lk" scim token create 2>/dev/null)"

# The tester prints one line per check: its status, then its title and reason.
set +e
"$venv/bin/scim2" --url "$LATCHKEY_ADDR/scim/v2" -h "Authorization: Bearer $scim_token" test \
    >"$work/report.txt" 2>&1
tester_status=$?
set -e
cat "$work/report.txt"

# Each check is a status line followed by an indented reason line; every check must
# report SUCCESS.
failed="$(grep -E '^(COMPLIANT|ACCEPTABLE|DEVIATION|SKIPPED|ERROR|CRITICAL) ' -A1 "$work/report.txt" || true)"
successes="$(grep -cE '^SUCCESS ' "$work/report.txt" || true)"
skipped="$(grep -cE '^SKIPPED ' "$work/report.txt" || true)"
others="$(grep -cE '^(COMPLIANT|ACCEPTABLE|DEVIATION|ERROR|CRITICAL) ' "$work/report.txt" || true)"
echo "scim2-tester: $successes SUCCESS, $skipped SKIPPED, $others other (tester exit status $tester_status)"
if [ -n "$failed" ] || [ "$successes" -eq 0 ] || [ "$tester_status" -ne 0 ]; then
    echo "unexpected results:" >&2
    echo "$failed" >&2
    exit 1
fi
