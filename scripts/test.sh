#!/usr/bin/env bash
# The whole test suite: format, lints, unit, component and end-to-end tests.
# Installs the wasm32-wasip2 target (guest components are built from guests/ by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The Rust Lambda example (its `bootstrap`) is deployed by the e2e tests, unchanged.
cargo build -p rust-lambda-example
cargo test --workspace
