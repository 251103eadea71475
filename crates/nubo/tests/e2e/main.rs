//! End-to-end tests: the real `nubo` binary on 127.0.0.1:0 with a temp data dir, driven over
//! HTTP and through the real CLI, running real components built from `guests/`.

#[macro_use]
mod harness;
mod admin;
mod async_invocations;
mod dashboard;
mod deploys;
mod lambda;
mod process_apps;
mod traces;
mod wasm_functions;
