//! End-to-end tests of the foundation commands through the real binary: `decode` of the corpus equals the golden
//! NDJSON; a relay-sim stream recorded with `record`, decoded, replayed with `relay-sim --replay` and read back
//! with `tail` gives the same events the simulator says it emitted; `bench decode --json` prints unit-suffixed keys.

use fpaas_testkit::{eventually, free_port, relay, workspace_root};
use std::process::{Command, Stdio};
use std::time::Duration;

fn fpaas() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fpaas"));
    c.current_dir(workspace_root());
    c
}

/// Kills the child on drop so a failing test leaves no process behind.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `fpaas tail` against `port` with extra args; fails the test if it does not finish within 30 s.
async fn tail(port: u16, extra: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fpaas"));
    cmd.current_dir(workspace_root())
        .args([
            "tail",
            "--relay",
            &format!("ws://127.0.0.1:{port}"),
            "--cursor",
            "0",
        ])
        .args(extra)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("tail did not finish: fewer matching events than expected")
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn decode_of_corpus_equals_golden_ndjson() {
    let out = fpaas()
        .args(["decode", "--strict", "testdata/corpus/frames.bin.zst"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "decode failed: {stderr}");
    let golden =
        std::fs::read_to_string(workspace_root().join("testdata/corpus/events.ndjson")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), golden);
    assert!(
        stderr.contains("decoded 150 frames, 152 events, 0 errors"),
        "{stderr}"
    );
}

#[test]
fn decode_counts_errors_of_a_corrupt_capture_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.bin");
    let frames =
        fpaas_sim::read_capture(workspace_root().join("testdata/corpus/frames.bin.zst")).unwrap();
    let mut w = fpaas_sim::CaptureWriter::create(&path).unwrap();
    for (i, f) in frames.iter().enumerate() {
        if i % 10 == 3 {
            w.write_frame(&f[..f.len() / 2]).unwrap(); // truncated
        } else {
            w.write_frame(f).unwrap();
        }
    }
    w.write_frame(b"\xff\x00garbage").unwrap();
    w.finish().unwrap();
    let out = fpaas().arg("decode").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // 15 truncated frames + 1 garbage frame are errors; the other 135 frames still produce their events.
    assert!(stderr.contains("decoded 151 frames"), "{stderr}");
    assert!(stderr.contains(", 16 errors"), "{stderr}");
    let lines = String::from_utf8(out.stdout).unwrap().lines().count();
    assert!(lines > 100 && lines < 152, "{lines} events");
    let strict = fpaas()
        .args(["decode", "--strict"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!strict.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_decode_replay_tail_round_trip() {
    let sim = relay::start_with(600, None).await;
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("cap.bin.zst");

    // record: everything the simulator emits (no cursor = live from head, which is seq 0 before generation).
    let status = fpaas()
        .args([
            "record",
            "--relay",
            &sim.url(),
            "--cursor",
            "0",
            "--limit",
            "600",
            "--out",
        ])
        .arg(&capture)
        .status()
        .unwrap();
    assert!(status.success());
    let truth = sim.truth();
    let expected_events = relay::deliverable(&truth).len();

    // decode the capture.
    let decoded = fpaas()
        .args(["decode", "--strict"])
        .arg(&capture)
        .output()
        .unwrap();
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let decoded = String::from_utf8(decoded.stdout).unwrap();
    assert_eq!(decoded.lines().count(), expected_events);

    // replay it from a second relay process and tail it back.
    let port = free_port();
    let _replay = Child(
        fpaas()
            .args([
                "relay-sim",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--replay",
            ])
            .arg(&capture)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
    .expect("replay relay listening");
    let all = tail(port, &["--limit", &expected_events.to_string()]).await;
    assert_eq!(all, decoded);

    // tail with filters: only likes, only one DID.
    let first: serde_json::Value = serde_json::from_str(decoded.lines().next().unwrap()).unwrap();
    let did = first["did"].as_str().unwrap().to_string();
    let likes = decoded
        .lines()
        .filter(|l| l.contains("\"collection\":\"app.bsky.feed.like\""))
        .count();
    let filtered = tail(
        port,
        &[
            "--collection",
            "app.bsky.feed.like",
            "--limit",
            &likes.to_string(),
        ],
    )
    .await;
    assert_eq!(filtered.lines().count(), likes);
    assert!(
        filtered
            .lines()
            .all(|l| l.contains("\"collection\":\"app.bsky.feed.like\""))
    );
    let by_did_expected = decoded
        .lines()
        .filter(|l| l.contains(&format!("\"did\":\"{did}\"")))
        .count();
    let by_did = tail(
        port,
        &["--did", &did, "--limit", &by_did_expected.to_string()],
    )
    .await;
    assert_eq!(by_did.lines().count(), by_did_expected);
    assert!(
        by_did
            .lines()
            .all(|l| l.contains(&format!("\"did\":\"{did}\"")))
    );
}

#[test]
fn bench_decode_prints_unit_keys() {
    let out = fpaas()
        .args(["bench", "decode", "--json", "--seconds", "0.2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "frames_per_s",
        "mb_per_s",
        "events_per_s",
        "decode_frames_per_s",
    ] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
    }
    assert_eq!(v["corpus_decode_errors"], 0);
}
