//! `fpaas bench deliver`: one subscription taking every event of a pre-filled stream, in batches of
//! `--batch` events, to a local receiver: delivered events/s, beside the baseline of reading the same stream
//! alone with the same reader (`bus::tail::StreamTail`, an ordered consumer) in the same run;
//! `ratio_vs_baseline` = delivered / read alone.
//!
//! Shape: nats-server (testkit); the stream filled with `--events` events made from the real corpus
//! (`testkit::stream::corpus_events`, published with the shuffler's message format); the worker as a child of
//! this binary; the subscription written into the subscriptions bucket with `start: retention_start`, so it
//! reads on its own catch-up reader, transforms nothing and batches up to `--batch` events (8 MiB at most).
//! The delivery time runs from writing the subscription to the receiver's last request.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Result, bail, ensure};
use crate::publish::{Prepared, publish_all};
use crate::server::{NatsServerFlag, start_nats, wait_for_messages};
use crate::subs::{Receiver, WorkerChild, put_subscriptions};
use crate::{Report, r2};

// `fpaas bench deliver`'s flags (doc comments here would become clap help).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Events in the stream.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// `batching.max_events`.
    #[arg(long, default_value_t = 1_000)]
    batch: u32,
    #[command(flatten)]
    nats: NatsServerFlag,
}

/// Reads the whole stream with one `StreamTail`; (messages, seconds).
async fn read_alone(client: &fpaas_bus::Client, last_seq: u64) -> Result<(u64, f64)> {
    let mut tail =
        fpaas_bus::tail::StreamTail::new(client, "FIREHOSE", fpaas_bus::tail::From::First, vec![]);
    let started = Instant::now();
    let mut n = 0u64;
    while let Some(m) = tail.next(Duration::from_secs(5)).await? {
        n += 1;
        std::hint::black_box(&m.payload);
        if m.seq >= last_seq {
            return Ok((n, started.elapsed().as_secs_f64()));
        }
    }
    bail!("the stream ended at {n} messages, before sequence {last_seq}")
}

/// Runs the bench.
///
/// # Errors
/// A missing tool, a server or worker failure, a delivery that stalls.
pub async fn run(args: &Args) -> Result<Report> {
    let nats = start_nats(&args.nats.binary()).await?;
    let client = fpaas_bus::connect(&nats.url(), "fpaas-bench-deliver").await?;
    let js = fpaas_bus::jetstream(client.clone(), 1024);
    fpaas_bus::ensure_stream(&js, &fpaas_bus::StreamSettings::default()).await?;
    let events = tokio::task::spawn_blocking({
        let n = args.events;
        move || {
            fpaas_testkit::stream::corpus_events(n)
                .iter()
                .map(Prepared::event)
                .collect::<Vec<_>>()
        }
    })
    .await?;
    let payload_bytes: usize = events.iter().map(|m| m.payload.len()).sum();
    publish_all(&js, events, 1024).await?;
    let stored = wait_for_messages(
        &js,
        "FIREHOSE",
        Some(args.events as u64),
        Duration::from_millis(200),
        Duration::from_secs(300),
        || Ok(()),
    )
    .await?;
    let last_seq = fpaas_bus::tail::stream_bounds(&client, "FIREHOSE")
        .await?
        .last_seq;

    // Baseline: the stream read alone.
    let (read, read_s) = read_alone(&client, last_seq).await?;
    ensure!(
        read == stored.messages,
        "read {read} of {} messages",
        stored.messages
    );
    let read_rate = read as f64 / read_s.max(1e-9);

    // One subscription taking everything.
    let receiver = Receiver::start().await?;
    let mut worker = WorkerChild::start(&nats.url(), &nats.scratch_dir().join("worker.log"))?;
    worker
        .wait("all partitions", Duration::from_secs(60), |p| {
            fpaas_testkit::prom_value(p, "fpaas_pipeline_partitions_owned", "") >= 32.0
        })
        .await?;
    let spec = json!({
        "batching": {"max_events": args.batch, "max_bytes": 8 * 1024 * 1024, "max_wait_ms": 1000},
        "start": {"at": "retention_start"},
        "delivery": {"type": "webhook", "url": receiver.url("/all"), "timeout_ms": 30000}
    });
    let started = Instant::now();
    put_subscriptions(&client, [("s_deliver".to_owned(), spec)]).await?;
    let want = stored.messages;
    let deadline = started + Duration::from_secs(600);
    let mut last = (0u64, Instant::now());
    loop {
        let got = receiver
            .got
            .events
            .load(std::sync::atomic::Ordering::Relaxed);
        if got >= want {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        }
        if last.1.elapsed() > Duration::from_secs(30) || Instant::now() > deadline {
            bail!("delivery stalled at {got} of {want} events");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliver_s = started.elapsed().as_secs_f64();
    let delivered = receiver
        .got
        .events
        .load(std::sync::atomic::Ordering::Relaxed);
    let rate = delivered as f64 / deliver_s.max(1e-9);

    let mut report = Report::new("deliver");
    report.add("events", delivered);
    report.add("events_per_s", r2(rate));
    report.add("read_alone_events_per_s", r2(read_rate));
    report.add("ratio_vs_baseline", r2(rate / read_rate.max(1e-9)));
    report.add(
        "batches",
        receiver
            .got
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    report.add(
        "delivered_mb",
        r2(receiver
            .got
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed) as f64
            / 1e6),
    );
    report.add(
        "mean_event_bytes",
        r2(payload_bytes as f64 / args.events.max(1) as f64),
    );
    report.add("deliver_s", r2(deliver_s));
    report.add("read_alone_s", r2(read_s));
    report.add("rss_mb", r2(worker.peak_rss().unwrap_or(0) as f64 / 1e6));
    drop(worker);
    let _ = client.drain().await;
    Ok(report)
}
