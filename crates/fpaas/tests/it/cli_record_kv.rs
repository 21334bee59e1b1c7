//! End-to-end test of the record-KV commands through the real binary against a real nats-server:
//! `import-car`, `put-record` (the local-development contract), a running `like-indexer` process answering
//! `get-likers` / `get-likes-by` (arguments and stdin), and `reset --yes`.

use fpaas_testkit::{NatsServer, eventually_some, workspace_root};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn fpaas(nats: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fpaas"));
    c.current_dir(workspace_root()).env("FPAAS_NATS_URL", nats);
    c
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const POST: &str = "at://did:plc:author0000000000000000000/app.bsky.feed.post/3kpost0000000";

fn like(rkey: &str, did: &str) -> (String, String) {
    (
        format!("at://{did}/app.bsky.feed.like/{rkey}"),
        format!(
            r#"{{"$type":"app.bsky.feed.like","createdAt":"2026-11-23T00:00:00.000Z","subject":{{"uri":"{POST}","cid":"bafyreiguce4jh7kcbmof3pmcvasifqtw24b6isakj5ve5ga2b4z4alpc4i"}}}}"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_put_index_query_reset() {
    let server = NatsServer::new();
    let url = server.url();

    let out = ok(fpaas(&url).args(["import-car", "testdata/corpus/repo.car"]));
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The export's MST holds 23 records of the DID in car_expected_commit.txt (checked record by record in
    // crates/recordkv/tests/it/import.rs).
    assert_eq!(summary["records"], 23, "{summary}");
    assert_eq!(summary["did"], "did:plc:53iucmf5ldftgqyf2ac7hmhd");

    let likers = [
        "did:plc:liker1aaaaaaaaaaaaaaaaaaaa",
        "did:plc:liker2bbbbbbbbbbbbbbbbbbbb",
    ];
    for (i, did) in likers.iter().enumerate() {
        let (uri, json) = like(&format!("3klike000000{i}"), did);
        ok(fpaas(&url).args(["put-record", &uri, &json]));
    }
    // Invalid input is a clear error, not a crash.
    let bad = fpaas(&url)
        .args(["put-record", "at://not-a-did/x/y", "{}"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(!String::from_utf8_lossy(&bad.stderr).contains("panicked"));

    let _indexer = Child(
        fpaas(&url)
            .args(["like-indexer", "--metrics-listen", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let u = url.clone();
    let count = eventually_some(Duration::from_secs(30), move || {
        let u = u.clone();
        async move {
            let out = fpaas(&u)
                .args(["get-likers", "--count", POST])
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["count"] == 2).then_some(v)
        }
    })
    .await
    .expect("like index never reached 2 likers");
    assert_eq!(count["uri"], POST);
    // A one-shot query prints its one-line answer and nothing else: no connection chatter on stderr.
    let out = fpaas(&url)
        .env_remove("RUST_LOG")
        .args(["get-likers", "--count", POST])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim().lines().count(),
        1
    );
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let all = ok(fpaas(&url).args(["get-likers", POST]));
    for did in likers {
        assert!(all.contains(did), "{all}");
    }
    // get-likes-by from stdin, one DID per line.
    let mut child = fpaas(&url)
        .arg("get-likes-by")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n{}\n", likers[0], likers[1]).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches(POST).count(), 2, "{text}");

    ok(fpaas(&url).args(["reset", "--yes"]));
    let after = fpaas(&url)
        .args(["get-likers", "--count", POST])
        .output()
        .unwrap();
    let gone = !after.status.success()
        || serde_json::from_slice::<serde_json::Value>(&after.stdout)
            .map(|v| v["count"] == 0)
            .unwrap_or(true);
    assert!(gone, "likes still present after reset");
}
