//! A real 3-node nats-server cluster with the stream (and the cursor bucket) at R=3: the node leading the
//! stream is stopped mid-stream for ~5 s and started again, and the shuffler — connected with all three URLs —
//! still lands every deliverable relay event in the stream exactly once (no loss, no duplicate `Nats-Msg-Id`),
//! then shuts down cleanly.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use fpaas_ingest::Shuffler;
use fpaas_ops::Health;
use fpaas_sim::{Sim, SimConfig};
use fpaas_testkit::{NatsCluster, eventually};
use tokio_util::sync::CancellationToken;

const EVENTS: u64 = 4_000;

/// The index of the node leading `stream` (server names are `n0`, `n1`, …), if the cluster answers.
async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<usize> {
    let info = common::stream_info(js, stream).await?;
    let leader = info.cluster.as_ref()?.leader.as_ref()?;
    leader.strip_prefix('n')?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_survives_a_node_loss_exactly_once() {
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(3));
    cluster.wait_ready().await;
    let urls = cluster.urls();

    let (sim, _) = Sim::start(SimConfig {
        seed: 21,
        rate: Some(800.0),
        limit: Some(EVENTS),
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    let mut cfg = test_config(&urls.join(","), &sim.url(), "cluster");
    cfg.stream.replicas = 3;
    cfg.cursor_kv.replicas = 3;
    cfg.publish_timeout_ms = 2_000;
    cfg.backoff_max_ms = 1_000;
    let shuffler = Shuffler::new(cfg);
    let stats = shuffler.stats();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let mut task = tokio::spawn(shuffler.run(health.clone(), shutdown.clone()));

    // A client for the checks, connected to every node so that it survives the loss of any one.
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(3)))
        .connect(urls.clone())
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);

    // About a third of the events in the stream: the node loss lands mid-stream.
    eventually(Duration::from_secs(15), || async {
        stream_len(&js, "FIREHOSE").await.unwrap_or(0) >= EVENTS / 3
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "publishing before the node loss: {e}; {:?}",
            stats.snapshot()
        )
    });
    let victim = stream_leader(&js, "FIREHOSE").await.unwrap_or(0);
    let published_before = stats.published.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| cluster.stop_node(victim));
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(5) {
        assert!(
            !task.is_finished(),
            "the shuffler exited while a node was down"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let published_during = stats.published.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| cluster.start_node(victim));

    eventually(Duration::from_secs(60), || async {
        sim.produced() >= EVENTS
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "not caught up after the node loss (stopped n{victim}): {e}; {:?}",
            stats.snapshot()
        )
    });
    eventually(Duration::from_secs(10), || async { health.is_ready() })
        .await
        .unwrap_or_else(|e| panic!("ready again: {e}; {:?}", health.not_ready_reasons()));

    assert!(!task.is_finished());
    shutdown.cancel();
    let done = tokio::time::timeout(Duration::from_secs(15), &mut task)
        .await
        .expect("stops in time")
        .expect("join")
        .expect("run ok");
    assert_eq!(done.cursor_seq, sim.head_seq(), "{done:?}");
    eprintln!(
        "stopped n{victim} for 5 s; published {published_before} before, {published_during} by its restart; {:?}",
        stats.snapshot()
    );
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim.truth());
}
