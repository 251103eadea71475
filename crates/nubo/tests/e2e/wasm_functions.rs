//! Invoking wasm functions: answers, headers, limits and failures.

use crate::harness::*;
use std::time::{Duration, Instant};

const TESTKIT: &str = "project: kit
functions:
  kit:
    kind: wasm
    component: testkit.wasm
    env: { GREETING: bonjour, EMPTY: '' }
    timeout: 1s
    memory: 32Mi
    routes:
      - path: /hello
        methods: [GET]
      - path: /api/*
      - path: /api/exact
        methods: [POST]
  hello:
    kind: wasm
    component: hello.wasm
";

#[test]
fn hello_answers_with_nubo_headers_through_the_cli_and_http() {
    let s = Server::start();
    s.deploy(TESTKIT, &["testkit", "hello"]);
    let out = s.nubo(&["invoke", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello from Nubo!\n");

    let r = s.get("/fn/hello/");
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert!(h.contains_key("nubo-invocation-id"));
    assert!(
        h["nubo-instance"]
            .to_str()
            .unwrap()
            .starts_with("hello-r1-")
    );
    let timing = h["server-timing"].to_str().unwrap();
    assert!(
        timing.contains("cold;dur=")
            && timing.contains("desc=\"new\"")
            && timing.contains("exec;dur="),
        "{timing}"
    );
}

#[test]
fn echo_returns_body_headers_and_the_function_relative_path() {
    let s = Server::start();
    s.deploy(TESTKIT, &["testkit", "hello"]);
    let r = s
        .http()
        .post(format!("{}/fn/kit/echo?x=1", s.url))
        .header("x-custom", "abc")
        .body("payload ☁")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["echo-x-custom"], "abc");
    assert_eq!(r.headers()["echo-path"], "/echo?x=1");
    assert_eq!(r.headers()["echo-method"], "Method::Post");
    assert_eq!(r.text().unwrap(), "payload ☁");

    // The same function through its manifest routes: path as sent, most specific wins.
    let r = s
        .http()
        .post(format!("{}/api/exact", s.url))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "hello from testkit at /api/exact\n");
    let r = s.get("/api/deeper/path");
    assert_eq!(
        r.text().unwrap(),
        "hello from testkit at /api/deeper/path\n"
    );
    assert_eq!(s.get("/hello").status(), 200);
    let r = s.http().delete(format!("{}/hello", s.url)).send().unwrap();
    assert_eq!(r.status(), 405);
    let r = s.get("/nowhere");
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(error_code(&v), "route_not_found");
}

#[test]
fn env_vars_reach_the_function() {
    let s = Server::start();
    s.deploy(TESTKIT, &["testkit", "hello"]);
    let body = s.get("/fn/kit/env").text().unwrap();
    assert!(body.lines().any(|l| l == "GREETING=bonjour"), "{body}");
    assert!(body.lines().any(|l| l == "NUBO_FUNCTION=kit"), "{body}");
    assert!(body.lines().any(|l| l == "NUBO_REVISION=1"), "{body}");
}

#[test]
fn a_looping_function_times_out_while_others_keep_answering() {
    let s = Server::start();
    s.deploy(TESTKIT, &["testkit", "hello"]);
    let url = s.url.clone();
    let looping = std::thread::spawn(move || {
        let started = Instant::now();
        let r = reqwest::blocking::get(format!("{url}/fn/kit/loop")).unwrap();
        (
            r.status().as_u16(),
            started.elapsed(),
            r.json::<serde_json::Value>().unwrap(),
        )
    });
    // While it spins, another function answers.
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_millis(700);
    while Instant::now() < deadline {
        assert_eq!(s.get("/fn/hello/").status(), 200);
        answered += 1;
    }
    let (status, took, body) = looping.join().unwrap();
    assert_eq!(status, 504);
    assert_eq!(error_code(&body), "timeout");
    assert!(
        took < Duration::from_millis(1200),
        "504 after {took:?}, timeout is 1s"
    );
    assert!(took >= Duration::from_secs(1), "504 after only {took:?}");
    assert!(
        answered > 5,
        "only {answered} answers from another function during the loop"
    );
    // The function still works afterwards.
    assert_eq!(s.get("/fn/kit/count").status(), 200);
}

#[test]
fn a_memory_hog_gets_502_and_the_server_keeps_serving() {
    let s = Server::start();
    s.deploy(TESTKIT, &["testkit", "hello"]);
    let r = s.get("/fn/kit/hog");
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(error_code(&v), "memory_limit_exceeded", "{v}");
    assert_eq!(s.get("/fn/kit/count").status(), 200);
    assert_eq!(s.get("/fn/hello/").status(), 200);
}

#[test]
fn a_panic_is_a_502_with_the_reason_in_the_log() {
    let s = Server::start();
    s.deploy(TESTKIT, &["testkit", "hello"]);
    let r = s.get("/fn/kit/panic");
    assert_eq!(r.status(), 502);
    let id = r.headers()["nubo-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(error_code(&v), "function_error");
    eventually(
        Duration::from_secs(5),
        "the panic message in the log",
        || {
            let out = s.nubo(&["logs", "kit", "-o", "json"]);
            let logs = text(&out.stdout);
            logs.contains("testkit was asked to panic") && logs.contains(&id)
        },
    );
    assert_eq!(s.get("/fn/kit/count").status(), 200);
}

#[test]
fn stdout_and_stderr_go_to_the_log_with_instance_ids() {
    let s = Server::start();
    s.deploy(TESTKIT, &["testkit", "hello"]);
    let r = s.get("/fn/kit/log");
    let instance = r.headers()["nubo-instance"].to_str().unwrap().to_string();
    eventually(Duration::from_secs(5), "log lines", || {
        let out = s.nubo(&["logs", "kit"]);
        let logs = text(&out.stdout);
        logs.lines().any(|l| {
            l.contains("stdout") && l.contains(&instance) && l.ends_with("hello on stdout")
        }) && logs
            .lines()
            .any(|l| l.contains("stderr") && l.ends_with("hello on stderr"))
    });
}

#[test]
fn unknown_function_is_a_json_404() {
    let s = Server::start();
    let r = s.get("/fn/nope/x");
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(error_code(&v), "function_not_found");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    let out = s.nubo(&["invoke", "nope"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no function named \"nope\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bodies_over_the_limit_get_413() {
    let s = Server::start();
    s.deploy(TESTKIT, &["testkit", "hello"]);
    let big = vec![b'x'; 6 * 1024 * 1024 + 1];
    let r = s
        .http()
        .post(format!("{}/fn/kit/echo", s.url))
        .body(big)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(error_code(&v), "body_too_large");
    let ok = vec![b'y'; 1024 * 1024];
    let r = s
        .http()
        .post(format!("{}/fn/kit/echo", s.url))
        .body(ok)
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().len(), 1024 * 1024);
}

#[test]
fn load_beyond_max_and_queue_gets_429_with_retry_after() {
    let s = Server::start();
    s.deploy(
        "project: q
functions:
  slow:
    kind: wasm
    component: testkit.wasm
    scale: { max: 2, queue: 2, queue_wait: 20s }
",
        &["testkit"],
    );
    let url = s.url.clone();
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = reqwest::blocking::get(format!("{url}/fn/slow/sleep?ms=1500")).unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let limited: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(ok + limited.len(), 10, "{results:?}");
    assert_eq!(ok, 4, "2 running + 2 queued should succeed: {results:?}");
    assert!(
        limited.iter().all(|(_, r)| r.as_deref() == Some("1")),
        "{results:?}"
    );
}

#[test]
fn reuse_serves_several_requests_per_instance_and_fresh_never_does() {
    let s = Server::start();
    s.deploy(
        "project: r
functions:
  fresh:
    kind: wasm
    component: testkit.wasm
  warm:
    kind: wasm
    component: testkit.wasm
    reuse: 3
",
        &["testkit"],
    );
    for _ in 0..4 {
        assert_eq!(s.get("/fn/fresh/count").text().unwrap(), "1\n");
    }
    let counts: Vec<String> = (0..4)
        .map(|_| s.get("/fn/warm/count").text().unwrap())
        .collect();
    assert_eq!(counts, ["1\n", "2\n", "3\n", "1\n"]);
    let r = s.get("/fn/warm/count");
    assert!(
        r.headers()["server-timing"]
            .to_str()
            .unwrap()
            .contains("desc=\"warm\"")
    );
    // A trapped instance is not reused.
    assert_eq!(s.get("/fn/warm/panic").status(), 502);
    assert_eq!(s.get("/fn/warm/count").text().unwrap(), "1\n");
}

#[test]
fn wstd_guests_support_reuse_too() {
    let s = Server::start();
    s.deploy(
        "project: w
functions:
  w:
    kind: wasm
    component: wstd-count.wasm
    reuse: 3
",
        &["wstd-count"],
    );
    let counts: Vec<String> = (0..4).map(|_| s.get("/fn/w/").text().unwrap()).collect();
    assert_eq!(counts, ["1\n", "2\n", "3\n", "1\n"]);
}
