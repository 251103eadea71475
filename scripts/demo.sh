#!/usr/bin/env bash
# Builds nubo, starts `nubo up` in the background, deploys examples/hello and invokes it.
# The server keeps running; stop it with: kill $(cat .nubo/server.pid)
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
cargo build --release -p nubo
NUBO="${CARGO_TARGET_DIR:-$PWD/target}/release/nubo"
mkdir -p .nubo
if [ -f .nubo/server.pid ] && kill -0 "$(cat .nubo/server.pid)" 2>/dev/null; then
  echo "nubo is already running (pid $(cat .nubo/server.pid))"
else
  "$NUBO" up --listen 127.0.0.1:8080 --data-dir .nubo/data > .nubo/server.out 2> .nubo/server.log &
  echo $! > .nubo/server.pid
  for _ in $(seq 100); do grep -q "listening on" .nubo/server.out 2>/dev/null && break; sleep 0.1; done
  if ! grep -q "listening on" .nubo/server.out; then
    echo "nubo up did not start:" >&2; cat .nubo/server.log >&2; exit 1
  fi
  cat .nubo/server.out
fi
# The dashboard link (it carries the admin token, so opening it logs in).
grep -m1 "^dashboard: " .nubo/server.log || true
cd examples/hello
"$NUBO" deploy
echo "--- nubo invoke hello"
"$NUBO" invoke hello --data "world"
echo "--- curl http://127.0.0.1:8080/hello"
curl -s http://127.0.0.1:8080/hello
echo "server log: .nubo/server.log; stop it with: kill \$(cat .nubo/server.pid)"
