//! The dashboard, rendered by a real headless Chromium against a real server: the tokened link
//! `nubo up` prints logs in, and the pages show the deployed functions and live instances.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return PathBuf::from(text(&out.stdout).trim());
        }
    }
    panic!("no chromium on PATH: `apt-get install chromium` (.ci/run does)");
}

/// Runs headless Chromium on `url` in a fresh profile, with `extra` (`--dump-dom` or
/// `--screenshot=...`), giving the page's scripts a few seconds of virtual time.
fn browse(profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,900",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Where the screenshots are kept after the run (a test artifact).
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_dashboard_shows_functions_and_live_instances() {
    let s = Server::start();
    let with_process = process_sandbox_missing().is_none();
    let yaml = if with_process {
        "project: shop\nfunctions:\n  web:\n    kind: process\n    command: [node, server.js]\n  hello:\n    kind: wasm\n    component: hello.wasm\n"
    } else {
        "project: shop\nfunctions:\n  hello:\n    kind: wasm\n    component: hello.wasm\n"
    };
    let p = Project::app(yaml, "node");
    std::fs::copy(guest("hello"), p.dir().join("hello.wasm")).unwrap();
    s.deploy_project(p);
    for _ in 0..5 {
        assert_eq!(s.get("/fn/hello/").status(), 200);
    }
    let instance = with_process.then(|| {
        let r = s.get("/fn/web/");
        assert_eq!(r.status(), 200);
        r.headers()["nubo-instance"].to_str().unwrap().to_string()
    });

    // The page itself is public, strict and holds no data.
    let page = s.get("/_nubo/ui/");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert_eq!(s.get("/_nubo/ui/app.js").status(), 200);

    let tmp = tempfile::tempdir().unwrap();
    let link = format!("{}/_nubo/ui/?token={}", s.url, s.token());
    // The link nubo up prints (with the token) opens the functions page.
    assert!(
        s.log().contains(&format!("dashboard: {link}")),
        "{}",
        s.log()
    );
    let dom = browse(&tmp.path().join("a"), &format!("{link}#/"), &["--dump-dom"]);
    assert!(dom.contains(r#"data-function="hello""#), "{dom}");
    if with_process {
        assert!(dom.contains(r#"data-function="web""#), "{dom}");
    }
    assert!(!dom.contains(&s.token()), "the token stays out of the page");
    let shots = artifacts();
    browse(
        &tmp.path().join("b"),
        &format!("{link}#/"),
        &[&format!(
            "--screenshot={}",
            shots.join("functions.png").display()
        )],
    );

    // The function page lists the live instance, and the wasm one its invocations.
    if let Some(instance) = &instance {
        let dom = browse(
            &tmp.path().join("c"),
            &format!("{link}#/f/web"),
            &["--dump-dom"],
        );
        assert!(
            dom.contains(&format!(r#"data-instance="{instance}""#)),
            "{dom}"
        );
        browse(
            &tmp.path().join("d"),
            &format!("{link}#/f/web"),
            &[&format!(
                "--screenshot={}",
                shots.join("function.png").display()
            )],
        );
    }
    let invocation = s.get("/fn/hello/").headers()["nubo-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let dom = browse(
        &tmp.path().join("e"),
        &format!("{link}#/f/hello"),
        &["--dump-dom"],
    );
    assert!(
        dom.contains(&invocation),
        "recent invocations list {invocation}: {dom}"
    );
    let png = std::fs::read(shots.join("functions.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);

    // The usage page sums the records per function and project.
    let dom = browse(
        &tmp.path().join("g"),
        &format!("{link}#/usage"),
        &["--dump-dom"],
    );
    assert!(dom.contains(r#"data-usage="hello""#), "{dom}");
    assert!(dom.contains(r#"data-usage="shop""#), "{dom}");

    // A wrong token gets the login form, not data.
    let dom = browse(
        &tmp.path().join("f"),
        &format!("{}/_nubo/ui/?token=wrong#/", s.url),
        &["--dump-dom"],
    );
    assert!(dom.contains(r#"id="login""#), "{dom}");
    assert!(!dom.contains(r#"data-function="hello""#), "{dom}");
}
