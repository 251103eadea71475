//! `kind: lambda`: process instances that fetch their invocations from a Runtime API Nubo
//! serves ([`runtime_api`]), so handlers written for AWS Lambda run unchanged.
//!
//! - [`call`] is one invocation: a lease on an idle instance (one invocation each), the event
//!   handed to its runtime, the answer or a timeout (the instance is then killed and replaced).
//! - [`invoke_http`] delivers an HTTP request (`/fn`, routes) as an API Gateway v2.0 event and
//!   maps the result back, as a Lambda function URL does.
//! - [`invoke_api`] is the Lambda Invoke API, for functions of every kind.

pub mod invoke_api;
mod runtime_api;

pub use runtime_api::{Answer, RuntimeApi};

use crate::AppState;
use crate::api_error::ApiError;
use crate::app::AppRevision;
use crate::gateway::{self, Inflight};
use crate::live::LiveFunction;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use nubo_manifest::FunctionSpec;
use nubo_sandbox::Outcome;
use nubo_sandbox::process::Exit;
use runtime_api::Event;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The (fake but well-formed) account of every ARN Nubo hands out.
pub const ACCOUNT: &str = "000000000000";

pub fn function_arn(region: &str, function: &str) -> String {
    format!("arn:aws:lambda:{region}:{ACCOUNT}:function:{function}")
}

/// The environment the official runtime clients read (`AWS_LAMBDA_RUNTIME_API` and the log
/// stream are per instance, added at start).
pub fn runtime_env(
    function: &str,
    revision: i64,
    spec: &FunctionSpec,
    dir: &Path,
    region: &str,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("AWS_LAMBDA_FUNCTION_NAME", function.to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", revision.to_string()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            (spec.memory.bytes() >> 20).to_string(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        ),
        ("AWS_REGION", region.to_string()),
        ("AWS_DEFAULT_REGION", region.to_string()),
        ("LAMBDA_TASK_ROOT", dir.display().to_string()),
        ("TZ", ":UTC".to_string()),
    ];
    if let Some(h) = &spec.handler {
        env.push(("_HANDLER", h.clone()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Why an invocation produced no answer from the handler.
pub enum Failure {
    /// Refused or not started (limits, start failure, function removed).
    Platform(ApiError),
    /// Out of time: the instance was killed.
    Timeout,
    /// The runtime ended mid-invocation.
    Ended(Exit),
}

/// One invocation's result and where it ran.
pub struct Called {
    pub f: Arc<LiveFunction>,
    pub answer: Result<Answer, Failure>,
    pub instance: Option<Arc<str>>,
    /// The `Server-Timing` value.
    pub timing: String,
    /// CPU time charged to the invocation (see `ProcessInstance::charge_cpu`).
    pub cpu_us: Option<i64>,
}

/// Runs one invocation on an idle instance of `app`; `trace` is the caller's trace context
/// (see [`trace_header`]), handed to the runtime as `Lambda-Runtime-Trace-Id`.
pub async fn call(
    state: &Arc<AppState>,
    f: Arc<LiveFunction>,
    app: &Arc<AppRevision>,
    payload: Bytes,
    id: &str,
    trace: Option<String>,
) -> Called {
    let (f, app, lease) = match gateway::acquire_process(state, f, app).await {
        Ok(l) => l,
        Err((f, err)) => {
            return Called {
                f,
                answer: Err(Failure::Platform(err)),
                instance: None,
                timing: String::new(),
                cpu_us: None,
            };
        }
    };
    let instance = lease.instance().clone();
    let (queued, fresh) = (lease.waited(), lease.fresh());
    let (cold_ms, mode, queue_ms) = if fresh {
        (gateway::ms(queued), instance.mode().as_str(), 0.0)
    } else {
        (0.0, "warm", gateway::ms(queued))
    };
    let timing = |exec: Duration| {
        format!(
            "cold;dur={cold_ms:.3};desc=\"{mode}\", queue;dur={queue_ms:.3}, exec;dur={:.3}",
            gateway::ms(exec)
        )
    };
    let Some(runtime) = app.runtime(&instance.id) else {
        app.pool.remove(&instance);
        let err = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "instance_crashed",
            format!(
                "the instance of function {} ended before it was invoked",
                f.name
            ),
        );
        return Called {
            f,
            answer: Err(Failure::Platform(err)),
            instance: Some(instance.id.clone()),
            timing: timing(Duration::ZERO),
            cpu_us: None,
        };
    };
    let timeout = f.spec.timeout.to_std();
    // On a task of its own: if the caller goes away (a client hung up), the invocation still
    // ends by its answer or its timeout, and the instance goes back to the pool only then.
    let task = {
        let (state, f, app, instance) = (state.clone(), f.clone(), app.clone(), instance.clone());
        let id = id.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            // One invocation at a time: what the runtime prints now belongs to this one.
            instance.serving.set(Some(&id));
            let answer = runtime.invoke(Event {
                request_id: id.clone(),
                deadline_ms: epoch_ms(SystemTime::now() + timeout),
                payload,
                trace_id: trace.unwrap_or_else(|| trace_id(&id)),
            });
            // The answer first: a runtime may post it and exit right after.
            let result = tokio::select! {
                biased;
                a = answer => match a {
                    Ok(a) => Ok(a),
                    Err(_) => Err(Failure::Ended(exit_soon(&instance).await)),
                },
                exit = instance.wait_exit() => Err(Failure::Ended(exit)),
                _ = tokio::time::sleep(timeout) => Err(Failure::Timeout),
            };
            let exec = started.elapsed();
            instance.serving.set(None);
            let cpu_us = instance.charge_cpu();
            f.gb_seconds.inc_by(f.gb * exec.as_secs_f64());
            let log = |text: String| {
                state
                    .logs
                    .line(&f.name, "nubo", Some(&instance.id), Some(&id), text)
            };
            match &result {
                Ok(_) => drop(lease),
                Err(Failure::Timeout) => {
                    // As in AWS: the runtime is stopped mid-invocation; a fresh one serves next.
                    runtime.abandon();
                    app.pool.remove(&instance);
                    drop(lease);
                    log(format!(
                        "{id} Task timed out after {:.2} seconds",
                        timeout.as_secs_f64()
                    ));
                    let i = instance.clone();
                    tokio::spawn(async move { i.stop(Duration::ZERO).await });
                }
                Err(Failure::Ended(exit)) => {
                    app.pool.remove(&instance);
                    drop(lease);
                    log(if exit.oom {
                        format!(
                            "invocation failed: the runtime ran out of memory (limit {}) and was killed",
                            f.spec.memory
                        )
                    } else {
                        format!(
                            "invocation failed: the runtime {} mid-invocation",
                            exit.status
                        )
                    });
                    let i = instance.clone();
                    tokio::spawn(async move { i.stop(Duration::ZERO).await });
                }
                Err(Failure::Platform(_)) => drop(lease),
            }
            (result, exec, cpu_us)
        })
    };
    let (result, exec, cpu_us) = match task.await {
        Ok(r) => r,
        Err(e) => (
            Err(Failure::Platform(ApiError::internal("the invocation", e))),
            Duration::ZERO,
            0,
        ),
    };
    Called {
        f,
        answer: result,
        instance: Some(instance.id.clone()),
        timing: timing(exec),
        cpu_us: Some(cpu_us),
    }
}

/// How the instance ended, once its runtime dropped an invocation (it is ending, or stuck).
async fn exit_soon(instance: &nubo_sandbox::process::ProcessInstance) -> Exit {
    tokio::time::timeout(Duration::from_secs(1), instance.wait_exit())
        .await
        .unwrap_or_else(|_| Exit {
            status: "dropped the invocation".into(),
            oom: false,
        })
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The trace context of a request in the X-Ray form the runtime clients expect (they export it
/// as `_X_AMZN_TRACE_ID`): from a W3C `traceparent` (trace id split 8/24, parent id, sampled
/// flag), else an `X-Amzn-Trace-Id` as sent.
pub fn trace_header(headers: &http::HeaderMap) -> Option<String> {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if let [version, trace, parent, flags] = parts[..]
            && hex(version, 2)
            && hex(trace, 32)
            && hex(parent, 16)
            && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0')
        {
            let sampled = u8::from_str_radix(flags, 16).unwrap_or(0) & 1;
            return Some(format!(
                "Root=1-{}-{};Parent={parent};Sampled={sampled}",
                &trace[..8],
                &trace[8..]
            ));
        }
    }
    headers
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() < 512)
        .map(String::from)
}

/// A fresh X-Ray style trace header, derived from the invocation id.
fn trace_id(id: &str) -> String {
    let secs = epoch_ms(SystemTime::now()) / 1000;
    let hex: String = id.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    format!(
        "Root=1-{secs:08x}-{hex:0>24.24};Parent={:0>16.16};Sampled=0",
        hex
    )
}

/// The peer of the connection a request came in on (set by the server loop).
#[derive(Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// An HTTP request to a lambda function: an API Gateway v2.0 event in, an HTTP response out.
#[allow(clippy::too_many_arguments)]
pub async fn invoke_http(
    state: &Arc<AppState>,
    f: Arc<LiveFunction>,
    app: &Arc<AppRevision>,
    parts: http::request::Parts,
    body: Bytes,
    id: String,
    received: Instant,
    inflight: Inflight,
) -> Response {
    let source_ip = parts
        .extensions
        .get::<ClientAddr>()
        .map(|a| a.0.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let event = nubo_aws::apigw::request_event(&nubo_aws::apigw::HttpRequestInfo {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: &body,
        source_ip: &source_ip,
        request_id: &id,
        time: SystemTime::now(),
    });
    let payload = Bytes::from(event.to_string());
    let trace = trace_header(&parts.headers);
    let called = call(state, f, app, payload, &id, trace).await;
    drop(inflight);
    let f = called.f;
    let mut resp = match called.answer {
        Ok(Answer::Response(result)) => match nubo_aws::apigw::response_from_result(&result) {
            Ok(r) => {
                let mut resp = Response::new(Body::from(r.body));
                *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
                let h = resp.headers_mut();
                for (k, v) in r.headers {
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.as_bytes()),
                        HeaderValue::from_str(&v),
                    ) {
                        h.append(k, v);
                    }
                }
                resp
            }
            Err(why) => {
                let text = format!("the handler's result is not an HTTP response: {why}");
                log(state, &f, called.instance.as_deref(), &id, &text);
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    format!("function {}: {text}", f.name),
                )
                .hint("return a JSON value, or {\"statusCode\": 200, \"body\": \"...\"}")
                .into_response()
            }
        },
        Ok(Answer::Error { error_type, body }) => {
            let message = error_message(&body);
            log(
                state,
                &f,
                called.instance.as_deref(),
                &id,
                &format!("the handler failed: {error_type}: {message}"),
            );
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "function_error",
                format!("function {} failed: {error_type}: {message}", f.name),
            )
            .hint(format!("see `nubo logs {}`", f.name))
            .into_response()
        }
        Err(failure) => failure_response(&f, failure),
    };
    if let Some(cpu) = called.cpu_us {
        resp.extensions_mut().insert(gateway::CpuCharge(cpu));
    }
    let h = resp.headers_mut();
    if let Some(i) = &called.instance {
        h.insert("nubo-instance", gateway::header_value(i));
    }
    if !called.timing.is_empty() {
        h.insert("server-timing", gateway::header_value(&called.timing));
    }
    gateway::finish(state, &f, &id, resp, received)
}

fn log(state: &AppState, f: &LiveFunction, instance: Option<&str>, id: &str, text: &str) {
    state
        .logs
        .line(&f.name, "nubo", instance, Some(id), text.to_string());
}

/// `errorMessage` of an error document, else its text.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("errorMessage")
                .and_then(|m| m.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(1000).collect())
}

/// The platform's HTTP answer when the handler gave none.
fn failure_response(f: &LiveFunction, failure: Failure) -> Response {
    match failure {
        Failure::Platform(err) => err.into_response(),
        Failure::Timeout => gateway::outcome_error(f, &Outcome::Timeout).into_response(),
        Failure::Ended(exit) if exit.oom => {
            gateway::outcome_error(f, &Outcome::MemoryLimit).into_response()
        }
        Failure::Ended(exit) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "instance_crashed",
            format!(
                "the runtime of function {} ended during the invocation: {}",
                f.name, exit.status
            ),
        )
        .hint(format!(
            "see `nubo logs {}`; the next invocation starts a new instance",
            f.name
        ))
        .into_response(),
    }
}
