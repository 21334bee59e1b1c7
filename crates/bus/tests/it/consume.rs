//! The consume loop against a real nats-server: a batch is acked only after its apply succeeded, a
//! retryable failure re-applies the same batch, `Settle::Term` terminates a message, a fatal
//! failure stops the loop with the batch unacked (redelivered to the next reader), and shutdown
//! ends a clean run.

use crate::common;

use std::time::Duration;

use fpaas_bus::{
    ApplyError, BatchApply, ConsumeError, ConsumeOptions, Delivery, DurableReader, ReaderOptions,
    Settle, Stopped,
};
use fpaas_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TestError(&'static str);

/// Fails the first `retryable` applies, then fails fatally once `fatal_after` messages were seen
/// (if set); terminates messages whose payload is `poison`.
struct Applier {
    retryable: u32,
    fatal_after: Option<usize>,
    applied: Vec<u64>,
    attempts: u32,
    batches: u32,
    retries: u32,
    shutdown_at: usize,
    shutdown: CancellationToken,
}

impl BatchApply for Applier {
    type Error = TestError;

    async fn apply(&mut self, batch: &[Delivery]) -> Result<Vec<Settle>, ApplyError<TestError>> {
        self.attempts += 1;
        if self.retryable > 0 {
            self.retryable -= 1;
            return Err(ApplyError::Retryable(TestError("outage")));
        }
        if self
            .fatal_after
            .is_some_and(|n| self.applied.len() + batch.len() > n)
        {
            return Err(ApplyError::Fatal(TestError("corrupt")));
        }
        self.batches += 1;
        self.applied.extend(batch.iter().map(|d| d.stream_seq));
        if self.applied.len() >= self.shutdown_at {
            self.shutdown.cancel();
        }
        Ok(batch
            .iter()
            .map(|d| {
                if &d.payload[..] == b"poison" {
                    Settle::Term
                } else {
                    Settle::Ack
                }
            })
            .collect())
    }

    fn retrying(&mut self, _error: &TestError) {
        self.retries += 1;
    }
}

fn applier(shutdown_at: usize, shutdown: &CancellationToken) -> Applier {
    Applier {
        retryable: 0,
        fatal_after: None,
        applied: Vec::new(),
        attempts: 0,
        batches: 0,
        retries: 0,
        shutdown_at,
        shutdown: shutdown.clone(),
    }
}

fn options() -> ConsumeOptions {
    ConsumeOptions {
        batch_size: 4,
        fetch_wait: Duration::from_millis(200),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

async fn reader(client: &fpaas_bus::Client) -> DurableReader {
    DurableReader::ensure(
        client,
        &ReaderOptions {
            stream: "CONSUME".into(),
            durable: "test".into(),
            description: "consume loop test".into(),
            filters: Vec::new(),
            ack_wait: Duration::from_secs(1),
            max_ack_pending: 100,
        },
    )
    .await
    .expect("reader")
}

/// The reader's backlog once it reaches `want` (acks are sent without waiting for the server), or
/// its last value after 5 s.
async fn settled_backlog(reader: &mut DurableReader, want: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let backlog = reader.backlog().await.expect("backlog");
        if backlog == want || tokio::time::Instant::now() >= deadline {
            return backlog;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn acks_follow_successful_applies_and_fatal_errors_stop_unacked() {
    let server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    fpaas_bus::ensure_stream(&js, &common::settings("CONSUME", "consume.>"))
        .await
        .expect("stream");
    for i in 0..10u32 {
        let payload = if i == 3 {
            "poison".into()
        } else {
            i.to_string()
        };
        js.publish(format!("consume.{i}"), payload.into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let client = fpaas_bus::connect(&server.url(), "consume-test")
        .await
        .expect("connect");

    // Two retryable failures, then everything applied once, in order, and acked.
    let shutdown = CancellationToken::new();
    let mut first = applier(10, &shutdown);
    first.retryable = 2;
    let mut reader_a = reader(&client).await;
    let stopped = fpaas_bus::consume(&reader_a, &options(), &shutdown, &mut first)
        .await
        .expect("clean run");
    assert_eq!(stopped, Stopped::Clean);
    assert_eq!(first.applied, (1..=10).collect::<Vec<u64>>());
    assert_eq!(first.retries, 2);
    assert_eq!(
        first.attempts,
        first.retries + first.batches,
        "one retry per failure"
    );
    assert_eq!(settled_backlog(&mut reader_a, 0).await, 0, "all settled");

    // A fatal failure ends the loop and leaves its batch delivered but unacked.
    for i in 10..14u32 {
        js.publish(format!("consume.{i}"), i.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let shutdown = CancellationToken::new();
    let mut second = applier(usize::MAX, &shutdown);
    second.fatal_after = Some(0);
    let err = fpaas_bus::consume(&reader_a, &options(), &shutdown, &mut second)
        .await
        .expect_err("fatal");
    assert!(matches!(err, ConsumeError::Apply(TestError("corrupt"))));
    assert!(second.applied.is_empty());
    // Nothing of it is acked (acks are asynchronous: give any stray one time to arrive).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reader_a.backlog().await.expect("backlog"),
        4,
        "the failed batch is not acked"
    );
}
