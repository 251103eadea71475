//! A deployed function as the request path sees it: its current revision with the pool of its
//! instances (a compiled, pre-linked component for wasm; an [`AppRevision`] for processes).

use crate::AppState;
use crate::app::AppRevision;
use crate::metrics::{FunctionLabel, ModeLabels, StatusLabels, function_label};
use nubo_manifest::FunctionSpec;
use nubo_sandbox::{InstanceConfig, WasmComponent, WasmInstance};
use nubo_scheduler::{Pool, PoolLimits};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct LiveFunction {
    pub name: String,
    pub project: String,
    pub revision: i64,
    pub spec: FunctionSpec,
    /// The artifact (component or app archive).
    pub digest: String,
    pub runner: Runner,
    /// Memory limit in GB, for usage.
    pub gb: f64,
    pub label: FunctionLabel,
    pub duration: Histogram,
    pub inflight: Gauge,
    pub cold_new: Counter,
    pub cold_new_duration: Histogram,
    pub gb_seconds: prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
    /// Invocations answered 200, the common case, without a label lookup.
    pub ok: Counter,
    /// The function's recent past (shared by its revisions).
    pub series: Arc<crate::series::Series>,
}

pub enum Runner {
    Wasm(WasmRunner),
    Process(Arc<AppRevision>),
}

pub struct WasmRunner {
    pub component: WasmComponent,
    pub pool: Arc<Pool<WasmInstance>>,
    pub config: InstanceConfig,
    /// Time spent running the guest, for `nubo_wasm_exec_seconds_total`.
    pub exec_seconds:
        prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
}

impl WasmRunner {
    pub fn new(
        state: &AppState,
        name: &str,
        revision: i64,
        spec: &FunctionSpec,
        component: WasmComponent,
    ) -> WasmRunner {
        let log = state.logs.sink(name);
        let pool = Pool::new(PoolLimits {
            max: spec.scale.max as usize,
            queue: spec.scale.queue as usize,
            queue_wait: spec.scale.queue_wait.to_std(),
            idle: spec.scale.idle.to_std(),
        });
        let config = InstanceConfig {
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain([
                    ("NUBO_FUNCTION".to_string(), name.to_string()),
                    ("NUBO_REVISION".to_string(), revision.to_string()),
                ])
                .collect(),
            memory: spec.memory.bytes(),
            reuse: spec.reuse,
            log,
            memory_in_use: Default::default(),
        };
        WasmRunner {
            component,
            pool,
            config,
            exec_seconds: state
                .metrics
                .wasm_exec_seconds
                .get_or_create(&function_label(name))
                .clone(),
        }
    }
}

impl LiveFunction {
    pub fn new(
        state: &AppState,
        name: &str,
        project: &str,
        revision: i64,
        spec: FunctionSpec,
        digest: &str,
        runner: Runner,
    ) -> Arc<LiveFunction> {
        let label = function_label(name);
        let mode = ModeLabels {
            function: name.to_string(),
            mode: "new".into(),
        };
        let m = &state.metrics;
        Arc::new(LiveFunction {
            name: name.to_string(),
            project: project.to_string(),
            revision,
            gb: spec.memory.bytes() as f64 / (1u64 << 30) as f64,
            spec,
            digest: digest.to_string(),
            runner,
            duration: m.duration.get_or_create(&label).clone(),
            inflight: m.inflight.get_or_create(&label).clone(),
            cold_new: m.cold_starts.get_or_create(&mode).clone(),
            cold_new_duration: m.cold_start_duration.get_or_create(&mode).clone(),
            gb_seconds: m.gb_seconds.get_or_create(&label).clone(),
            ok: m
                .invocations
                .get_or_create(&StatusLabels {
                    function: name.to_string(),
                    status: "200".into(),
                })
                .clone(),
            label,
            series: state
                .series
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name.to_string())
                .or_default()
                .clone(),
        })
    }

    pub fn next_instance_id(&self) -> String {
        instance_id(&self.name, self.revision)
    }
}

/// `<function>-r<revision>-<n>`, `n` unique per server: revision numbers start again when a
/// function is removed and deployed anew, and process instances name their cgroups by it.
pub fn instance_id(function: &str, revision: i64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{function}-r{revision}-{n:x}")
}

/// Reclaims instances idle longer than their function's `scale.idle`; keeps process functions'
/// `min` started and `warm` frozen.
pub async fn reap_idle_instances(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let table = state.table();
        let now = Instant::now();
        for f in table.functions() {
            match &f.runner {
                Runner::Wasm(w) => drop(w.pool.reap(now)),
                Runner::Process(app) => app.maintain(now),
            }
        }
        drop(table);
        state.pinned.maintain(&state, now).await;
    }
}
