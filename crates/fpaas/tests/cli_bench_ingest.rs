//! `fpaas bench ingest --json` end to end on a small workload: a real nats-server child, the relay simulator,
//! the raw-publish baseline and the shuffler as a child process; the JSON must carry every figure, positive.

use std::process::Command;

#[test]
fn bench_ingest_json_has_positive_figures() {
    let out = Command::new(env!("CARGO_BIN_EXE_fpaas"))
        .args([
            "bench",
            "ingest",
            "--json",
            "--events",
            "3000",
            "--skip-python",
        ])
        .arg("--nats-server")
        .arg(fpaas_testkit::nats_server_bin())
        .current_dir(fpaas_testkit::workspace_root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fpaas bench ingest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"));
    assert_eq!(v["bench"], "ingest");
    for key in [
        "events",
        "events_per_s",
        "raw_publish_events_per_s",
        "ratio_vs_baseline",
        "rss_mb",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {v}"));
        assert!(x > 0.0, "{key} = {x}: {v}");
    }
    assert!(v["events"].as_u64().expect("events") >= 3000, "{v}");
    assert!(
        v.get("python_events_per_s").is_none(),
        "python skipped: {v}"
    );
}
