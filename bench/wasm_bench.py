#!/usr/bin/env python3
"""Wasm benchmarks of issue 2: Nubo vs `wasmtime serve` on the same components, side by side.

Runs, in one session on one machine, interleaved over several rounds:
  * a native hyper hello server (the ceiling),
  * `wasmtime serve -S cli -O pooling-allocator=y` and Nubo, fresh instance per request,
  * the same with instance reuse (`--max-instance-reuse-count N` vs `reuse: N`),
for a Rust hello component and a Python (componentize-py) component, with wrk at a fixed
concurrency; then Nubo's cold start (`cold` in Server-Timing) for fresh instances, after a deploy
and after idle. Prints a Markdown report (medians over rounds) for docs/benchmarks.md.

Needs: wrk (Debian), wasmtime-cli 48.0.8 (`cargo install wasmtime-cli@48.0.8 --locked`),
componentize-py (PyPI), a release build of nubo. See bench/README.md.
"""

import argparse
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early: {proc.args}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server did not listen on {port}: {proc.args}")


def wrk(url, duration, connections, threads):
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(val) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99")}


class Server:
    def __init__(self, argv, port, env=None):
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_port(port, self.proc)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wasi_http_wit():
    """The wasi:http WIT that ships inside the wasmtime-wasi-http crate Nubo builds with."""
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--manifest-path",
                           os.path.join(ROOT, "Cargo.toml")], capture_output=True, text=True, check=True).stdout
    import json
    for pkg in json.loads(meta)["packages"]:
        if pkg["name"] == "wasmtime-wasi-http":
            return os.path.join(os.path.dirname(pkg["manifest_path"]), "wit")
    raise SystemExit("wasmtime-wasi-http not found in cargo metadata")


def build_components(args):
    subprocess.run(
        ["cargo", "build", "--release", "--target", "wasm32-wasip2", "--manifest-path",
         os.path.join(ROOT, "guests/Cargo.toml")], check=True)
    rust = os.path.join(ROOT, "guests/target/wasm32-wasip2/release/hello.wasm")
    pydir = os.path.join(ROOT, "bench/python-hello")
    python = os.path.join(pydir, "python-hello.wasm")
    if not os.path.exists(python):
        wit = wasi_http_wit()
        subprocess.run(["componentize-py", "-d", wit, "-w", "wasi:http/proxy@0.2.12",
                        "componentize", "app", "-o", python], cwd=pydir, check=True)
    subprocess.run(["cargo", "build", "--release", "--manifest-path",
                    os.path.join(ROOT, "bench/native-hello/Cargo.toml")], check=True)
    native = os.path.join(ROOT, "bench/native-hello/target/release/native-hello")
    return rust, python, native


def start_nubo(args, tmp, rust, python):
    port = free_port()
    home = os.path.join(tmp, "home")
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ, HOME=home, NUBO_LOG="warn")
    srv = Server([args.nubo, "up", "--listen", f"127.0.0.1:{port}", "--data-dir",
                  os.path.join(tmp, "data")], port, env)
    proj = os.path.join(tmp, "project")
    os.makedirs(proj, exist_ok=True)
    shutil.copy(rust, os.path.join(proj, "hello.wasm"))
    shutil.copy(python, os.path.join(proj, "python.wasm"))
    n = args.reuse
    with open(os.path.join(proj, "nubo.yaml"), "w") as f:
        f.write(f"""project: bench
functions:
  rust-fresh: {{ kind: wasm, component: hello.wasm }}
  rust-reuse: {{ kind: wasm, component: hello.wasm, reuse: {n} }}
  py-fresh: {{ kind: wasm, component: python.wasm }}
  py-reuse: {{ kind: wasm, component: python.wasm, reuse: {n} }}
  rust-idle: {{ kind: wasm, component: hello.wasm, reuse: {n}, scale: {{ idle: 1ms }} }}
""")
    subprocess.run([args.nubo, "deploy", "--server", f"http://127.0.0.1:{port}"], cwd=proj,
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return srv, proj, env


def timing(headers, name):
    m = re.search(name + r";dur=([\d.]+)", headers.get("server-timing", ""))
    return float(m.group(1)) if m else None


def sequential(port, path, n, pause=0.0):
    """n requests on one keep-alive connection: (end-to-end ms, cold ms, mode) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        e2e = (time.perf_counter() - t) * 1000
        h = {k.lower(): v for k, v in r.getheaders()}
        mode = re.search(r'desc="(\w+)"', h.get("server-timing", ""))
        out.append((e2e, timing(h, "cold"), mode.group(1) if mode else None))
        if pause:
            time.sleep(pause)
    conn.close()
    return out


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nubo", default=os.path.join(ROOT, "target/release/nubo"))
    ap.add_argument("--wasmtime", default=shutil.which("wasmtime") or os.path.expanduser("~/.cargo/bin/wasmtime"))
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reuse", type=int, default=128)
    args = ap.parse_args()

    rust, python, native = build_components(args)
    tmp = tempfile.mkdtemp(prefix="nubo-bench-")
    nubo, _, _ = start_nubo(args, tmp, rust, python)
    base = f"http://127.0.0.1:{nubo.port}"

    configs = [("native hyper hello", "native", None, None)]
    for comp, path, label in ((rust, "rust", "Rust hello"), (python, "py", "Python hello")):
        for mode in ("fresh", "reuse"):
            reuse = ["--max-instance-reuse-count", str(args.reuse)] if mode == "reuse" else []
            configs.append((f"{label}, {mode}: wasmtime serve", "wasmtime", comp, reuse))
            configs.append((f"{label}, {mode}: Nubo", "nubo", f"/fn/{path}-{mode}/", None))

    results = {name: [] for name, *_ in configs}
    for rnd in range(args.rounds):
        for name, kind, arg, extra in configs:
            if kind == "native":
                port = free_port()
                srv = Server([native, f"127.0.0.1:{port}"], port)
                results[name].append(wrk(f"http://127.0.0.1:{port}/", args.duration, args.connections, args.threads))
                srv.stop()
            elif kind == "wasmtime":
                port = free_port()
                srv = Server([args.wasmtime, "serve", "-S", "cli", "-O", "pooling-allocator=y",
                              "--addr", f"127.0.0.1:{port}", *extra, arg], port)
                # Warm-up: the first request of wasmtime serve may compile lazily.
                sequential(port, "/", 3)
                results[name].append(wrk(f"http://127.0.0.1:{port}/", args.duration, args.connections, args.threads))
                srv.stop()
            else:
                results[name].append(wrk(base + arg, args.duration, args.connections, args.threads))
            r = results[name][-1]
            print(f"round {rnd + 1}: {name}: {r['rps']:.0f} req/s p50 {r['p50']:.3f} ms p99 {r['p99']:.3f} ms",
                  file=sys.stderr)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, median of {args.rounds} interleaved rounds, "
          f"reuse count {args.reuse}\n")
    print("| workload | server | req/s | p50 ms | p99 ms | Nubo / peer |")
    print("|---|---|---:|---:|---:|---:|")
    native_rps = med("native hyper hello", "rps")
    print(f"| hello | native hyper | {native_rps:.0f} | {med('native hyper hello', 'p50'):.3f} | "
          f"{med('native hyper hello', 'p99'):.3f} | |")
    for label in ("Rust hello", "Python hello"):
        for mode in ("fresh", "reuse"):
            peer, ours = f"{label}, {mode}: wasmtime serve", f"{label}, {mode}: Nubo"
            ratio = med(ours, "rps") / med(peer, "rps")
            for who, name in (("wasmtime serve", peer), ("Nubo", ours)):
                extra = f"{ratio:.2f}×" if who == "Nubo" else ""
                print(f"| {label}, {mode} | {who} | {med(name, 'rps'):.0f} | {med(name, 'p50'):.3f} | "
                      f"{med(name, 'p99'):.3f} | {extra} |")
    rust_reuse = med("Rust hello, reuse: Nubo", "rps")
    print(f"\nRust hello with reuse on Nubo = {rust_reuse / native_rps:.0%} of the native hyper server.")

    # Cold starts, read from Server-Timing.
    fresh = sequential(nubo.port, "/fn/rust-fresh/", 2000)
    warm = sequential(nubo.port, "/fn/rust-reuse/", 2000)
    pyfresh = sequential(nubo.port, "/fn/py-fresh/", 300)
    idle = sequential(nubo.port, "/fn/rust-idle/", 25, pause=1.2)
    print("\n| cold start (Nubo, sequential requests) | n | cold p50 ms | cold p99 ms | end-to-end p50 ms |")
    print("|---|---:|---:|---:|---:|")
    for label, rows in (("Rust hello, fresh instance per request", fresh),
                        ("Python hello, fresh instance per request", pyfresh),
                        ("Rust hello, first request after idle (instances reaped)", idle)):
        cold = [c for _, c, m in rows if m == "new"]
        print(f"| {label} | {len(cold)} | {pct(cold, 50):.3f} | {pct(cold, 99):.3f} | "
              f"{pct([e for e, _, _ in rows], 50):.3f} |")
    warm_e2e = pct([e for e, _, m in warm if m == "warm"], 50)
    print(f"| Rust hello, warm (reused) request | {len(warm)} | 0 | 0 | {warm_e2e:.3f} |")
    print(f"\nEnd to end, fresh / warm p50 = {pct([e for e, _, _ in fresh], 50) / warm_e2e:.2f}×.")

    # First request after a deploy: each deploy makes a new revision (env changes) of the same
    # component, so nothing is compiled; the first request starts the revision's first instance.
    after = []
    proj = os.path.join(tmp, "redeploy")
    os.makedirs(proj, exist_ok=True)
    shutil.copy(rust, os.path.join(proj, "hello.wasm"))
    env = dict(os.environ, HOME=os.path.join(tmp, "home"))
    for i in range(25):
        with open(os.path.join(proj, "nubo.yaml"), "w") as f:
            f.write(f"project: redeploy\nfunctions:\n  fresh-rev:\n    kind: wasm\n    component: hello.wasm\n"
                    f"    reuse: {args.reuse}\n    env: {{ N: '{i}' }}\n")
        subprocess.run([args.nubo, "deploy", "--server", base], cwd=proj, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        after.extend(sequential(nubo.port, "/fn/fresh-rev/", 1))
    cold = [c for _, c, _ in after]
    print(f"\nFirst request after each of {len(after)} deploys: cold p50 {pct(cold, 50):.3f} ms, "
          f"p99 {pct(cold, 99):.3f} ms, end-to-end p50 {pct([e for e, _, _ in after], 50):.3f} ms.")
    nubo.stop()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
