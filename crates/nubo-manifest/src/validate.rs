//! From [`RawManifest`] to [`Manifest`]: names, quantities, per-kind keys, routes and schedules.

use crate::raw::{RawFunction, RawManifest, RawRoute, Scalar};
use crate::{
    AsyncPolicy, Duration, Function, FunctionSpec, Kind, Manifest, Problem, PythonApp, Route,
    Scale, Size, defaults,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Path prefixes owned by the platform; user routes may not start with them.
pub const RESERVED_PATH_PREFIXES: [&str; 3] = ["/_nubo", "/fn/", "/2015-03-31/"];

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
const NAME_RULE: &str =
    "use 1 to 40 characters: a lower-case letter first, then lower-case letters, digits or '-'";

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                if is_valid_name(&s) {
                    Ok($name(s))
                } else {
                    Err(format!("invalid {} name {:?}: {NAME_RULE}", $what, s))
                }
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A project name: `[a-z][a-z0-9-]{0,39}`.
    ProjectName,
    "project"
);
name_type!(
    /// A function name: `[a-z][a-z0-9-]{0,39}`; unique on a node.
    FunctionName,
    "function"
);

fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 40
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub fn validate_function_name(s: &str) -> Result<FunctionName, String> {
    FunctionName::try_from(s.to_string())
}

/// Collects problems with their key paths.
struct Check {
    problems: Vec<Problem>,
}

impl Check {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn size(&mut self, path: &str, v: Option<&Scalar>, default: u64, min: u64, max: u64) -> Size {
        let Some(Scalar(text)) = v else {
            return Size::from_bytes(default);
        };
        match Size::parse(text) {
            Ok(s) if s.bytes() < min || s.bytes() > max => {
                self.fail(
                    path,
                    format!(
                        "{text} is out of range: allowed {} to {}",
                        Size::from_bytes(min),
                        Size::from_bytes(max)
                    ),
                );
                Size::from_bytes(default)
            }
            Ok(s) => s,
            Err(e) => {
                self.fail(path, e);
                Size::from_bytes(default)
            }
        }
    }

    fn duration(
        &mut self,
        path: &str,
        v: Option<&Scalar>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Duration {
        let Some(Scalar(text)) = v else {
            return Duration::from_millis(default);
        };
        match Duration::parse(text) {
            Ok(d) if d.millis() < min || d.millis() > max => {
                self.fail(
                    path,
                    format!(
                        "{text} is out of range: allowed {} to {}",
                        Duration::from_millis(min),
                        Duration::from_millis(max)
                    ),
                );
                Duration::from_millis(default)
            }
            Ok(d) => d,
            Err(e) => {
                self.fail(path, e);
                Duration::from_millis(default)
            }
        }
    }

    fn range(&mut self, path: &str, v: Option<u32>, default: u32, min: u32, max: u32) -> u32 {
        match v {
            None => default,
            Some(n) if n < min || n > max => {
                self.fail(path, format!("{n} is out of range: allowed {min} to {max}"));
                default
            }
            Some(n) => n,
        }
    }

    fn relative_path(&mut self, path: &str, v: &Scalar) -> String {
        let p = v.0.trim();
        if p.is_empty() {
            self.fail(path, "must not be empty");
        } else if p.starts_with('/') {
            self.fail(
                path,
                format!("{p:?} is absolute: use a path relative to the manifest's directory"),
            );
        }
        p.to_string()
    }
}

pub(crate) fn manifest(raw: RawManifest) -> Result<Manifest, Vec<Problem>> {
    let mut c = Check {
        problems: Vec::new(),
    };
    let project = match raw.project {
        None => {
            c.fail(
                "project",
                "missing: every manifest names its project, e.g. `project: shop`",
            );
            None
        }
        Some(Scalar(name)) => ProjectName::try_from(name)
            .map_err(|e| c.fail("project", e))
            .ok(),
    };
    let raw_functions = raw.functions.unwrap_or_default();
    if raw_functions.is_empty() {
        c.fail(
            "functions",
            "at least one function is required, e.g. `functions: { hello: { kind: wasm, component: hello.wasm } }`",
        );
    }
    let mut functions = Vec::new();
    for (name, f) in raw_functions {
        let path = format!("functions.{name}");
        let fname = FunctionName::try_from(name)
            .map_err(|e| c.fail(path.clone(), e))
            .ok();
        let function = function(&mut c, &path, f);
        if let (Some(name), Some((build, spec))) = (fname, function) {
            functions.push(Function { name, build, spec });
        }
    }
    duplicate_routes(&mut c, &functions);
    match (project, c.problems.is_empty()) {
        (Some(project), true) => Ok(Manifest { project, functions }),
        _ => Err(c.problems),
    }
}

fn function(c: &mut Check, path: &str, f: RawFunction) -> Option<(Option<String>, FunctionSpec)> {
    let kind = match f.kind.as_ref().map(|s| s.0.as_str()) {
        Some("wasm") => Kind::Wasm,
        Some("process") => Kind::Process,
        Some("lambda") => Kind::Lambda,
        Some(other) => {
            c.fail(
                format!("{path}.kind"),
                format!("unknown kind {other:?}: allowed wasm, process, lambda"),
            );
            return None;
        }
        None => {
            c.fail(
                format!("{path}.kind"),
                "missing: set `kind:` to wasm, process or lambda",
            );
            return None;
        }
    };
    let at = |key: &str| format!("{path}.{key}");

    // Keys that belong to other kinds are refused rather than ignored: a typo'd manifest should
    // not deploy something different from what its author reads.
    let present = [
        ("component", f.component.is_some(), &[Kind::Wasm][..]),
        ("reuse", f.reuse.is_some(), &[Kind::Wasm]),
        ("dir", f.dir.is_some(), &[Kind::Process, Kind::Lambda]),
        (
            "command",
            f.command.is_some(),
            &[Kind::Process, Kind::Lambda],
        ),
        ("ready", f.ready.is_some(), &[Kind::Process]),
        (
            "start_timeout",
            f.start_timeout.is_some(),
            &[Kind::Process, Kind::Lambda],
        ),
        ("warm", f.warm.is_some(), &[Kind::Process, Kind::Lambda]),
        ("cpu", f.cpu.is_some(), &[Kind::Process, Kind::Lambda]),
        ("python", f.python.is_some(), &[Kind::Process]),
        ("handler", f.handler.is_some(), &[Kind::Lambda]),
    ];
    for (key, is_set, kinds) in present {
        if is_set && !kinds.contains(&kind) {
            let allowed: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
            c.fail(
                at(key),
                format!(
                    "not allowed for kind {kind} (only for {})",
                    allowed.join(", ")
                ),
            );
        }
    }

    let component = match (kind, &f.component) {
        (Kind::Wasm, None) => {
            c.fail(
                at("component"),
                "missing: a wasm function names its wasi:http component file, e.g. `component: target/wasm32-wasip2/release/hello.wasm`",
            );
            None
        }
        (Kind::Wasm, Some(p)) => Some(c.relative_path(&at("component"), p)),
        _ => None,
    };
    let dir = match kind {
        Kind::Wasm => None,
        _ => Some(
            f.dir
                .as_ref()
                .map(|d| c.relative_path(&at("dir"), d))
                .unwrap_or_else(|| ".".into()),
        ),
    };
    let python = f.python.as_ref().and_then(|p| python_app(c, path, p));
    let handler = f.handler.as_ref().map(|Scalar(h)| h.clone());
    let mut command: Vec<String> = f
        .command
        .as_ref()
        .map(|v| v.iter().map(|s| s.0.clone()).collect())
        .unwrap_or_default();
    if f.command.is_some() && command.first().is_none_or(|s| s.trim().is_empty()) {
        c.fail(at("command"), "must name a program, e.g. [python3, app.py]");
    }
    match kind {
        Kind::Process if command.is_empty() && f.python.is_none() => c.fail(
            at("command"),
            "missing: a process function needs `command` (e.g. [python3, app.py]) or `python: { wsgi: \"module:app\" }`",
        ),
        Kind::Lambda if command.is_empty() => command = vec!["./bootstrap".into()],
        _ => {}
    }
    let ready = f.ready.as_ref().map(|r| {
        if !r.0.starts_with('/') {
            c.fail(
                at("ready"),
                format!("{:?} must be a path starting with '/', e.g. /health", r.0),
            );
        }
        r.0.clone()
    });

    let mut env = BTreeMap::new();
    for (k, Scalar(v)) in f.env.unwrap_or_default() {
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            c.fail(
                format!("{path}.env.{k}"),
                "invalid variable name: use letters, digits and '_', not starting with a digit",
            );
        } else if k.starts_with("NUBO_") {
            c.fail(
                format!("{path}.env.{k}"),
                "names starting with NUBO_ are set by the platform",
            );
        }
        env.insert(k, v);
    }

    const MI: u64 = 1 << 20;
    let memory = c.size(
        &at("memory"),
        f.memory.as_ref(),
        defaults::MEMORY,
        MI,
        64 << 30,
    );
    let timeout = c.duration(
        &at("timeout"),
        f.timeout.as_ref(),
        defaults::TIMEOUT_MS,
        1,
        3_600_000,
    );
    let start_timeout = c.duration(
        &at("start_timeout"),
        f.start_timeout.as_ref(),
        defaults::START_TIMEOUT_MS,
        1,
        600_000,
    );
    let concurrency = match kind {
        Kind::Process => c.range(
            &at("concurrency"),
            f.concurrency,
            defaults::PROCESS_CONCURRENCY,
            1,
            10_000,
        ),
        Kind::Wasm | Kind::Lambda => {
            if f.concurrency.is_some_and(|n| n != 1) {
                let why = if kind == Kind::Wasm {
                    "a wasm instance serves one request at a time; raise scale.max for more in parallel"
                } else {
                    "a lambda instance serves one invocation at a time, as in AWS Lambda; raise scale.max for more in parallel"
                };
                c.fail(
                    at("concurrency"),
                    format!("must be 1 for kind {kind}: {why}"),
                );
            }
            1
        }
    };
    let reuse = c.range(&at("reuse"), f.reuse, 1, 1, 1_000_000);
    let warm = c.range(&at("warm"), f.warm, 0, 0, 1000);
    let cpu = f.cpu.filter(|cpu| {
        let ok = cpu.is_finite() && *cpu > 0.0 && *cpu <= 256.0;
        if !ok {
            c.fail(
                at("cpu"),
                format!("{cpu} is out of range: allowed a number of cores above 0, e.g. 0.5"),
            );
        }
        ok
    });

    let ra = f.async_policy.unwrap_or_default();
    let async_policy = AsyncPolicy {
        retries: c.range(
            &at("async.retries"),
            ra.retries,
            defaults::ASYNC_RETRIES,
            0,
            100,
        ),
        max_age: c.duration(
            &at("async.max_age"),
            ra.max_age.as_ref(),
            defaults::ASYNC_MAX_AGE_MS,
            1000,
            7 * 24 * 3_600_000,
        ),
    };

    let rs = f.scale.unwrap_or_default();
    let max = c.range(&at("scale.max"), rs.max, defaults::SCALE_MAX, 1, 100_000);
    let min = c.range(&at("scale.min"), rs.min, 0, 0, 100_000);
    if min > max {
        c.fail(at("scale.min"), format!("{min} is above scale.max ({max})"));
    }
    if warm > max {
        c.fail(at("warm"), format!("{warm} is above scale.max ({max})"));
    }
    let scale = Scale {
        min,
        max,
        idle: c.duration(
            &at("scale.idle"),
            rs.idle.as_ref(),
            defaults::SCALE_IDLE_MS,
            1,
            7 * 24 * 3_600_000,
        ),
        queue: c.range(&at("scale.queue"), rs.queue, defaults::QUEUE, 0, 1_000_000),
        queue_wait: c.duration(
            &at("scale.queue_wait"),
            rs.queue_wait.as_ref(),
            defaults::QUEUE_WAIT_MS,
            1,
            3_600_000,
        ),
    };

    let routes = f
        .routes
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| route(c, &format!("{path}.routes[{i}]"), r))
        .collect();
    let cron = f
        .cron
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, Scalar(expr))| {
            if let Err(e) = check_cron(&expr) {
                c.fail(format!("{path}.cron[{i}]"), e);
            }
            expr
        })
        .collect();

    let build = f.build.map(|b| b.0);
    Some((
        build,
        FunctionSpec {
            kind,
            component,
            dir,
            command,
            ready,
            start_timeout,
            warm,
            cpu,
            python,
            handler,
            env,
            memory,
            timeout,
            concurrency,
            reuse,
            async_policy,
            scale,
            routes,
            cron,
        },
    ))
}

fn python_app(c: &mut Check, path: &str, p: &crate::raw::RawPython) -> Option<PythonApp> {
    let (entry, key, make): (&Scalar, &str, fn(String) -> PythonApp) = match (&p.wsgi, &p.asgi) {
        (Some(w), None) => (w, "wsgi", PythonApp::Wsgi),
        (None, Some(a)) => (a, "asgi", PythonApp::Asgi),
        _ => {
            c.fail(
                format!("{path}.python"),
                "set exactly one of `wsgi` or `asgi`, e.g. `python: { wsgi: \"app:app\" }`",
            );
            return None;
        }
    };
    let ok = entry
        .0
        .split_once(':')
        .is_some_and(|(m, a)| !m.is_empty() && !a.is_empty() && !a.contains(':'));
    if !ok {
        c.fail(
            format!("{path}.python.{key}"),
            format!("{:?} is not `module:attribute`, e.g. \"app:app\"", entry.0),
        );
    }
    Some(make(entry.0.clone()))
}

fn route(c: &mut Check, path: &str, r: RawRoute) -> Option<Route> {
    let Some(Scalar(p)) = r.path else {
        c.fail(
            format!("{path}.path"),
            "missing: a route needs a `path`, e.g. /hello or /api/*",
        );
        return None;
    };
    let star = p.find('*');
    let valid = p.starts_with('/')
        && !p
            .chars()
            .any(|ch| ch.is_whitespace() || ch == '?' || ch == '#')
        && star.is_none_or(|i| i == p.len() - 1 && p.ends_with("/*"));
    if !valid {
        c.fail(
            format!("{path}.path"),
            format!("{p:?} is not a route path: start with '/', no spaces, '?' or '#', and '*' only as a final '/*' (prefix)"),
        );
        return None;
    }
    if let Some(reserved) = RESERVED_PATH_PREFIXES
        .iter()
        .find(|r| p.starts_with(*r) || format!("{p}/").starts_with(*r))
    {
        c.fail(
            format!("{path}.path"),
            format!("{p:?} is under {reserved}, which the platform owns"),
        );
        return None;
    }
    let mut methods = Vec::new();
    for (i, Scalar(m)) in r.methods.unwrap_or_default().into_iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        if METHODS.contains(&upper.as_str()) {
            if !methods.contains(&upper) {
                methods.push(upper);
            }
        } else {
            c.fail(
                format!("{path}.methods[{i}]"),
                format!("unknown method {m:?}: allowed {}", METHODS.join(", ")),
            );
        }
    }
    Some(Route { path: p, methods })
}

/// Two routes collide when they have the same path and could match the same method.
fn duplicate_routes(c: &mut Check, functions: &[Function]) {
    let mut seen: Vec<(&Route, String)> = Vec::new();
    for f in functions {
        for (i, r) in f.spec.routes.iter().enumerate() {
            let here = format!("functions.{}.routes[{i}]", f.name);
            if let Some((_, there)) = seen.iter().find(|(s, _)| routes_overlap(s, r)) {
                c.fail(
                    format!("{here}.path"),
                    format!("duplicate route {}: {there} already routes it; each path and method may go to one function", r.path),
                );
            } else {
                seen.push((r, here));
            }
        }
    }
}

/// True when both routes have the same path and share at least one method.
pub fn routes_overlap(a: &Route, b: &Route) -> bool {
    a.path == b.path
        && (a.methods.is_empty()
            || b.methods.is_empty()
            || a.methods.iter().any(|m| b.methods.contains(m)))
}

fn check_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 && fields != 6 {
        return Err(format!(
            "{expr:?} has {fields} fields: a schedule has 5 (minute hour day month weekday) or 6 (with seconds first), in UTC"
        ));
    }
    let cron = expr
        .parse::<croner::Cron>()
        .map_err(|e| format!("invalid schedule {expr:?}: {e}"))?;
    // A valid pattern may still name no date at all (February 31st): refuse it rather than
    // deploy a trigger that silently never fires.
    cron.find_next_occurrence(&chrono::Utc::now(), false)
        .map(|_| ())
        .map_err(|_| format!("schedule {expr:?} never fires: no date matches it"))
}
