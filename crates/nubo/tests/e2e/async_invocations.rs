//! Durable async invocations and cron: accepted before 202, never lost across `kill -9`,
//! retried then dead-lettered and replayed, cron ticks fired once each across a restart.

use crate::harness::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A loopback HTTP endpoint the guest reports to: every POST body, in arrival order.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn);
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(v);
                    }
                    let _ = r.get_mut().write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                });
            }
        });
        Recorder { url, seen }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

fn recorder_app(recorder: &Recorder, extra: &str) -> Project {
    let yaml = format!(
        "project: rec
functions:
  rec:
    kind: process
    command: [python3, app.py]
    env: {{ RECORDER: \"{}\" }}
    concurrency: 16
    scale: {{ max: 4 }}
{extra}",
        recorder.url
    );
    Project::app(&yaml, "recorder")
}

#[test]
fn a_thousand_async_invocations_survive_kill_9() {
    require_process_sandbox!();
    const TOTAL: usize = 1000;
    let recorder = Recorder::start();
    let mut s = Server::start();
    // Slower to run than to accept (one instance, 4 at a time, 20 ms each): work is queued and
    // under way when the kill lands.
    let p = recorder_app(&recorder, "");
    let yaml = std::fs::read_to_string(p.dir().join("nubo.yaml")).unwrap();
    let yaml = yaml
        .replace("RECORDER:", "SLEEP_MS: \"20\", RECORDER:")
        .replace("concurrency: 16", "concurrency: 4")
        .replace("max: 4", "max: 1");
    std::fs::write(p.dir().join("nubo.yaml"), yaml).unwrap();
    s.deploy_project(p);

    let url = Arc::new(RwLock::new(s.url.clone()));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    // Paced, so that the kill lands while invocations are still being accepted and run.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, accepted, sent) = (url.clone(), accepted.clone(), sent.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                while accepted.lock().unwrap().len() < TOTAL {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    let base = url.read().unwrap().clone();
                    let r = http
                        .post(format!("{base}/fn/rec/"))
                        .header("prefer", "respond-async")
                        .body(format!("n={n}"))
                        .send();
                    match r {
                        Ok(r) if r.status() == 202 => {
                            let location = r.headers()["location"].to_str().unwrap().to_string();
                            let id = r.headers()["nubo-invocation-id"].to_str().unwrap();
                            assert_eq!(location, format!("/_nubo/api/v1/invocations/{id}"));
                            accepted.lock().unwrap().push(id.to_string());
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Ok(r) => panic!("an async invocation was answered {}", r.status()),
                        // The server is down: not accepted; try again shortly.
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();

    // Kill the server midway, while invocations are being accepted and run.
    eventually(Duration::from_secs(60), "400 accepted and some run", || {
        accepted.lock().unwrap().len() >= 400 && recorder.seen().len() >= 20
    });
    s.kill9();
    let at_kill = accepted.lock().unwrap().len();
    let ran_at_kill = recorder.seen().len();
    s.spawn();
    *url.write().unwrap() = s.url.clone();
    for c in clients {
        c.join().unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= TOTAL);
    eprintln!(
        "killed at {at_kill} accepted, {ran_at_kill} run; {} accepted in all",
        accepted.len()
    );
    assert!(
        ran_at_kill < at_kill,
        "the kill should land while work is queued"
    );

    // Every accepted id runs at least once.
    let want: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = recorder.seen();
        let ran: HashSet<String> = seen
            .iter()
            .filter_map(|v| v["id"].as_str().map(String::from))
            .collect();
        let missing: Vec<&&str> = want.iter().filter(|id| !ran.contains(**id)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted invocations never ran, e.g. {:?}; log:\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the records say so.
    let rec = s.admin_get(&format!("/invocations/{}", accepted[0]));
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["trigger"], "http");
}

fn invocation(s: &Server, id: &str) -> Value {
    let out = s.nubo(&["invocation", id, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn failed_async_invocations_retry_then_dead_letter_and_replay() {
    require_process_sandbox!();
    let recorder = Recorder::start();
    let s = Server::start();
    let failing = "    async: { retries: 2, max_age: 1h }\n";
    let p = recorder_app(&recorder, failing);
    let yaml = std::fs::read_to_string(p.dir().join("nubo.yaml")).unwrap();
    let broken = yaml.replace("RECORDER:", "FAIL: \"1\", RECORDER:");
    std::fs::write(p.dir().join("nubo.yaml"), &broken).unwrap();
    s.deploy_project(p);

    let out = s.nubo(&["invoke", "rec", "--async", "--data", "payload-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 20, "the id alone on stdout: {id:?}");
    // 1 + 2 retries, backed off 1 s then 2 s, then the dead-letter list.
    eventually(Duration::from_secs(20), "dead-lettered", || {
        invocation(&s, &id)["status"] == "dead"
    });
    let rec = invocation(&s, &id);
    assert_eq!(rec["attempts"], 3);
    assert_eq!(rec["result_status"], 500);
    assert!(rec["error"].as_str().unwrap().contains("500"), "{rec}");
    let runs: Vec<Value> = recorder
        .seen()
        .into_iter()
        .filter(|v| v["id"] == id.as_str())
        .collect();
    assert_eq!(runs.len(), 3, "three attempts: {runs:?}");
    assert!(runs.iter().all(|v| v["body"] == "payload-1"));

    let out = s.nubo(&["dlq", "ls", "rec"]);
    assert!(text(&out.stdout).contains(&id), "{}", text(&out.stdout));
    let logs = text(&s.nubo(&["logs", "rec", "-n", "200"]).stdout);
    assert!(logs.contains("async attempt 1 of 3 failed"), "{logs}");
    assert!(logs.contains("dead-lettered"), "{logs}");

    // Fix the function, replay: it runs again and succeeds.
    let p = Project::app(&yaml, "recorder");
    s.deploy_project(p);
    let out = s.nubo(&["dlq", "replay", "rec"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&id));
    eventually(Duration::from_secs(20), "the replay succeeded", || {
        invocation(&s, &id)["status"] == "succeeded"
    });
    assert_eq!(invocation(&s, &id)["attempts"], 1);
    let out = s.nubo(&["dlq", "ls", "rec"]);
    assert!(!text(&out.stdout).contains(&id));
    // Unknown ids are refused by name.
    let out = s.nubo(&["dlq", "replay", "rec", "nosuchid"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nosuchid"));
}

#[test]
fn a_cron_every_second_fires_once_per_tick_across_a_restart() {
    require_process_sandbox!();
    let recorder = Recorder::start();
    let mut s = Server::start();
    s.deploy_project(recorder_app(&recorder, "    cron: [\"* * * * * *\"]\n"));
    let ticks = |r: &Recorder| -> Vec<String> {
        r.seen()
            .iter()
            .filter(|v| v["trigger"] == "cron")
            .map(|v| {
                let event: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
                assert_eq!(event["source"], "nubo.cron");
                assert_eq!(event["schedule"], "* * * * * *");
                event["time"].as_str().unwrap().to_string()
            })
            .collect()
    };
    eventually(Duration::from_secs(30), "3 ticks", || {
        ticks(&recorder).len() >= 3
    });
    s.kill9();
    let before = ticks(&recorder).len();
    s.spawn();
    eventually(
        Duration::from_secs(30),
        "3 more ticks after the restart",
        || ticks(&recorder).len() >= before + 3,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let all = ticks(&recorder);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &all {
        *counts.entry(t).or_default() += 1;
    }
    let doubles: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubles.is_empty(),
        "ticks fired twice: {doubles:?} in {all:?}"
    );
    // One per second at most: no burst of missed ticks after the restart.
    let mut times: Vec<&String> = all.iter().collect();
    times.sort();
    let first = chrono_secs(times[0]);
    let last = chrono_secs(times[times.len() - 1]);
    assert!(
        (all.len() as i64) <= last - first + 1,
        "{} fires over {} s: {all:?}",
        all.len(),
        last - first + 1
    );
}

/// Seconds of an RFC 3339 UTC time like 2026-11-22T07:00:05Z (within a day is enough here).
fn chrono_secs(t: &str) -> i64 {
    let time = t.split('T').nth(1).unwrap().trim_end_matches('Z');
    let p: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    let day: i64 = t[8..10].parse().unwrap();
    ((day * 24 + p[0]) * 60 + p[1]) * 60 + p[2]
}

#[test]
fn a_function_cannot_queue_without_bound() {
    require_process_sandbox!();
    let recorder = Recorder::start();
    let s = Server::start_with(&["--max-queued-invocations", "3"]);
    let p = recorder_app(&recorder, "");
    let yaml = std::fs::read_to_string(p.dir().join("nubo.yaml")).unwrap();
    let yaml = yaml
        .replace("RECORDER:", "SLEEP_MS: \"3000\", RECORDER:")
        .replace("concurrency: 16", "concurrency: 1")
        .replace("max: 4", "max: 1");
    std::fs::write(p.dir().join("nubo.yaml"), yaml).unwrap();
    s.deploy_project(p);
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            s.http()
                .post(format!("{}/fn/rec/", s.url))
                .header("prefer", "respond-async")
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
        .collect();
    assert_eq!(statuses, [202, 202, 202, 429, 429]);
    let r = s
        .http()
        .post(format!("{}/fn/rec/", s.url))
        .header("prefer", "respond-async")
        .send()
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(&r.json().unwrap()), "queue_full");
    // The Lambda Event type says so in the AWS shape.
    let r = s
        .http()
        .post(format!("{}/2015-03-31/functions/rec/invocations", s.url))
        .header("x-amz-invocation-type", "Event")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-amzn-errortype"], "TooManyRequestsException");
}
