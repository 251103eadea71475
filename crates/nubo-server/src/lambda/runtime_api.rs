//! The AWS Lambda Runtime API (`/2018-06-01/runtime/...`) that Nubo serves to one lambda
//! instance, on a loopback port of its own: `AWS_LAMBDA_RUNTIME_API` names the instance, so the
//! official runtime clients work unchanged.
//!
//! One invocation at a time, as in AWS: [`RuntimeApi::invoke`] hands an event to the runtime's
//! long-polling `next` (or keeps it until the runtime asks) and resolves with what the runtime
//! posts to `response` or `error`.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// One invocation, as `next` delivers it.
#[derive(Clone)]
pub struct Event {
    pub request_id: String,
    /// Milliseconds since the epoch.
    pub deadline_ms: i64,
    pub payload: Bytes,
    pub trace_id: String,
}

/// What the runtime posted for an invocation.
#[derive(Debug)]
pub enum Answer {
    Response(Bytes),
    /// `errorType` (the header, else the body's), and the error document as posted.
    Error {
        error_type: String,
        body: Bytes,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Starting,
    /// The runtime asked for its first invocation.
    Ready,
    /// It posted `init/error` (the message).
    InitFailed(String),
}

#[derive(Default)]
struct Slot {
    /// A `next` waiting for an event.
    waiting: Option<oneshot::Sender<Event>>,
    /// An event no `next` has taken yet.
    pending: Option<Event>,
    /// The invocation under way: its id and who waits for its answer.
    current: Option<(String, oneshot::Sender<Answer>)>,
}

struct Shared {
    arn: String,
    slot: Mutex<Slot>,
    phase: watch::Sender<Phase>,
    body_limit: usize,
}

/// The Runtime API of one instance; stops serving when dropped.
pub struct RuntimeApi {
    pub port: u16,
    shared: Arc<Shared>,
    server: tokio::task::AbortHandle,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl RuntimeApi {
    /// Listens on a free loopback port.
    pub async fn start(arn: String, body_limit: usize) -> std::io::Result<RuntimeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            arn,
            slot: Mutex::new(Slot::default()),
            phase: watch::channel(Phase::Starting).0,
            body_limit,
        });
        let server = tokio::spawn(serve(listener, shared.clone())).abort_handle();
        Ok(RuntimeApi {
            port,
            shared,
            server,
        })
    }

    /// Resolves when the runtime first asks for an invocation; fails with its `init/error`.
    pub fn ready(&self) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let mut rx = self.shared.phase.subscribe();
        Box::pin(async move {
            let phase = rx
                .wait_for(|p| *p != Phase::Starting)
                .await
                .map(|p| p.clone())
                .map_err(|_| "the Runtime API stopped".to_string())?;
            match phase {
                Phase::InitFailed(why) => Err(why),
                _ => Ok(()),
            }
        })
    }

    /// Hands `event` to the runtime; the receiver resolves with its answer (or errs if the
    /// Runtime API is dropped first).
    pub fn invoke(&self, event: Event) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        let mut slot = lock(&self.shared.slot);
        slot.current = Some((event.request_id.clone(), tx));
        match slot.waiting.take() {
            Some(next) => {
                if let Err(event) = next.send(event) {
                    // That `next` hung up: the runtime's following one takes it.
                    slot.pending = Some(event);
                }
            }
            None => slot.pending = Some(event),
        }
        rx
    }

    /// Forgets the invocation under way (it timed out; the instance is being stopped).
    pub fn abandon(&self) {
        let mut slot = lock(&self.shared.slot);
        slot.current = None;
        slot.pending = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let service = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, std::convert::Infallible>(route(&shared, req).await) }
        });
        // No timeouts: `next` long-polls for as long as the instance lives.
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, error_type: &str, message: String) -> Resp {
    json(
        status,
        serde_json::json!({ "errorType": error_type, "errorMessage": message }),
    )
}

fn accepted() -> Resp {
    json(StatusCode::ACCEPTED, serde_json::json!({ "status": "OK" }))
}

async fn route(shared: &Shared, req: hyper::Request<hyper::body::Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/2018-06-01/runtime/") else {
        return error(
            StatusCode::NOT_FOUND,
            "UnknownPath",
            format!("{path} is not part of the Lambda Runtime API (2018-06-01)"),
        );
    };
    let method = req.method().clone();
    let error_type = req
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let parts: Vec<&str> = rest.split('/').collect();
    match (method, parts.as_slice()) {
        (Method::GET, ["invocation", "next"]) => next(shared).await,
        (Method::POST, ["invocation", id, kind @ ("response" | "error")]) => {
            let body = match read(shared, req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let answer = if *kind == "response" {
                Answer::Response(body)
            } else {
                Answer::Error {
                    error_type: error_type.unwrap_or_else(|| field(&body, "errorType")),
                    body,
                }
            };
            let mut slot = lock(&shared.slot);
            match slot.current.take() {
                Some((current, tx)) if current == *id => {
                    let _ = tx.send(answer);
                    accepted()
                }
                other => {
                    slot.current = other;
                    error(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequestID",
                        format!("no invocation {id} is under way on this instance"),
                    )
                }
            }
        }
        (Method::POST, ["init", "error"]) => {
            let body = match read(shared, req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let kind = error_type.unwrap_or_else(|| field(&body, "errorType"));
            let message = field(&body, "errorMessage");
            shared.phase.send_replace(Phase::InitFailed(format!(
                "the runtime reported an init error: {kind}: {message}"
            )));
            accepted()
        }
        (method, _) => error(
            StatusCode::NOT_FOUND,
            "UnknownPath",
            format!("{method} {path} is not part of the Lambda Runtime API"),
        ),
    }
}

/// A string field of a JSON error document ("" when absent).
fn field(body: &[u8], name: &str) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get(name).and_then(|s| s.as_str()).map(String::from))
        .unwrap_or_default()
}

async fn read(shared: &Shared, req: hyper::Request<hyper::body::Incoming>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), shared.body_limit)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!(
                "the posted document could not be read (limit {} bytes): {e}",
                shared.body_limit
            ),
        )),
    }
}

async fn next(shared: &Shared) -> Resp {
    shared.phase.send_if_modified(|p| {
        let first = *p == Phase::Starting;
        if first {
            *p = Phase::Ready;
        }
        first
    });
    let event = {
        let mut slot = lock(&shared.slot);
        match slot.pending.take() {
            Some(e) => Ok(e),
            None => {
                let (tx, rx) = oneshot::channel();
                slot.waiting = Some(tx);
                Err(rx)
            }
        }
    };
    let event = match event {
        Ok(e) => e,
        Err(rx) => match rx.await {
            Ok(e) => e,
            Err(_) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServiceUnavailable",
                    "the instance is stopping".into(),
                );
            }
        },
    };
    let mut r = Response::new(Full::new(event.payload));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", &event.request_id);
    set("lambda-runtime-deadline-ms", &event.deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", &shared.arn);
    set("lambda-runtime-trace-id", &event.trace_id);
    r
}
