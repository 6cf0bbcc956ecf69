#!/usr/bin/env bash
# Drives the approvals page in a real headless Chromium against a fresh `lk server --dev` on
# 127.0.0.1. An approver signs in with a token and approves a request with a comment. The
# requester finds no way to approve his own request, and a forged approval is refused. Then
# the CLI checks the outcome. Screenshots go to target/approvals/.
#
# Needs Debian `chromium` (/usr/lib/chromium/chromium) and Node.js; installs npm
# `playwright-core` from tests/approvals/package-lock.json on first use.
#
# Usage: tests/approvals/run.sh    (from anywhere; builds `lk` in debug mode)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
shots="$target/approvals"
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

fail() {
    echo "approvals page test failed: $*" >&2
    if [ -f "$work/server.log" ]; then
        echo "server log:" >&2
        tail -n 30 "$work/server.log" >&2
    fi
    exit 1
}

if [ ! -x /usr/lib/chromium/chromium ]; then
    fail "Chromium is missing: install it with \`apt-get install --no-install-recommends chromium\`"
fi
if [ ! -d "$root/tests/approvals/node_modules/playwright-core" ]; then
    npm ci --prefix "$root/tests/approvals" --no-audit --no-fund
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
    kill -0 "$server_pid" 2>/dev/null || fail "lk server exited early"
    sleep 0.1
done
export LATCHKEY_ADDR="http://127.0.0.1:$port"
LATCHKEY_TOKEN="$(sed -n 's/^export LATCHKEY_TOKEN=//p' "$work/server.out")"
export LATCHKEY_TOKEN
[ -n "$LATCHKEY_TOKEN" ] || fail "lk server printed no root token"

# A prod vault, a requester (dave) and an approver (bob).
"$lk" vault create prod --tag env=prod >/dev/null
"$lk" secret put lk://prod/db username=app password=prod-s3cret >/dev/null
cat >"$work/devs.cedar" <<'CEDAR'
permit(principal in Group::"devs", action == Action::"request", resource in Vault::"prod");
permit(principal in Group::"devs", action == Action::"read", resource in Vault::"prod") when { context.grant };
CEDAR
cat >"$work/approvers.cedar" <<'CEDAR'
permit(principal in Group::"approvers", action == Action::"approve", resource in Vault::"prod");
CEDAR
"$lk" policy set devs-request-prod --file "$work/devs.cedar" >/dev/null
"$lk" policy set approvers-approve-prod --file "$work/approvers.cedar" >/dev/null
"$lk" user create dave --group devs >/dev/null
"$lk" user create bob --group approvers >/dev/null
dave_token="$("$lk" token create --user dave --ttl 1h)"
bob_token="$("$lk" token create --user bob --ttl 1h)"

json_field() {
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
request_id="$(LATCHKEY_TOKEN="$dave_token" "$lk" request lk://prod/db --for 30m \
    --reason "INC-7: rotate the prod database password" \
    --ticket https://tickets.example.com/INC-7 --format json | json_field id)"
second_id="$(LATCHKEY_TOKEN="$dave_token" "$lk" request lk://prod --for 15m \
    --reason "look at the other prod secrets" --format json | json_field id)"
echo "dave asked for access: $request_id and $second_id"

# Reading needs the approval first.
if LATCHKEY_TOKEN="$dave_token" "$lk" read lk://prod/db/password >/dev/null 2>&1; then
    fail "dave read lk://prod/db/password before any approval"
fi

mkdir -p "$shots"
rm -f "$shots"/*.png
BASE="$LATCHKEY_ADDR" BOB_TOKEN="$bob_token" DAVE_TOKEN="$dave_token" \
    REQUEST_ID="$request_id" SECOND_REQUEST_ID="$second_id" SHOTS="$shots" \
    node "$root/tests/approvals/approvals.mjs" || fail "the browser checks failed"

# What the browser did, seen from the CLI.
LATCHKEY_TOKEN="$dave_token" "$lk" requests "$request_id" --format json >"$work/request.json"
python3 - "$work/request.json" <<'PY' || fail "request $request_id is not approved by bob"
import json, sys
request = json.load(open(sys.argv[1]))
assert request["status"] == "approved", request["status"]
assert request["decided_by"] == 'User::"bob"', request["decided_by"]
review = request["reviews"][0]
assert review["reviewer"] == 'User::"bob"', review
assert review["verdict"] == "approve", review
assert review["comment"] == "Checked INC-7 with dave on the bridge call", review
print(f"lk requests {request['id']}: {request['status']} by {request['decided_by']}, comment {review['comment']!r}")
PY
LATCHKEY_TOKEN="$dave_token" "$lk" requests "$second_id" --format json >"$work/second.json"
python3 - "$work/second.json" <<'PY' || fail "request $second_id changed"
import json, sys
request = json.load(open(sys.argv[1]))
assert request["status"] == "pending", request
assert request["approvals"] == 0, request
assert request["reviews"] == [], request
print(f"lk requests {request['id']}: still pending with 0 approvals")
PY
password="$(LATCHKEY_TOKEN="$dave_token" "$lk" read lk://prod/db/password)" || fail "lk read as dave failed"
[ "$password" = "prod-s3cret" ] || fail "lk read as dave returned another value"
echo "lk read lk://prod/db/password as dave: ok"

# The refused self-approval is in the audit log, as through the API.
"$lk" audit search --action approve --outcome denied --format json >"$work/refused.json"
python3 - "$work/refused.json" "$second_id" <<'PY' || fail "the refused approval is not in the audit log"
import json, sys
events = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
reasons = sorted(e["reason"] for e in events if e["principal"] == 'User::"dave"' and sys.argv[2] in e["resource"])
assert reasons == ["cross_origin", "self_approval"], reasons
print(f"audit: dave's refused approvals of {sys.argv[2]}: {', '.join(reasons)}")
PY
echo "approvals page: all checks passed"
