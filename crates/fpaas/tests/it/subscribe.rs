//! `GET /subscribe` (Jetstream v1 compatible) end to end: `fpaas dev` streams a bounded run of relay-sim events
//! through the shuffler into the stream, and real Jetstream clients from npm (`@atcute/jetstream`,
//! `@skyware/jetstream`, `ws` with `@bokuweb/zstd-wasm` for `compress=true`) read it
//! (`crates/fpaas/tests/jetstream/clients.mjs`): live events with a prefix, an `options_update`, a cursor replay
//! across a forced disconnect with nothing missing or repeated, `wantedDids`, zstd frames decoded with
//! Jetstream's dictionary, filters in the URL. Then `fpaas tail` on the relay for the same collection must
//! print exactly the likes the clients saw, and bad parameters get Jetstream's `400` bodies before any upgrade.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use fpaas_testkit::{WebhookReceiver, free_port_block, workspace_root};
use serde_json::Value;

use crate::cli_dev::Dev;

fn node_dir() -> std::path::PathBuf {
    workspace_root().join("crates/fpaas/tests/jetstream")
}

/// The likes of `fpaas tail --relay … --cursor AFTER --collection app.bsky.feed.like`, read until it has been
/// quiet for 3 s.
fn tail_likes(relay: &str, after: i64) -> BTreeSet<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fpaas"))
        .args(["tail", "--relay", relay, "--cursor", &after.to_string()])
        .args(["--collection", "app.bsky.feed.like"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fpaas tail");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut keys = BTreeSet::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(3)) {
        let e: Value = serde_json::from_str(&line).expect("tail prints JSON");
        if e["kind"] == "commit" {
            let c = &e["commit"];
            keys.insert(format!(
                "{}|{}|{}|{}|{}",
                e["did"].as_str().unwrap_or_default(),
                c["collection"].as_str().unwrap_or_default(),
                c["rkey"].as_str().unwrap_or_default(),
                c["operation"].as_str().unwrap_or_default(),
                c["rev"].as_str().unwrap_or_default()
            ));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_clients_from_npm_read_subscribe_like_jetstream() {
    let base = free_port_block(12);
    let relay_port = base + 11;
    let receiver = WebhookReceiver::start().await;
    let relay_listen = format!("127.0.0.1:{relay_port}");
    // 2,400 events at 300/s: the clients see ~8 s of live traffic, then a stream that no longer grows.
    let dev = Dev::spawn(
        base,
        &receiver.addr().to_string(),
        false,
        &[
            "--listen",
            &relay_listen,
            "--rate",
            "300",
            "--limit",
            "2400",
        ],
    );
    dev.wait_ready(base).await;
    let api = format!("http://127.0.0.1:{}", base + 10);

    let http = reqwest::Client::new();
    fpaas_testkit::eventually(Duration::from_secs(60), || async {
        http.get(format!("{api}/openapi.json"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
    .unwrap_or_else(|e| panic!("the API: {e}\n{}", dev.log()));

    // Bad parameters: Jetstream v1's 400 bodies, before any upgrade.
    for (query, body) in [
        ("cursor=abc", "invalid cursor: abc"),
        (
            "wantedCollections=nope",
            "invalid subscriber options: invalid collection: nope",
        ),
        ("wantedDids=alice", "invalid subscriber options"),
    ] {
        let r = http
            .get(format!("{api}/subscribe?{query}"))
            .send()
            .await
            .expect("GET /subscribe");
        assert_eq!(r.status(), 400, "{query}");
        assert_eq!(r.text().await.unwrap_or_default(), body, "{query}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let likes_file = dir.path().join("likes.txt");
    let out = tokio::process::Command::new("node")
        .arg("clients.mjs")
        .current_dir(node_dir())
        .env("FPAAS_API", &api)
        .env("OUT", &likes_file)
        .env(
            "ZDICT",
            workspace_root().join("crates/jetstream/assets/legacy_subscribe.zdict"),
        )
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .expect("the clients finish within 240 s")
        .expect("node runs (installed by scripts/setup-tools.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "clients.mjs failed: {stderr}\n{}",
        dev.log()
    );
    let summary: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or_default(),
    )
    .expect("a JSON summary");
    for field in [
        "live",
        "after_update",
        "reference",
        "likes",
        "resumed",
        "dids",
        "compressed",
        "skyware",
    ] {
        assert!(
            summary[field].as_u64().is_some_and(|n| n > 0),
            "{field}: {summary}"
        );
    }
    let ratio = summary["compression_ratio"].as_f64().unwrap_or(1.0);
    assert!(ratio < 0.8, "zstd with the dictionary compresses: {ratio}");

    // The same likes as `fpaas tail` reading the relay directly.
    let seen: BTreeSet<String> = std::fs::read_to_string(&likes_file)
        .expect("likes written")
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    // The shuffler started live, a moment after relay-sim began: the relay's frames from the first one it
    // stored on are the truth (the stream's first event carries that relay seq).
    let nats = fpaas_bus::connect(&format!("nats://127.0.0.1:{base}"), "subscribe-test")
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(nats);
    let first = fpaas_testkit::stream::read_stream(&js, "FIREHOSE")
        .await
        .into_iter()
        .next()
        .expect("a stored event");
    let first_relay_seq: i64 = serde_json::from_slice::<Value>(&first.payload)
        .ok()
        .and_then(|v| v["seq"].as_i64())
        .expect("the first event's relay seq");
    let tailed = tail_likes(&format!("ws://{relay_listen}"), first_relay_seq - 1);
    assert_eq!(
        seen.len() as u64,
        summary["likes"].as_u64().unwrap_or(0),
        "keys are distinct"
    );
    assert!(!tailed.is_empty());
    let only_here: Vec<_> = seen.difference(&tailed).take(10).collect();
    let only_tail: Vec<_> = tailed.difference(&seen).take(10).collect();
    assert!(
        only_here.is_empty() && only_tail.is_empty(),
        "/subscribe and fpaas tail disagree ({} vs {} likes): only here {only_here:?}, only in tail {only_tail:?}\n{}",
        seen.len(),
        tailed.len(),
        dev.log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
