#!/usr/bin/env python3
"""Makes docs/dashboard.png: a real server with real traffic, photographed by headless Chromium.

    cargo build -p nubo && python3 scripts/dashboard_screenshot.py [--binary target/debug/nubo] [--seconds 150]

Deploys a Flask app (forked from a seed, two instances kept), a wasm hello and the testkit
component, drives a few minutes of uneven traffic (with some errors and scale-outs), then
screenshots the Flask app's page. Needs root (process sandbox), flask and chromium.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/debug/nubo"))
    ap.add_argument("--seconds", type=int, default=150)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/dashboard.png"))
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip2"],
                   cwd=os.path.join(ROOT, "guests"), check=True)
    tmp = tempfile.mkdtemp(prefix="nubo-shot-")
    env = dict(os.environ, HOME=os.path.join(tmp, "home"))
    os.makedirs(env["HOME"])
    server = subprocess.Popen([args.binary, "up", "--listen", "127.0.0.1:0", "--data-dir",
                               os.path.join(tmp, "data")], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=env, text=True)
    url = None
    for line in server.stdout:
        if line.startswith("listening on "):
            url = line.split()[-1]
            break
    try:
        project = os.path.join(tmp, "shop")
        shutil.copytree(os.path.join(ROOT, "bench/flask-app"), project)
        wasm = os.path.join(ROOT, "guests/target/wasm32-wasip2/release")
        shutil.copy(os.path.join(wasm, "hello.wasm"), project)
        shutil.copy(os.path.join(wasm, "testkit.wasm"), project)
        with open(os.path.join(project, "nubo.yaml"), "w") as f:
            f.write("""project: shop
functions:
  storefront:
    kind: process
    python: { wsgi: "app:app" }
    concurrency: 4
    memory: 256Mi
    scale: { min: 2, max: 6 }
  hello:
    kind: wasm
    component: hello.wasm
  api:
    kind: wasm
    component: testkit.wasm
""")
        subprocess.run([args.binary, "deploy", "--server", url], cwd=project, env=env, check=True)
        stop = time.time() + args.seconds

        def get(path):
            try:
                urllib.request.urlopen(url + path, timeout=30).read()
            except Exception:
                pass

        def client(k):
            while time.time() < stop:
                # Waves of load: some clients rest part of each minute.
                if (time.time() // 20 + k) % 3 == 0:
                    time.sleep(0.5)
                    continue
                r = random.random()
                if r < 0.6:
                    get(f"/fn/storefront/sleep?ms={random.choice([5, 10, 20, 40, 120])}")
                elif r < 0.9:
                    get("/fn/hello/")
                else:
                    get("/fn/api/status?code=" + random.choice(["200", "200", "500"]))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        token = open(os.path.join(tmp, "data", "admin-token")).read().strip()
        profile = os.path.join(tmp, "chromium")
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1400,1000", "--virtual-time-budget=6000",
                        f"--user-data-dir={profile}", f"--screenshot={args.out}",
                        f"{url}/_nubo/ui/?token={token}#/f/storefront"], check=True,
                       stderr=subprocess.DEVNULL)
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
