//! Traces of invocations, exported with OTLP/HTTP (JSON) when `--otlp-endpoint` is given.
//!
//! Each synchronous invocation is a span (`invoke <function>`, kind server) whose parent is the
//! caller's W3C `traceparent`, with three children laid out from the durations the gateway
//! measures anyway (the `Server-Timing` figures): `queue`, `cold start` and `execution`. The
//! function receives a `traceparent` naming the invocation span, so its own spans nest under
//! it. Spans are built at the one place an invocation is counted and sent in batches by one
//! task; if the collector is slow or away they are dropped (counted), never waited for.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Spans waiting for the exporter; beyond this they are dropped.
const BUFFER: usize = 16_384;
const BATCH: usize = 512;
/// How long a span may wait for companions before its batch is sent.
const DELAY: Duration = Duration::from_millis(500);

/// The trace context of the invocation being served on this task.
#[derive(Clone, Copy, Debug)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The caller's span, if it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// The invocation's own span.
    pub span_id: [u8; 8],
    pub flags: u8,
}

tokio::task_local! {
    pub(crate) static CURRENT: Trace;
}

impl Trace {
    /// Continues the caller's trace (`traceparent`), or starts one, and rewrites the request's
    /// `traceparent` so the function sees the invocation span as its parent.
    pub fn begin(headers: &mut http::HeaderMap) -> Trace {
        let incoming = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let trace = match incoming {
            Some((trace_id, parent, flags)) => Trace {
                trace_id,
                parent: Some(parent),
                span_id: random(),
                flags,
            },
            None => Trace {
                trace_id: random(),
                parent: None,
                span_id: random(),
                flags: 1,
            },
        };
        if let Ok(v) = http::HeaderValue::from_str(&trace.traceparent()) {
            headers.insert("traceparent", v);
        }
        trace
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

/// `(trace id, parent span id, flags)` of a valid version-00 `traceparent`.
fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?;
    let parent: [u8; 8] = unhex(parent)?;
    let flags: [u8; 1] = unhex(flags)?;
    // All-zero ids are invalid by the spec.
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0]))
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = getrandom::fill(&mut b);
    if b.iter().all(|x| *x == 0) {
        b[N - 1] = 1;
    }
    b
}

/// One finished invocation, as the spans describe it.
pub struct Finished<'a> {
    pub function: &'a str,
    pub revision: i64,
    pub invocation: &'a str,
    pub instance: Option<&'a str>,
    pub status: u16,
    pub trigger: &'a str,
    /// When the request arrived, and how long until its response.
    pub start: SystemTime,
    pub took: Duration,
    /// The `Server-Timing` value: `cold`, `queue` and `exec` durations, the start mode.
    pub timing: Option<&'a str>,
}

struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: String,
    server: bool,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<(&'static str, Value)>,
    error: bool,
}

#[derive(Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the export task. `endpoint` is the collector's base URL (`http://host:4318`,
    /// spans go to `/v1/traces`) or the full traces URL.
    pub fn start(endpoint: &str) -> Result<Exporter, String> {
        let url = traces_url(endpoint)?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(export(url, rx, dropped.clone()));
        Ok(Exporter { tx, dropped })
    }

    /// Records the spans of one finished invocation; never blocks. A caller that marked its
    /// trace as not sampled (`traceparent` flags without bit 0) gets no spans, as W3C intends.
    pub fn finished(&self, trace: &Trace, f: &Finished) {
        if trace.flags & 1 == 0 {
            return;
        }
        let end = f.start + f.took;
        let figure = |name: &str| {
            f.timing
                .and_then(|t| t.split(',').find(|m| m.trim().starts_with(name)))
                .and_then(|m| m.split("dur=").nth(1))
                .and_then(|d| d.split(';').next()?.trim().parse::<f64>().ok())
                .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0))
                .unwrap_or_default()
        };
        let mode = f
            .timing
            .and_then(|t| t.split("desc=\"").nth(1)?.split('"').next());
        let (cold, queue, exec) = (figure("cold"), figure("queue"), figure("exec"));
        let mut attributes = vec![
            ("faas.name", json!({ "stringValue": f.function })),
            (
                "faas.version",
                json!({ "stringValue": f.revision.to_string() }),
            ),
            ("faas.invocation_id", json!({ "stringValue": f.invocation })),
            (
                "faas.trigger",
                json!({ "stringValue": faas_trigger(f.trigger) }),
            ),
            ("nubo.trigger", json!({ "stringValue": f.trigger })),
            (
                "http.response.status_code",
                json!({ "intValue": f.status.to_string() }),
            ),
        ];
        if let Some(i) = f.instance {
            attributes.push(("faas.instance", json!({ "stringValue": i })));
        }
        if let Some(m) = mode {
            attributes.push(("faas.coldstart", json!({ "boolValue": m != "warm" })));
            attributes.push(("nubo.start_mode", json!({ "stringValue": m })));
        }
        let error = f.status >= 500;
        let root = Span {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent: trace.parent,
            name: format!("invoke {}", f.function),
            server: true,
            start: f.start,
            end,
            attributes,
            error,
        };
        // The phases in order, ending where execution ended (the response).
        let exec_start = end.checked_sub(exec).unwrap_or(f.start).max(f.start);
        let cold_start = exec_start.checked_sub(cold).unwrap_or(f.start).max(f.start);
        let queue_start = cold_start
            .checked_sub(queue)
            .unwrap_or(f.start)
            .max(f.start);
        let child = |name: &str, start: SystemTime, end: SystemTime, attributes, error| Span {
            trace_id: trace.trace_id,
            span_id: random(),
            parent: Some(trace.span_id),
            name: name.to_string(),
            server: false,
            start,
            end,
            attributes,
            error,
        };
        let mut spans = vec![root];
        if mode.is_some() {
            spans.push(child("queue", queue_start, cold_start, vec![], false));
            if !cold.is_zero() {
                let m = json!({ "stringValue": mode.unwrap_or_default() });
                spans.push(child(
                    "cold start",
                    cold_start,
                    exec_start,
                    vec![("nubo.start_mode", m)],
                    false,
                ));
            }
            spans.push(child("execution", exec_start, end, vec![], error));
        }
        for s in spans {
            if self.tx.try_send(s).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The OpenTelemetry FaaS trigger a Nubo trigger is.
fn faas_trigger(trigger: &str) -> &'static str {
    match trigger {
        "http" => "http",
        "cron" => "timer",
        "async" => "pubsub",
        _ => "other",
    }
}

fn traces_url(endpoint: &str) -> Result<http::Uri, String> {
    let e = endpoint.trim_end_matches('/');
    if e.starts_with("https://") {
        return Err(format!(
            "{endpoint}: only plain http:// collectors are supported; run a local OpenTelemetry Collector or agent and point it onward"
        ));
    }
    if !e.starts_with("http://") {
        return Err(format!(
            "{endpoint}: expected the collector's OTLP/HTTP address, like http://127.0.0.1:4318"
        ));
    }
    let url = if e.ends_with("/v1/traces") {
        e.to_string()
    } else {
        format!("{e}/v1/traces")
    };
    url.parse().map_err(|err| format!("{endpoint}: {err}"))
}

fn unix_nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

/// An OTLP `ExportTraceServiceRequest` in its JSON form.
fn encode(spans: &[Span]) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut v = json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                // SPAN_KIND_SERVER = 2, SPAN_KIND_INTERNAL = 1
                "kind": if s.server { 2 } else { 1 },
                "startTimeUnixNano": unix_nanos(s.start),
                "endTimeUnixNano": unix_nanos(s.end),
                "attributes": s.attributes.iter()
                    .map(|(k, v)| json!({ "key": k, "value": v }))
                    .collect::<Vec<_>>(),
                // STATUS_CODE_ERROR = 2, STATUS_CODE_UNSET = 0
                "status": { "code": if s.error { 2 } else { 0 } },
            });
            if let Some(p) = &s.parent {
                v["parentSpanId"] = json!(hex(p));
            }
            v
        })
        .collect();
    let body = json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": "nubo" } },
                { "key": "service.version", "value": { "stringValue": env!("CARGO_PKG_VERSION") } },
            ]},
            "scopeSpans": [{
                "scope": { "name": "nubo", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

async fn export(url: http::Uri, mut rx: mpsc::Receiver<Span>, dropped: Arc<AtomicU64>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + DELAY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                _ => break,
            }
        }
        let req = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(encode(&batch))));
        let Ok(req) = req else { continue };
        let sent = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
        let problem = match sent {
            Ok(Ok(resp)) if resp.status().is_success() => None,
            Ok(Ok(resp)) => Some(format!("the collector answered {}", resp.status())),
            Ok(Err(e)) => Some(format!("{e}")),
            Err(_) => Some("no answer within 10 s".to_string()),
        };
        // Say it once when export starts failing and once when it recovers, not per batch.
        match problem {
            Some(why) => {
                dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(
                        "exporting spans to {url}: {why}; spans are dropped until it works"
                    );
                }
                failing = true;
            }
            None if failing => {
                let lost = dropped.swap(0, Ordering::Relaxed);
                tracing::info!("exporting spans to {url} works again ({lost} spans were dropped)");
                failing = false;
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_rewritten() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let t = Trace::begin(&mut h);
        assert_eq!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let sent = h["traceparent"].to_str().unwrap();
        assert_eq!(
            sent,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", hex(&t.span_id))
        );
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "garbage",
        ] {
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", bad.parse().unwrap());
            let t = Trace::begin(&mut h);
            assert!(t.parent.is_none(), "{bad}");
            assert_ne!(
                hex(&t.trace_id),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
        }
    }

    fn finish(exporter: &Exporter, trace: &Trace) {
        let now = SystemTime::now();
        exporter.finished(
            trace,
            &Finished {
                function: "f",
                revision: 3,
                invocation: "abc",
                instance: Some("f-r3-1"),
                status: 502,
                trigger: "http",
                start: now,
                took: Duration::from_millis(30),
                timing: Some("cold;dur=10.000;desc=\"fork\", queue;dur=5.000, exec;dur=12.000"),
            },
        );
    }

    #[test]
    fn an_invocation_is_four_spans_laid_out_from_its_timing() {
        let (tx, mut rx) = mpsc::channel(16);
        let exporter = Exporter {
            tx,
            dropped: Default::default(),
        };
        let mut h = http::HeaderMap::new();
        let trace = Trace::begin(&mut h);
        finish(&exporter, &trace);
        let mut spans = Vec::new();
        while let Ok(s) = rx.try_recv() {
            spans.push(s);
        }
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["invoke f", "queue", "cold start", "execution"]);
        let root = &spans[0];
        assert!(root.server && root.error && root.parent.is_none());
        // execution ends with the invocation; cold start ends where execution begins, and so on.
        let ms = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap().as_secs_f64() * 1e3;
        let (q, c, e) = (&spans[1], &spans[2], &spans[3]);
        assert_eq!(e.end, root.end);
        assert!((ms(e.start, e.end) - 12.0).abs() < 1e-6);
        assert_eq!((c.end, q.end), (e.start, c.start));
        assert!((ms(c.start, c.end) - 10.0).abs() < 1e-6);
        assert!((ms(q.start, q.end) - 5.0).abs() < 1e-6);
        assert!(spans[1..].iter().all(|s| s.parent == Some(trace.span_id)));
        let json: Value = serde_json::from_slice(&encode(&spans)).unwrap();
        let first = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(first["traceId"], hex(&trace.trace_id));
        assert_eq!(first["status"]["code"], 2);
        assert_eq!(first["kind"], 2);
        assert!(first["startTimeUnixNano"].is_string());

        // Not sampled by the caller: nothing.
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        finish(&exporter, &Trace::begin(&mut h));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            traces_url("http://c:4318").unwrap().to_string(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces/").unwrap().to_string(),
            "http://c:4318/v1/traces"
        );
        assert!(
            traces_url("https://c")
                .unwrap_err()
                .contains("only plain http://")
        );
        assert!(
            traces_url("c:4318")
                .unwrap_err()
                .contains("http://127.0.0.1:4318")
        );
    }
}
