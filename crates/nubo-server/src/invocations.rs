//! Async invocations: accepted durably (202 with a `Location`), run by workers with bounded
//! concurrency, retried with exponential backoff, dead-lettered when out of attempts or too
//! old. Every trigger that does not wait for the answer goes through here: `Prefer:
//! respond-async`, `nubo invoke --async`, the Lambda `Event` invocation type, and cron ticks.

use crate::AppState;
use crate::api_error::{ApiError, PlatformError};
use crate::gateway;
use crate::lambda::invoke_api::{PayloadResult, invoke_payload};
use crate::live::LiveFunction;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use nubo_store::{InvocationRecord, NewInvocation, Outcome};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempts running at once on this node.
pub const WORKERS: usize = 64;
/// Bytes of a result kept with the invocation record.
const RESULT_KEPT: usize = 64 * 1024;
/// First retry delay; doubled per attempt, capped at [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often finished invocations beyond the kept number are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(60);
/// A throttled attempt (the function at its limit) waits this long and does not count.
const THROTTLE_WAIT: Duration = Duration::from_millis(500);

/// `Prefer: respond-async` (RFC 7240), among other preferences.
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
    })
}

/// Request headers not stored with an async request: hop-by-hop ones, the preference that made
/// it async, and the length (the body is stored whole).
const NOT_STORED: &[&str] = &[
    "prefer",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "authorization",
];

/// Queues an HTTP request to `f` and answers 202.
pub async fn accept_http(
    state: &Arc<AppState>,
    f: &LiveFunction,
    parts: http::request::Parts,
    body: Bytes,
    id: String,
) -> Response {
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(k, _)| !NOT_STORED.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let request = json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
    });
    match enqueue(state, f, &id, "http", request.to_string(), body, None).await {
        Ok(()) => accepted(&id),
        Err(e) => e.into_response(),
    }
}

/// Writes one invocation to the queue, durably.
pub async fn enqueue(
    state: &AppState,
    f: &LiveFunction,
    id: &str,
    trigger: &str,
    request: String,
    payload: Bytes,
    revision: Option<i64>,
) -> Result<(), ApiError> {
    if !state.backlog.admit(&f.name, state.max_queued) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!(
                "function {} has {} async invocations waiting, its limit on this node",
                f.name, state.max_queued
            ),
        )
        .hint("retry later; the limit is `nubo up --max-queued-invocations`")
        .retry_after(1));
    }
    state
        .queue
        .enqueue(new_invocation(f, id, trigger, request, payload, revision))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                e.to_string(),
            )
            .hint("nothing was queued; retry, and see the server's log")
            .retry_after(1)
        })
}

/// A new invocation of `f` under its `async` policy.
pub fn new_invocation(
    f: &LiveFunction,
    id: &str,
    trigger: &str,
    request: String,
    payload: Bytes,
    revision: Option<i64>,
) -> NewInvocation {
    let now = nubo_store::now_ms();
    NewInvocation {
        id: id.to_string(),
        function: f.name.clone(),
        revision,
        trigger: trigger.to_string(),
        request,
        payload: payload.to_vec(),
        max_attempts: f.spec.async_policy.retries.saturating_add(1),
        expires_at: now.saturating_add(f.spec.async_policy.max_age.millis() as i64),
        now,
    }
}

/// The 202 of an accepted invocation.
pub fn accepted(id: &str) -> Response {
    let location = format!("/_nubo/api/v1/invocations/{id}");
    let mut resp = (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": id, "status": "queued", "location": location })),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, gateway::header_value(&location));
    h.insert("nubo-invocation-id", gateway::header_value(id));
    resp
}

/// Unfinished async invocations per function: refreshed from the queue every second and
/// counting the accepts since, so one function cannot queue without bound (the limit holds to
/// within a second of accepts).
#[derive(Default)]
pub struct Backlog(std::sync::Mutex<std::collections::HashMap<String, i64>>);

impl Backlog {
    /// Counts one more for `function` unless it is at `max`.
    fn admit(&self, function: &str, max: i64) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(function.to_string()).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn refresh(&self, depths: Vec<(String, i64)>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = depths.into_iter().collect();
    }
}

/// Runs due invocations until the server stops, at most [`WORKERS`] at a time.
pub async fn dispatch(state: Arc<AppState>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(WORKERS));
    let mut trimmed = Instant::now();
    let mut counted = Instant::now() - Duration::from_secs(1);
    loop {
        if counted.elapsed() >= Duration::from_secs(1) {
            counted = Instant::now();
            match state.queue.depths().await {
                Ok(d) => state.backlog.refresh(d),
                Err(e) => tracing::warn!("counting queued invocations failed: {e}"),
            }
        }
        if trimmed.elapsed() > TRIM_EVERY {
            trimmed = Instant::now();
            if let Err(e) = state.queue.trim().await {
                tracing::warn!("trimming finished invocations failed: {e}");
            }
        }
        if permits.available_permits() == 0 {
            // All busy: wait for one to finish before claiming more.
            drop(permits.clone().acquire_owned().await);
        }
        let free = permits.available_permits();
        let claimed = match state.queue.claim(free).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("claiming async invocations failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let full = claimed.len() == free;
        for rec in claimed {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let id = rec.id.clone();
                let (function, attempts, max, expires) = (
                    rec.function.clone(),
                    rec.attempts,
                    rec.max_attempts,
                    rec.expires_at,
                );
                let trigger = if rec.trigger == "cron" {
                    "cron"
                } else {
                    "async"
                };
                let outcome = gateway::TRIGGER.scope(trigger, attempt(&state, rec)).await;
                if let Outcome::Failed { error, at, .. } = &outcome {
                    let next = if attempts >= max || *at > expires {
                        format!("dead-lettered (see `nubo dlq ls {function}`)")
                    } else {
                        format!(
                            "retrying in {:.1}s",
                            (*at - nubo_store::now_ms()) as f64 / 1000.0
                        )
                    };
                    let text = format!("async attempt {attempts} of {max} failed: {error}; {next}");
                    state.logs.line(&function, "nubo", None, Some(&id), text);
                }
                // Retried until written: a row left `running` would wait for a restart.
                let mut pause = Duration::from_millis(100);
                while let Err(e) = state.queue.finish(id.clone(), outcome.clone()).await {
                    tracing::error!(
                        "recording the end of async invocation {id} failed: {e}; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                drop(permit);
            });
        }
        if full {
            continue;
        }
        let wait = match state.queue.next_due().await {
            Ok(Some(due)) => Duration::from_millis((due - nubo_store::now_ms()).max(0) as u64),
            _ => Duration::from_secs(1),
        };
        // Not below a few ms: a due row another claim just took would spin this loop.
        let wait = wait.clamp(Duration::from_millis(5), Duration::from_secs(1));
        tokio::select! {
            _ = state.queue.arrivals().notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One attempt of an invocation.
async fn attempt(state: &Arc<AppState>, rec: InvocationRecord) -> Outcome {
    let f = match state.function_at(&rec.function, rec.revision).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            let what = match rec.revision {
                Some(n) => format!("revision {n} of function {}", rec.function),
                None => format!("function {}", rec.function),
            };
            return failed(&rec, None, Vec::new(), format!("{what} is not deployed"));
        }
        Err(e) => return failed(&rec, None, Vec::new(), e),
    };
    if rec.trigger == "http" {
        let (parts, body) = match stored_request(&rec) {
            Ok(r) => r,
            Err(why) => return failed(&rec, None, Vec::new(), why),
        };
        let timeout = f.spec.timeout.to_std();
        let resp = gateway::run(state, f, parts, body, rec.id.clone(), Instant::now()).await;
        let platform = resp.extensions().get::<PlatformError>().copied();
        let status = resp.status().as_u16();
        let Some(body) = collect(resp, state.body_limit, timeout).await else {
            let error = "the response body did not end within the function's timeout".to_string();
            return failed(&rec, Some(status), Vec::new(), error);
        };
        match platform {
            Some(p) if is_throttle(p.code) => throttled(),
            Some(p) => {
                let error = format!("{}: {}", p.code, platform_message(&body));
                failed(&rec, Some(status), body, error)
            }
            None if status < 400 => Outcome::Succeeded {
                status,
                body: keep(body),
            },
            None => {
                let error = format!("the function answered {status}");
                failed(&rec, Some(status), body, error)
            }
        }
    } else {
        let payload = Bytes::from(rec.payload.clone());
        match invoke_payload(state, f, payload, &rec.id, &rec.trigger, None).await {
            PayloadResult::Ok { body, .. } => Outcome::Succeeded {
                status: 200,
                body: keep(body.to_vec()),
            },
            PayloadResult::FunctionError { body, .. } => {
                let error = crate::lambda::error_message(&body);
                failed(&rec, Some(200), body.to_vec(), error)
            }
            PayloadResult::Platform(e) if is_throttle(e.code) => throttled(),
            PayloadResult::Platform(e) => failed(
                &rec,
                Some(e.status.as_u16()),
                Vec::new(),
                format!("{}: {}", e.code, e.message),
            ),
        }
    }
}

fn is_throttle(code: &str) -> bool {
    matches!(code, "concurrency_limit" | "no_capacity")
}

fn throttled() -> Outcome {
    Outcome::Throttled {
        at: nubo_store::now_ms() + THROTTLE_WAIT.as_millis() as i64,
    }
}

/// A failed attempt, retried after a backoff that doubles with each attempt.
fn failed(rec: &InvocationRecord, status: Option<u16>, body: Vec<u8>, error: String) -> Outcome {
    let exp = rec.attempts.saturating_sub(1).min(16);
    let delay = (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_MAX);
    // Up to 10% jitter, from the id, so a burst of failures does not retry in lockstep.
    let jitter = rec
        .id
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
        % 100;
    let delay = delay + delay * jitter as u32 / 1000;
    Outcome::Failed {
        status,
        body: keep(body),
        error,
        at: nubo_store::now_ms() + delay.as_millis() as i64,
    }
}

fn keep(mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(RESULT_KEPT);
    body
}

/// The `error.message` of a platform error body.
fn platform_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_default()
}

/// The response body, up to `limit` bytes; `None` when it does not end within `timeout` (a
/// streaming answer must not hold a worker forever).
async fn collect(resp: Response, limit: usize, timeout: Duration) -> Option<Vec<u8>> {
    let body = http_body_util::Limited::new(resp.into_body(), limit).collect();
    match tokio::time::timeout(timeout, body).await {
        Ok(Ok(b)) => Some(b.to_bytes().to_vec()),
        Ok(Err(_)) => Some(Vec::new()),
        Err(_) => None,
    }
}

/// The request an `http` invocation stored.
fn stored_request(rec: &InvocationRecord) -> Result<(http::request::Parts, Bytes), String> {
    #[derive(serde::Deserialize)]
    struct Stored {
        method: String,
        uri: String,
        headers: Vec<(String, String)>,
    }
    let s: Stored = serde_json::from_str(&rec.request)
        .map_err(|e| format!("the stored request is unreadable: {e}"))?;
    let mut builder = http::Request::builder()
        .method(s.method.as_str())
        .uri(s.uri);
    for (k, v) in &s.headers {
        builder = builder.header(k, v);
    }
    let req = builder
        .body(())
        .map_err(|e| format!("the stored request is invalid: {e}"))?;
    Ok((req.into_parts().0, Bytes::from(rec.payload.clone())))
}

/// An invocation record as the admin API shows it.
pub fn record_json(rec: &InvocationRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(rec).unwrap_or_else(|_| json!({}));
    if let Some(result) = &rec.result {
        v["result"] = match std::str::from_utf8(result) {
            Ok(text) => json!(text),
            Err(_) => json!({ "base64": base64_encode(result) }),
        };
    }
    v["location"] = json!(format!("/_nubo/api/v1/invocations/{}", rec.id));
    v
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
