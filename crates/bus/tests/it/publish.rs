//! `Publisher` against a real nats-server: bounded acks in flight, dedup by `Nats-Msg-Id`,
//! messages handed back on failure during an outage and republished after the restart, and
//! oversized messages failing with a non-retryable kind.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use fpaas_bus::{BusErrorKind, OutMsg, Publisher, ensure_stream};
use fpaas_testkit::NatsServer;

#[tokio::test]
async fn ten_thousand_published_then_one_thousand_duplicates_detected() {
    let server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    ensure_stream(&js, &common::settings("DEDUP", "dedup.>"))
        .await
        .expect("stream");

    let mut publisher = Publisher::new(js.clone(), 256);
    let mut tokens = BTreeSet::new();
    let mut max_seen_in_flight = 0;
    for i in 0..10_000 {
        publisher.publish(common::msg("dedup", i)).await;
        max_seen_in_flight = max_seen_in_flight.max(publisher.in_flight());
        while let Some(done) = publisher.try_next_completion() {
            let acked = done.expect("publish ok");
            assert!(!acked.duplicate);
            tokens.insert(acked.token);
        }
    }
    assert!(
        max_seen_in_flight <= 256,
        "bound exceeded: {max_seen_in_flight}"
    );
    for done in common::drain(&mut publisher).await {
        let acked = done.expect("publish ok");
        assert!(!acked.duplicate);
        tokens.insert(acked.token);
    }
    assert_eq!(tokens.len(), 10_000, "every token completed once");
    assert!(publisher.is_idle());

    // Republish 1,000 of them (same ids): all reported as duplicates, nothing stored twice.
    for i in (0..10_000).step_by(10) {
        publisher.publish(common::msg("dedup", i)).await;
    }
    let completions = common::drain(&mut publisher).await;
    assert_eq!(completions.len(), 1_000);
    for done in completions {
        let acked = done.expect("republish ok");
        assert!(acked.duplicate, "token {} not a duplicate", acked.token);
        assert_eq!(acked.token % 10, 0);
    }
    assert_eq!(common::stream_messages(&js, "DEDUP").await, 10_000);
}

#[tokio::test]
async fn publishes_during_an_outage_come_back_and_succeed_after_restart() {
    let mut server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    ensure_stream(&js, &common::settings("OUTAGE", "outage.>"))
        .await
        .expect("stream");
    let mut publisher = Publisher::new(js.clone(), 64);
    let (stored, _, _) = common::publish_until_acked(
        &mut publisher,
        (0..10).map(|i| common::msg("outage", i)).collect(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(stored, 10);

    server.stop();
    for i in 10..30 {
        publisher.publish(common::msg("outage", i)).await;
    }
    let mut returned = Vec::new();
    for done in common::drain(&mut publisher).await {
        let failed = done.expect_err("server is down: publish must fail");
        assert!(failed.error.kind().is_retryable(), "{}", failed.error);
        assert_eq!(failed.msg.msg_id, format!("id-{}", failed.msg.token));
        returned.push(failed.msg);
    }
    let tokens: BTreeSet<u64> = returned.iter().map(|m| m.token).collect();
    assert_eq!(tokens, (10..30).collect(), "every message came back");

    server.start();
    let (stored, dup, _) =
        common::publish_until_acked(&mut publisher, returned, Duration::from_secs(20)).await;
    assert_eq!(stored + dup, 20);
    assert_eq!(common::stream_messages(&js, "OUTAGE").await, 30);
}

#[tokio::test]
async fn oversized_messages_fail_with_max_payload() {
    let server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    common::wait_connected(&js).await;
    let mut settings = common::settings("BIG", "big.>");
    settings.max_msg_size = 64 * 1024;
    ensure_stream(&js, &settings).await.expect("stream");
    let mut publisher = Publisher::new(js.clone(), 8);

    let big = |token: u64, len: usize| OutMsg {
        subject: "big.x".into(),
        msg_id: format!("big-{token}"),
        headers: vec![],
        payload: Bytes::from(vec![b'x'; len]),
        token,
    };
    // Above the stream's max_msg_size: rejected by JetStream.
    publisher.publish(big(1, 100 * 1024)).await;
    // Above the server's max_payload (4 MiB): rejected by the client before sending.
    publisher.publish(big(2, 5 * 1024 * 1024)).await;
    // Fits.
    publisher.publish(big(3, 1024)).await;
    let mut results = common::drain(&mut publisher).await;
    results.sort_by_key(|r| match r {
        Ok(a) => a.token,
        Err(f) => f.msg.token,
    });
    for (expected, result) in [1, 2].iter().zip(&results) {
        let failed = result.as_ref().expect_err("too large");
        assert_eq!(failed.msg.token, *expected);
        assert_eq!(
            failed.error.kind(),
            BusErrorKind::MaxPayload,
            "{}",
            failed.error
        );
        assert!(!failed.error.kind().is_retryable());
    }
    assert_eq!(results[2].as_ref().expect("small fits").token, 3);
}

/// The payload bytes awaiting an ack never exceed the byte budget (or one message larger than it, alone), and
/// every message still completes.
#[tokio::test]
async fn bytes_in_flight_stay_within_the_budget() {
    const BUDGET: usize = 256 * 1024;
    let server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    common::wait_connected(&js).await;
    let settings = common::settings("BYTES", "bytes.>");
    ensure_stream(&js, &settings).await.expect("stream");
    let mut publisher = Publisher::new(js.clone(), 1_000).with_max_bytes_in_flight(BUDGET);
    let mut most = 0;
    for token in 0..60u64 {
        let len = if token == 30 { 600 * 1024 } else { 60 * 1024 };
        publisher
            .publish(OutMsg {
                subject: format!("bytes.{}", token % 3),
                msg_id: format!("b-{token}"),
                headers: vec![],
                payload: Bytes::from(vec![b'y'; len]),
                token,
            })
            .await;
        most = most.max(publisher.bytes_in_flight());
        assert!(
            publisher.bytes_in_flight() <= BUDGET.max(len),
            "{} bytes in flight after message {token}",
            publisher.bytes_in_flight()
        );
    }
    let results = common::drain(&mut publisher).await;
    assert_eq!(results.len(), 60);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(publisher.bytes_in_flight(), 0);
    assert!(most > BUDGET / 2, "the budget was actually reached: {most}");
}

#[tokio::test]
async fn invalid_header_value_comes_back_without_panicking() {
    let server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    ensure_stream(&js, &common::settings("HDR", "hdr.>"))
        .await
        .expect("stream");
    let mut publisher = Publisher::new(js, 8);
    let mut msg = common::msg("hdr", 1);
    msg.headers = vec![("Fpaas-Did", "did:plc:x\r\nInjected: 1".into())];
    publisher.publish(msg).await;
    let done = publisher.next_completion().await.expect("one completion");
    let failed = done.expect_err("invalid header");
    assert_eq!(failed.error.kind(), BusErrorKind::InvalidMessage);
    assert_eq!(failed.msg.token, 1);
}
