//! The admin API's surface: auth, health, metrics, listing.

use crate::harness::*;

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
