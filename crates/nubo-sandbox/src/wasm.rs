//! The `wasm` kind: `wasi:http` components on wasmtime.
//!
//! One [`WasmRuntime`] per node owns the engine (pooling allocator, epoch interruption), the
//! linker with everything Nubo provides, and the on-disk cache of compiled components.
//! A [`WasmComponent`] is a checked, compiled, pre-linked component; an instance is a store
//! plus an instantiated proxy, serving one request at a time.

use crate::logs::{LogContext, LogFn, LogStream};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The body of a guest's response, streamed while the guest writes it.
pub type ResponseBody = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// The export every function must provide.
const HANDLER_EXPORT: &str = "wasi:http/incoming-handler";

/// Interface packages Nubo links, at major version 0.2 (WASI preview 2). The filesystem is
/// linked but has no preopened directory, and sockets deny every address: guests that import
/// them (Rust's std does) work, but reach nothing.
const PROVIDED_PACKAGES: [&str; 7] = [
    "wasi:io",
    "wasi:clocks",
    "wasi:random",
    "wasi:cli",
    "wasi:filesystem",
    "wasi:sockets",
    "wasi:http",
];

/// How often the epoch advances: the granularity of timeouts and of yielding to other tasks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled components are cached, by digest.
    pub cache_dir: PathBuf,
    /// Instances that may exist at once on the node (pool slots).
    pub max_instances: u32,
    /// The largest memory limit a function may ask for.
    pub max_memory: u64,
}

/// Why a component cannot be deployed. Messages are written for the user who deploys it.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error(
        "not a WebAssembly component: {0}. Build a wasi:http component, e.g. `cargo build --release --target wasm32-wasip2`"
    )]
    Invalid(String),
    #[error(
        "the component does not export {HANDLER_EXPORT} (it exports: {exports}). A function must be a wasi:http proxy, e.g. built with `wasi::http::proxy::export!` or `#[wstd::http_server]`"
    )]
    NoHandler { exports: String },
    #[error(
        "the component imports what Nubo does not provide: {missing}. Nubo provides WASI 0.2 {provided}"
    )]
    MissingImports { missing: String, provided: String },
    #[error("the component cannot be linked: {0}")]
    Link(String),
    #[error("the compiled-component cache failed: {0}")]
    Cache(String),
}

pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<InstanceState>,
    cache_dir: PathBuf,
    cache_tag: String,
    max_memory: u64,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl WasmRuntime {
    pub fn new(opts: RuntimeOptions) -> anyhow::Result<WasmRuntime> {
        let mut pool = PoolingAllocationConfig::new();
        let max = opts.max_instances.max(1);
        pool.total_component_instances(max)
            .total_stacks(max)
            .total_core_instances(max * 16)
            .total_memories(max * 2)
            .total_tables(max * 8)
            .max_memories_per_component(8)
            .max_tables_per_component(32)
            .max_core_instances_per_component(64)
            .max_memory_size(opts.max_memory as usize);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .wasm_component_model(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;

        std::fs::create_dir_all(&opts.cache_dir)?;
        let cache_tag = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("nubo-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })?;
        Ok(WasmRuntime {
            engine,
            linker,
            cache_dir: opts.cache_dir,
            cache_tag,
            max_memory: opts.max_memory,
            stop_ticker,
        })
    }

    pub fn max_memory(&self) -> u64 {
        self.max_memory
    }

    fn cache_path(&self, digest: &str) -> PathBuf {
        self.cache_dir
            .join(format!("{digest}-{}.cwasm", self.cache_tag))
    }

    /// Checks a component, compiles it and caches the compiled form (deploy time, never on the
    /// request path). Blocking and CPU-heavy: call it from a blocking thread.
    pub fn prepare(&self, digest: &str, wasm: &[u8]) -> Result<WasmComponent, ComponentError> {
        if !is_component_binary(wasm) {
            let what = if wasm.starts_with(b"\0asm") {
                "it is a core WebAssembly module, not a component".to_string()
            } else {
                "the file does not start with the WebAssembly magic bytes".to_string()
            };
            return Err(ComponentError::Invalid(what));
        }
        let cached = self.cache_path(digest);
        if cached.is_file()
            && let Ok(c) = self.load_cached(&cached)
        {
            return self.link(digest, c);
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| ComponentError::Invalid(format!("{e:#}")))?;
        let linked = self.link(digest, component.clone())?;
        let bytes = component
            .serialize()
            .map_err(|e| ComponentError::Cache(format!("{e:#}")))?;
        write_atomically(&cached, &bytes).map_err(|e| ComponentError::Cache(e.to_string()))?;
        Ok(linked)
    }

    /// Loads a component that was prepared before: from the cache, or compiled again when the
    /// cache is missing or was made by another engine version.
    pub fn load(&self, digest: &str, wasm_path: &Path) -> Result<WasmComponent, ComponentError> {
        let cached = self.cache_path(digest);
        if let Ok(c) = self.load_cached(&cached) {
            return self.link(digest, c);
        }
        let wasm = std::fs::read(wasm_path)
            .map_err(|e| ComponentError::Cache(format!("reading {}: {e}", wasm_path.display())))?;
        self.prepare(digest, &wasm)
    }

    fn load_cached(&self, path: &Path) -> anyhow::Result<Component> {
        // SAFETY: the cache directory is private to this node and only ever holds files that
        // `prepare` wrote from `Component::serialize` of this engine configuration (the file name
        // carries the engine's compatibility hash); wasmtime still checks the header.
        let c = unsafe { Component::deserialize_file(&self.engine, path)? };
        Ok(c)
    }

    fn link(&self, digest: &str, component: Component) -> Result<WasmComponent, ComponentError> {
        let ty = component.component_type();
        let missing: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .filter(|name| !is_provided(name))
            .collect();
        if !missing.is_empty() {
            return Err(ComponentError::MissingImports {
                missing: missing.join(", "),
                provided: PROVIDED_PACKAGES.join(", "),
            });
        }
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        if !exports.iter().any(|e| interface_of(e) == HANDLER_EXPORT) {
            return Err(ComponentError::NoHandler {
                exports: if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                },
            });
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(ProxyPre::new)
            .map_err(|e| ComponentError::Link(format!("{e:#}")))?;
        Ok(WasmComponent {
            pre,
            digest: digest.to_string(),
        })
    }
}

fn is_component_binary(bytes: &[u8]) -> bool {
    // Component layer: magic, then version 0x0d 0x00 and layer 0x01 0x00.
    bytes.len() >= 8 && bytes.starts_with(b"\0asm") && bytes[6..8] == [0x01, 0x00]
}

/// `wasi:http/incoming-handler@0.2.4` -> `wasi:http/incoming-handler`.
fn interface_of(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

fn is_provided(import: &str) -> bool {
    let (path, version) = import.split_once('@').unwrap_or((import, ""));
    let package = path.split('/').next().unwrap_or(path);
    PROVIDED_PACKAGES.contains(&package) && version.starts_with("0.2.")
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A checked, compiled and pre-linked component: instantiating it is only allocation and
/// initialisation (microseconds), never compilation.
#[derive(Clone)]
pub struct WasmComponent {
    pre: ProxyPre<InstanceState>,
    digest: String,
}

/// What every instance of a revision is started with.
#[derive(Clone)]
pub struct InstanceConfig {
    pub env: Vec<(String, String)>,
    /// Memory limit of one instance, in bytes.
    pub memory: u64,
    /// Requests one instance may serve in turn (1 = a fresh instance per request).
    pub reuse: u32,
    pub log: LogFn,
    /// Linear memory held by the live instances of this configuration, in bytes (each
    /// instance adds its own after every invocation and takes it back when dropped).
    pub memory_in_use: Arc<AtomicI64>,
}

pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

/// The memory limit of one instance, across all of its linear memories. Remembers whether a
/// growth was refused, which is how a trap is recognised as out-of-memory.
struct MemoryLimiter {
    limit: usize,
    used: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self.used.saturating_sub(current).saturating_add(desired);
        if next > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.used = next;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// How one invocation ended, from the platform's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest returned from `handle` after setting a response.
    Ok,
    /// The invocation ran past its timeout and was stopped.
    Timeout,
    /// The guest needed more memory than its limit and trapped.
    MemoryLimit,
    /// The guest trapped (a panic, an `unreachable`, ...); the reason is for the log.
    Trap(String),
    /// The guest returned from `handle` without setting a response.
    NoResponse,
    /// The request could not be handed to the guest.
    BadRequest(String),
    /// The guest answered with an error code instead of a response.
    ErrorResponse(String),
    /// The node has no free instance slot (every pooling-allocator slot is in use).
    NoCapacity,
}

/// A started instance.
pub struct WasmInstance {
    store: Store<InstanceState>,
    proxy: Proxy,
    ctx: Arc<LogContext>,
    stdout: LogStream,
    stderr: LogStream,
    served: u32,
    reuse: u32,
    memory_in_use: Arc<AtomicI64>,
    /// This instance's share of `memory_in_use`.
    memory_counted: i64,
}

impl Drop for WasmInstance {
    fn drop(&mut self) {
        self.memory_in_use
            .fetch_sub(self.memory_counted, Ordering::Relaxed);
        self.stdout.flush_partial();
        self.stderr.flush_partial();
    }
}

impl WasmComponent {
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Starts an instance: a fresh store and an instantiation of the pre-linked component.
    pub async fn instantiate(
        &self,
        id: &str,
        cfg: &InstanceConfig,
    ) -> Result<WasmInstance, Outcome> {
        let ctx = Arc::new(LogContext {
            instance: id.into(),
            invocation: Mutex::new(None),
            sink: cfg.log.clone(),
        });
        let stdout = LogStream::new("stdout", ctx.clone());
        let stderr = LogStream::new("stderr", ctx.clone());
        let wasi = WasiCtx::builder()
            .envs(&cfg.env)
            .args(&["nubo"])
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let mut store = Store::new(
            self.pre.engine(),
            InstanceState {
                wasi,
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                limiter: MemoryLimiter {
                    limit: cfg.memory as usize,
                    used: 0,
                    hit: false,
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        // Yield to the scheduler every epoch tick: a guest in a loop can then be timed out, and
        // never starves other requests of a thread.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let proxy = match self.pre.instantiate_async(&mut store).await {
            Ok(p) => p,
            Err(_) if store.data().limiter.hit => return Err(Outcome::MemoryLimit),
            Err(e)
                if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some() =>
            {
                return Err(Outcome::NoCapacity);
            }
            Err(e) => return Err(Outcome::Trap(format!("instantiation failed: {e:#}"))),
        };
        Ok(WasmInstance {
            store,
            proxy,
            ctx,
            stdout,
            stderr,
            served: 0,
            reuse: cfg.reuse.max(1),
            memory_in_use: cfg.memory_in_use.clone(),
            memory_counted: 0,
        })
    }
}

impl WasmInstance {
    pub fn id(&self) -> &str {
        &self.ctx.instance
    }

    /// Serves one request and returns its response as soon as the guest has set it; `timeout`
    /// covers the whole invocation, body included. When the guest is done, `on_done` gets the
    /// outcome and, if it may serve again, the instance.
    ///
    /// The guest runs on the caller's task; only when it sets the response before finishing
    /// (a streamed body) does the rest of it move to a task of its own, so a small response
    /// costs no task spawn and no cross-thread wake-up.
    pub async fn serve<B, F>(
        mut self,
        mut req: hyper::Request<B>,
        invocation: &str,
        timeout: Duration,
        on_done: F,
    ) -> Result<hyper::Response<ResponseBody>, Outcome>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
        F: FnOnce(&Outcome, Option<WasmInstance>) + Send + 'static,
    {
        // wasi:http gives the guest an authority; an HTTP/1.0 request may carry none.
        if req.uri().authority().is_none() && !req.headers().contains_key(http::header::HOST) {
            req.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        let (tx, mut rx) = oneshot::channel();
        // A refused growth in an earlier request that the guest survived says nothing of this one.
        self.store.data_mut().limiter.hit = false;
        *self
            .ctx
            .invocation
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(invocation.into());
        let responded = Arc::new(AtomicBool::new(false));
        let flag = responded.clone();
        let prepared = self
            .store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .and_then(|req| {
                let out = self
                    .store
                    .data_mut()
                    .http()
                    .new_response_outparam_from_callback(move |r| {
                        flag.store(true, Ordering::Release);
                        let _ = tx.send(r);
                    })?;
                Ok((req, out))
            });
        let (req, out) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let outcome = Outcome::BadRequest(format!("{e:#}"));
                drop(self);
                on_done(&outcome, None);
                return Err(outcome);
            }
        };
        let mut run = Box::pin(async move {
            let handler = self.proxy.wasi_http_incoming_handler();
            let call = handler.call_handle(&mut self.store, req, out);
            let outcome = match tokio::time::timeout(timeout, call).await {
                Err(_) => Outcome::Timeout,
                Ok(Err(_)) if self.store.data().limiter.hit => Outcome::MemoryLimit,
                Ok(Err(e)) => Outcome::Trap(format!("{e:#}")),
                Ok(Ok(())) if !responded.load(Ordering::Acquire) => Outcome::NoResponse,
                Ok(Ok(())) => Outcome::Ok,
            };
            self.served += 1;
            let used = self.store.data().limiter.used as i64;
            self.memory_in_use
                .fetch_add(used - self.memory_counted, Ordering::Relaxed);
            self.memory_counted = used;
            *self
                .ctx
                .invocation
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            // A trapped or timed-out instance is never reused: its state is unknown.
            let reusable = outcome == Outcome::Ok && self.served < self.reuse;
            if reusable {
                on_done(&outcome, Some(self));
            } else {
                // Drop the store first: that closes a response channel a failed guest never used.
                drop(self);
                on_done(&outcome, None);
            }
            outcome
        });
        let answer = tokio::select! {
            biased;
            outcome = &mut run => match rx.try_recv() {
                Ok(answer) => answer,
                Err(_) => return Err(outcome),
            },
            answer = &mut rx => {
                // The guest is still writing the body: let it finish on its own task.
                tokio::spawn(run);
                match answer {
                    Ok(answer) => answer,
                    Err(_) => return Err(Outcome::NoResponse),
                }
            }
        };
        answer.map_err(|code| Outcome::ErrorResponse(format!("{code:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(dir: &Path) -> WasmRuntime {
        WasmRuntime::new(RuntimeOptions {
            cache_dir: dir.to_path_buf(),
            max_instances: 4,
            max_memory: 64 << 20,
        })
        .unwrap()
    }

    #[test]
    fn non_components_are_refused_with_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let err = rt.prepare("a", b"just text").err().unwrap();
        assert!(err.to_string().contains("magic bytes"), "{err}");
        let core = wat::parse_str("(module)").unwrap();
        let err = rt.prepare("b", &core).err().unwrap();
        assert!(err.to_string().contains("core WebAssembly module"), "{err}");
    }

    #[test]
    fn missing_imports_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let wasm = wat::parse_str(
            r#"(component
                (import "acme:kv/store@1.0.0" (instance))
                (import "wasi:clocks/wall-clock@0.2.0" (instance))
                (import "wasi:nn/graph@0.2.0" (instance)))"#,
        )
        .unwrap();
        let err = rt.prepare("c", &wasm).err().unwrap();
        let msg = err.to_string();
        assert!(
            matches!(err, ComponentError::MissingImports { .. }),
            "{msg}"
        );
        assert!(
            msg.contains("acme:kv/store@1.0.0, wasi:nn/graph@0.2.0"),
            "{msg}"
        );
        assert!(!msg.contains("wall-clock"), "{msg}");
    }

    #[test]
    fn a_component_without_the_handler_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let wasm = wat::parse_str("(component)").unwrap();
        let err = rt.prepare("d", &wasm).err().unwrap();
        assert!(matches!(err, ComponentError::NoHandler { .. }), "{err}");
        assert!(err.to_string().contains("exports: nothing"), "{err}");
    }

    #[test]
    fn provided_imports() {
        assert!(is_provided("wasi:io/streams@0.2.6"));
        assert!(is_provided("wasi:http/types@0.2.12"));
        assert!(!is_provided("wasi:http/types@0.3.0"));
        assert!(!is_provided("wasi:keyvalue/store@0.2.0"));
        assert_eq!(
            interface_of("wasi:http/incoming-handler@0.2.4"),
            HANDLER_EXPORT
        );
    }
}
