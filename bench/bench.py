"""Helpers for bench/compare.sh: JWT keys and tokens, bulk loading, timing `lk run`,
sampling memory, and the summary table.

Run with the virtual environment's Python (it needs `cryptography` and `pyjwt`). Every
network call goes to the 127.0.0.1 address it is given.
"""

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit


def free_ports(args):
    """Print N TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = []
    for _ in range(args.count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in sockets))
    for s in sockets:
        s.close()


def b64url_uint(value):
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_setup(args):
    """Generate an RSA key, write its JWKS, and mint login request bodies signed with it."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    kid = "bench-" + os.urandom(4).hex()
    jwks = {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                      "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}]}
    os.makedirs(args.dir, exist_ok=True)
    with open(os.path.join(args.dir, "jwks.json"), "w") as f:
        json.dump(jwks, f)
    now = int(time.time())
    with open(os.path.join(args.dir, "logins.txt"), "w") as f:
        for i in range(args.count):
            claims = {"iss": args.issuer, "aud": args.audience, "sub": f"ci-job-{i % 50}",
                      "iat": now - 10, "nbf": now - 10, "exp": now + args.lifetime,
                      "jti": f"bench-{i}"}
            token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
            f.write(json.dumps({"role": args.role, "jwt": token}) + "\n")


class Api:
    """A keep-alive HTTP/1.1 connection per thread to one 127.0.0.1 server."""

    def __init__(self, addr, headers):
        parts = urlsplit(addr)
        self.host, self.port = parts.hostname, parts.port
        self.headers = headers
        self.local = threading.local()

    def call(self, method, path, body=None, ok=(200, 201, 204)):
        for attempt in range(3):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self.local.conn = conn
            try:
                data = None if body is None else json.dumps(body)
                headers = dict(self.headers)
                if data is not None:
                    headers["Content-Type"] = "application/json"
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                text = response.read()
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            if response.status not in ok:
                raise SystemExit(f"{method} {path}: HTTP {response.status}: {text[:300]!r}")
            return json.loads(text) if text else None
        return None


def run_parallel(label, jobs, concurrency):
    started = time.monotonic()
    done = 0
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in pool.map(lambda job: job(), jobs):
            done += 1
            if done % 20000 == 0:
                print(f"  {label}: {done}", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    return done, elapsed


def load_scale(args):
    """Create vaults s0.., secrets k0.. in each, the scale user and 1,000-odd policies.

    Policy i lets group team-i read vault s(i mod vaults). The first `vaults` policies
    instead let group `scale-readers` read one vault each. So the scale user may read
    every secret, and most policies belong to other teams.
    """
    api = Api(args.addr, {"Authorization": f"Bearer {args.token}"})
    for v in range(args.vaults):
        api.call("POST", "/v1/vaults", {"name": f"s{v}", "tags": {"env": "scale"}})
    api.call("POST", "/v1/users", {"name": "scale", "groups": ["scale-readers"]})

    def policy_job(i):
        vault = f"s{i % args.vaults}"
        group = "scale-readers" if i < args.vaults else f"team-{i}"
        text = (f'permit(principal in Group::"{group}", action == Action::"read", '
                f'resource in Vault::"{vault}");')
        return lambda: api.call("PUT", f"/v1/policies/scale-{i}", {"policy": text})

    count, elapsed = run_parallel("policies", [policy_job(i) for i in range(args.policies)],
                                  args.concurrency)
    policy_rate = count / elapsed

    def secret_job(n):
        v, k = n % args.vaults, n // args.vaults
        body = {"fields": {"password": {"text": f"scale-value-{n:06d}"}}}
        return lambda: api.call("PUT", f"/v1/vaults/s{v}/secrets/k{k}", body)

    total = args.vaults * args.per_vault
    count, elapsed = run_parallel("secrets", [secret_job(n) for n in range(total)],
                                  args.concurrency)
    token = api.call("POST", "/v1/tokens", {"user": "scale", "ttl": "2h", "max_ttl": "2h"})
    print(json.dumps({"secrets": count, "secrets_per_s": round(count / elapsed, 1),
                      "secrets_load_s": round(elapsed, 1), "policies": args.policies,
                      "policies_per_s": round(policy_rate, 1), "token": token["token"]}))


def time_run(args):
    """Run `lk run -- true` N times and print the median and spread of the wall time."""
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        result = subprocess.run([args.lk, "run", "--", "true"], capture_output=True)
        times.append((time.perf_counter() - started) * 1000)
        if result.returncode != 0:
            raise SystemExit(f"lk run failed ({result.returncode}): {result.stderr[:300]!r}")
    print(json.dumps({"runs": args.runs, "median_ms": round(statistics.median(times), 2),
                      "min_ms": round(min(times), 2), "max_ms": round(max(times), 2)}))


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return fields


def sample_memory(args):
    """Sample VmRSS of PID until STOP_FILE exists; print the largest sample and VmHWM."""
    peak = 0.0
    while not os.path.exists(args.stop_file):
        try:
            peak = max(peak, proc_status(args.pid)["VmRSS"])
        except (OSError, KeyError):
            break
        time.sleep(0.2)
    status = proc_status(args.pid)
    print(json.dumps({"rss_peak_mib": round(peak, 1), "rss_now_mib": round(status["VmRSS"], 1),
                      "hwm_mib": round(status["VmHWM"], 1)}))


def median_of(rows, test, server, key):
    values = [r[key] for r in rows if r["test"] == test and r["server"] == server]
    return statistics.median(values) if values else None


def summarize(args):
    """Turn the wrk result lines into medians, ratios, a table and summary.json."""
    with open(args.results) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    extra = {}
    for path in args.extra:
        name, _, file = path.partition("=")
        with open(file) as f:
            extra[name] = json.load(f)

    runs = {}
    for r in rows:
        key = f"{r['test']}/{r['server']}"
        entry = runs.setdefault(key, {"test": r["test"], "server": r["server"], "rounds": []})
        entry["rounds"].append({k: r[k] for k in ("rps", "p50_ms", "p99_ms", "requests",
                                                  "errors_status", "errors_connect",
                                                  "errors_timeout")})
    for entry in runs.values():
        for k in ("rps", "p50_ms", "p99_ms"):
            entry[k] = statistics.median(x[k] for x in entry["rounds"])
        entry["errors"] = sum(x["errors_status"] + x["errors_connect"] + x["errors_timeout"]
                              for x in entry["rounds"])

    def fig(test, server, key):
        e = runs.get(f"{test}/{server}")
        return None if e is None else e[key]

    def ratio(a, b):
        # Three decimals, so that a ratio just over a bound is not rounded onto it.
        return None if a is None or b is None or b == 0 else round(a / b, 3)

    unavailable = extra.get("unavailable", {})
    ratios = {
        "read_rps_vs_openbao": ratio(fig("read", "latchkey", "rps"), fig("read", "openbao", "rps")),
        "read_p99_openbao_over_latchkey": ratio(fig("read", "openbao", "p99_ms"),
                                                fig("read", "latchkey", "p99_ms")),
        "read_rps_vs_ceiling": ratio(fig("read", "latchkey", "rps"), fig("read", "ceiling", "rps")),
        "token_rps_vs_openbao": ratio(fig("token", "latchkey", "rps"),
                                      fig("token", "openbao", "rps")),
        "jwt_login_rps_vs_openbao": ratio(fig("jwt_login", "latchkey", "rps"),
                                          fig("jwt_login", "openbao", "rps")),
        "scale_read_p99_vs_single": ratio(fig("scale_read", "latchkey", "p99_ms"),
                                          fig("read", "latchkey", "p99_ms")),
    }
    memory = extra.get("memory", {})
    lk_run = extra.get("lk_run", {})
    scale = extra.get("scale", {})
    scale.pop("token", None)
    targets = {
        "read_rps_10x_openbao": ratios["read_rps_vs_openbao"],
        "read_p99_tenth_of_openbao": ratios["read_p99_openbao_over_latchkey"],
        "read_half_of_ceiling": ratios["read_rps_vs_ceiling"],
        "token_5x_openbao": ratios["token_rps_vs_openbao"],
        "jwt_login_5x_openbao": ratios["jwt_login_rps_vs_openbao"],
        "scale_p99_within_2x": ratios["scale_read_p99_vs_single"],
        "rss_under_100_mib": memory.get("rss_peak_mib"),
        "lk_run_20_refs_under_100_ms": lk_run.get("median_ms"),
    }
    limits = {"read_rps_10x_openbao": (10, ">="), "read_p99_tenth_of_openbao": (10, ">="),
              "read_half_of_ceiling": (0.5, ">="), "token_5x_openbao": (5, ">="),
              "jwt_login_5x_openbao": (5, ">="), "scale_p99_within_2x": (2, "<="),
              "rss_under_100_mib": (100, "<"), "lk_run_20_refs_under_100_ms": (100, "<")}
    met = {}
    for name, value in targets.items():
        bound, op = limits[name]
        if value is None:
            met[name] = "not available"
        elif op == ">=":
            met[name] = "met" if value >= bound else "missed"
        elif op == "<=":
            met[name] = "met" if value <= bound else "missed"
        else:
            met[name] = "met" if value < bound else "missed"

    summary = {"machine": extra.get("machine", {}), "settings": extra.get("settings", {}),
               "results": runs, "ratios": ratios, "targets": {k: {"value": targets[k],
               "target": f"{limits[k][1]} {limits[k][0]}", "status": met[k]} for k in targets},
               "memory": memory, "lk_run": lk_run, "scale_load": scale,
               "unavailable": unavailable}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)

    def cell(value, fmt):
        return "n/a" if value is None else fmt.format(value)

    lines = ["| measurement | server | req/s | p50 ms | p99 ms | errors |",
             "|---|---|---:|---:|---:|---:|"]
    for test in ("read", "token", "jwt_login", "scale_read", "read_after_load"):
        for server in ("latchkey", "openbao", "ceiling"):
            e = runs.get(f"{test}/{server}")
            if e is None:
                if test == "jwt_login" and server in unavailable:
                    lines.append(f"| {test} | {server} | not available: {unavailable[server]} "
                                 "| | | |")
                continue
            lines.append(f"| {test} | {server} | {e['rps']:.0f} | {e['p50_ms']:.2f} | "
                         f"{e['p99_ms']:.2f} | {e['errors']} |")
    lines.append("")
    lines.append("| ratio or figure | value | target | status |")
    lines.append("|---|---:|---:|---|")
    for name in targets:
        lines.append(f"| {name} | {cell(targets[name], '{}')} | {limits[name][1]} "
                     f"{limits[name][0]} | {met[name]} |")
    if scale:
        lines.append("")
        lines.append(f"Scale load: {scale.get('secrets')} secrets at {scale.get('secrets_per_s')}/s, "
                     f"{scale.get('policies')} policies at {scale.get('policies_per_s')}/s.")
    if memory:
        lines.append(f"Latchkey memory under the scale reads: VmRSS peak {memory.get('rss_peak_mib')} "
                     f"MiB, VmHWM {memory.get('hwm_mib')} MiB.")
    if lk_run:
        lines.append(f"`lk run -- true` with 20 references: median {lk_run.get('median_ms')} ms "
                     f"over {lk_run.get('runs')} runs (min {lk_run.get('min_ms')}, "
                     f"max {lk_run.get('max_ms')}).")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(required=True)

    p = sub.add_parser("free-ports")
    p.add_argument("count", type=int)
    p.set_defaults(func=free_ports)

    p = sub.add_parser("jwt-setup")
    p.add_argument("dir")
    p.add_argument("--issuer", required=True)
    p.add_argument("--audience", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--lifetime", type=int, default=3 * 3600, help="seconds")
    p.set_defaults(func=jwt_setup)

    p = sub.add_parser("load-scale")
    p.add_argument("addr")
    p.add_argument("token")
    p.add_argument("--vaults", type=int, default=100)
    p.add_argument("--per-vault", type=int, default=1000)
    p.add_argument("--policies", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.set_defaults(func=load_scale)

    p = sub.add_parser("time-run")
    p.add_argument("lk")
    p.add_argument("--runs", type=int, default=30)
    p.set_defaults(func=time_run)

    p = sub.add_parser("sample-memory")
    p.add_argument("pid", type=int)
    p.add_argument("stop_file")
    p.set_defaults(func=sample_memory)

    p = sub.add_parser("summarize")
    p.add_argument("results")
    p.add_argument("out")
    p.add_argument("extra", nargs="*", help="NAME=FILE.json pairs added to the summary")
    p.set_defaults(func=summarize)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
