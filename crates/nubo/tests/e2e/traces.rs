//! Tracing: the caller's W3C trace context is continued, the function sees the invocation span
//! as its parent, and spans reach an OTLP/HTTP collector (a loopback one here, whose payloads
//! are also checked by the OpenTelemetry project's own protobuf definitions).

use crate::harness::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A collector on 127.0.0.1: every POST body arrives on the channel, answered 200.
fn collector() -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    let _ = tx.send((path, body));
                    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}")
                        .unwrap();
                }
            });
        }
    });
    (url, rx)
}

/// Checks a payload against the OTLP protobuf schema (field names and types).
const CHECK_OTLP: &str = r#"
import sys
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
json_format.Parse(sys.stdin.read(), ExportTraceServiceRequest())
"#;

#[test]
fn invocations_are_traced_to_an_otlp_collector() {
    require_python_module("opentelemetry.proto", "opentelemetry-proto");
    let (endpoint, bodies) = collector();
    let s = Server::start_with(&["--otlp-endpoint", &endpoint]);
    s.deploy(
        "project: tr\nfunctions:\n  t:\n    kind: wasm\n    component: testkit.wasm\n",
        &["testkit"],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = s
        .http()
        .get(format!("{}/fn/t/echo", s.url))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let invocation = r.headers()["nubo-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    // The function sees the same trace, with the invocation span as its parent.
    let seen = r.headers()["echo-traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace, "01"),
        "{seen}"
    );
    let span_id = parts[2].to_string();
    assert_ne!(span_id, "00f067aa0ba902b7");

    let mut spans: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while spans.iter().filter(|s| s["traceId"] == trace).count() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (path, body) = bodies
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no spans reached the collector: {spans:?}\n{}", s.log()));
        assert_eq!(path, "/v1/traces");
        let mut check = std::process::Command::new("python3")
            .args(["-c", CHECK_OTLP])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        check.stdin.take().unwrap().write_all(&body).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "not OTLP: {}\n{}",
            text(&out.stderr),
            text(&body)
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "nubo"
        );
        spans.extend(
            rs["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
    }
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name && s["traceId"] == trace)
            .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
            .clone()
    };
    let root = named("invoke t");
    assert_eq!(root["spanId"], span_id.as_str());
    assert_eq!(root["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(root["kind"], 2);
    let attr = |s: &Value, key: &str| {
        s["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        attr(&root, "faas.invocation_id")["stringValue"],
        invocation.as_str()
    );
    assert_eq!(attr(&root, "faas.coldstart")["boolValue"], true);
    let nanos = |s: &Value, k: &str| s[k].as_str().unwrap().parse::<u128>().unwrap();
    let (start, end) = (
        nanos(&root, "startTimeUnixNano"),
        nanos(&root, "endTimeUnixNano"),
    );
    assert!(start < end);
    for name in ["queue", "cold start", "execution"] {
        let child = named(name);
        assert_eq!(child["parentSpanId"], span_id.as_str(), "{name}");
        let (cs, ce) = (
            nanos(&child, "startTimeUnixNano"),
            nanos(&child, "endTimeUnixNano"),
        );
        assert!(
            start <= cs && cs <= ce && ce <= end,
            "{name} inside the invocation"
        );
    }
    // The Lambda Invoke API continues the caller's trace too.
    let other = "0af7651916cd43dd8448eb211c80319c";
    let r = s
        .http()
        .post(format!("{}/2015-03-31/functions/t/invocations", s.url))
        .header("traceparent", format!("00-{other}-b7ad6b7169203331-01"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    let invoked = loop {
        if let Some(s) = spans
            .iter()
            .find(|s| s["traceId"] == other && s["kind"] == 2)
        {
            break s.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, body) = bodies.recv_timeout(left).expect("the Invoke API's span");
        let v: Value = serde_json::from_slice(&body).unwrap();
        spans.extend(
            v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
    };
    assert_eq!(invoked["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(attr(&invoked, "nubo.trigger")["stringValue"], "lambda-api");

    // Without a traceparent a new trace starts, and the function still gets one.
    let r = s.get("/fn/t/echo");
    let seen = r.headers()["echo-traceparent"].to_str().unwrap();
    assert!(seen.starts_with("00-") && !seen.contains(trace), "{seen}");
}

#[test]
fn without_a_collector_the_traceparent_passes_unchanged() {
    let s = Server::start();
    s.deploy(
        "project: tr\nfunctions:\n  t:\n    kind: wasm\n    component: testkit.wasm\n",
        &["testkit"],
    );
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = s
        .http()
        .get(format!("{}/fn/t/echo", s.url))
        .header("traceparent", tp)
        .send()
        .unwrap();
    assert_eq!(r.headers()["echo-traceparent"], tp);
    let dir = tempfile::tempdir().unwrap();
    let bad = std::process::Command::new("timeout")
        .args([
            "20",
            nubo_bin(),
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(["--otlp-endpoint", "https://collector.example:4318"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("only plain http://"),
        "{}",
        text(&bad.stderr)
    );
}
