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
    let line = |i: i64| LogLine {
        id: 0,
        function: "f".into(),
        ts: i,
        stream: "stdout".into(),
        instance: None,
        invocation: None,
        line: format!("line {i}"),
    };
    let batch: Vec<_> = (0..LOG_LINES_PER_FUNCTION + 10).map(line).collect();
    store.append_logs(&batch).unwrap();
    let all = store.logs("f", 0, i64::MAX, false).unwrap();
    assert_eq!(all.len() as i64, LOG_LINES_PER_FUNCTION);
    assert_eq!(
        all.last().unwrap().line,
        format!("line {}", LOG_LINES_PER_FUNCTION + 9)
    );
    let tail = store.logs("f", 0, 2, true).unwrap();
    assert_eq!(tail.len(), 2);
    assert!(tail[0].id < tail[1].id);
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
