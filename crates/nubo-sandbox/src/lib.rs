//! Sandboxes: one instance of a revision, started, fed requests, stopped.
//!
//! Two kinds: `wasm` (`wasi:http` components on wasmtime with the component model, the pooling
//! allocator, epoch-based timeouts and a per-instance memory limit) and `process` (unchanged
//! HTTP servers in namespaces and a cgroup, started new, thawed, or forked from a seed). A guest failing
//! is not an error of this crate: [`Outcome`] says how an invocation ended (ok, timeout, out of
//! memory, trap) and the gateway maps it to a status.
//!
//! This crate knows nothing of routes, scaling, or the store: it is given bytes, a config and a
//! request, and gives back a response and an outcome.

mod logs;
pub mod process;
mod wasm;

pub use logs::{LogFn, LogRecord, LogStream};
pub use wasm::{
    ComponentError, InstanceConfig, Outcome, ResponseBody, RuntimeOptions, WasmComponent,
    WasmInstance, WasmRuntime,
};
