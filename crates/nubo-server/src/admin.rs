//! The admin API (`/_nubo/api/v1`, bearer token), health and metrics.

use crate::AppState;
use crate::api_error::ApiError;
use crate::deploy::{self, DeployRequest};
use crate::live::{LiveFunction, Runner};
use crate::metrics::StateLabels;
use crate::routes::RouteTable;
use crate::token::token_matches;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head};
use futures::StreamExt;
use nubo_store::{CommitError, Digest, FunctionRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

type S = Arc<AppState>;

/// Largest artifact accepted by `PUT /blobs/<sha256>`.
const MAX_BLOB: u64 = 1 << 30;

pub fn router(state: S) -> Router<S> {
    let api = Router::new()
        .route("/functions", get(list_functions))
        .route("/functions/{name}", get(get_function).delete(delete_function))
        .route("/functions/{name}/revisions", get(revisions))
        .route("/functions/{name}/instances", get(instances))
        .route("/functions/{name}/logs", get(logs))
        .route("/functions/{name}/invocations", get(list_invocations))
        .route(
            "/functions/{name}/dlq/replay",
            axum::routing::post(replay_dead_letters),
        )
        .route("/invocations/{id}", get(get_invocation))
        .route("/functions/{name}/records", get(records))
        .route("/functions/{name}/series", get(series))
        .route("/usage", get(usage))
        .route("/blobs/{digest}", head(has_blob).put(put_blob))
        .route("/deployments", axum::routing::post(post_deployment))
        .fallback(|| async {
            ApiError::not_found("not_found", "no such admin API resource")
                .hint("resources: functions, functions/<f>/revisions, functions/<f>/instances, functions/<f>/logs, functions/<f>/records, functions/<f>/series, usage, functions/<f>/invocations, functions/<f>/dlq/replay, invocations/<id>, blobs/<sha256>, deployments")
        })
        .layer(middleware::map_response(json_rejections))
        .layer(middleware::from_fn_with_state(state, require_token));
    Router::new()
        .route(
            "/_nubo/health",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/_nubo/metrics", get(metrics))
        .merge(crate::ui::router())
        .nest("/_nubo/api/v1", api)
        .fallback(|req: Request| async move {
            let path = req.uri().path().to_string();
            ApiError::not_found("not_found", format!("{path} is not a platform route"))
                .hint("platform routes: /_nubo/health, /_nubo/metrics, /_nubo/ui/, /_nubo/api/v1/…")
        })
}

/// axum answers a query, path or body it cannot parse with plain text; the API answers JSON
/// in its one error shape, keeping axum's message (it names the parameter and the problem).
async fn json_rejections(resp: Response) -> Response {
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    let status = resp.status();
    if !plain || !(status.is_client_error()) {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    ApiError::new(
        status,
        "bad_request",
        String::from_utf8_lossy(&body).into_owned(),
    )
    .hint("see the admin API resources and their parameters in the README")
    .into_response()
}

async fn require_token(State(state): State<S>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if token_matches(&state.token, t.trim()) => next.run(req).await,
        _ => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the admin API needs the admin token")
            .hint("send `Authorization: Bearer <token>`; the token is in <data-dir>/admin-token, and the nubo CLI finds it by itself")
            .into_response(),
    }
}

async fn metrics(State(state): State<S>) -> Response {
    // Queue depth: requests waiting for an instance plus async invocations not yet finished.
    let queued: std::collections::HashMap<String, i64> = state
        .queue
        .depths()
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    let table = state.table();
    let mut samples = Vec::new();
    for f in table.functions() {
        if let Runner::Process(app) = &f.runner {
            // Reading cgroup files is a few small reads per instance.
            for r in app.rows(false).into_iter().filter(|r| r.port != 0) {
                samples.push(crate::metrics::InstanceSample {
                    labels: crate::metrics::InstanceLabels {
                        function: f.name.clone(),
                        instance: r.id,
                    },
                    memory_bytes: r.memory_bytes,
                    cpu_seconds: r.cpu_seconds,
                });
            }
        }
    }
    state.metrics.instance_samples.replace(samples);
    for f in table.functions() {
        if let Runner::Wasm(w) = &f.runner {
            let held = w
                .config
                .memory_in_use
                .load(std::sync::atomic::Ordering::Relaxed);
            state.metrics.wasm_memory.get_or_create(&f.label).set(held);
        }
        let c = counts(f);
        for (st, n) in [
            ("idle", c.idle),
            ("busy", c.busy),
            ("starting", c.starting),
            ("frozen", c.frozen),
        ] {
            state
                .metrics
                .instances
                .get_or_create(&StateLabels {
                    function: f.name.clone(),
                    state: st.into(),
                })
                .set(n as i64);
        }
        state
            .metrics
            .queue_depth
            .get_or_create(&f.label)
            .set(c.waiting as i64 + queued.get(&f.name).copied().unwrap_or(0));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

fn function_json(state: &AppState, table: &RouteTable, r: &FunctionRecord) -> Value {
    let c = table
        .function(&r.name)
        .map(|f| counts(f))
        .unwrap_or_default();
    json!({
        "name": r.name,
        "project": r.project,
        "kind": r.revision.spec.kind,
        "revision": r.revision.number,
        "digest": r.revision.digest,
        "url": format!("{}/fn/{}/", state.base_url, r.name),
        "routes": r.revision.spec.routes,
        "instances": c.json(),
        "recent": table.function(&r.name).map(|f| f.series.recent(nubo_store::now_ms())),
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    })
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, nubo_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(what, e))?
        .map_err(|e| ApiError::internal(what, e))
}

#[derive(Deserialize)]
struct RecordQuery {
    /// Only invocations that started at or after this time (ms since the epoch).
    #[serde(default)]
    since: i64,
    #[serde(default = "default_invocation_limit")]
    limit: usize,
}

/// A function's invocation records, newest first.
async fn records(
    State(state): State<S>,
    Path(name): Path<String>,
    Query(q): Query<RecordQuery>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let limit = q.limit.clamp(1, 10_000) as i64;
    let rows = blocking("reading invocation records", move || {
        store.records(&name, q.since, limit)
    })
    .await?;
    Ok(Json(json!({ "records": rows })))
}

#[derive(Deserialize)]
struct SeriesQuery {
    #[serde(default = "default_series_minutes")]
    minutes: i64,
}

fn default_series_minutes() -> i64 {
    15
}

/// A function's last minutes in 10-second steps (rate, errors, latency, cold starts).
async fn series(
    State(state): State<S>,
    Path(name): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<Value>, ApiError> {
    let table = state.table();
    let f = table.function(&name).ok_or_else(|| no_function(&name))?;
    if !(1..=15).contains(&q.minutes) {
        return Err(ApiError::bad_request(
            "bad_minutes",
            format!("minutes={} is outside the kept window", q.minutes),
        )
        .hint("the last 1 to 15 minutes are kept in memory; older history is in the records"));
    }
    let points = f.series.points(nubo_store::now_ms(), q.minutes * 60_000);
    Ok(Json(json!({
        "function": f.name,
        "step_seconds": crate::series::STEP_MS / 1000,
        "points": points,
    })))
}

/// Invocations, GB-seconds and errors per function and per project since `since`, summed from
/// the invocation records.
async fn usage(
    State(state): State<S>,
    Query(q): Query<RecordQuery>,
) -> Result<Json<Value>, ApiError> {
    // Records are written in batches: include what was just served.
    state.logs.flush().await;
    let store = state.store.clone();
    let since = q.since;
    let (functions, projects) = blocking("computing usage", move || store.usage(since)).await?;
    Ok(Json(json!({
        "since": since,
        "functions": functions,
        "projects": projects,
    })))
}

fn queue_error(e: crate::queue::QueueError) -> ApiError {
    ApiError::internal("reading the invocation queue", e)
}

async fn get_invocation(
    State(state): State<S>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.queue.get(id.clone()).await.map_err(queue_error)? {
        Some(r) => Ok(Json(crate::invocations::record_json(&r))),
        None => Err(ApiError::not_found(
            "invocation_not_found",
            format!("no async invocation {id:?} is recorded"),
        )
        .hint("ids come from a 202's Location header or `nubo invoke --async`; old finished ones are trimmed")),
    }
}

#[derive(Deserialize)]
struct InvocationQuery {
    #[serde(default = "default_status")]
    status: String,
    #[serde(default = "default_invocation_limit")]
    limit: usize,
}

fn default_status() -> String {
    "dead".into()
}

fn default_invocation_limit() -> usize {
    100
}

/// A function's async invocations in one state; `status=dead` is the dead-letter list.
async fn list_invocations(
    State(state): State<S>,
    Path(name): Path<String>,
    Query(q): Query<InvocationQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match q.status.as_str() {
        "queued" => "queued",
        "running" => "running",
        "succeeded" => "succeeded",
        "dead" => "dead",
        other => {
            return Err(ApiError::bad_request(
                "bad_status",
                format!("status {other:?} is not a state of an invocation"),
            )
            .hint("use one of: queued, running, succeeded, dead"));
        }
    };
    let list = state
        .queue
        .list(name, status, q.limit.clamp(1, 10_000))
        .await
        .map_err(queue_error)?;
    let list: Vec<Value> = list.iter().map(crate::invocations::record_json).collect();
    Ok(Json(json!({ "invocations": list })))
}

#[derive(Deserialize, Default)]
struct ReplayRequest {
    #[serde(default)]
    ids: Vec<String>,
}

/// Queues a function's dead letters again (all of them, or `ids`).
async fn replay_dead_letters(
    State(state): State<S>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ReplayRequest = if body.is_empty() {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("the body is not a replay request: {e}"),
            )
            .hint(r#"send {"ids": ["<invocation id>", ...]}, or nothing to replay all"#)
        })?
    };
    if state.table().function(&name).is_none() {
        return Err(
            no_function(&name).hint("deploy the function again before replaying its dead letters")
        );
    }
    let replayed = state
        .queue
        .replay(name, req.ids)
        .await
        .map_err(queue_error)?;
    Ok(Json(json!({ "replayed": replayed })))
}

fn no_function(name: &str) -> ApiError {
    ApiError::not_found(
        "function_not_found",
        format!("no function named {name:?} is deployed"),
    )
    .hint("list deployed functions with `nubo ls`")
}

async fn list_functions(State(state): State<S>) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let records = blocking("listing functions", move || store.functions()).await?;
    let table = state.table();
    let list: Vec<Value> = records
        .iter()
        .map(|r| function_json(&state, &table, r))
        .collect();
    Ok(Json(json!({ "functions": list })))
}

async fn get_function(
    State(state): State<S>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let n = name.clone();
    let (record, revisions) = blocking("reading the function", move || {
        Ok((store.function(&n)?, store.revisions(&n)?))
    })
    .await?;
    let record = record.ok_or_else(|| no_function(&name))?;
    let mut v = function_json(&state, &state.table(), &record);
    v["spec"] = json!(record.revision.spec);
    v["revisions"] =
        json!(revisions
        .iter()
        .map(|r| json!({ "number": r.number, "digest": r.digest, "created_at": r.created_at }))
        .collect::<Vec<_>>());
    Ok(Json(v))
}

async fn delete_function(
    State(state): State<S>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if deploy::remove(&state, &name).await? {
        Ok(Json(json!({ "removed": name })))
    } else {
        Err(no_function(&name))
    }
}

async fn revisions(
    State(state): State<S>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let n = name.clone();
    let revs = blocking("reading revisions", move || store.revisions(&n)).await?;
    if revs.is_empty() {
        return Err(no_function(&name));
    }
    Ok(Json(json!({ "revisions": revs })))
}

/// Instance counts of a function, whatever its kind.
#[derive(Default)]
struct Counts {
    idle: usize,
    busy: usize,
    starting: usize,
    frozen: usize,
    waiting: usize,
}

impl Counts {
    fn json(&self) -> Value {
        json!({ "idle": self.idle, "busy": self.busy, "starting": self.starting,
                "frozen": self.frozen, "waiting": self.waiting })
    }
}

fn counts(f: &LiveFunction) -> Counts {
    match &f.runner {
        Runner::Wasm(w) => {
            let v = w.pool.view();
            Counts {
                idle: v.idle,
                busy: v.serving(),
                starting: v.starting,
                frozen: 0,
                waiting: v.waiting,
            }
        }
        Runner::Process(app) => {
            let v = app.pool.view();
            let members = app.pool.members();
            let busy = members.iter().filter(|m| m.inflight > 0).count();
            Counts {
                idle: members.len() - busy,
                busy,
                starting: v.starting,
                frozen: app.frozen_count(),
                waiting: v.waiting,
            }
        }
    }
}

async fn instances(
    State(state): State<S>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let table = state.table();
    let f = table.function(&name).ok_or_else(|| no_function(&name))?;
    let c = counts(f);
    let mut out = json!({
        "function": f.name,
        "revision": f.revision,
        "kind": f.spec.kind,
        "max": f.spec.scale.max,
        "counts": c.json(),
        "instances": [],
    });
    match &f.runner {
        Runner::Wasm(w) => {
            out["reuse"] = json!(f.spec.reuse);
            out["memory_bytes"] = json!(
                w.config
                    .memory_in_use
                    .load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        Runner::Process(app) => {
            let mut rows = app.rows(false);
            for old in state.draining.of(&f.name) {
                rows.extend(old.rows(true));
            }
            out["instances"] = rows
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id,
                        "port": r.port,
                        "revision": r.revision,
                        "state": r.state,
                        "mode": r.mode,
                        "inflight": r.inflight,
                        "served": r.served,
                        "cpu_seconds": r.cpu_seconds,
                        "memory_bytes": r.memory_bytes,
                        "age_seconds": r.age.as_secs_f64(),
                        "start_ms": r.start_ms,
                    })
                })
                .collect();
        }
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    /// Only lines with a larger id (for following).
    #[serde(default)]
    after: i64,
    /// At most this many lines (the newest, unless `after` is given).
    #[serde(default = "default_log_limit")]
    limit: i64,
    /// Only lines at or after this time (ms since the epoch).
    #[serde(default)]
    since: i64,
    /// Keep the response open and stream new lines as they come (newline-delimited JSON).
    #[serde(default)]
    follow: bool,
}

fn default_log_limit() -> i64 {
    200
}

async fn logs(
    State(state): State<S>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let n = name.clone();
    let limit = q.limit.clamp(1, 10_000);
    let tail = q.after == 0;
    if q.follow {
        let exists = blocking("reading logs", move || store.function(&n)).await?;
        if exists.is_none() {
            return Err(no_function(&name));
        }
        // Without `after`, start from the newest `limit` lines, like a plain read (with none,
        // from the first line at all, which `since` filters the same way).
        let (store, n) = (state.store.clone(), name.clone());
        let after = if q.after > 0 {
            q.after
        } else {
            blocking("reading logs", move || {
                Ok(store
                    .logs(&n, 0, q.since, limit, true)?
                    .first()
                    .map_or(0, |l| l.id - 1))
            })
            .await?
        };
        let stream = crate::logs::follow(state.store.clone(), &state.logs, name, after, q.since);
        return Ok((
            [
                (header::CONTENT_TYPE, "application/x-ndjson"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(stream),
        )
            .into_response());
    }
    let (exists, lines) = blocking("reading logs", move || {
        Ok((
            store.function(&n)?.is_some(),
            store.logs(&n, q.after, q.since, limit, tail)?,
        ))
    })
    .await?;
    if !exists {
        return Err(no_function(&name));
    }
    Ok(Json(json!({ "lines": lines })).into_response())
}

fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    Digest::parse(text).map_err(|e| ApiError::bad_request("invalid_digest", e))
}

async fn has_blob(
    State(state): State<S>,
    Path(digest): Path<String>,
) -> Result<StatusCode, ApiError> {
    let d = parse_digest(&digest)?;
    Ok(if state.store.blobs.contains(&d) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

async fn put_blob(
    State(state): State<S>,
    Path(digest): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let d = parse_digest(&digest)?;
    if state.store.blobs.contains(&d) {
        return Ok((
            StatusCode::OK,
            Json(json!({ "digest": d.to_string(), "existed": true })),
        )
            .into_response());
    }
    let mut writer = state
        .store
        .blobs
        .writer(d.clone())
        .map_err(|e| ApiError::internal("storing the upload", e))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("upload_failed", format!("the upload broke off: {e}"))
        })?;
        if writer.len() + chunk.len() as u64 > MAX_BLOB {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "artifact_too_large",
                "artifacts are limited to 1 GiB",
            ));
        }
        writer
            .write(&chunk)
            .map_err(|e| ApiError::internal("storing the upload", e))?;
    }
    let size = writer.len();
    tokio::task::spawn_blocking(move || writer.commit())
        .await
        .map_err(|e| ApiError::internal("storing the upload", e))?
        .map_err(|e| match e {
            CommitError::Mismatch { .. } => ApiError::bad_request("digest_mismatch", e.to_string()),
            CommitError::Io(e) => ApiError::internal("storing the upload", e),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "digest": d.to_string(), "size": size, "existed": false })),
    )
        .into_response())
}

async fn post_deployment(
    State(state): State<S>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: DeployRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_request", format!("the deployment request is not valid JSON of the expected shape: {e}"))
            .hint("send {\"manifest\": \"<nubo.yaml text>\", \"artifacts\": {\"<component path>\": \"<sha256>\"}}")
    })?;
    let out = deploy::deploy(&state, req).await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}
