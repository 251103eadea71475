//! Process apps: a Flask app, a Node server and a static binary, run unchanged in the sandbox;
//! scaling, start modes (new, fork, thaw), failures, isolation and rolling updates.

use crate::harness::*;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn flask(extra: &str) -> String {
    format!(
        "project: shop
functions:
  web:
    kind: process
    python: {{ wsgi: \"app:app\" }}
    ready: /health
    memory: 256Mi
{extra}"
    )
}

/// `desc` of the `cold` metric in Server-Timing.
fn start_mode(r: &reqwest::blocking::Response) -> String {
    let t = r.headers()["server-timing"].to_str().unwrap().to_string();
    t.split("desc=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

fn instances(s: &Server, f: &str) -> Vec<Value> {
    s.admin_get(&format!("/functions/{f}/instances"))["instances"]
        .as_array()
        .unwrap()
        .clone()
}

/// `n` concurrent GETs; each answer's start mode and JSON body.
fn concurrent(s: &Server, path: &str, n: usize) -> Vec<(u16, String, Value)> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (http, url) = (s.http(), format!("{}{path}", s.url));
            std::thread::spawn(move || {
                let r = http.get(url).send().unwrap();
                let status = r.status().as_u16();
                let mode = start_mode(&r);
                (status, mode, r.json::<Value>().unwrap_or(Value::Null))
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn flask_scales_out_by_fork_with_fresh_instances_and_back_to_zero() {
    crate::require_process_sandbox!();
    let s = Server::start();
    s.deploy_project(Project::app(
        &flask("    concurrency: 1\n    scale: { max: 4, idle: 1s }\n"),
        "flask",
    ));
    assert!(
        instances(&s, "web").is_empty(),
        "scale.min 0: nothing runs before traffic"
    );
    let answers = concurrent(&s, "/fn/web/sleep?ms=400", 4);
    assert!(answers.iter().all(|(st, _, _)| *st == 200), "{answers:?}");
    assert!(
        answers.iter().all(|(_, m, _)| m == "fork"),
        "every request waited for a forked instance: {answers:?}"
    );
    let ids: HashSet<_> = answers
        .iter()
        .map(|(_, _, b)| b["instance"].clone())
        .collect();
    let pids: HashSet<_> = answers.iter().map(|(_, _, b)| b["pid"].clone()).collect();
    let modules: HashSet<_> = answers
        .iter()
        .map(|(_, _, b)| b["module_id"].clone())
        .collect();
    assert_eq!(
        ids.len(),
        4,
        "one instance per concurrent request: {answers:?}"
    );
    assert_eq!(pids.len(), 4, "distinct processes: {answers:?}");
    assert_eq!(
        modules.len(),
        4,
        "module-level state is fresh per fork: {answers:?}"
    );
    let list = instances(&s, "web");
    assert_eq!(list.len(), 4, "{list:?}");
    assert!(
        list.iter()
            .all(|i| i["mode"] == "fork" && i["memory_bytes"].as_u64() > Some(0))
    );
    // A warm request reports no start.
    let r = s.get("/fn/web/");
    assert_eq!(start_mode(&r), "warm");
    eventually(
        Duration::from_secs(10),
        "instances reclaimed after idle",
        || instances(&s, "web").is_empty(),
    );
}

#[test]
fn node_app_thaws_a_frozen_instance_and_refills_the_warm_set() {
    crate::require_process_sandbox!();
    let s = Server::start();
    s.deploy_project(Project::app(
        "project: n
functions:
  api:
    kind: process
    command: [node, server.js]
    warm: 2
",
        "node",
    ));
    let frozen = |s: &Server| {
        instances(s, "api")
            .iter()
            .filter(|i| i["state"] == "frozen")
            .count()
    };
    assert_eq!(
        frozen(&s),
        2,
        "warm instances are ready before the deploy returns"
    );
    let r = s.get("/fn/api/hello");
    assert_eq!(r.status(), 200);
    assert_eq!(start_mode(&r), "thaw");
    let body: Value = r.json().unwrap();
    assert_eq!(body["path"], "/hello");
    eventually(Duration::from_secs(20), "warm set refilled", || {
        frozen(&s) == 2
    });
    let list = instances(&s, "api");
    assert!(
        list.iter()
            .any(|i| i["state"] == "ready" && i["mode"] == "thaw" && i["served"] == 1),
        "{list:?}"
    );
}

#[test]
fn static_binary_serves() {
    crate::require_process_sandbox!();
    let p = Project::app(
        "project: bin
functions:
  hello:
    kind: process
    command: [./hello]
    memory: 32Mi
",
        "static",
    );
    let out = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o", "hello", "hello.c"])
        .current_dir(p.dir())
        .output()
        .expect("gcc (Debian package gcc) builds the static test binary");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = Server::start();
    s.deploy_project(p);
    let r = s.get("/fn/hello/");
    assert_eq!(r.status(), 200);
    assert_eq!(start_mode(&r), "new");
    assert_eq!(r.text().unwrap(), "hello from a static binary\n");
}

#[test]
fn out_of_memory_and_crashes_fail_one_request_and_the_next_succeeds() {
    crate::require_process_sandbox!();
    let s = Server::start();
    s.deploy_project(Project::app(
        "project: shop
functions:
  web:
    kind: process
    command: [python3, app.py]
    ready: /health
    memory: 96Mi
",
        "flask",
    ));
    let r = s.get("/fn/web/hog");
    assert_eq!(r.status(), 502);
    let body: Value = r.json().unwrap();
    assert_eq!(error_code(&body), "memory_limit_exceeded", "{body}");
    let r = s.get("/fn/web/");
    assert_eq!(r.status(), 200, "a new instance serves after the OOM kill");

    let r = s.get("/fn/web/crash");
    assert_eq!(r.status(), 502);
    let body: Value = r.json().unwrap();
    assert_eq!(error_code(&body), "instance_crashed", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("status 3"),
        "{body}"
    );
    assert_eq!(s.get("/fn/web/").status(), 200);
    eventually(
        Duration::from_secs(5),
        "both failures in `nubo logs`",
        || {
            let logs = text(&s.nubo(&["logs", "web"]).stdout);
            logs.contains("out of memory") && logs.contains("exited with status 3")
        },
    );
}

#[test]
fn apps_that_do_not_start_are_reported_with_their_stderr() {
    crate::require_process_sandbox!();
    let s = Server::start();
    // Exits at once: deploys (nothing starts before traffic), fails on the first request.
    let p = Project::app(
        "project: bad
functions:
  quits:
    kind: process
    command: [python3, -c, \"import sys; print('missing DATABASE_URL', file=sys.stderr); sys.exit(2)\"]
  sleeps:
    kind: process
    command: [sleep, '600']
    start_timeout: 1s
",
        "node",
    );
    s.deploy_project(p);
    let r = s.get("/fn/quits/");
    assert_eq!(r.status(), 502);
    let body: Value = r.json().unwrap();
    assert_eq!(error_code(&body), "start_failed");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("exited with status 2") && msg.contains("missing DATABASE_URL"),
        "{msg}"
    );
    // Log lines are written in batches: they show up within moments.
    eventually(
        Duration::from_secs(5),
        "the app's stderr in `nubo logs`",
        || text(&s.nubo(&["logs", "quits"]).stdout).contains("missing DATABASE_URL"),
    );

    let r = s.get("/fn/sleeps/");
    assert_eq!(r.status(), 502);
    let body: Value = r.json().unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not ready within start_timeout"), "{msg}");

    // A seed that cannot import the app fails the deploy, and nothing changes.
    let broken = Project::app(&flask(""), "flask");
    std::fs::write(broken.dir().join("app.py"), "import no_such_module\n").unwrap();
    let out = s.nubo_in(broken.dir(), &["deploy"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("app_start_failed") || err.contains("no_such_module"),
        "{err}"
    );
    assert!(err.contains("No module named 'no_such_module'"), "{err}");
}

#[test]
fn instances_are_isolated() {
    crate::require_process_sandbox!();
    // The data dir is hidden from instances, and the app directory inside it bound back.
    let s = Server::start_outside_tmp();
    s.deploy_project(Project::app(
        "project: iso
functions:
  web:
    kind: process
    command: [python3, app.py]
    ready: /health
    concurrency: 1
",
        "flask",
    ));
    let answers = concurrent(&s, "/fn/web/sleep?ms=300", 2);
    assert!(answers.iter().all(|(st, _, _)| *st == 200));
    let r = s.get("/fn/web/isolation");
    assert_eq!(r.status(), 200);
    let b: Value = r.json().unwrap();
    let pids = b["pids"].as_array().unwrap();
    assert!(
        pids.len() <= 4 && pids.iter().all(|p| p.as_u64() < Some(50)),
        "only its own processes are visible: {b}"
    );
    assert_eq!(
        b["write_app_dir"], false,
        "the app directory is read-only: {b}"
    );
    assert_eq!(b["write_etc"], false, "{b}");
    assert_eq!(b["write_var_tmp"], false, "{b}");
    assert_eq!(b["write_tmp"], true, "its private /tmp is writable: {b}");
    let spawned = b["spawned"].as_u64().unwrap();
    assert!(
        spawned < 300,
        "the pids limit stops a fork bomb: spawned {spawned}"
    );
    // The host's /etc is untouched.
    assert!(!std::path::Path::new("/etc/nubo-test").exists());
    // The server's data dir (admin token, store) is hidden.
    let token = s.data_dir.join("admin-token");
    let r = s.get(&format!("/fn/web/read?path={}", token.display()));
    let b: Value = r.json().unwrap();
    assert_eq!(
        b["read"], false,
        "the admin token must not be readable: {b}"
    );
}

#[test]
fn rolling_update_under_load_fails_no_request() {
    crate::require_process_sandbox!();
    let s = Server::start();
    let yaml = |v: &str| {
        flask(&format!(
            "    env: {{ VERSION: '{v}' }}\n    scale: {{ min: 1 }}\n"
        ))
    };
    s.deploy_project(Project::app(&yaml("one"), "flask"));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (http, url, stop) = (s.http(), format!("{}/fn/web/", s.url), stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = http.get(&url).send().unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().unwrap_or(Value::Null);
                    seen.push((status, body["version"].as_str().unwrap_or("").to_string()));
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    s.deploy_project(Project::app(&yaml("two"), "flask"));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let failed: Vec<_> = seen.iter().filter(|(st, _)| *st != 200).collect();
    assert!(failed.is_empty(), "failed during the update: {failed:?}");
    assert!(seen.iter().any(|(_, v)| v == "one") && seen.iter().any(|(_, v)| v == "two"));
    eventually(Duration::from_secs(15), "old instances stopped", || {
        instances(&s, "web").iter().all(|i| i["revision"] == 2)
    });
}

#[test]
fn starters_deploy_unchanged() {
    crate::require_process_sandbox!();
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    for (template, name, mode) in [
        ("python-app", "pyweb", "fork"),
        ("node-app", "nodeweb", "thaw"),
    ] {
        let out = s.nubo_in(tmp.path(), &["init", template, name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let dir = tmp.path().join(name);
        let out = s.nubo_in(&dir, &["deploy"]);
        assert!(out.status.success(), "{}\n{}", text(&out.stderr), s.log());
        let r = s.get(&format!("/{name}/hello"));
        assert_eq!(r.status(), 200, "{template}");
        assert_eq!(start_mode(&r), mode, "{template}");
        let body: Value = r.json().unwrap();
        assert_eq!(body["message"], "Hello from Nubo!", "{template}: {body}");
    }
    // The Lambda starter: an unchanged handler on awslambdaric.
    require_python_module("awslambdaric", "awslambdaric");
    let out = s.nubo_in(tmp.path(), &["init", "python-lambda", "pylam"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = tmp.path().join("pylam");
    let out = s.nubo_in(&dir, &["deploy"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), s.log());
    let out = s.nubo(&["invoke", "pylam", "--data", r#"{"name": "Ada"}"#]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["message"], "Hello, Ada!");
    assert_eq!(
        s.get("/pylam").json::<Value>().unwrap()["message"],
        "Hello, world!"
    );
}
