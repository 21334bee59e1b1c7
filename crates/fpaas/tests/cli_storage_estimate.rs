//! `fpaas storage-estimate --json` from flags: the figures follow the model (payload + overhead per message,
//! divided by the compression ratio, times the replicas).

use std::process::Command;

fn estimate(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_fpaas"))
        .args(["storage-estimate", "--json"])
        .args(args)
        .output()
        .expect("run fpaas storage-estimate");
    assert!(
        out.status.success(),
        "storage-estimate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn storage_estimate_from_flags() {
    let flags = [
        "--events-per-s",
        "350",
        "--mean-message-bytes",
        "600",
        "--overhead-bytes",
        "300",
        "--compression-ratio",
        "3",
        "--retention-hours",
        "24",
    ];
    let one = estimate(&flags);
    assert_eq!(one["source"], "flags");
    assert_eq!(one["raw_bytes_per_day"].as_u64(), Some(18_144_000_000));
    assert_eq!(one["logical_bytes_retained"].as_u64(), Some(27_216_000_000));
    assert_eq!(one["stored_bytes_per_node"].as_u64(), Some(9_072_000_000));
    assert!(one["max_bytes_headroom_ratio"].as_f64().expect("headroom") > 1.0);

    let mut r3 = flags.to_vec();
    r3.extend(["--replicas", "3"]);
    let three = estimate(&r3);
    assert_eq!(three["nodes"].as_u64(), Some(3));
    assert_eq!(three["stored_bytes_per_node"].as_u64(), Some(9_072_000_000));
    assert_eq!(three["cluster_total_bytes"].as_u64(), Some(27_216_000_000));

    // Defaults (measured overhead and S2 ratio, 350 events/s) give a positive estimate too.
    let defaults = estimate(&[]);
    assert!(defaults["stored_gb_per_node"].as_f64().expect("gb") > 0.0);
}
