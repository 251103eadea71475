//! The admin API's surface: auth, health, metrics, listing.

use crate::harness::*;
use std::time::Duration;

#[test]
fn the_admin_api_needs_the_token() {
    let s = Server::start();
    let r = s.get("/_nubo/api/v1/functions");
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(error_code(&v), "unauthorized");
    let r = s
        .http()
        .get(format!("{}/_nubo/api/v1/functions", s.url))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(s.get("/_nubo/health").status(), 200);

    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.data_dir.join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The CLI finds it by itself; with a wrong one it says so.
    assert!(s.nubo(&["ls"]).status.success());
    let out = s.nubo(&["ls", "--token", "wrong"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("admin token"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn metrics_count_invocations_and_cold_starts() {
    let s = Server::start();
    s.deploy(
        "project: m\nfunctions:\n  m:\n    kind: wasm\n    component: hello.wasm\n",
        &["hello"],
    );
    for _ in 0..3 {
        assert_eq!(s.get("/fn/m/").status(), 200);
    }
    let text = s.get("/_nubo/metrics").text().unwrap();
    for needle in [
        "nubo_invocations_total{function=\"m\",status=\"200\"} 3",
        "nubo_cold_starts_total{function=\"m\",mode=\"new\"} 3",
        "nubo_invocation_duration_seconds_count{function=\"m\"} 3",
        "nubo_inflight_requests{function=\"m\"} 0",
        "nubo_instances{function=\"m\",state=\"idle\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[test]
fn cli_lists_and_shows_functions() {
    let s = Server::start();
    s.deploy(
        "project: m\nfunctions:\n  m:\n    kind: wasm\n    component: hello.wasm\n",
        &["hello"],
    );
    let out = s.nubo(&["ls"]);
    let t = text(&out.stdout);
    assert!(
        t.contains("NAME") && t.contains(&format!("{}/fn/m/", s.url)),
        "{t}"
    );
    let out = s.nubo(&["get", "m"]);
    let t = text(&out.stdout);
    assert!(
        t.contains("revision  1") && t.contains("memory 128Mi"),
        "{t}"
    );
    let out = s.nubo(&["get", "missing"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).starts_with("error: no function named \"missing\""),
        "{}",
        text(&out.stderr)
    );
}

/// Parses `/_nubo/metrics` with the Prometheus project's own OpenMetrics parser (Python
/// `prometheus_client`) and prints `{family: [type, [labels...]]}`.
const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = [fam.type, [dict(s.labels) for s in fam.samples]]
print(json.dumps(out))
"#;

#[test]
fn metrics_parse_and_carry_per_instance_series() {
    require_process_sandbox!();
    require_python_module("prometheus_client", "prometheus-client");
    let s = Server::start();
    let p = Project::app(
        "project: m
functions:
  web:
    kind: process
    command: [node, server.js]
  m:
    kind: wasm
    component: hello.wasm
",
        "node",
    );
    std::fs::copy(guest("hello"), p.dir().join("hello.wasm")).unwrap();
    s.deploy_project(p);
    assert_eq!(s.get("/fn/m/").status(), 200);
    let r = s.get("/fn/web/");
    assert_eq!(r.status(), 200);
    let instance = r.headers()["nubo-instance"].to_str().unwrap().to_string();
    let exposition = s.get("/_nubo/metrics").text().unwrap();
    let mut child = std::process::Command::new("python3")
        .args(["-c", PARSE_METRICS])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused:\n{}\n{exposition}",
        text(&out.stderr)
    );
    let families: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let family = |name: &str, kind: &str| {
        let f = &families[name];
        assert_eq!(f[0], kind, "{name} in {families}");
        f[1].as_array().unwrap().clone()
    };
    for (name, kind) in [
        ("nubo_invocations", "counter"),
        ("nubo_invocation_duration_seconds", "histogram"),
        ("nubo_cold_starts", "counter"),
        ("nubo_cold_start_duration_seconds", "histogram"),
        ("nubo_instances", "gauge"),
        ("nubo_inflight_requests", "gauge"),
        ("nubo_queue_depth", "gauge"),
        ("nubo_usage_gb_seconds", "counter"),
    ] {
        family(name, kind);
    }
    let by_instance = |name: &str, kind: &str| {
        family(name, kind)
            .into_iter()
            .any(|l| l["function"] == "web" && l["instance"] == instance.as_str())
    };
    assert!(
        by_instance("nubo_instance_memory_bytes", "gauge"),
        "{families}"
    );
    assert!(
        by_instance("nubo_instance_cpu_seconds", "counter"),
        "{families}"
    );
    let cold = family("nubo_cold_starts", "counter");
    assert!(
        cold.iter()
            .any(|l| l["function"] == "web" && l["mode"] == "new")
    );
    assert!(
        cold.iter()
            .any(|l| l["function"] == "m" && l["mode"] == "new")
    );
}

#[test]
fn logs_follow_new_lines_and_filter_by_age() {
    let s = Server::start();
    s.deploy(
        "project: l\nfunctions:\n  t:\n    kind: wasm\n    component: testkit.wasm\n",
        &["testkit"],
    );
    assert_eq!(s.get("/fn/t/log").status(), 200);
    // `-f` started before the next invocation shows it as it happens.
    let mut follow = std::process::Command::new(nubo_bin())
        .args(["logs", "t", "-f", "-n", "1", "--server", &s.url])
        .env("HOME", &s.home)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    let r = s.get("/fn/t/log");
    // Guest output carries the instance id (a wasm instance serves one invocation here).
    let id = r.headers()["nubo-instance"].to_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("hello on stdout") && l.contains(&id))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("`nubo logs -f` did not show instance {id}: {seen:?}"),
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // --since: the last minute has both invocations' lines, a window in the future none.
    let recent = text(&s.nubo(&["logs", "t", "--since", "1m"]).stdout);
    assert_eq!(recent.matches("hello on stdout").count(), 2, "{recent}");
    let bad = s.nubo(&["logs", "t", "--since", "yesterday"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("--since"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn usage_reconciles_with_the_invocation_records() {
    let s = Server::start();
    s.deploy(
        "project: u\nfunctions:\n  big:\n    kind: wasm\n    component: hello.wasm\n    memory: 512Mi\n  small:\n    kind: wasm\n    component: hello.wasm\n",
        &["hello"],
    );
    for _ in 0..4 {
        assert_eq!(s.get("/fn/big/").status(), 200);
    }
    assert_eq!(s.get("/fn/small/").status(), 200);
    let r = s
        .http()
        .post(format!("{}/fn/small/", s.url))
        .header("prefer", "respond-async")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut usage = serde_json::Value::Null;
    eventually(
        Duration::from_secs(10),
        "the async invocation recorded",
        || {
            let out = s.nubo(&["usage", "-o", "json"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            usage = serde_json::from_slice(&out.stdout).unwrap();
            usage["functions"][1]["invocations"] == 2
        },
    );
    for (i, name, memory_gb, n) in [(0, "big", 0.5, 4), (1, "small", 0.125, 2)] {
        let u = &usage["functions"][i];
        assert_eq!(u["name"], name);
        assert_eq!(u["invocations"], n);
        // The same figure, summed here from the records themselves: 1 ms granularity.
        let records = s.admin_get(&format!("/functions/{name}/records"))["records"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(records.len(), n as usize);
        let gb_s: f64 = records
            .iter()
            .map(|r| {
                let ms = (r["duration_us"].as_i64().unwrap() + 999) / 1000;
                memory_gb * ms as f64 / 1000.0
            })
            .sum();
        let got = u["gb_seconds"].as_f64().unwrap();
        assert!(
            (got - gb_s).abs() < 1e-9,
            "{name}: usage {got} vs records {gb_s}"
        );
        assert!(got > 0.0);
        assert!(
            records
                .iter()
                .all(|r| r["mode"] == "new" && r["status"] == 200)
        );
        assert!(
            records
                .iter()
                .all(|r| r["project"] == "u" && r["revision"] == 1)
        );
    }
    let small = s.admin_get("/functions/small/records")["records"].clone();
    let triggers: Vec<&str> = small
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(triggers, ["async", "http"], "newest first");
    assert_eq!(usage["projects"][0]["name"], "u");
    assert_eq!(usage["projects"][0]["invocations"], 6);
    // Every invocation is also a line in the function's log.
    let logs = text(&s.nubo(&["logs", "big"]).stdout);
    assert_eq!(logs.matches("200 in ").count(), 4, "{logs}");
}
