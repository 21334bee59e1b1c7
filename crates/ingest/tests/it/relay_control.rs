//! Relay trouble, in process: the relay dropping every connection mid-stream, an idle relay, and a cursor the
//! relay says is in its future. The shuffler reconnects (from the watermark, or live after `FutureCursor`) and
//! the stream still holds every event exactly once.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use fpaas_ingest::Shuffler;
use fpaas_ops::Health;
use fpaas_sim::{Sim, SimConfig};
use fpaas_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(url).await.expect("nats"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_disconnects_mid_stream_resume_from_the_watermark() {
    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 13,
        rate: Some(600.0),
        limit: Some(3_000),
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    let shuffler = Shuffler::new(test_config(&nats.url(), &sim.url(), "d"));
    let stats = shuffler.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(Health::new(), shutdown.clone()));
    for round in 1..=3u64 {
        eventually(Duration::from_secs(10), || async {
            stats.published.load(Ordering::Relaxed) > round * 500
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        sim.disconnect_all();
        eventually(Duration::from_secs(10), || async {
            stats.reconnects.load(Ordering::Relaxed) >= round
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: no reconnect {e}"));
    }
    let js = jetstream(&nats.url()).await;
    eventually(Duration::from_secs(20), || async {
        sim.produced() >= 3_000
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .expect("all events");
    shutdown.cancel();
    let done = task.await.expect("join").expect("run ok");
    assert!(done.reconnects >= 3, "{done:?}");
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim.truth());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_relay_is_reconnected() {
    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 1,
        rate: Some(1e-6),
        ..Default::default()
    })
    .await
    .expect("sim");
    sim.advance(10);
    let mut cfg = test_config(&nats.url(), &sim.url(), "idle");
    cfg.idle_timeout_ms = 300;
    let shuffler = Shuffler::new(cfg);
    let stats = shuffler.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(Health::new(), shutdown.clone()));
    eventually(Duration::from_secs(10), || async {
        stats.reconnects.load(Ordering::Relaxed) >= 2
    })
    .await
    .expect("idle reconnects");
    // And it still works after the idle reconnects.
    sim.advance(100);
    let js = jetstream(&nats.url()).await;
    eventually(Duration::from_secs(10), || async {
        stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .expect("events after idle reconnects");
    shutdown.cancel();
    task.await.expect("join").expect("run ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_cursor_reconnects_live() {
    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 2,
        rate: Some(1e-6),
        ..Default::default()
    })
    .await
    .expect("sim");
    sim.advance(50);
    let mut cfg = test_config(&nats.url(), &sim.url(), "future");
    cfg.start_cursor = Some(10_000_000);
    let shuffler = Shuffler::new(cfg);
    let stats = shuffler.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(Health::new(), shutdown.clone()));
    // FutureCursor → reconnect without a cursor (live): the 50 old events are not replayed, new ones flow.
    eventually(Duration::from_secs(10), || async {
        stats.reconnects.load(Ordering::Relaxed) >= 1 && sim.clients() > 0
    })
    .await
    .expect("reconnected live");
    sim.advance(100);
    let js = jetstream(&nats.url()).await;
    eventually(Duration::from_secs(10), || async {
        stats.watermark_seq.load(Ordering::Relaxed) == sim.head_seq().unwrap_or(-1)
    })
    .await
    .expect("caught up live");
    let live: Vec<_> = sim.truth().into_iter().filter(|t| t.seq() > 50).collect();
    let stored = read_stream(&js, "FIREHOSE").await;
    assert_exactly_once(&stored, &live);
    shutdown.cancel();
    let done = task.await.expect("join").expect("run ok");
    assert_eq!(
        done.cursor_seq,
        sim.head_seq(),
        "the cursor follows the relay again"
    );
}
