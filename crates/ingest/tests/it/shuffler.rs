//! End to end, in process: relay-sim → shuffler → a real nats-server. Every simulated event lands in the stream
//! exactly once, `/ready`'s components come up, shutdown saves the cursor, and a restart resumes exactly there.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use fpaas_ingest::Shuffler;
use fpaas_ops::Health;
use fpaas_sim::server::{Sim, SimConfig};
use fpaas_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_exactly_once_cursor_saved_and_resumed() {
    let nats = NatsServer::new();
    // Practically no rate: the test produces events explicitly with `advance`.
    let (sim, _) = Sim::start(SimConfig {
        seed: 7,
        rate: Some(1e-6),
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    sim.advance(3_000);
    let cfg = test_config(&nats.url(), &sim.url(), "a");
    let shuffler = Shuffler::new(cfg.clone());
    let stats = shuffler.stats();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(health.clone(), shutdown.clone()));

    eventually(Duration::from_secs(20), || async {
        sim.produced() >= 3_000
            && stats.published.load(Ordering::Relaxed) >= expected_len(&sim.truth())
    })
    .await
    .unwrap_or_else(|e| panic!("not all published: {e}; {:?}", stats.snapshot()));
    assert!(health.is_ready(), "{:?}", health.not_ready_reasons());

    shutdown.cancel();
    let done = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("shutdown in time")
        .expect("join")
        .expect("run ok");
    let head = sim.head_seq();
    assert_eq!(done.cursor_seq, head, "final cursor = last seq, {done:?}");
    assert_eq!(done.duplicates, 0, "nothing re-published in a clean run");
    assert_eq!(done.drops, 0, "no faults injected");

    let client = async_nats::connect(nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    assert_eq!(stored_cursor(&js, "a").await, head, "cursor record in KV");
    let truth = sim.truth();
    let stored = read_stream(&js, "FIREHOSE").await;
    assert_exactly_once(&stored, &truth);
    assert!(
        stored
            .iter()
            .all(|s| s.subject.starts_with("atproto.firehose."))
    );

    // Restart: it resumes at the saved cursor, so only new events are published and nothing is replayed.
    let shuffler = Shuffler::new(cfg);
    let stats = shuffler.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(Health::new(), shutdown.clone()));
    eventually(Duration::from_secs(10), || async { sim.clients() > 0 })
        .await
        .expect("restarted shuffler connected");
    sim.advance(200);
    let want = expected_len(&sim.truth());
    eventually(Duration::from_secs(15), || async {
        stream_len(&js, "FIREHOSE").await == Some(want)
    })
    .await
    .expect("new events published after the restart");
    shutdown.cancel();
    let done = task.await.expect("join").expect("run ok");
    assert_eq!(
        done.duplicates, 0,
        "resumed exactly at the cursor: {done:?}"
    );
    assert_eq!(done.cursor_seq, sim.head_seq());
    assert_eq!(done.published, want - stored.len() as u64);
    let _ = stats;
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim.truth());
}

/// Two shufflers on the same relay and NATS at once: the stream holds each event once, and the second instance
/// started later resumes from the first one's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_same_relay_no_duplicates() {
    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 9,
        rate: Some(1_000.0),
        limit: Some(3_000),
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    let a = Shuffler::new(test_config(&nats.url(), &sim.url(), "a"));
    let b = Shuffler::new(test_config(&nats.url(), &sim.url(), "b"));
    let (sa, sb) = (a.stats(), b.stats());
    let shutdown = CancellationToken::new();
    let ta = tokio::spawn(a.run(Health::new(), shutdown.clone()));
    eventually(Duration::from_secs(10), || async {
        sa.cursor_saves.load(Ordering::Relaxed) > 0 && sa.published.load(Ordering::Relaxed) > 300
    })
    .await
    .expect("a publishing");
    let tb = tokio::spawn(b.run(Health::new(), shutdown.clone()));
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    eventually(Duration::from_secs(20), || async {
        sim.produced() >= 3_000
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
            && sb.frames.load(Ordering::Relaxed) > 0
            // Both caught up (b may have stored everything while a, on a loaded machine, lags behind).
            && sa.watermark_seq.load(Ordering::Relaxed) == sim.head_seq().unwrap_or(-1)
            && sb.watermark_seq.load(Ordering::Relaxed) == sim.head_seq().unwrap_or(-1)
    })
    .await
    .expect("all events stored");
    shutdown.cancel();
    let (ra, rb) = (ta.await.expect("join"), tb.await.expect("join"));
    let (ra, rb) = (ra.expect("a ok"), rb.expect("b ok"));
    assert!(
        rb.duplicates > 0,
        "b published the same events as a: {rb:?}"
    );
    assert!(
        rb.frames < 3_000,
        "b resumed from a's cursor instead of the beginning: {rb:?}"
    );
    assert_eq!(ra.cursor_seq, sim.head_seq());
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim.truth());
}

/// Throughput with the relay serving as fast as the shuffler reads (run in release for numbers:
/// `FPAAS_SOAK=1 cargo test --release -p fpaas-ingest --test it shuffler::throughput -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored (FPAAS_SOAK_EVENTS sets the size)"]
async fn throughput() {
    let events = soak_events(100_000);
    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 1,
        limit: Some(events),
        window: events as usize,
        record_truth: false,
        ..Default::default()
    })
    .await
    .expect("sim");
    // Pre-generate so that the measurement is the shuffler, not the generator.
    sim.advance(events);
    let mut cfg = test_config(&nats.url(), &sim.url(), "bench");
    cfg.stream.max_bytes = 2 * 1024 * 1024 * 1024;
    let shuffler = Shuffler::new(cfg);
    let stats = shuffler.stats();
    let shutdown = CancellationToken::new();
    let started = std::time::Instant::now();
    let task = tokio::spawn(shuffler.run(Health::new(), shutdown.clone()));
    eventually(Duration::from_secs(600), || async {
        stats.watermark_seq.load(Ordering::Relaxed) >= sim.head_seq().unwrap_or(i64::MAX)
    })
    .await
    .expect("caught up");
    let secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let done = task.await.expect("join").expect("run ok");
    eprintln!(
        "throughput: {} frames, {} events published in {secs:.2} s = {:.0} events/s, {:.0} frames/s; max acks in flight {}, {done:?}",
        done.frames,
        done.published,
        done.published as f64 / secs,
        done.frames as f64 / secs,
        done.max_acks_in_flight_seen
    );
}
