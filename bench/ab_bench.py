#!/usr/bin/env python3
"""Two builds of nubo side by side on the same wasm hello: wrk rounds interleaved A, B, A, B...

Used to measure what a change costs on the invocation path (for example the invocation record
and log line each invocation writes). Build the two binaries first (a git worktree for the
older commit), then:

    python3 bench/ab_bench.py OLD/nubo NEW/nubo --rounds 5 --duration 8 --connections 8
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from process_bench import Nubo  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WASM = os.path.join(ROOT, "guests/target/wasm32-wasip2/release/hello.wasm")


def deploy_hello(binary):
    n = Nubo(binary)
    d = os.path.join(n.tmp, "p")
    os.makedirs(d)
    shutil.copy(WASM, d)
    with open(os.path.join(d, "nubo.yaml"), "w") as f:
        f.write("project: h\nfunctions:\n  hello:\n    kind: wasm\n    component: hello.wasm\n")
    n.cli("deploy", cwd=d)
    return n


def wrk(url, duration, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url],
        capture_output=True, text=True, check=True,
    ).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    subprocess.run(
        ["cargo", "build", "--release", "--target", "wasm32-wasip2", "-p", "hello"],
        cwd=os.path.join(ROOT, "guests"), check=True,
    )
    servers = {"A": deploy_hello(args.a), "B": deploy_hello(args.b)}
    rates = {"A": [], "B": []}
    try:
        for _ in range(args.rounds):
            for k, n in servers.items():
                rates[k].append(wrk(n.url + "/fn/hello/", args.duration, args.connections))
    finally:
        for n in servers.values():
            n.stop()
    a, b = statistics.median(rates["A"]), statistics.median(rates["B"])
    print(f"| build | req/s per round | median |\n|---|---|---|")
    for k, path in (("A", args.a), ("B", args.b)):
        rounds = ", ".join(f"{r:.0f}" for r in rates[k])
        print(f"| {k}: `{path}` | {rounds} | {statistics.median(rates[k]):.0f} |")
    print(f"\nB / A = {b / a:.2f}x")


if __name__ == "__main__":
    main()
