//! An independent oracle for our signatures: the Python `standardwebhooks` library (pinned in
//! `scripts/setup-tools.sh`, driven by `scripts/py/standardwebhooks_peer.py`).
//!
//! - Python verifies what our `Sender` sends: a Python receiver on 127.0.0.1 accepts batches signed with its
//!   secret (alone, or next to a newer one during a rotation) and refuses a batch signed with another secret.
//! - We verify what Python signs: for the same id, timestamp and body, Python's signature equals ours and our
//!   `verify` accepts it (and refuses it for a changed body).
//!
//! The interpreter is `fpaas_testkit::python()` (`FPAAS_PYTHON`, else `.tools/venv/bin/python`); a missing
//! interpreter or library fails loudly with the install hint, like every other missing tool.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fpaas_testkit::{python, workspace_root};
use fpaas_webhook::sign::{DEFAULT_TOLERANCE, sign, verify};
use fpaas_webhook::{AddrPolicy, BatchRequest, Outcome, RetryReason, Secret, Sender};
use tokio::io::{AsyncBufReadExt, BufReader};

fn peer_script() -> std::path::PathBuf {
    workspace_root().join("scripts/py/standardwebhooks_peer.py")
}

/// The interpreter, checked to have the library.
fn python_with_library() -> std::path::PathBuf {
    let python = python();
    let out = Command::new(&python)
        .args(["-c", "import standardwebhooks"])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{} has no `standardwebhooks`: run `bash scripts/setup-tools.sh` ({})",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test]
async fn python_standardwebhooks_verifies_what_our_sender_sends() {
    let theirs = Secret::generate();
    let mut child = tokio::process::Command::new(python_with_library())
        .arg(peer_script())
        .args(["receive", &theirs.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Python receiver");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the Python receiver starts")
        .expect("read")
        .expect("a first line");
    let port: u16 = first
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));

    let sender = Sender::new(AddrPolicy::permissive()).expect("sender");
    let body = |text: &str| {
        Bytes::from(format!(
            r#"{{"type":"fpaas.batch","subscription_id":"s_q","batch_id":"s_q.1-1.g1","from_seq":1,"to_seq":1,"events":[{{"id":"e","seq":1,"time_us":1,"data":{{"text":"{text}"}}}}]}}"#
        ))
    };
    let cases = [
        ("plain", vec![theirs.clone()], body("hello"), true),
        (
            "rotation",
            vec![Secret::generate(), theirs.clone()],
            body("héllo ✓ 🦋"),
            true,
        ),
        (
            "wrong secret",
            vec![Secret::generate()],
            body("hello"),
            false,
        ),
        ("no secret", vec![], body("hello"), false),
        (
            "large",
            vec![theirs.clone()],
            body(&"x".repeat(500_000)),
            true,
        ),
    ];
    for (name, secrets, body, accept) in &cases {
        let req = BatchRequest {
            url: format!("http://127.0.0.1:{port}/"),
            batch_id: format!("s_q.{name}"),
            body: body.clone(),
            secrets: secrets.clone(),
            timeout: Duration::from_secs(10),
        };
        let outcome = sender.deliver(&req).await;
        if *accept {
            assert!(
                matches!(outcome, Outcome::Accepted { status: 204, .. }),
                "{name}: {outcome:?}"
            );
        } else {
            assert!(
                matches!(
                    outcome,
                    Outcome::Retry {
                        reason: RetryReason::Status(401),
                        ..
                    }
                ),
                "{name}: {outcome:?}"
            );
        }
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the receiver reports")
            .expect("read")
            .expect("a report line");
        let report: serde_json::Value = serde_json::from_str(&line).expect("JSON report");
        assert_eq!(report["ok"], *accept, "{name}: {report}");
        assert_eq!(report["id"], format!("s_q.{name}"), "{name}: {report}");
        assert_eq!(report["bytes"], body.len(), "{name}: {report}");
    }
}

#[test]
fn our_verify_accepts_what_python_standardwebhooks_signs() {
    let secret = Secret::generate();
    let now = unix_now();
    let cases = [
        ("msg_1", now, r#"{"a":1}"#.to_owned()),
        (
            "s_x.10-20.g3",
            now - 100,
            r#"{"text":"héllo ✓ 🦋","n":[1,2,3]}"#.to_owned(),
        ),
        (
            "id with spaces.and.dots",
            now + 60,
            "not json at all".to_owned(),
        ),
        ("big", now, "y".repeat(100_000)),
    ];
    let mut child = Command::new(python_with_library())
        .arg(peer_script())
        .args(["sign", &secret.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python signer");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for (id, ts, body) in &cases {
            let line = serde_json::json!({"id": id, "timestamp": ts, "body": body});
            writeln!(stdin, "{line}").expect("write a request");
        }
    }
    let out = child.wait_with_output().expect("Python signer output");
    assert!(out.status.success(), "the Python signer failed");
    let signatures: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["signature"].as_str().expect("signature").to_owned()
        })
        .collect();
    assert_eq!(signatures.len(), cases.len());
    for ((id, ts, body), theirs) in cases.iter().zip(&signatures) {
        assert_eq!(
            *theirs,
            sign(id, *ts, body.as_bytes(), std::slice::from_ref(&secret)),
            "{id}"
        );
        let secrets = std::slice::from_ref(&secret);
        assert_eq!(
            verify(
                id,
                &ts.to_string(),
                theirs,
                body.as_bytes(),
                secrets,
                now,
                DEFAULT_TOLERANCE
            ),
            Ok(()),
            "{id}"
        );
        let changed = format!("{body} ");
        assert!(
            verify(
                id,
                &ts.to_string(),
                theirs,
                changed.as_bytes(),
                secrets,
                now,
                DEFAULT_TOLERANCE
            )
            .is_err(),
            "{id}: a changed body must not verify"
        );
    }
}
