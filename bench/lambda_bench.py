#!/usr/bin/env python3
"""Lambda and async-invocation benchmarks (issue 4).

    python3 bench/lambda_bench.py [--nubo target/release/nubo] [--n 2000] [--only lambda|async]

Runs a real `nubo up` (as root: lambda instances are sandboxed processes) and measures, side
by side in one run:

  lambda  one invocation at a time on a warm instance, keep-alive, p50/p99 latency:
          the same Python logic as an awslambdaric handler through the Lambda Invoke API
          and through /fn (API Gateway v2 event), vs a plain HTTP app through /fn and the
          plain app called directly (no Nubo)
  async   a wasm hello function: sync throughput (wrk -c16) vs async accepted/s
          (`Prefer: respond-async`, each accept durable in SQLite before the 202) and
          completed/s (accept to executed), plus the fsync policy's cost: accept latency
          with one client (one fsync each) vs 16 clients (group commit) and the disk's
          raw fsync latency

Prints Markdown tables; copy them into docs/benchmarks.md with the command line.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from process_bench import Nubo, pct  # noqa: E402


def deploy(nubo, name, yaml_body, files):
    d = os.path.join(nubo.tmp, "proj-" + name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for f in files:
        shutil.copy(f, d)
    with open(os.path.join(d, "nubo.yaml"), "w") as out:
        out.write(f"project: {name}\nfunctions:\n  {name}:\n{yaml_body}")
    nubo.cli("deploy", cwd=d)


def seq(host, port, path, n, body=b'{"n": 1}', headers=None):
    c = http.client.HTTPConnection(host, port, timeout=30)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.request("POST", path, body=body, headers=headers or {})
        r = c.getresponse()
        r.read()
        if r.status not in (200, 202):
            raise SystemExit(f"POST {path}: {r.status}")
        out.append(time.perf_counter() - t)
    return out


def ms(xs, p):
    return pct(xs, p) * 1000


def part_lambda(nubo, n):
    app = os.path.join(HERE, "lambda-app")
    deploy(nubo, "lam", "    kind: lambda\n    command: [python3, -m, awslambdaric, handler.main]\n"
           "    scale: { min: 1 }\n", [os.path.join(app, "handler.py")])
    deploy(nubo, "web", "    kind: process\n    command: [python3, http_app.py]\n    scale: { min: 1 }\n",
           [os.path.join(app, "http_app.py")])
    port = nubo.instances("web")[0]["port"]
    cases = {
        "lambda, Invoke API": (nubo.port, "/2015-03-31/functions/lam/invocations"),
        "lambda, /fn (API Gateway v2 event)": (nubo.port, "/fn/lam/"),
        "plain HTTP app, /fn": (nubo.port, "/fn/web/"),
        "plain HTTP app, direct (no Nubo)": (port, "/"),
    }
    for host_port, path in cases.values():  # warm-up
        seq(nubo.host, host_port, path, 200)
    samples = {k: [] for k in cases}
    # Interleaved rounds, so that noise on this shared machine hits every case alike.
    for _ in range(10):
        for k, (host_port, path) in cases.items():
            samples[k] += seq(nubo.host, host_port, path, n // 10)
    base = statistics.median(samples["plain HTTP app, direct (no Nubo)"])
    print(f"\n### Lambda invocation overhead (sequential, keep-alive, {n} each, interleaved)\n")
    print("| path | p50 ms | p99 ms | p50 vs direct app |")
    print("|---|---|---|---|")
    for k, xs in samples.items():
        print(f"| {k} | {ms(xs, 50):.3f} | {ms(xs, 99):.3f} | {statistics.median(xs) / base:.2f}x |")


def wrk(url, connections, seconds, headers=()):
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if "Non-2xx" in out:
        raise SystemExit(f"non-2xx answers from {url}:\n{out}")
    return total, rps


def queue_depth(nubo, function):
    text = urllib.request.urlopen(f"{nubo.url}/_nubo/metrics").read().decode()
    m = re.search(r'^nubo_queue_depth\{function="%s"\} (\d+)' % function, text, re.M)
    return int(m.group(1)) if m else 0


def fsync_floor(directory, n=200):
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    out = []
    for i in range(n):
        os.write(fd, b"x" * 100)
        t = time.perf_counter()
        os.fsync(fd)
        out.append(time.perf_counter() - t)
    os.close(fd)
    os.unlink(path)
    return out


def part_async(nubo, n):
    subprocess.run(["cargo", "build", "-q", "--release", "--target", "wasm32-wasip2", "--manifest-path",
                    os.path.join(ROOT, "guests/Cargo.toml")], check=True)
    wasm = os.path.join(ROOT, "guests/target/wasm32-wasip2/release/hello.wasm")
    deploy(nubo, "hello", "    kind: wasm\n    component: hello.wasm\n    scale: { max: 64 }\n", [wasm])
    url = f"{nubo.url}/fn/hello/"
    _, sync_rps = wrk(url, 16, 5)
    t0 = time.perf_counter()
    accepted, accept_rps = wrk(url, 16, 5, ["Prefer: respond-async"])
    while queue_depth(nubo, "hello") > 0:
        time.sleep(0.02)
    completed_rps = accepted / (time.perf_counter() - t0)
    one = seq(nubo.host, nubo.port, "/fn/hello/", n // 4, headers={"Prefer": "respond-async"})
    while queue_depth(nubo, "hello") > 0:
        time.sleep(0.02)
    sync_one = seq(nubo.host, nubo.port, "/fn/hello/", n // 4)
    floor = fsync_floor(os.path.join(nubo.tmp, "data"))
    print("\n### Async invocations (wasm hello; every accept durable before its 202)\n")
    print("| measure | figure |")
    print("|---|---|")
    print(f"| sync invocations, wrk -c16 5 s | {sync_rps:.0f} req/s |")
    print(f"| async accepted, wrk -c16 5 s | {accept_rps:.0f} accepted/s ({accepted} in all) |")
    print(f"| async completed (first accept to queue empty) | {completed_rps:.0f} completed/s |")
    print(f"| accept latency, 1 client (one fsync each), p50 / p99 | {ms(one, 50):.2f} / {ms(one, 99):.2f} ms |")
    print(f"| sync invocation latency, 1 client, p50 / p99 | {ms(sync_one, 50):.2f} / {ms(sync_one, 99):.2f} ms |")
    print(f"| raw fsync of the data dir's disk, p50 / p99 | {ms(floor, 50):.2f} / {ms(floor, 99):.2f} ms |")
    print(f"| accepted/s with 16 clients vs 1 client | {accept_rps / (1 / statistics.median(one)):.1f}x (group commit) |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nubo", default=os.path.join(ROOT, "target/release/nubo"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--only", choices=["lambda", "async"])
    args = ap.parse_args()
    nubo = Nubo(args.nubo)
    try:
        if args.only in (None, "lambda"):
            part_lambda(nubo, args.n)
        if args.only in (None, "async"):
            part_async(nubo, args.n)
    finally:
        nubo.stop()


if __name__ == "__main__":
    main()
