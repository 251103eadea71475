use super::*;

fn spec(yaml_fn: &str) -> FunctionSpec {
    let m = nubo_manifest::parse(
        "t.yaml",
        &format!("project: p\nfunctions:\n  f:\n{yaml_fn}"),
    )
    .unwrap();
    m.functions[0].spec.clone()
}

fn plan(project: &str, fns: &[(&str, &str, FunctionSpec)]) -> DeployPlan {
    DeployPlan {
        project: project.into(),
        manifest: "m".into(),
        functions: fns
            .iter()
            .map(|(n, d, s)| PlannedFunction {
                name: n.to_string(),
                digest: d.to_string(),
                spec: s.clone(),
            })
            .collect(),
    }
}

#[test]
fn revisions_only_change_when_something_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = spec("    kind: wasm\n    component: a.wasm\n");
    let out = store
        .apply_deploy(&plan("p", &[("a", "d1", a.clone())]))
        .unwrap();
    assert_eq!(
        (out.functions[0].revision, out.functions[0].changed),
        (1, true)
    );
    let out = store
        .apply_deploy(&plan("p", &[("a", "d1", a.clone())]))
        .unwrap();
    assert_eq!(
        (out.functions[0].revision, out.functions[0].changed),
        (1, false)
    );
    let out = store
        .apply_deploy(&plan("p", &[("a", "d2", a.clone())]))
        .unwrap();
    assert_eq!(
        (out.functions[0].revision, out.functions[0].changed),
        (2, true)
    );
    let b = spec("    kind: wasm\n    component: a.wasm\n    memory: 64Mi\n");
    let out = store.apply_deploy(&plan("p", &[("a", "d2", b)])).unwrap();
    assert_eq!(out.functions[0].revision, 3);
    assert_eq!(store.revisions("a").unwrap().len(), 3);
    assert_eq!(
        store
            .function("a")
            .unwrap()
            .unwrap()
            .revision
            .spec
            .memory
            .bytes(),
        64 << 20
    );

    // Survives a reopen.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.function("a").unwrap().unwrap().revision.number, 3);
}

#[test]
fn functions_left_out_of_the_manifest_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = spec("    kind: wasm\n    component: a.wasm\n");
    store
        .apply_deploy(&plan("p", &[("a", "d", a.clone()), ("b", "d", a.clone())]))
        .unwrap();
    let out = store.apply_deploy(&plan("p", &[("a", "d", a)])).unwrap();
    assert_eq!(out.removed, ["b"]);
    assert!(store.function("b").unwrap().is_none());
}

#[test]
fn names_and_routes_of_other_projects_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let routed = spec("    kind: wasm\n    component: a.wasm\n    routes: [{ path: /x }]\n");
    store
        .apply_deploy(&plan("p", &[("a", "d", routed.clone())]))
        .unwrap();
    let err = store
        .apply_deploy(&plan("q", &[("a", "d", routed.clone())]))
        .unwrap_err();
    assert!(matches!(err, DeployError::FunctionTaken { .. }), "{err}");
    let err = store
        .apply_deploy(&plan("q", &[("z", "d", routed.clone())]))
        .unwrap_err();
    assert!(matches!(err, DeployError::RouteTaken { .. }), "{err}");
    assert!(store.function("z").unwrap().is_none());
    assert_eq!(store.functions().unwrap().len(), 1);
}

#[test]
fn logs_are_trimmed_per_function() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = now_ms();
    let line = |i: i64| LogLine {
        id: 0,
        function: "f".into(),
        ts: now + i,
        stream: "stdout".into(),
        instance: None,
        invocation: None,
        line: format!("line {i}"),
    };
    // Another function's lines interleaved: each function keeps its own newest lines.
    let batch: Vec<_> = (0..LOG_LINES_PER_FUNCTION + 10)
        .flat_map(|i| {
            let other = LogLine {
                function: "h".into(),
                ..line(i)
            };
            [line(i), other]
        })
        .collect();
    store.append(&batch, &[], true).unwrap();
    let all = store.logs("f", 0, 0, i64::MAX, false).unwrap();
    assert_eq!(all.len() as i64, LOG_LINES_PER_FUNCTION);
    let h = store.logs("h", 0, 0, i64::MAX, false).unwrap();
    assert_eq!(h.len() as i64, LOG_LINES_PER_FUNCTION);
    assert_eq!(
        all.last().unwrap().line,
        format!("line {}", LOG_LINES_PER_FUNCTION + 9)
    );
    let tail = store.logs("f", 0, 0, 2, true).unwrap();
    assert_eq!(tail.len(), 2);
    assert!(tail[0].id < tail[1].id);
    // `since` filters by time; lines past the age limit go with the next append.
    assert_eq!(
        store
            .logs("f", 0, now + 20_000, i64::MAX, false)
            .unwrap()
            .len(),
        10
    );
    // Lines are stored in time order, so the expired ones are the oldest ids.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let old = LogLine {
        ts: now - LOG_MAX_AGE_MS - 1,
        function: "g".into(),
        ..line(0)
    };
    store.append(&[old.clone(), line(1)], &[], false).unwrap();
    store
        .append(
            &[LogLine {
                function: "g".into(),
                ..line(2)
            }],
            &[],
            true,
        )
        .unwrap();
    let g = store.logs("g", 0, 0, 10, false).unwrap();
    assert_eq!(g.len(), 1, "the week-old line is trimmed");
    assert_eq!(store.logs("f", 0, 0, 10, false).unwrap().len(), 1);
}

#[test]
fn blobs_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = Digest::of(b"hello");
    let mut w = store.blobs.writer(d.clone()).unwrap();
    w.write(b"hel").unwrap();
    w.write(b"lo").unwrap();
    w.commit().unwrap();
    assert_eq!(store.blobs.read(&d).unwrap(), b"hello");
    let mut w = store.blobs.writer(Digest::of(b"other")).unwrap();
    w.write(b"hello").unwrap();
    assert!(matches!(w.commit(), Err(CommitError::Mismatch { .. })));
    assert!(!store.blobs.contains(&Digest::of(b"other")));
    assert!(Digest::parse("sha256:abc").is_err());
}

fn new_inv(id: &str, now: i64, max_attempts: u32) -> NewInvocation {
    NewInvocation {
        id: id.into(),
        function: "f".into(),
        revision: None,
        trigger: "event".into(),
        request: "{}".into(),
        payload: b"{}".to_vec(),
        max_attempts,
        expires_at: now + 60_000,
        now,
    }
}

#[test]
fn queued_invocations_survive_reopening_and_running_ones_are_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let w: Vec<_> = (0..3)
            .map(|i| QueueWrite::Enqueue(new_inv(&format!("i{i}"), 1000, 3)))
            .collect();
        assert_eq!(store.queue_write(&w).unwrap(), vec![true; 3]);
        let claimed = store.claim_due(1000, 2).unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(
            claimed
                .iter()
                .all(|r| r.status == "running" && r.attempts == 1)
        );
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.requeue_running(2000).unwrap(), 2);
    let claimed = store.claim_due(2000, 10).unwrap();
    assert_eq!(claimed.len(), 3);
}

#[test]
fn failures_retry_until_out_of_attempts_then_dead_letter_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .queue_write(&[QueueWrite::Enqueue(new_inv("a", 0, 2))])
        .unwrap();
    let fail = |now: i64| QueueWrite::Finish {
        id: "a".into(),
        outcome: Outcome::Failed {
            status: Some(500),
            body: b"boom".to_vec(),
            error: "function error".into(),
            at: now + 100,
        },
        now,
    };
    assert_eq!(store.claim_due(0, 10).unwrap().len(), 1);
    store.queue_write(&[fail(0)]).unwrap();
    assert_eq!(store.invocation("a").unwrap().unwrap().status, "queued");
    assert!(store.claim_due(50, 10).unwrap().is_empty(), "not due yet");
    // A throttled attempt does not count.
    assert_eq!(store.claim_due(100, 10).unwrap()[0].attempts, 2);
    let throttled = QueueWrite::Finish {
        id: "a".into(),
        outcome: Outcome::Throttled { at: 200 },
        now: 100,
    };
    store.queue_write(&[throttled]).unwrap();
    assert_eq!(store.claim_due(200, 10).unwrap()[0].attempts, 2);
    store.queue_write(&[fail(200)]).unwrap();
    let dead = store.invocation("a").unwrap().unwrap();
    assert_eq!((dead.status.as_str(), dead.attempts), ("dead", 2));
    assert_eq!(dead.error.as_deref(), Some("function error"));
    assert_eq!(store.invocations("f", "dead", 10).unwrap().len(), 1);
    assert_eq!(store.replay("f", &["other".into()], 300).unwrap().len(), 0);
    assert_eq!(store.invocation("a").unwrap().unwrap().status, "dead");
    assert_eq!(store.replay("f", &[], 300).unwrap(), vec!["a".to_string()]);
    let r = store.claim_due(300, 10).unwrap();
    assert_eq!((r.len(), r[0].attempts), (1, 1));
    let ok = QueueWrite::Finish {
        id: "a".into(),
        outcome: Outcome::Succeeded {
            status: 200,
            body: b"ok".to_vec(),
        },
        now: 310,
    };
    assert_eq!(
        store.queue_write(std::slice::from_ref(&ok)).unwrap(),
        vec![true]
    );
    assert_eq!(
        store.queue_write(&[ok]).unwrap(),
        vec![false],
        "finished once"
    );
    assert_eq!(store.invocation("a").unwrap().unwrap().status, "succeeded");
}

#[test]
fn a_cron_tick_fires_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fire = |id: &str, tick: i64| QueueWrite::CronFire {
        schedule: "* * * * * *".into(),
        tick,
        invocation: new_inv(id, tick, 1),
    };
    assert_eq!(
        store
            .queue_write(&[fire("c1", 1000), fire("c2", 1000), fire("c3", 2000)])
            .unwrap(),
        vec![true, false, true]
    );
    assert_eq!(
        store.cron_last_fire("f", "* * * * * *").unwrap(),
        Some(2000)
    );
    assert!(store.invocation("c2").unwrap().is_none());
}
