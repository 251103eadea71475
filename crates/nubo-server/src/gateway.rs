//! The invocation path: route -> body -> pool -> instance -> response with Nubo headers.
//!
//! Everything here reads in-memory state only; the one lock taken is the pool's, briefly.

use crate::AppState;
use crate::api_error::ApiError;
use crate::app::AppRevision;
use crate::live::{LiveFunction, Runner};
use crate::metrics::StatusLabels;
use crate::proxy;
use crate::routes::Lookup;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use nubo_sandbox::Outcome;
use nubo_sandbox::process::ProcessInstance;
use nubo_scheduler::{Rejected, SharedLease, SharedRejected};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub(crate) type ProcessLease = SharedLease<ProcessInstance>;

pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path();
    let table = state.table();
    let (function, guest_path) = if let Some(rest) = path.strip_prefix("/fn/") {
        let (name, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        match table.function(name) {
            Some(f) => (f.clone(), tail.to_string()),
            None => {
                return ApiError::not_found(
                    "function_not_found",
                    format!("no function named {name:?} is deployed"),
                )
                .hint("list deployed functions with `nubo ls`")
                .into_response();
            }
        }
    } else {
        match table.lookup(req.method().as_str(), path) {
            Lookup::Found(f) => (f, path.to_string()),
            Lookup::MethodNotAllowed(allowed) => {
                return ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} is not routed for {}", path, req.method()),
                )
                .hint(format!("allowed: {}", allowed.join(", ")))
                .into_response();
            }
            Lookup::NotFound => {
                return ApiError::not_found(
                    "route_not_found",
                    format!("no function is routed at {path}"),
                )
                .hint("every function is at /fn/<name>/; manifest `routes` add more paths")
                .into_response();
            }
        }
    };
    drop(table);
    let guest_uri = match req.uri().query() {
        Some(q) => format!("{guest_path}?{q}"),
        None => guest_path,
    };
    invoke(&state, function, req, guest_uri).await
}

/// Ids unique across restarts: a random prefix per process and a counter.
pub(crate) fn invocation_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        u32::from_le_bytes(b)
    });
    format!("{prefix:08x}{:012x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(crate) struct Inflight(pub(crate) Gauge);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn invoke(
    state: &Arc<AppState>,
    f: Arc<LiveFunction>,
    req: Request,
    guest_uri: String,
) -> Response {
    let received = Instant::now();
    let id = invocation_id();
    let (mut parts, body) = req.into_parts();
    let body = match read_body(state, &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => return finish(state, &f, &id, e.into_response(), received),
    };
    parts.uri = match guest_uri.parse() {
        Ok(u) => u,
        Err(e) => {
            let err = ApiError::bad_request("bad_request", format!("invalid request path: {e}"));
            return finish(state, &f, &id, err.into_response(), received);
        }
    };
    if crate::invocations::prefers_async(&parts.headers) {
        return crate::invocations::accept_http(state, &f, parts, body, id).await;
    }
    run(state, f, parts, body, id, received).await
}

/// One synchronous invocation of a request whose body has been read; traced when spans are
/// exported (and not already inside a traced invocation).
pub(crate) async fn run(
    state: &Arc<AppState>,
    f: Arc<LiveFunction>,
    mut parts: http::request::Parts,
    body: Bytes,
    id: String,
    received: Instant,
) -> Response {
    if state.otel.is_some() && crate::otel::CURRENT.try_with(|_| ()).is_err() {
        let trace = crate::otel::Trace::begin(&mut parts.headers);
        return crate::otel::CURRENT
            .scope(trace, run_untraced(state, f, parts, body, id, received))
            .await;
    }
    run_untraced(state, f, parts, body, id, received).await
}

async fn run_untraced(
    state: &Arc<AppState>,
    f: Arc<LiveFunction>,
    parts: http::request::Parts,
    body: Bytes,
    id: String,
    received: Instant,
) -> Response {
    f.inflight.inc();
    let inflight = Inflight(f.inflight.clone());
    match &f.runner {
        Runner::Wasm(_) => invoke_wasm(state, f, parts, body, id, received, inflight).await,
        Runner::Process(app) if app.is_lambda() => {
            let app = app.clone();
            crate::lambda::invoke_http(state, f, &app, parts, body, id, received, inflight).await
        }
        Runner::Process(app) => {
            let app = app.clone();
            invoke_process(state, f, &app, parts, body, id, received, inflight).await
        }
    }
}

/// Reads a request body up to the server's limit.
pub(crate) async fn read_body(
    state: &AppState,
    headers: &http::HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {} bytes", state.body_limit),
        )
        .hint("send a smaller body, or pass large data by reference (a URL)")
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.body_limit as u64) {
        drain(body).await;
        return Err(too_large());
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let collected = loop {
        match body.frame().await {
            None => break Ok(buf.freeze()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                if buf.len() > state.body_limit {
                    drain(body).await;
                    return Err(too_large());
                }
            }
            Some(Err(e)) => break Err(e),
        }
    };
    collected.map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!("reading the request body failed: {e}"),
        )
    })
}

async fn invoke_wasm(
    state: &Arc<AppState>,
    f: Arc<LiveFunction>,
    parts: http::request::Parts,
    body: Bytes,
    id: String,
    received: Instant,
    inflight: Inflight,
) -> Response {
    let Runner::Wasm(w) = &f.runner else {
        unreachable!("called for wasm functions only")
    };
    let mut lease = match w.pool.acquire().await {
        Ok(l) => l,
        Err(rejected) => {
            return finish(
                state,
                &f,
                &id,
                rejection(&f, rejected).into_response(),
                received,
            );
        }
    };
    let queued = lease.waited();
    let (instance, cold) = match lease.take_instance() {
        Some(i) => (i, None),
        None => {
            let started = Instant::now();
            let instance_id = f.next_instance_id();
            // A component whose start-up never ends is stopped like a request that never ends.
            let result = tokio::time::timeout(
                f.spec.timeout.to_std(),
                w.component.instantiate(&instance_id, &w.config),
            )
            .await
            .unwrap_or(Err(Outcome::Timeout));
            lease.started();
            match result {
                Ok(i) => {
                    let took = started.elapsed();
                    f.cold_new.inc();
                    f.cold_new_duration.observe(took.as_secs_f64());
                    (i, Some(took))
                }
                Err(outcome) => {
                    drop(lease);
                    log_failure(state, &f, &id, &instance_id, &outcome);
                    return finish(
                        state,
                        &f,
                        &id,
                        outcome_error(&f, &outcome).into_response(),
                        received,
                    );
                }
            }
        }
    };
    let instance_id = instance.id().to_string();

    let exec_started = Instant::now();
    let on_done = {
        let (state, f, id, instance_id) =
            (state.clone(), f.clone(), id.clone(), instance_id.clone());
        move |outcome: &Outcome, instance| {
            lease.release(instance);
            drop(inflight);
            let secs = exec_started.elapsed().as_secs_f64();
            f.gb_seconds.inc_by(f.gb * secs);
            if let Runner::Wasm(w) = &f.runner {
                w.exec_seconds.inc_by(secs);
            }
            if *outcome != Outcome::Ok {
                log_failure(&state, &f, &id, &instance_id, outcome);
            }
        }
    };
    let timeout = f.spec.timeout.to_std();
    let answer = instance
        .serve(
            hyper::Request::from_parts(parts, Full::new(body)),
            &id,
            timeout,
            on_done,
        )
        .await;
    let mut resp = match answer {
        Ok(resp) => resp.map(Body::new),
        Err(outcome) => outcome_error(&f, &outcome).into_response(),
    };
    let exec = exec_started.elapsed();
    // The guest runs on this task: its execution time is its CPU time, give or take the
    // moments it waits on its own outgoing requests.
    resp.extensions_mut()
        .insert(CpuCharge(exec.as_micros() as i64));
    let h = resp.headers_mut();
    h.insert("nubo-instance", header_value(&instance_id));
    let (cold_ms, mode) = match cold {
        Some(d) => (ms(d), "new"),
        None => (0.0, "warm"),
    };
    let timing = format!(
        "cold;dur={cold_ms:.3};desc=\"{mode}\", queue;dur={:.3}, exec;dur={:.3}",
        ms(queued),
        ms(exec)
    );
    h.insert("server-timing", header_value(&timing));
    finish(state, &f, &id, resp, received)
}

/// A request to a process app: a share of the least-loaded instance, proxied over loopback.
#[allow(clippy::too_many_arguments)]
async fn invoke_process(
    state: &Arc<AppState>,
    f: Arc<LiveFunction>,
    app: &Arc<AppRevision>,
    parts: http::request::Parts,
    body: Bytes,
    id: String,
    received: Instant,
    inflight: Inflight,
) -> Response {
    let (f, app, lease) = match acquire_process(state, f, app).await {
        Ok(l) => l,
        Err((f, err)) => return finish(state, &f, &id, err.into_response(), received),
    };
    let instance = lease.instance().clone();
    let (queued, fresh) = (lease.waited(), lease.fresh());
    let req = match proxy::request(parts, body, instance.port, &id) {
        Ok(r) => r,
        Err(e) => {
            let err = ApiError::bad_request("bad_request", format!("invalid request: {e}"));
            return finish(state, &f, &id, err.into_response(), received);
        }
    };
    let exec_started = Instant::now();
    // An instance serving one request at a time: its output lines belong to this invocation.
    let alone = f.spec.concurrency == 1;
    if alone {
        instance.serving.set(Some(&id));
    }
    let answer = tokio::time::timeout(f.spec.timeout.to_std(), state.proxy.request(req)).await;
    if alone {
        instance.serving.set(None);
    }
    let secs = exec_started.elapsed().as_secs_f64();
    f.gb_seconds.inc_by(f.gb * secs);
    let mut resp = match answer {
        Ok(Ok(resp)) => {
            proxy::response(resp).map(|b| Body::new(proxy::Holding::new(b, (lease, inflight))))
        }
        Ok(Err(e)) => {
            drop(lease);
            app_failure(state, &f, &app, &instance, &id, &e).await
        }
        Err(_) => {
            drop(lease);
            let text = format!(
                "invocation timed out after {} (the instance keeps serving its other requests)",
                f.spec.timeout
            );
            state
                .logs
                .line(&f.name, "nubo", Some(&instance.id), Some(&id), text);
            outcome_error(&f, &Outcome::Timeout).into_response()
        }
    };
    let exec = exec_started.elapsed();
    resp.extensions_mut()
        .insert(CpuCharge(instance.charge_cpu()));
    let h = resp.headers_mut();
    h.insert("nubo-instance", header_value(&instance.id));
    let (cold_ms, mode, queue_ms) = if fresh {
        (ms(queued), instance.mode().as_str(), 0.0)
    } else {
        (0.0, "warm", ms(queued))
    };
    let timing = format!(
        "cold;dur={cold_ms:.3};desc=\"{mode}\", queue;dur={queue_ms:.3}, exec;dur={:.3}",
        ms(exec)
    );
    h.insert("server-timing", header_value(&timing));
    finish(state, &f, &id, resp, received)
}

/// A share of the least-loaded instance of a process (or lambda) revision; a revision retired
/// while the request was read hands over to the newer one.
pub(crate) async fn acquire_process(
    state: &AppState,
    mut f: Arc<LiveFunction>,
    app: &Arc<AppRevision>,
) -> Result<(Arc<LiveFunction>, Arc<AppRevision>, ProcessLease), (Arc<LiveFunction>, ApiError)> {
    let mut app = app.clone();
    match loop {
        match app.pool.acquire().await {
            // Retired while this request read its body: the newer revision serves it.
            Err(SharedRejected::Closed) => {
                let newer = state.table().function(&f.name).cloned();
                match newer {
                    Some(n) if !Arc::ptr_eq(&n, &f) => {
                        if let Runner::Process(a) = &n.runner {
                            app = a.clone();
                            f = n;
                            continue;
                        }
                        break Err(SharedRejected::Closed);
                    }
                    _ => break Err(SharedRejected::Closed),
                }
            }
            other => break other,
        }
    } {
        Ok(l) => Ok((f, app, l)),
        Err(SharedRejected::Closed) => {
            let err = ApiError::not_found(
                "function_not_found",
                format!("function {} was removed", f.name),
            );
            Err((f, err))
        }
        Err(SharedRejected::Limit(r)) => {
            let err = rejection(&f, r);
            Err((f, err))
        }
        Err(SharedRejected::StartFailed(why)) => {
            let err = ApiError::new(
                StatusCode::BAD_GATEWAY,
                "start_failed",
                format!("no instance of function {} could start: {}", f.name, why.0),
            )
            .hint(format!("see `nubo logs {}`", f.name));
            Err((f, err))
        }
    }
}

/// The instance failed to answer: it ended (crash, out of memory), or closed the connection.
pub(crate) async fn app_failure(
    state: &AppState,
    f: &LiveFunction,
    app: &Arc<AppRevision>,
    instance: &Arc<ProcessInstance>,
    id: &str,
    error: &hyper_util::client::legacy::Error,
) -> Response {
    // The connection usually breaks a moment before the exit is seen.
    let exit = tokio::time::timeout(Duration::from_millis(300), instance.wait_exit())
        .await
        .ok();
    let (err, text) = match exit {
        Some(exit) => {
            app.pool.remove(instance);
            if exit.oom {
                (
                    outcome_error(f, &Outcome::MemoryLimit),
                    format!(
                        "invocation failed: the instance ran out of memory (limit {}) and was killed",
                        f.spec.memory
                    ),
                )
            } else {
                (
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "instance_crashed",
                        format!(
                            "the instance of function {} serving this request ended: {}",
                            f.name, exit.status
                        ),
                    )
                    .hint(format!(
                        "see `nubo logs {}`; the next request starts a new instance",
                        f.name
                    )),
                    format!("invocation failed: the instance ended ({})", exit.status),
                )
            }
        }
        None => (
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!(
                    "function {} closed the connection without an answer: {error}",
                    f.name
                ),
            )
            .hint(format!("see `nubo logs {}`", f.name)),
            format!("invocation failed: no answer from the app ({error})"),
        ),
    };
    state
        .logs
        .line(&f.name, "nubo", Some(&instance.id), Some(id), text);
    err.into_response()
}

/// Reads and discards what is left of a refused body (up to a bound), so the client, which is
/// still sending, reads a clean 413 instead of a reset connection.
async fn drain(mut body: Body) {
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let mut seen = 0;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len());
        if seen > DRAIN_LIMIT {
            break;
        }
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// CPU time (µs) charged to an invocation, carried on its response to [`finish`].
#[derive(Clone, Copy)]
pub(crate) struct CpuCharge(pub i64);

/// Adds the invocation id and records the invocation's metrics.
pub(crate) fn finish(
    state: &AppState,
    f: &LiveFunction,
    id: &str,
    mut resp: Response,
    received: Instant,
) -> Response {
    resp.headers_mut()
        .insert("nubo-invocation-id", header_value(id));
    let h = resp.headers();
    let timing = h.get("server-timing").and_then(|v| v.to_str().ok());
    let mode = timing.and_then(|t| t.split("desc=\"").nth(1)?.split('"').next());
    let served = Served {
        status: resp.status().as_u16(),
        instance: h.get("nubo-instance").and_then(|v| v.to_str().ok()),
        mode,
        cpu_us: resp.extensions().get::<CpuCharge>().map(|c| c.0),
        timing,
    };
    count(state, f, id, received, served);
    resp
}

tokio::task_local! {
    /// What started the invocation being served on this task: `lambda-api`, `async` or `cron`
    /// (set by those entry points); plain HTTP when unset.
    pub(crate) static TRIGGER: &'static str;
}

/// How a finished invocation went.
pub(crate) struct Served<'a> {
    pub status: u16,
    pub instance: Option<&'a str>,
    /// How the serving instance started (`warm`, `new`, ...); none if it never ran.
    pub mode: Option<&'a str>,
    pub cpu_us: Option<i64>,
    /// The `Server-Timing` value (queue, cold start, execution), for the spans.
    pub timing: Option<&'a str>,
}

/// Records one finished invocation, exactly once: the metrics, the live series, an
/// invocation record (usage is their sum) and a line in the function's log.
pub(crate) fn count(
    state: &AppState,
    f: &LiveFunction,
    id: &str,
    received: Instant,
    served: Served,
) {
    let Served {
        status,
        instance,
        mode,
        cpu_us,
        timing,
    } = served;
    let took = received.elapsed();
    let trigger = TRIGGER.try_with(|t| *t).unwrap_or("http");
    let start_ms = nubo_store::now_ms() - took.as_millis() as i64;
    f.series
        .add(start_ms, status, took, mode.is_some_and(|m| m != "warm"));
    state.logs.record(nubo_store::InvocationRow {
        id: id.to_string(),
        function: f.name.clone(),
        project: f.project.clone(),
        revision: f.revision,
        instance: instance.map(String::from),
        start_ms,
        duration_us: took.as_micros() as i64,
        status,
        mode: mode.map(String::from),
        trigger: trigger.to_string(),
        memory_mb: (f.spec.memory.bytes() >> 20) as i64,
        cpu_us,
    });
    let line = format!(
        "{status} in {:.3} ms ({}, {trigger}, revision {})",
        ms(took),
        mode.unwrap_or("not started"),
        f.revision
    );
    state
        .logs
        .line(&f.name, "invocation", instance, Some(id), line);
    if status == 200 {
        f.ok.inc();
    } else {
        state
            .metrics
            .invocations
            .get_or_create(&StatusLabels {
                function: f.name.clone(),
                status: status.to_string(),
            })
            .inc();
    }
    f.duration.observe(took.as_secs_f64());
    if let Some(otel) = &state.otel
        && let Ok(trace) = crate::otel::CURRENT.try_with(|t| *t)
    {
        otel.finished(
            &trace,
            &crate::otel::Finished {
                function: &f.name,
                revision: f.revision,
                invocation: id,
                instance,
                status,
                trigger,
                start: std::time::SystemTime::now() - took,
                took,
                timing,
            },
        );
    }
}

pub(crate) fn rejection(f: &LiveFunction, rejected: Rejected) -> ApiError {
    match rejected {
        Rejected::QueueFull { max, queue } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "concurrency_limit",
            format!(
                "function {} is at its limit: {max} instances busy and {queue} requests waiting",
                f.name
            ),
        )
        .hint("retry later, or raise scale.max / scale.queue in nubo.yaml")
        .retry_after(1),
        Rejected::WaitTimeout(wait) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_capacity",
            format!(
                "no instance of function {} became free within {wait:?}",
                f.name
            ),
        )
        .hint("retry later, or raise scale.max / scale.queue_wait in nubo.yaml")
        .retry_after(1),
    }
}

pub(crate) fn outcome_error(f: &LiveFunction, outcome: &Outcome) -> ApiError {
    let logs = format!("see `nubo logs {}`", f.name);
    match outcome {
        Outcome::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "function {} did not finish within its timeout of {}",
                f.name, f.spec.timeout
            ),
        )
        .hint("raise `timeout` in nubo.yaml, or make the function faster"),
        Outcome::MemoryLimit => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "memory_limit_exceeded",
            format!(
                "function {} needed more than its memory limit of {}",
                f.name, f.spec.memory
            ),
        )
        .hint("raise `memory` in nubo.yaml, or use less"),
        Outcome::Trap(_) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "function_error",
            format!("function {} failed while handling the request", f.name),
        )
        .hint(logs),
        Outcome::NoResponse => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "function_error",
            format!("function {} returned without setting a response", f.name),
        )
        .hint(logs),
        Outcome::BadRequest(e) => ApiError::bad_request(
            "bad_request",
            format!("the request cannot be passed to the function: {e}"),
        ),
        Outcome::ErrorResponse(code) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "function_error",
            format!(
                "function {} answered with an error instead of a response: {code}",
                f.name
            ),
        )
        .hint(logs),
        Outcome::NoCapacity => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_capacity",
            "this node has no free wasm instance slot: every slot is serving a request",
        )
        .hint("retry later; raise `nubo up --max-wasm-instances` or lower scale.max of busy functions")
        .retry_after(1),
        Outcome::Ok => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "function_error",
            format!("function {} finished without a response", f.name),
        ),
    }
}

/// Writes why an invocation failed into the function's log.
fn log_failure(state: &AppState, f: &LiveFunction, id: &str, instance: &str, outcome: &Outcome) {
    let text = match outcome {
        Outcome::Ok => return,
        Outcome::Timeout => format!(
            "invocation timed out after {}; the instance was stopped",
            f.spec.timeout
        ),
        Outcome::MemoryLimit => format!(
            "invocation exceeded the memory limit of {}; the instance was stopped",
            f.spec.memory
        ),
        Outcome::Trap(reason) => format!("invocation failed: {reason}"),
        Outcome::NoResponse => "invocation returned without setting a response".to_string(),
        Outcome::BadRequest(e) => format!("request could not be passed to the function: {e}"),
        Outcome::NoCapacity => "no free wasm instance slot on this node".to_string(),
        Outcome::ErrorResponse(code) => format!("the function answered with an error: {code}"),
    };
    // The reason may carry a long wasm backtrace; its head says what happened.
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(24) {
        state
            .logs
            .line(&f.name, "nubo", Some(instance), Some(id), line.to_string());
    }
}
