//! Invalid manifests as golden files: `ui/NAME.yaml` must fail with exactly `ui/NAME.err`.
//! Run with `NUBO_BLESS=1` to rewrite the `.err` files after an intended change of wording.

use std::fs;
use std::path::Path;

#[test]
fn invalid_manifests_fail_with_golden_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let bless = std::env::var_os("NUBO_BLESS").is_some();
    let mut cases: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 20,
        "expected at least 20 golden cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let text = fs::read_to_string(case).unwrap();
        let actual = match nubo_manifest::parse(name, &text) {
            Ok(_) => format!("{name}: unexpectedly valid\n"),
            Err(e) => format!("{e}\n"),
        };
        let golden = case.with_extension("err");
        if bless {
            fs::write(&golden, &actual).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&golden).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "--- {name}\nexpected:\n{expected}actual:\n{actual}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
