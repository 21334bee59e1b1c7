//! `fpaas storage-estimate --json` from flags: the figures follow the model (payload + overhead per message,
//! divided by the compression ratio, times the replicas); and from a metrics endpoint scraped twice.

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

/// Serves a shuffler-like `/metrics` page on 127.0.0.1 whose published counter grows by 100 per request, with
/// a message-size histogram of mean 500 B; returns the base URL.
fn fake_shuffler_metrics() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut request = [0u8; 1024];
            let n = conn.read(&mut request).unwrap_or(0);
            assert!(
                String::from_utf8_lossy(&request[..n]).starts_with("GET /metrics "),
                "a bare host:port URL means /metrics"
            );
            let published = 1_000 + 100 * i;
            let body = format!(
                "# TYPE fpaas_shuffler_published_total counter\n\
                 fpaas_shuffler_published_total {published}\n\
                 fpaas_shuffler_message_size_bytes_sum {}\n\
                 fpaas_shuffler_message_size_bytes_count {published}\n",
                published * 500
            );
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn storage_estimate_from_metrics() {
    let url = fake_shuffler_metrics();
    let v = estimate(&["--metrics-url", &url, "--sample-seconds", "0.5"]);
    assert_eq!(v["source"], "metrics");
    // 100 messages between the two scrapes, 0.5 s apart (plus the request time).
    let rate = v["events_per_s"].as_f64().expect("rate");
    assert!((100.0..=200.0).contains(&rate), "{v}");
    assert_eq!(v["mean_message_bytes"].as_f64(), Some(500.0), "{v}");
}
