//! Shared helpers of the bus integration tests: connecting, small stream settings, publishing
//! batches and reading stream state with short per-request timeouts.

#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use fpaas_bus::{Completion, OutMsg, Publisher, StreamSettings};
use fpaas_testkit::eventually_some;

/// A JetStream context with a 1 s timeout for requests and acks, so outage tests stay quick.
pub async fn js_with_timeout(urls: &str) -> jetstream::Context {
    let client = fpaas_bus::connect(urls, "bus-test").await.expect("connect");
    jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client)
}

/// Test-sized stream settings (a 1 GiB guard instead of the 32 GiB default).
pub fn settings(name: &str, subject: &str) -> StreamSettings {
    StreamSettings {
        name: name.into(),
        subjects: vec![subject.into()],
        max_bytes: 1 << 30,
        ..Default::default()
    }
}

pub fn msg(subject_prefix: &str, i: u64) -> OutMsg {
    OutMsg {
        subject: format!("{subject_prefix}.{}", i % 7),
        msg_id: format!("id-{i}"),
        headers: vec![("Fpaas-Did", format!("did:plc:{i:06}"))],
        payload: Bytes::from(format!("{{\"i\":{i}}}")),
        token: i,
    }
}

/// Drains every completion of `publisher`.
pub async fn drain(publisher: &mut Publisher) -> Vec<Completion> {
    let mut out = Vec::new();
    while let Some(done) = publisher.next_completion().await {
        out.push(done);
    }
    out
}

/// The stream's message count, polling through reconnects.
pub async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    eventually_some(Duration::from_secs(15), || {
        let js = js.clone();
        let name = name.to_owned();
        async move {
            let stream = js.get_stream(&name).await.ok()?;
            Some(stream.cached_info().state.messages)
        }
    })
    .await
    .expect("stream info")
}

/// Publishes `msgs`, then retries failed ones until every message is acked (or `deadline` passes).
/// Returns (acked stored, acked duplicate, failures seen).
pub async fn publish_until_acked(
    publisher: &mut Publisher,
    msgs: Vec<OutMsg>,
    deadline: Duration,
) -> (u64, u64, u64) {
    let started = std::time::Instant::now();
    let (mut stored, mut dup, mut failures) = (0, 0, 0);
    let mut pending = msgs;
    while !pending.is_empty() {
        assert!(
            started.elapsed() < deadline,
            "{} messages still unacked after {deadline:?}",
            pending.len()
        );
        for m in pending.drain(..) {
            publisher.publish(m).await;
        }
        for done in drain(publisher).await {
            match done {
                Ok(acked) if acked.duplicate => dup += 1,
                Ok(_) => stored += 1,
                Err(failed) => {
                    assert!(failed.error.kind().is_retryable(), "{}", failed.error);
                    failures += 1;
                    pending.push(failed.msg);
                }
            }
        }
    }
    (stored, dup, failures)
}

/// Waits until the client is connected (its server info is known) by answering an account info.
pub async fn wait_connected(js: &jetstream::Context) {
    eventually_some(Duration::from_secs(10), || {
        let js = js.clone();
        async move { js.query_account().await.ok() }
    })
    .await
    .expect("jetstream reachable");
}
