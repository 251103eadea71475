//! Prometheus metrics (interface.md §5), encoded at `/_nubo/metrics`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub function: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub function: String,
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub function: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub function: String,
    pub instance: String,
}

/// One instance's figures at scrape time.
#[derive(Clone, Debug)]
pub struct InstanceSample {
    pub labels: InstanceLabels,
    pub memory_bytes: u64,
    pub cpu_seconds: f64,
}

/// Per-instance series, replaced whole at every scrape: instances come and go, and a series of
/// a stopped instance must not linger.
#[derive(Debug, Default)]
pub struct InstanceSamples(Mutex<Vec<InstanceSample>>);

impl InstanceSamples {
    pub fn replace(&self, samples: Vec<InstanceSample>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = samples;
    }
}

impl Collector for InstanceSamples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut memory = encoder.encode_descriptor(
            "instance_memory_bytes",
            "Memory charged to each process or lambda instance (its cgroup)",
            None,
            MetricType::Gauge,
        )?;
        for s in &samples {
            let m = prometheus_client::metrics::gauge::ConstGauge::new(s.memory_bytes as i64);
            m.encode(memory.encode_family(&s.labels)?)?;
        }
        let mut cpu = encoder.encode_descriptor(
            "instance_cpu_seconds",
            "CPU time used by each process or lambda instance (its cgroup)",
            None,
            MetricType::Counter,
        )?;
        for s in &samples {
            let c = prometheus_client::metrics::counter::ConstCounter::new(s.cpu_seconds);
            c.encode(cpu.encode_family(&s.labels)?)?;
        }
        Ok(())
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~100 s.
    Histogram::new(exponential_buckets(0.00005, 2.5, 17))
}

pub struct Metrics {
    registry: Registry,
    pub invocations: Family<StatusLabels, Counter>,
    pub duration: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    pub cold_starts: Family<ModeLabels, Counter>,
    pub cold_start_duration: Family<ModeLabels, Histogram, fn() -> Histogram>,
    pub inflight: Family<FunctionLabel, Gauge>,
    pub instances: Family<StateLabels, Gauge>,
    pub queue_depth: Family<FunctionLabel, Gauge>,
    pub gb_seconds: Family<FunctionLabel, Counter<f64, AtomicU64>>,
    pub wasm_memory: Family<FunctionLabel, Gauge>,
    pub wasm_exec_seconds: Family<FunctionLabel, Counter<f64, AtomicU64>>,
    pub instance_samples: Arc<InstanceSamples>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            invocations: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            cold_starts: Family::default(),
            cold_start_duration: Family::new_with_constructor(latency_histogram),
            inflight: Family::default(),
            instances: Family::default(),
            queue_depth: Family::default(),
            gb_seconds: Family::default(),
            wasm_memory: Family::default(),
            wasm_exec_seconds: Family::default(),
            instance_samples: Arc::new(InstanceSamples::default()),
            registry: Registry::with_prefix("nubo"),
        };
        m.registry
            .register_collector(Box::new(m.instance_samples.clone()));
        m.registry.register(
            "invocations",
            "Invocations by function and HTTP status",
            m.invocations.clone(),
        );
        m.registry.register(
            "invocation_duration_seconds",
            "Time from request to response headers, per function",
            m.duration.clone(),
        );
        m.registry.register(
            "cold_starts",
            "Instances started for a waiting request, by start mode",
            m.cold_starts.clone(),
        );
        m.registry.register(
            "cold_start_duration_seconds",
            "Time a request waited for its instance to start, by start mode",
            m.cold_start_duration.clone(),
        );
        m.registry.register(
            "inflight_requests",
            "Requests being served now, per function",
            m.inflight.clone(),
        );
        m.registry.register(
            "instances",
            "Instances by function and state (idle, busy, starting)",
            m.instances.clone(),
        );
        m.registry.register(
            "queue_depth",
            "Requests waiting for an instance, per function",
            m.queue_depth.clone(),
        );
        m.registry.register(
            "usage_gb_seconds",
            "Memory limit in GB times invocation duration in seconds",
            m.gb_seconds.clone(),
        );
        m.registry.register(
            "wasm_memory_bytes",
            "Linear memory held by a wasm function's live instances",
            m.wasm_memory.clone(),
        );
        m.registry.register(
            "wasm_exec_seconds",
            "Time spent running a wasm function's guest code",
            m.wasm_exec_seconds.clone(),
        );
        m
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

pub fn function_label(name: &str) -> FunctionLabel {
    FunctionLabel {
        function: name.to_string(),
    }
}
