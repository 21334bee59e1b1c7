//! Independence check: frames recorded from the real simulator socket are parsed by the Python `atproto`
//! SDK (`scripts/py/check_frames.py`), and its counts must equal the generator's ground truth.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{connect, read_n};
use fpaas_sim::{CaptureWriter, OpAction, Sim, SimConfig, TruthEvent};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run_check(capture: &Path) -> Value {
    let root = repo_root();
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/setup-tools.sh`",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("scripts/py/check_frames.py"))
        .arg(capture)
        .output()
        .expect("run check_frames.py");
    assert!(
        out.status.success(),
        "check_frames.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad summary {stdout:?}: {e}"))
}

#[test]
fn the_script_accepts_the_real_corpus() {
    let s = run_check(&repo_root().join("testdata/corpus/frames.bin.zst"));
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
    assert_eq!(s["frames"], 150);
    assert_eq!(s["commits"], 148);
    assert_eq!(s["creates"], 144);
    assert_eq!(s["updates"], 2);
    assert_eq!(s["deletes"], 4);
    assert_eq!(s["identity"], 1);
    assert_eq!(s["account"], 1);
}

#[tokio::test]
async fn python_sdk_agrees_with_the_ground_truth() {
    const EVENTS: u64 = 2_000;
    let (sim, _) = Sim::start(SimConfig {
        seed: 2026,
        repos: 300,
        limit: Some(EVENTS),
        // Make the rare kinds (identity, account, sync) appear in a short run.
        rare_boost: 50,
        ..SimConfig::default()
    })
    .await
    .expect("start");
    let mut ws = connect(&sim.subscribe_url(None)).await;
    let frames = read_n(&mut ws, EVENTS as usize).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sim.bin.zst");
    let mut w = CaptureWriter::create(&path).expect("create");
    for f in &frames {
        w.write_frame(f).expect("write");
    }
    assert_eq!(w.finish().expect("finish"), EVENTS);

    let truth = sim.truth();
    let count = |f: &dyn Fn(&TruthEvent) -> bool| truth.iter().filter(|t| f(t)).count() as u64;
    let commits: BTreeSet<i64> = truth
        .iter()
        .filter(|t| matches!(t, TruthEvent::Op { .. }))
        .map(TruthEvent::seq)
        .collect();
    let action = |a: OpAction| move |t: &TruthEvent| matches!(t, TruthEvent::Op { action, .. } if *action == a);

    let s = run_check(&path);
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
    assert_eq!(s["frames"], EVENTS);
    assert_eq!(s["commits"], commits.len() as u64, "{s}");
    assert_eq!(
        s["ops"],
        count(&|t| matches!(t, TruthEvent::Op { .. })),
        "{s}"
    );
    assert_eq!(s["creates"], count(&action(OpAction::Create)), "{s}");
    assert_eq!(s["updates"], count(&action(OpAction::Update)), "{s}");
    assert_eq!(s["deletes"], count(&action(OpAction::Delete)), "{s}");
    assert_eq!(
        s["identity"],
        count(&|t| matches!(t, TruthEvent::Identity { .. }))
    );
    assert_eq!(
        s["account"],
        count(&|t| matches!(t, TruthEvent::Account { .. }))
    );
    assert_eq!(s["sync"], count(&|t| matches!(t, TruthEvent::Sync { .. })));
    assert_eq!(s["seq_first"], 1);
    assert_eq!(s["seq_last"], EVENTS);
    // The run is long enough to contain deletes and multi-op commits.
    assert!(s["deletes"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(s["ops"].as_u64() > s["commits"].as_u64(), "{s}");
    for k in ["identity", "account", "sync", "updates"] {
        assert!(s[k].as_u64().unwrap_or(0) > 0, "no {k}: {s}");
    }
    sim.shutdown().await.expect("shutdown");
}

#[test]
fn the_script_reports_injected_faults() {
    let faults = fpaas_sim::FaultConfig {
        malformed_every: Some(20),
        truncated_every: Some(25),
        unknown_type_every: Some(40),
        oversize_every: None,
        hostile_every: None,
    };
    let mut g = fpaas_sim::Generator::new(5, 100, 1, faults);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("faults.bin");
    let mut w = CaptureWriter::create(&path).expect("create");
    for _ in 0..200 {
        for f in g.next_event().expect("event").frames {
            w.write_frame(&f).expect("write");
        }
    }
    w.finish().expect("finish");
    let s = run_check(&path);
    // 10 malformed + 8 truncated frames are errors; the 5 "#foo" frames are counted as unknown.
    assert_eq!(s["error_count"], 18, "{s}");
    assert_eq!(s["unknown"], 5, "{s}");
    assert_eq!(s["frames"], 223, "{s}");
}
