//! Deploys, revisions, restarts and shutdown.

use crate::harness::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn one_function(env: &str) -> String {
    format!(
        "project: app
functions:
  app:
    kind: wasm
    component: testkit.wasm
    env: {{ VERSION: '{env}' }}
"
    )
}

#[test]
fn redeploy_under_load_moves_traffic_without_errors() {
    let s = Server::start();
    s.deploy(&one_function("one"), &["testkit"]);
    let stop = Arc::new(AtomicBool::new(false));
    let url = s.url.clone();
    let flag = stop.clone();
    let client = std::thread::spawn(move || {
        let http = reqwest::blocking::Client::new();
        let mut statuses = Vec::new();
        let mut versions = Vec::new();
        while statuses.len() < 500 {
            let r = http.get(format!("{url}/fn/app/env")).send().unwrap();
            statuses.push(r.status().as_u16());
            let body = r.text().unwrap();
            versions.push(
                body.lines()
                    .find(|l| l.starts_with("VERSION="))
                    .unwrap_or("")
                    .to_string(),
            );
            if flag.load(Ordering::Relaxed) && statuses.len() >= 500 {
                break;
            }
        }
        (statuses, versions)
    });
    std::thread::sleep(Duration::from_millis(100));
    s.deploy(&one_function("two"), &["testkit"]);
    stop.store(true, Ordering::Relaxed);
    let (statuses, versions) = client.join().unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "non-200 during redeploy: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    // Once a request saw the new revision, no later one saw the old.
    let first_new = versions
        .iter()
        .position(|v| v == "VERSION=two")
        .expect("new revision served");
    assert!(versions[first_new..].iter().all(|v| v == "VERSION=two"));
    assert!(
        s.get("/fn/app/env")
            .text()
            .unwrap()
            .contains("NUBO_REVISION=2")
    );

    let out = s.nubo(&["get", "app", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["revision"], 2);
    assert_eq!(v["revisions"].as_array().unwrap().len(), 2);
}

#[test]
fn an_unchanged_deploy_creates_no_revision() {
    let s = Server::start();
    let p = s.deploy(&one_function("one"), &["testkit"]);
    let out = s.nubo_in(p.dir(), &["deploy"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("unchanged"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("already uploaded"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(s.admin_get("/functions/app")["revision"], 1);
}

#[test]
fn kill_9_and_restart_keeps_functions_deployed() {
    let mut s = Server::start();
    s.deploy(&one_function("kept"), &["testkit"]);
    assert_eq!(s.get("/fn/app/count").status(), 200);
    let token = s.token();
    s.kill9();
    s.spawn();
    assert_eq!(s.token(), token, "the admin token survives restarts");
    let body = s.get("/fn/app/env").text().unwrap();
    assert!(body.contains("VERSION=kept"), "{body}");
    let out = s.nubo(&["ls", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "app");
}

#[test]
fn an_invalid_manifest_is_refused_and_changes_nothing() {
    let s = Server::start();
    s.deploy(&one_function("one"), &["testkit"]);
    let bad = Project::new(
        "project: app\nfunctions:\n  app:\n    kind: wasm\n    component: testkit.wasm\n    memory: 12XB\n",
        &["testkit"],
    );
    let out = s.nubo_in(bad.dir(), &["deploy"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("nubo.yaml: functions.app.memory: invalid size \"12XB\""),
        "{err}"
    );
    assert_eq!(s.admin_get("/functions/app")["revision"], 1);

    // The server validates too, for clients other than the CLI.
    let r = s
        .http()
        .post(format!("{}/_nubo/api/v1/deployments", s.url))
        .bearer_auth(s.token())
        .json(&serde_json::json!({ "manifest": "project: x\nfunctions:\n  a:\n    kind: wasm\n    bogus: 1\n" }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(error_code(&v), "invalid_manifest");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("functions.a"),
        "{v}"
    );
}

#[test]
fn deploying_a_file_that_is_not_a_component_is_a_clear_error() {
    let s = Server::start();
    let p = Project::new(
        "project: bad\nfunctions:\n  bad:\n    kind: wasm\n    component: notes.txt\n",
        &[],
    );
    std::fs::write(p.dir().join("notes.txt"), "just text").unwrap();
    let out = s.nubo_in(p.dir(), &["deploy"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("not a WebAssembly component") && err.contains("functions.bad.component"),
        "{err}"
    );
    // A core module is not a component either.
    std::fs::write(p.dir().join("notes.txt"), b"\0asm\x01\0\0\0").unwrap();
    let out = s.nubo_in(p.dir(), &["deploy"]);
    assert!(
        text(&out.stderr).contains("core WebAssembly module"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        s.admin_get("/functions")["functions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn removed_functions_stop_answering() {
    let s = Server::start();
    s.deploy(&one_function("one"), &["testkit"]);
    let out = s.nubo(&["rm", "app"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(s.get("/fn/app/").status(), 404);
    let out = s.nubo(&["rm", "app"]);
    assert!(!out.status.success());
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let mut s = Server::start();
    s.deploy(&one_function("one"), &["testkit"]);
    let url = s.url.clone();
    let inflight = std::thread::spawn(move || {
        reqwest::blocking::get(format!("{url}/fn/app/sleep?ms=1000"))
            .unwrap()
            .status()
            .as_u16()
    });
    eventually(
        Duration::from_secs(10),
        "the request to be in flight",
        || {
            s.get("/_nubo/metrics")
                .text()
                .unwrap()
                .contains("nubo_inflight_requests{function=\"app\"} 1")
        },
    );
    unsafe { libc::kill(s.pid() as i32, libc::SIGTERM) };
    assert_eq!(inflight.join().unwrap(), 200);
    assert!(s.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn init_rust_wasm_deploys_as_is() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("greeter");
    let out = s.nubo(&["init", "rust-wasm", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = s.nubo_in(&dir, &["deploy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = s.get("/greeter?x=1");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().unwrap(),
        "Hello from Nubo! You asked for /greeter?x=1\n"
    );
}
