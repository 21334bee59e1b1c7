//! nats-server stopped for 10 s mid-stream and started again: no event is lost, the shuffler never exits, and
//! its memory stays bounded (acks in flight and pending frames never exceed their configured bounds — there is
//! no retry queue; it stops reading the relay and resumes from the watermark).

use crate::common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use fpaas_ingest::Shuffler;
use fpaas_ops::Health;
use fpaas_sim::{Sim, SimConfig};
use fpaas_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

const MAX_ACKS: usize = 64;
const MAX_FRAMES: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_10s_mid_stream_loses_nothing() {
    let mut nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 11,
        rate: Some(400.0),
        limit: Some(6_000),
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    let mut cfg = test_config(&nats.url(), &sim.url(), "outage");
    cfg.max_acks_in_flight = MAX_ACKS;
    cfg.max_pending_frames = MAX_FRAMES;
    cfg.publish_timeout_ms = 2_000;
    cfg.backoff_max_ms = 1_000;
    let shuffler = Shuffler::new(cfg);
    let stats = shuffler.stats();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let mut task = tokio::spawn(shuffler.run(health.clone(), shutdown.clone()));

    eventually(Duration::from_secs(10), || async {
        stats.published.load(Ordering::Relaxed) >= 400
    })
    .await
    .expect("publishing before the outage");

    tokio::task::block_in_place(|| nats.stop());
    let stopped = Instant::now();
    // The outage: the shuffler keeps running, within its bounds, and its watermark does not move.
    let mut watermark_during = None;
    while stopped.elapsed() < Duration::from_secs(10) {
        assert!(!task.is_finished(), "the shuffler exited during the outage");
        let s = stats.snapshot();
        assert!(s.acks_in_flight <= MAX_ACKS as u64, "{s:?}");
        if stopped.elapsed() > Duration::from_secs(6) {
            // By now every in-flight ack has failed (2 s publish timeout, 5 s ack timeout): frozen.
            match watermark_during {
                None => watermark_during = Some(s.watermark_seq),
                Some(w) => assert_eq!(w, s.watermark_seq, "watermark moved while NATS was down"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!health.is_ready(), "not ready while NATS is down");
    tokio::task::block_in_place(|| nats.start());

    let client = async_nats::connect(nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    eventually(Duration::from_secs(25), || async {
        sim.produced() >= 6_000
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "not caught up after the outage: {e}; {:?}",
            stats.snapshot()
        )
    });
    eventually(Duration::from_secs(5), || async { health.is_ready() })
        .await
        .expect("ready again");

    let s = stats.snapshot();
    assert!(s.nats_outages >= 1, "the outage was noticed: {s:?}");
    assert!(s.max_acks_in_flight_seen <= MAX_ACKS as u64, "{s:?}");
    assert!(s.max_pending_frames_seen <= MAX_FRAMES as u64, "{s:?}");
    assert!(!task.is_finished());
    shutdown.cancel();
    let done = tokio::time::timeout(Duration::from_secs(15), &mut task)
        .await
        .expect("stops in time")
        .expect("join")
        .expect("run ok");
    assert_eq!(done.cursor_seq, sim.head_seq(), "{done:?}");
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim.truth());
}

/// NATS not running when the shuffler starts: it keeps retrying (not ready, never exits) and starts shuffling
/// from the beginning once NATS appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_nats_and_waits_for_it() {
    let mut nats = NatsServer::new();
    tokio::task::block_in_place(|| nats.stop());
    let (sim, _) = Sim::start(SimConfig {
        seed: 4,
        rate: Some(1e-6),
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    sim.advance(500);
    let shuffler = Shuffler::new(test_config(&nats.url(), &sim.url(), "early"));
    let stats = shuffler.stats();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(health.clone(), shutdown.clone()));
    eventually(Duration::from_secs(5), || async {
        health.status(fpaas_ingest::COMPONENT_NATS).is_some()
    })
    .await
    .expect("components registered");
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(!task.is_finished(), "exited while NATS was unreachable");
        assert!(!health.is_ready());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stats.frames.load(Ordering::Relaxed),
        0,
        "no relay reading before NATS"
    );
    tokio::task::block_in_place(|| nats.start());
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    eventually(Duration::from_secs(15), || async {
        stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .expect("published once NATS is up");
    eventually(Duration::from_secs(5), || async { health.is_ready() })
        .await
        .expect("ready");
    shutdown.cancel();
    task.await.expect("join").expect("run ok");
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim.truth());
}

/// nats-server killed with SIGKILL (no shutdown, no flush) mid-stream and restarted on the same store: every
/// message JetStream had acked is still there (an ack means the message was written to the store files, in
/// the OS page cache: a process crash cannot lose it), and the shuffler, resuming from its watermark, completes
/// the stream with each event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sigkilled_mid_stream_restarted_on_its_store_loses_nothing() {
    let mut nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 17,
        rate: Some(800.0),
        limit: Some(4_000),
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    let mut cfg = test_config(&nats.url(), &sim.url(), "sigkill");
    cfg.backoff_max_ms = 500;
    let shuffler = Shuffler::new(cfg);
    let stats = shuffler.stats();
    let shutdown = CancellationToken::new();
    let mut task = tokio::spawn(shuffler.run(Health::new(), shutdown.clone()));
    eventually(Duration::from_secs(10), || async {
        stats.published.load(Ordering::Relaxed) >= 1_000
    })
    .await
    .expect("publishing before the kill");
    tokio::task::block_in_place(|| nats.kill());
    let acked_before_kill = stats.published.load(Ordering::Relaxed);
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(2) {
        assert!(
            !task.is_finished(),
            "the shuffler exited while NATS was dead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::block_in_place(|| nats.start());
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let after_restart = stream_len(&js, "FIREHOSE")
        .await
        .expect("stream after restart");
    assert!(
        after_restart >= acked_before_kill,
        "every acked message survived the SIGKILL: {after_restart} stored, {acked_before_kill} acked"
    );
    eventually(Duration::from_secs(30), || async {
        sim.produced() >= 4_000
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .unwrap_or_else(|e| panic!("not caught up after the kill: {e}; {:?}", stats.snapshot()));
    shutdown.cancel();
    let done = tokio::time::timeout(Duration::from_secs(15), &mut task)
        .await
        .expect("stops in time")
        .expect("join")
        .expect("run ok");
    assert_eq!(done.cursor_seq, sim.head_seq(), "{done:?}");
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim.truth());
}
