//! Every bench end to end on a small workload, as a user runs it (`fpaas bench NAME --json`): each prints one
//! JSON object whose figures are present and positive. `ingest` (with the relay simulator, the raw-publish
//! baseline and the shuffler as a child process), `record-kv` and `storage` start their own nats-server child;
//! `decode` reads the committed corpus; `fanout` and `deliver` run the worker as a child against their own
//! nats-server (fanout with relay-sim and the shuffler too); `pull-idle` runs the worker and the API as children.

use std::process::Command;

/// Runs `fpaas bench <args> --json` from the workspace root and parses its one JSON object.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_fpaas"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("FPAAS_NATS_SERVER", fpaas_testkit::nats_server_bin())
        .current_dir(fpaas_testkit::workspace_root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fpaas bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn positive(v: &serde_json::Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"));
    assert!(x > 0.0, "{key} = {x}: {v}");
    x
}

#[test]
fn bench_ingest_json_has_positive_figures() {
    let v = bench_json(&["ingest", "--events", "3000", "--skip-python"]);
    assert_eq!(v["bench"], "ingest");
    for key in [
        "events",
        "events_per_s",
        "raw_publish_events_per_s",
        "ratio_vs_baseline",
        "rss_mb",
        "small_events_per_s",
        "small_ratio_vs_baseline",
    ] {
        positive(&v, key);
    }
    assert!(v["events"].as_u64().expect("events") >= 3000, "{v}");
    // Realistic frames are the size of real relay frames (the corpus: mean ~5.4 kB), small ones ~1.3 kB.
    let realistic = positive(&v, "mean_frame_bytes");
    let small = positive(&v, "small_mean_frame_bytes");
    assert!((4_000.0..7_000.0).contains(&realistic), "{v}");
    assert!(small < realistic / 2.0, "{v}");
    assert!(
        v.get("python_events_per_s").is_none(),
        "python skipped: {v}"
    );
}

#[test]
fn bench_record_kv_json_has_positive_figures() {
    let v = bench_json(&[
        "record-kv",
        "--records",
        "2000",
        "--queries",
        "50",
        "--layout-keys",
        "1000",
        "--mem-records",
        "2000",
    ]);
    assert_eq!(v["bench"], "record-kv");
    for key in [
        "records_per_s",
        "likes_indexed_per_s",
        "get_likers_queries_per_s",
        "get_likes_by_queries_per_s",
        "server_rss_bytes_per_record_while_writing",
    ] {
        positive(&v, key);
    }
    assert_eq!(positive(&v, "records_written"), 2000.0, "{v}");
    assert_eq!(v["mem_records"], 2000, "{v}");
}

#[test]
fn bench_decode_json_has_positive_figures() {
    let v = bench_json(&["decode", "--seconds", "1"]);
    assert_eq!(v["bench"], "decode");
    positive(&v, "frames_per_s");
    positive(&v, "decode_frames_per_s");
    assert_eq!(v["corpus_frames"], 150, "{v}");
    assert_eq!(v["corpus_decode_errors"], 0, "{v}");
    // The hostile suite's worst memory per input byte, measured on child processes.
    assert!(v["hostile_cases"].as_u64().unwrap_or(0) >= 25, "{v}");
    let per_byte = v["hostile_worst_peak_bytes_per_input_byte"]
        .as_f64()
        .expect("per byte");
    // Before the budgets a 1 MB record took ~725 MB (725 bytes per input byte).
    assert!(
        per_byte < 200.0,
        "worst peak bytes per input byte {per_byte}: {v}"
    );
    positive(&v, "hostile_worst_peak_rss_mb");
}

#[test]
fn bench_storage_json_has_positive_figures() {
    let v = bench_json(&["storage", "--messages", "3000"]);
    assert_eq!(v["bench"], "storage");
    assert_eq!(v["messages"], 3000, "{v}");
    for key in [
        "logical_bytes_per_msg",
        "mean_payload_bytes",
        "overhead_bytes_per_msg",
        "disk_s2_bytes_per_msg",
    ] {
        positive(&v, key);
    }
    // Logical bytes are payload plus per-message overhead (subject, headers, record framing).
    let logical = v["logical_bytes_per_msg"].as_f64().expect("logical");
    let payload = v["mean_payload_bytes"].as_f64().expect("payload");
    assert!(logical > payload, "{v}");
}

#[test]
fn bench_fanout_json_has_latency_memory_and_the_failing_comparison() {
    let v = bench_json(&[
        "fanout",
        "--subscriptions",
        "200",
        "--rate",
        "400",
        "--seconds",
        "8",
        "--warmup-secs",
        "1",
        "--settle-secs",
        "1",
        "--repos",
        "500",
        "--failing",
        "2",
    ]);
    assert_eq!(v["bench"], "fanout");
    assert_eq!(v["subscriptions"], 200, "{v}");
    for key in [
        "events",
        "events_per_s",
        "matched_events",
        "delivered_events",
        "latency_samples",
        "p50_ms",
        "p99_ms",
        "with_failing_latency_samples",
        "with_failing_p99_ms",
        "ratio_vs_baseline",
        "failing_requests",
        "failed_attempts",
        "rss_mb",
    ] {
        positive(&v, key);
    }
    assert!(v["kb_per_subscription"].as_f64().is_some(), "{v}");
    // The healthy subscriptions stayed live (the failing ones may have fallen back to catching up), and the
    // bench only ends once each of them delivered every match.
    assert!(v["subscriptions_live_end"].as_u64() >= Some(200), "{v}");
    assert_eq!(v["fell_behind"].as_u64().map(|_| ()), Some(()), "{v}");
}

#[test]
fn bench_deliver_json_has_rate_and_ratio() {
    let v = bench_json(&["deliver", "--events", "5000", "--batch", "500"]);
    assert_eq!(v["bench"], "deliver");
    assert_eq!(v["events"], 5000, "{v}");
    for key in [
        "events_per_s",
        "read_alone_events_per_s",
        "ratio_vs_baseline",
        "batches",
        "rss_mb",
    ] {
        positive(&v, key);
    }
    assert!(
        v["batches"].as_u64() >= Some(10),
        "batches of at most 500: {v}"
    );
}

#[test]
fn bench_pull_idle_json_has_cpu_and_memory_of_each_phase() {
    let v = bench_json(&[
        "pull-idle",
        "--subscriptions",
        "20",
        "--window-secs",
        "2",
        "--settle-secs",
        "1",
        "--poll-interval-secs",
        "1",
    ]);
    assert_eq!(v["bench"], "pull-idle");
    assert_eq!(v["subscriptions_live_end"], 20, "{v}");
    assert_eq!(
        v["poll_errors"], 0,
        "every pull answered an empty list: {v}"
    );
    assert!(
        v["polls"].as_u64() >= Some(20),
        "each polled at least once: {v}"
    );
    for phase in ["baseline", "idle", "polling"] {
        for who in ["nats", "worker", "api"] {
            positive(&v, &format!("{phase}_{who}_rss_mb"));
            assert!(v[format!("{phase}_{who}_cpu_percent")].is_number(), "{v}");
        }
    }
    positive(&v, "poll_p50_ms");
}

#[test]
fn bench_collect_json_has_positive_figures() {
    let v = bench_json(&[
        "collect",
        "--events",
        "20000",
        "--keys",
        "2000",
        "--state-writes",
        "2000",
        "--batch",
        "500",
    ]);
    assert_eq!(v["bench"], "collect");
    for key in [
        "events_per_s",
        "parse_only_events_per_s",
        "ratio_vs_baseline",
        "open_groups_peak",
        "windows_emitted",
        "state_writes",
        "state_writes_per_s",
        "rss_mb",
    ] {
        positive(&v, key);
    }
    assert_eq!(v["distinct_keys"], 2000);
    // Every key appears in the generator's first 2,000 events; 20,000 events 0.1 ms apart are all in one window.
    assert!(v["open_groups_peak"].as_u64().unwrap() >= 2000, "{v}");
    assert!(v["state_writes"].as_u64().unwrap() >= 1000, "{v}");
}
