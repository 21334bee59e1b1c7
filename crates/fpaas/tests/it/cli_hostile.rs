//! `fpaas decode` on every file of the hostile suite (`testdata/hostile/`): the process reports each drop with
//! its stable label, `--strict` fails exactly on the cases that must be dropped, and its peak memory stays
//! bounded (read from the kernel's accounting of the child, `wait4`'s `ru_maxrss`) — a record of a million
//! empty byte strings once took ~725 MB in one op.

use std::process::Command;

use fpaas_testkit::{run_measured, workspace_root};

/// Runs `fpaas decode [--strict] FILE`; exit code, stderr and peak RSS in MB.
fn decode(file: &std::path::Path, strict: bool) -> (i32, String, f64) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fpaas"));
    cmd.arg("decode");
    if strict {
        cmd.arg("--strict");
    }
    let done = run_measured(cmd.arg(file)).expect("run fpaas decode");
    (
        done.code.unwrap_or(-1),
        done.stderr,
        done.peak_rss_bytes as f64 / (1024.0 * 1024.0),
    )
}

#[test]
fn decode_reports_every_hostile_case_with_its_label_in_bounded_memory() {
    let dir = workspace_root().join("testdata/hostile");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    let cases = manifest["cases"].as_array().expect("cases");
    assert!(cases.len() >= 25);
    let mut worst: (f64, String) = (0.0, String::new());
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let file = dir.join(case["file"].as_str().expect("file"));
        let expect = &case["expect"];
        let (code, stderr, rss) = decode(&file, true);
        if rss > worst.0 {
            worst = (rss, name.to_owned());
        }
        assert!(rss < 100.0, "{name}: peak RSS {rss:.1} MB");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        match expect["expect"].as_str() {
            Some("dropped") => {
                let label = expect["label"].as_str().expect("label");
                let count = expect["count"].as_u64().expect("count");
                assert_ne!(code, 0, "{name}: --strict fails");
                assert!(
                    stderr.contains(&format!("\"{label}\":{count}")),
                    "{name}: summary counts {count} × {label}: {stderr}"
                );
            }
            Some("events") => assert_eq!(code, 0, "{name}: accepted: {stderr}"),
            other => panic!("{name}: unknown expectation {other:?}"),
        }
        // Without --strict the same file is a success: drops are reported, not fatal.
        let (code, _, _) = decode(&file, false);
        assert_eq!(code, 0, "{name}: without --strict");
    }
    eprintln!(
        "worst peak RSS of fpaas decode: {:.1} MB ({})",
        worst.0, worst.1
    );
}
