//! `fpaas receive` through the real binary: batches POSTed by the real sender (`fpaas_webhook::Sender`) are
//! verified and printed (batch line, `--print-events` lines), a request signed with the old of two secrets passes
//! (rotation), `--fail-first` answers 500 first, and badly signed, stale or unsigned requests get 401 with the
//! reason printed.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fpaas_testkit::{eventually, free_port, workspace_root};
use fpaas_webhook::{AddrPolicy, BatchRequest, Outcome, RetryReason, Secret, Sender, sign};

/// Kills the child on drop so a failing test leaves no process behind.
struct Child(Option<std::process::Child>);
impl Drop for Child {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Child {
    /// Stops the receiver and returns what it printed on stdout.
    fn stop(mut self) -> String {
        let mut child = self.0.take().expect("running");
        let _ = child.kill();
        let out = child.wait_with_output().expect("receiver output");
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

const BODY: &str = r#"{"type":"fpaas.batch","subscription_id":"s_aaaaaaaaaaaaaaaa","batch_id":"s_aaaaaaaaaaaaaaaa.10-12.g1","from_seq":10,"to_seq":12,"events":[{"id":"a","seq":10,"time_us":1,"data":{"text":"hi"}},{"id":"b","seq":12,"time_us":2,"data":{"n":2}}]}"#;
const BATCH_ID: &str = "s_aaaaaaaaaaaaaaaa.10-12.g1";

#[tokio::test]
async fn receive_verifies_prints_batches_and_rejects_bad_signatures() {
    let (new, old) = (Secret::generate(), Secret::generate());
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_fpaas"))
        .current_dir(workspace_root())
        .args(["receive", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--secret", &new.to_string(), "--secret", &old.to_string()])
        .args(["--print-events", "--fail-first", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fpaas receive");
    let child = Child(Some(child));
    eventually(Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
    .expect("receiver listening");

    let url = format!("http://127.0.0.1:{port}/hook");
    let sender = Sender::new(AddrPolicy::permissive()).expect("sender");
    let batch = |secrets: Vec<Secret>| BatchRequest {
        url: url.clone(),
        batch_id: BATCH_ID.to_owned(),
        body: Bytes::from_static(BODY.as_bytes()),
        secrets,
        timeout: Duration::from_secs(5),
    };

    // Signed with a secret the receiver does not have: 401, and it does not use up --fail-first.
    let outcome = sender.deliver(&batch(vec![Secret::generate()])).await;
    assert!(
        matches!(outcome, Outcome::Retry { reason: RetryReason::Status(401), ref detail, .. } if detail.contains("no_match")),
        "{outcome:?}"
    );
    // The first correctly signed request fails on purpose, the second is accepted; the old secret alone
    // is enough (rotation overlap).
    let outcome = sender.deliver(&batch(vec![new.clone()])).await;
    assert!(
        matches!(
            outcome,
            Outcome::Retry {
                reason: RetryReason::Status(500),
                ..
            }
        ),
        "{outcome:?}"
    );
    let outcome = sender.deliver(&batch(vec![old.clone()])).await;
    assert!(
        matches!(outcome, Outcome::Accepted { status: 200, .. }),
        "{outcome:?}"
    );

    // Hand-made requests: stale timestamp, tampered body, missing headers.
    let client = reqwest::Client::new();
    let stale = unix_now() - 3600;
    let resp = client
        .post(&url)
        .header("webhook-id", BATCH_ID)
        .header("webhook-timestamp", stale.to_string())
        .header(
            "webhook-signature",
            sign::sign(BATCH_ID, stale, BODY.as_bytes(), std::slice::from_ref(&new)),
        )
        .body(BODY)
        .send()
        .await
        .expect("stale request");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.text().await.expect("body").trim(), "too_old");

    let now = unix_now();
    let resp = client
        .post(&url)
        .header("webhook-id", BATCH_ID)
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            sign::sign(BATCH_ID, now, BODY.as_bytes(), std::slice::from_ref(&new)),
        )
        .body(BODY.replace("hi", "ho"))
        .send()
        .await
        .expect("tampered request");
    assert_eq!(resp.status().as_u16(), 401);

    let resp = client
        .post(&url)
        .body(BODY)
        .send()
        .await
        .expect("unsigned request");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.text().await.expect("body").trim(), "missing_headers");

    let stdout = child.stop();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("rejected {BATCH_ID} reason=no_match")),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!("failing {BATCH_ID} with 500")),
        "{stdout}"
    );
    assert_eq!(
        lines[2],
        format!("batch {BATCH_ID} events=2 seq=10-12 bytes={}", BODY.len())
    );
    assert_eq!(
        lines[3],
        r#"{"id":"a","seq":10,"time_us":1,"data":{"text":"hi"}}"#
    );
    assert_eq!(
        lines[4],
        r#"{"id":"b","seq":12,"time_us":2,"data":{"n":2}}"#
    );
    assert!(
        lines[5].starts_with(&format!("rejected {BATCH_ID} reason=too_old")),
        "{stdout}"
    );
    assert!(
        lines[6].starts_with(&format!("rejected {BATCH_ID} reason=no_match")),
        "{stdout}"
    );
    assert!(
        lines[7].starts_with("rejected reason=missing_headers"),
        "{stdout}"
    );
}

#[test]
fn receive_refuses_a_malformed_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_fpaas"))
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--secret",
            "not-a-secret",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("whsec_"), "{stderr}");
}
