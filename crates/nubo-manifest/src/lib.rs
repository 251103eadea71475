//! `nubo.yaml`: the types of a project manifest, its parsing and validation.
//!
//! This crate owns what a user may write in a manifest, the defaults of what they leave out,
//! and every message they see when they get it wrong. It knows nothing of HTTP, the store or
//! sandboxes: the server and the CLI both call [`parse`] and trust the [`Manifest`] it returns.
//!
//! Errors name the file, the key path (`functions.web.memory`) and what is allowed, and all
//! problems of a manifest are reported together so a user fixes them in one pass.

mod quantity;
mod raw;
mod validate;

pub use quantity::{Duration, Size};
pub use validate::{
    FunctionName, ProjectName, RESERVED_PATH_PREFIXES, routes_overlap, validate_function_name,
};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A validated manifest: names match the pattern, quantities are parsed, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub project: ProjectName,
    /// Functions in name order.
    pub functions: Vec<Function>,
}

/// One function of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: FunctionName,
    /// The shell command `nubo deploy` runs (in the manifest's directory) before uploading.
    pub build: Option<String>,
    pub spec: FunctionSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Wasm,
    Process,
    Lambda,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Wasm => "wasm",
            Kind::Process => "process",
            Kind::Lambda => "lambda",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that defines a revision of a function besides its artifact.
///
/// This is what the server stores with each revision (as JSON): two deploys with equal specs and
/// equal artifact digests are the same revision. `build` is deliberately absent: it is how the
/// client made the artifact, not what runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub kind: Kind,
    /// wasm: the component path relative to the manifest (the deploy maps it to a digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// process and lambda: the app directory relative to the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    pub start_timeout: Duration,
    pub warm: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonApp>,
    /// lambda: exported as `_HANDLER` (custom runtimes read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    pub env: BTreeMap<String, String>,
    pub memory: Size,
    pub timeout: Duration,
    pub concurrency: u32,
    pub reuse: u32,
    #[serde(rename = "async")]
    pub async_policy: AsyncPolicy,
    pub scale: Scale,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cron: Vec<String>,
}

/// A Python web app that new instances fork from a seed process that imported it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PythonApp {
    Wsgi(String),
    Asgi(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncPolicy {
    pub retries: u32,
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale {
    /// Instances always kept started.
    pub min: u32,
    /// Hard cap on instances of one revision.
    pub max: u32,
    /// An instance idle this long is reclaimed.
    pub idle: Duration,
    /// Requests that may wait for an instance when all `max` are busy; beyond: 429.
    pub queue: u32,
    /// How long a request may wait in that queue; beyond: 503.
    pub queue_wait: Duration,
}

/// An extra HTTP trigger: an exact path, or a prefix when it ends in `/*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub path: String,
    /// Upper-case method names; empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

impl Route {
    /// The prefix (without the trailing `*`) when this is a prefix route.
    pub fn prefix(&self) -> Option<&str> {
        self.path.strip_suffix('*')
    }

    pub fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }
}

/// Defaults, in one place, as documented in the README's manifest reference.
pub mod defaults {
    pub const MEMORY: u64 = 128 * 1024 * 1024;
    pub const TIMEOUT_MS: u64 = 30_000;
    pub const PROCESS_CONCURRENCY: u32 = 16;
    pub const START_TIMEOUT_MS: u64 = 30_000;
    pub const ASYNC_RETRIES: u32 = 2;
    pub const ASYNC_MAX_AGE_MS: u64 = 6 * 3600 * 1000;
    pub const SCALE_MAX: u32 = 100;
    pub const SCALE_IDLE_MS: u64 = 60_000;
    pub const QUEUE: u32 = 100;
    pub const QUEUE_WAIT_MS: u64 = 10_000;
}

/// Everything wrong with one manifest.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ManifestError {
    /// The file as the user named it (`nubo.yaml` when unknown).
    pub file: String,
    pub problems: Vec<Problem>,
}

/// One problem: where (a key path such as `functions.web.memory`, empty for the whole file) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.path.is_empty() {
                write!(f, "{}: {}", self.file, p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file, p.path, p.message)?;
            }
        }
        Ok(())
    }
}

/// Parses and validates a manifest. `file` is only used in messages.
pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
    let fail = |problems| ManifestError {
        file: file.to_string(),
        problems,
    };
    let raw = raw::parse(text).map_err(|p| fail(vec![p]))?;
    validate::manifest(raw).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
project: shop
functions:
  hello:
    kind: wasm
    component: hello.wasm
    build: cargo build --release --target wasm32-wasip2
    env: { GREETING: hi }
    memory: 64Mi
    timeout: 2s
    reuse: 8
    async: { retries: 3, max_age: 1h }
    scale: { min: 0, max: 10, idle: 30s, queue: 5, queue_wait: 500ms }
    routes:
      - path: /hello
        methods: [GET, post]
      - path: /static/*
    cron: ["*/5 * * * *", "*/10 * * * * *"]
  web:
    kind: process
    dir: ./web
    command: [python3, app.py]
    ready: /health
    warm: 2
    cpu: 0.5
  api:
    kind: process
    python: { wsgi: "app:app" }
  legacy:
    kind: lambda
    dir: ./legacy
"#;

    #[test]
    fn full_manifest_parses_with_defaults() {
        let m = parse("nubo.yaml", FULL).unwrap();
        assert_eq!(m.project.as_str(), "shop");
        let names: Vec<_> = m.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["api", "hello", "legacy", "web"]);
        let hello = &m.functions[1];
        assert_eq!(hello.spec.memory.bytes(), 64 << 20);
        assert_eq!(hello.spec.timeout.millis(), 2000);
        assert_eq!(hello.spec.reuse, 8);
        assert_eq!(hello.spec.concurrency, 1);
        assert_eq!(hello.spec.routes[0].methods, ["GET", "POST"]);
        assert_eq!(hello.spec.routes[1].prefix(), Some("/static/"));
        assert_eq!(hello.spec.scale.queue_wait.millis(), 500);
        let web = &m.functions[3];
        assert_eq!(web.spec.concurrency, defaults::PROCESS_CONCURRENCY);
        assert_eq!(web.spec.memory.bytes(), defaults::MEMORY);
        assert_eq!(web.spec.scale.max, defaults::SCALE_MAX);
        let legacy = &m.functions[2];
        assert_eq!(legacy.spec.command, ["./bootstrap"]);
        assert_eq!(legacy.spec.concurrency, 1);
        let api = &m.functions[0];
        assert_eq!(api.spec.python, Some(PythonApp::Wsgi("app:app".into())));
        assert_eq!(api.spec.dir.as_deref(), Some("."));
    }

    #[test]
    fn spec_round_trips_through_json() {
        let m = parse("nubo.yaml", FULL).unwrap();
        for f in &m.functions {
            let json = serde_json::to_string(&f.spec).unwrap();
            let back: FunctionSpec = serde_json::from_str(&json).unwrap();
            assert_eq!(back, f.spec);
        }
    }

    #[test]
    fn all_problems_are_reported_together() {
        let err = parse(
            "x.yaml",
            "project: Shop\nfunctions:\n  a:\n    kind: wasm\n    component: a.wasm\n    memory: 1XB\n    timeout: 0s\n",
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(err.to_string().starts_with("x.yaml: project: "), "{err}");
    }
}
