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
/// `prometheus_client`) and prints `{family: [type, [labels + __name__ + __value__...]]}`.
const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = [fam.type, [dict(s.labels, __name__=s.name, __value__=s.value) for s in fam.samples]]
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
    reuse: 5
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
    // Wasm: the memory the pooled instance (reuse: 5) holds, and the time its guest ran.
    let value_of = |name: &str, kind: &str, function: &str| {
        family(name, kind)
            .into_iter()
            .find(|l| l["function"] == function)
            .and_then(|l| l["__value__"].as_f64())
            .unwrap_or_else(|| panic!("no {name} for {function} in {families}"))
    };
    assert!(value_of("nubo_wasm_memory_bytes", "gauge", "m") >= 65536.0);
    assert!(value_of("nubo_wasm_exec_seconds", "counter", "m") > 0.0);
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
    // CPU-seconds are the sum of the records' CPU time (for wasm: the time the guest ran).
    for (i, name) in [(0, "big"), (1, "small")] {
        let records = s.admin_get(&format!("/functions/{name}/records"))["records"].clone();
        let cpu_us: i64 = records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["cpu_us"].as_i64().expect("wasm records carry cpu_us"))
            .sum();
        let got = usage["functions"][i]["cpu_seconds"].as_f64().unwrap();
        assert!(
            (got - cpu_us as f64 / 1e6).abs() < 1e-9,
            "{name}: {got} vs {cpu_us} µs"
        );
        assert!(got > 0.0);
    }
    let table = text(&s.nubo(&["usage"]).stdout);
    assert!(table.contains("CPU-SECONDS"), "{table}");
    assert_eq!(usage["projects"][0]["name"], "u");
    assert_eq!(usage["projects"][0]["invocations"], 6);
    // Every invocation is also a line in the function's log.
    let logs = text(&s.nubo(&["logs", "big"]).stdout);
    assert_eq!(logs.matches("200 in ").count(), 4, "{logs}");
}

#[test]
fn process_invocations_are_charged_the_instance_cpu() {
    require_process_sandbox!();
    let s = Server::start();
    s.deploy_project(Project::app(
        "project: c\nfunctions:\n  web:\n    kind: process\n    command: [node, server.js]\n",
        "node",
    ));
    for _ in 0..3 {
        assert_eq!(s.get("/fn/web/").status(), 200);
    }
    let instance_cpu = s.admin_get("/functions/web/instances")["instances"][0]["cpu_seconds"]
        .as_f64()
        .unwrap();
    let mut records = serde_json::Value::Null;
    eventually(Duration::from_secs(10), "three records", || {
        records = s.admin_get("/functions/web/records")["records"].clone();
        records.as_array().unwrap().len() == 3
    });
    let charged: Vec<i64> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cpu_us"].as_i64().unwrap())
        .collect();
    // The first (oldest) invocation carries node's start-up; together they are, to within
    // what the idle instance used since, all the CPU the instance used.
    assert!(charged[2] > 1000, "start-up CPU charged: {charged:?}");
    let total = charged.iter().sum::<i64>() as f64 / 1e6;
    assert!(
        total <= instance_cpu + 1e-6 && total > instance_cpu * 0.5,
        "records {total} s vs instance {instance_cpu} s"
    );
}

#[test]
fn series_and_recent_rates_follow_invocations() {
    let s = Server::start();
    s.deploy(
        "project: r\nfunctions:\n  h:\n    kind: wasm\n    component: hello.wasm\n",
        &["hello"],
    );
    for _ in 0..5 {
        assert_eq!(s.get("/fn/h/").status(), 200);
    }
    assert_eq!(s.get("/fn/h/").status(), 200);
    let v = s.admin_get("/functions/h/series?minutes=15");
    assert_eq!(v["step_seconds"], 10);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 90);
    let sum = |k: &str| points.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("invocations"), 6);
    assert_eq!(
        sum("cold_starts"),
        6,
        "reuse 1: every invocation starts an instance"
    );
    assert_eq!(sum("errors"), 0);
    let last_busy = points.iter().rev().find(|p| p["invocations"] != 0).unwrap();
    assert!(last_busy["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(last_busy["p99_ms"].as_f64().unwrap() >= last_busy["p50_ms"].as_f64().unwrap());
    let list = s.admin_get("/functions");
    let recent = &list["functions"][0]["recent"];
    assert_eq!(recent["invocations"], 6, "{list}");
    assert!(recent["per_second"].as_f64().unwrap() > 0.0);
    let r = s
        .http()
        .get(format!(
            "{}/_nubo/api/v1/functions/h/series?minutes=60",
            s.url
        ))
        .bearer_auth(s.token())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().unwrap();
    assert!(
        body["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("15 minutes")
    );
    // A parameter that does not parse gets the same JSON error shape, naming it.
    let r = s
        .http()
        .get(format!(
            "{}/_nubo/api/v1/functions/h/series?minutes=abc",
            s.url
        ))
        .bearer_auth(s.token())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(error_code(&body), "bad_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("minutes"),
        "{body}"
    );
}

#[test]
fn the_logs_api_streams_until_the_function_is_removed() {
    let s = Server::start();
    s.deploy(
        "project: l\nfunctions:\n  t:\n    kind: wasm\n    component: testkit.wasm\n",
        &["testkit"],
    );
    assert_eq!(s.get("/fn/t/log").status(), 200);
    let mut resp = s
        .http()
        .get(format!(
            "{}/_nubo/api/v1/functions/t/logs?follow=true&limit=1",
            s.url
        ))
        .bearer_auth(s.token())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(&mut resp)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(Some(line));
        }
        let _ = tx.send(None); // the stream ended
    });
    let next = |within: u64| {
        rx.recv_timeout(Duration::from_secs(within))
            .expect("the stream went quiet")
    };
    // First the newest line (limit=1), then the next invocation's lines as they come.
    let first: serde_json::Value = serde_json::from_str(&next(10).unwrap()).unwrap();
    assert_eq!(first["function"], "t", "{first}");
    let r = s.get("/fn/t/log");
    let invocation = r.headers()["nubo-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &serde_json::Value| {
        l["stream"] == "stdout" && l["invocation"] == invocation.as_str()
    }) {
        let line = next(10).expect("the stream ended early");
        seen.push(serde_json::from_str(&line).unwrap());
    }
    assert!(s.nubo(&["rm", "t"]).status.success());
    loop {
        if next(15).is_none() {
            break;
        }
    }
}

#[test]
fn top_shows_wasm_and_process_instances_and_redraws_in_place() {
    require_process_sandbox!();
    let s = Server::start();
    let p = Project::app(
        "project: t\nfunctions:\n  web:\n    kind: process\n    command: [node, server.js]\n  h:\n    kind: wasm\n    component: hello.wasm\n    reuse: 3\n",
        "node",
    );
    std::fs::copy(guest("hello"), p.dir().join("hello.wasm")).unwrap();
    s.deploy_project(p);
    assert_eq!(s.get("/fn/h/").status(), 200);
    let instance = s.get("/fn/web/").headers()["nubo-instance"]
        .to_str()
        .unwrap()
        .to_string();
    let out = s.nubo(&["top", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["instances"].as_array().unwrap();
    let web = rows.iter().find(|r| r["id"] == instance.as_str()).unwrap();
    assert_eq!(web["function"], "web");
    assert_eq!(web["state"], "ready");
    assert!(web["memory_bytes"].as_u64().unwrap() > 0);
    assert!(web["cpu_seconds"].as_f64().unwrap() > 0.0);
    let h = rows.iter().find(|r| r["function"] == "h").unwrap();
    assert_eq!(h["kind"], "wasm");
    assert_eq!(h["state"], "0 busy, 1 idle");
    assert!(h["memory_bytes"].as_u64().unwrap() > 0);
    // On a terminal it redraws in place (home + clear) at every interval.
    let cmd = format!(
        "timeout -s INT 2 {} top --interval 0.3 --server {}",
        nubo_bin(),
        s.url
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("HOME", &s.home)
        .output()
        .unwrap();
    let screen = text(&out.stdout);
    assert!(screen.matches("\x1b[H\x1b[2J").count() >= 3, "{screen:?}");
    assert!(
        screen.contains("CPU%") && screen.contains(&instance),
        "{screen}"
    );
}
