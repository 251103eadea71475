#!/usr/bin/env python3
"""Process-app benchmarks (issue 3): start modes, KSM, gateway overhead, burst.

    python3 bench/process_bench.py [--nubo target/release/nubo] [--starts 50] [--only NAME]

Runs a real `nubo up` on a free port with a temporary data dir (as root: namespaces and
cgroups), deploys the Flask app in bench/flask-app/ in several ways and measures, side by
side in one run:

  starts    time to first response by start mode, >= --starts each, p50/p99:
            plain `python3 app.py` outside Nubo, Nubo new, fork, thaw
  ksm       memory (sum of PSS) of 10 frozen instances, unmerged and merged by KSM
  overhead  warm request: client -> Nubo -> app vs client -> app, latency (sequential,
            keep-alive) and throughput (wrk -t1 -c8)
  burst     instance starts per second from zero: 50 concurrent requests that each hold
            an instance, by mode (fork, new)

Prints a Markdown table per part; copy it into docs/benchmarks.md with the command line.
"""
import argparse
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "flask-app")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Nubo:
    def __init__(self, binary):
        self.binary = os.path.abspath(binary)
        self.tmp = tempfile.mkdtemp(prefix="nubo-bench-")
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(self.home)
        env = dict(os.environ, HOME=self.home, RUST_LOG="warn")
        self.proc = subprocess.Popen(
            [self.binary, "up", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(self.tmp, "data")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        for line in self.proc.stdout:
            if line.startswith("listening on "):
                self.url = line.split()[-1].strip()
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.host, self.port = self.url.split("//")[1].split(":")
        self.port = int(self.port)
        self.token = open(os.path.join(self.tmp, "data", "admin-token")).read().strip()

    def cli(self, *args, cwd=None):
        env = dict(os.environ, HOME=self.home)
        out = subprocess.run([self.binary, *args, "--server", self.url], cwd=cwd, env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"nubo {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def deploy(self, name, body):
        d = os.path.join(self.tmp, "proj-" + name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(APP, d)
        with open(os.path.join(d, "nubo.yaml"), "w") as f:
            f.write(f"project: {name}\nfunctions:\n  {name}:\n    kind: process\n{body}")
        self.cli("deploy", cwd=d)

    def instances(self, name):
        req = urllib.request.Request(f"{self.url}/_nubo/api/v1/functions/{name}/instances",
                                     headers={"Authorization": f"Bearer {self.token}"})
        return json.load(urllib.request.urlopen(req))["instances"]

    def get(self, path):
        """One request on a fresh connection: (seconds, status, server-timing)."""
        t = time.perf_counter()
        c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        took = time.perf_counter() - t
        c.close()
        return took, r.status, r.getheader("server-timing") or ""

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def cold(timing):
    part = timing.split("cold;dur=")[1]
    dur = float(part.split(";")[0])
    mode = part.split('desc="')[1].split('"')[0]
    return dur, mode


def plain_starts(n):
    """`python3 app.py` outside Nubo: spawn to first 200."""
    times = []
    for _ in range(n):
        port = free_port()
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "app.py"], cwd=APP, env=dict(os.environ, PORT=str(port)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.0005)
        times.append(time.perf_counter() - t)
        p.kill()
        p.wait()
    return times


def nubo_starts(nubo, name, body, want_mode, n):
    """Waits for zero serving instances, then times one request; n times."""
    nubo.deploy(name, body + "    concurrency: 1\n    scale: { idle: 1s }\n")
    e2e, colds = [], []
    for _ in range(n):
        deadline = time.time() + 30
        while True:
            live = [i for i in nubo.instances(name) if i["state"] in ("ready", "busy", "starting")]
            frozen = [i for i in nubo.instances(name) if i["state"] == "frozen"]
            if not live and (want_mode != "thaw" or frozen):
                break
            if time.time() > deadline:
                raise SystemExit(f"{name}: instances did not go idle")
            time.sleep(0.05)
        took, status, timing = nubo.get(f"/fn/{name}/")
        dur, mode = cold(timing)
        if status != 200 or mode != want_mode:
            raise SystemExit(f"{name}: status {status}, mode {mode} (wanted {want_mode})")
        e2e.append(took)
        colds.append(dur / 1000)
    return e2e, colds


def part_starts(nubo, n):
    rows = [("plain `python3 app.py` (outside Nubo)", plain_starts(n), None)]
    for mode, body in [
        ("new", f"    command: [{sys.executable}, app.py]\n    ready: /health\n"),
        ("fork", "    python: { wsgi: \"app:app\" }\n    ready: /health\n"),
        ("thaw", f"    command: [{sys.executable}, app.py]\n    ready: /health\n    warm: 2\n"),
    ]:
        e2e, colds = nubo_starts(nubo, "s" + mode, body, mode, n)
        rows.append((f"Nubo {mode}", e2e, colds))
    base = statistics.median(rows[0][1])
    print(f"\n### Time to first response, Flask app, {n} starts each\n")
    print("| start | p50 ms | p99 ms | `cold` p50 ms | `cold` p99 ms | plain p50 / this p50 |")
    print("|---|---|---|---|---|---|")
    for label, e2e, colds in rows:
        c = f"{pct(colds, 50) * 1e3:.2f} | {pct(colds, 99) * 1e3:.2f}" if colds else "- | -"
        print(f"| {label} | {pct(e2e, 50) * 1e3:.2f} | {pct(e2e, 99) * 1e3:.2f} | {c} | "
              f"{base / statistics.median(e2e):.1f}× |")
    warm = [nubo.get("/fn/sthaw/")[0] for _ in range(50)]
    print(f"\nA warm request on a fresh connection in the same run: p50 {pct(warm, 50) * 1e3:.2f} ms, "
          f"p99 {pct(warm, 99) * 1e3:.2f} ms.")


def pss_of_cgroups(ids):
    total = 0
    for iid in ids:
        for f in glob.glob(f"/sys/fs/cgroup/*/nubo/*/{iid}/cgroup.procs") + \
                glob.glob(f"/sys/fs/cgroup/nubo/*/{iid}/cgroup.procs"):
            for pid in open(f).read().split():
                try:
                    for line in open(f"/proc/{pid}/smaps_rollup"):
                        if line.startswith("Pss:"):
                            total += int(line.split()[1]) * 1024
                except OSError:
                    pass
            break
    return total


def part_ksm(nubo, name, launcher, label):
    ksm = "/sys/kernel/mm/ksm/"
    keys = ("pages_to_scan", "sleep_millisecs")
    saved = {k: open(ksm + k).read().strip() for k in keys}
    try:
        # ksmd all but asleep while the instances start: the first figure is unmerged.
        open(ksm + "sleep_millisecs", "w").write("600000")
        nubo.deploy(name, f"    command: [{launcher}{sys.executable}, app.py]\n    ready: /health\n    warm: 10\n")
        ids = [i["id"] for i in nubo.instances(name) if i["state"] == "frozen"]
        assert len(ids) == 10, ids
        time.sleep(1)
        unmerged = pss_of_cgroups(ids)
        before = int(open(ksm + "pages_sharing").read())
        open(ksm + "pages_to_scan", "w").write("10000")
        open(ksm + "sleep_millisecs", "w").write("10")
        scans = int(open(ksm + "full_scans").read())
        last, stable = -1, 0
        for _ in range(240):
            time.sleep(0.5)
            sharing = int(open(ksm + "pages_sharing").read())
            stable = stable + 1 if sharing == last else 0
            last = sharing
            if stable >= 4 and int(open(ksm + "full_scans").read()) >= scans + 2:
                break
        merged = pss_of_cgroups(ids)
        print(f"\n### Memory of 10 frozen instances of the Flask app, {label} (sum of PSS)\n")
        print("| | MiB | ratio |")
        print("|---|---|---|")
        print(f"| without KSM (before ksmd ran) | {unmerged / 2**20:.1f} | 1.00 |")
        print(f"| with KSM (merged) | {merged / 2**20:.1f} | {merged / unmerged:.2f} |")
        print(f"\nKSM pages_sharing grew by {last - before} ({(last - before) * 4096 / 2**20:.1f} MiB saved).")
    finally:
        for k, v in saved.items():
            open(ksm + k, "w").write(v)


def seq_latency(host, port, path, n):
    c = http.client.HTTPConnection(host, port, timeout=30)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        out.append(time.perf_counter() - t)
    return out


def wrk(url):
    out = subprocess.run(["wrk", "-t1", "-c8", "-d8s", url], capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith("Requests/sec")][0]
    return float(line.split()[1])


def part_overhead(nubo):
    nubo.deploy("warm", "    python: { wsgi: \"app:app\" }\n    ready: /health\n    scale: { min: 1 }\n")
    inst = nubo.instances("warm")[0]
    port = inst["port"]
    rounds = []
    for _ in range(3):
        direct = seq_latency("127.0.0.1", port, "/", 2000)
        via = seq_latency(nubo.host, nubo.port, "/fn/warm/", 2000)
        rounds.append((statistics.median(direct), statistics.median(via)))
    d = statistics.median(r[0] for r in rounds)
    v = statistics.median(r[1] for r in rounds)
    if shutil.which("wrk"):
        tput = [(wrk(f"http://127.0.0.1:{port}/"), wrk(f"{nubo.url}/fn/warm/")) for _ in range(3)]
        td = statistics.median(t[0] for t in tput)
        tv = statistics.median(t[1] for t in tput)
    else:
        td = tv = float("nan")
    print("\n### Warm request overhead (Flask app, werkzeug threaded server, one instance)\n")
    print("| path | p50 latency µs (sequential, keep-alive) | req/s (wrk -t1 -c8, 8 s) |")
    print("|---|---|---|")
    print(f"| client → app | {d * 1e6:.0f} | {td:.0f} |")
    print(f"| client → Nubo → app | {v * 1e6:.0f} | {tv:.0f} |")
    print(f"\nAdded p50 latency: {(v - d) * 1e6:.0f} µs; throughput ratio {tv / td:.2f} "
          f"(medians of 3 rounds of 2,000 requests and of 3 wrk runs).")


def part_burst(nubo, n=50):
    print(f"\n### Burst: {n} concurrent requests from zero, each holding its own instance for 1 s\n")
    print("| mode | all answered after s | starts/s | starts/min |")
    print("|---|---|---|---|")
    for mode, body in [("fork", "    python: { wsgi: \"app:app\" }\n    ready: /health\n"),
                       ("new", f"    command: [{sys.executable}, app.py]\n    ready: /health\n")]:
        name = "b" + mode
        nubo.deploy(name, body + f"    concurrency: 1\n    memory: 128Mi\n    scale: {{ max: {n}, idle: 2s }}\n")
        results = []

        def one():
            results.append(nubo.get(f"/fn/{name}/sleep?ms=1000"))

        t = time.perf_counter()
        threads = [threading.Thread(target=one) for _ in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.perf_counter() - t
        ok = sum(1 for r in results if r[1] == 200)
        modes = {cold(r[2])[1] for r in results if r[1] == 200}
        starts = ok / max(took - 1.0, 1e-3)
        print(f"| {mode} ({ok}/{n} ok, modes {', '.join(sorted(modes))}) | {took:.2f} | {starts:.0f} | {starts * 60:.0f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nubo", default=os.path.join(HERE, "..", "target", "release", "nubo"))
    ap.add_argument("--starts", type=int, default=50)
    ap.add_argument("--only", choices=["starts", "ksm", "overhead", "burst"])
    a = ap.parse_args()
    nubo = Nubo(a.nubo)
    try:
        print(f"nubo {nubo.url}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
        if a.only in (None, "starts"):
            part_starts(nubo, a.starts)
        if a.only in (None, "overhead"):
            part_overhead(nubo)
        if a.only in (None, "burst"):
            part_burst(nubo)
        if a.only in (None, "ksm"):
            part_ksm(nubo, "ksm", "", "`command: [python3, app.py]`")
            part_ksm(nubo, "ksmnoaslr", "setarch, -R, ",
                     "`command: [setarch, -R, python3, app.py]` (no ASLR)")
    finally:
        nubo.stop()


if __name__ == "__main__":
    main()
