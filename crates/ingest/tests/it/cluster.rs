//! A real 3-node nats-server cluster with the stream (and the cursor bucket) at R=3: the node leading the
//! stream is stopped mid-stream for ~5 s and started again, and the shuffler — connected with all three URLs —
//! still lands every deliverable relay event in the stream exactly once (no loss, no duplicate `Nats-Msg-Id`),
//! then shuts down cleanly.

use crate::common;

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
    let info = stream_info(js, stream).await?;
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

/// Stream info with short timeouts (a leaderless stream does not answer), `None` without an answer.
async fn quick_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    let t = Duration::from_millis(400);
    let mut s = tokio::time::timeout(t, js.get_stream(stream))
        .await
        .ok()?
        .ok()?;
    let info = tokio::time::timeout(t, s.info()).await.ok()?.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

/// SIGKILL of the node leading the R=3 stream under load (relay-sim at 800 events/s). nats-server elects a new
/// stream leader only after a follower's election timer fires — 4 to 9 s after the last heartbeat (raft
/// `minElectionTimeout`/`maxElectionTimeout`, not configurable) — so publishing cannot resume before that; what
/// the shuffler controls is how soon after the election it publishes again: asserted ≤ 2.5 s (ack timeout 2 s
/// overlaps the election; probes every ≤ 1 s), and ≤ 12 s after the kill in all. Nothing lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_leader_sigkill_publishing_resumes_right_after_the_election() {
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(3));
    cluster.wait_ready().await;
    let urls = cluster.urls();
    let (sim, _) = Sim::start(SimConfig {
        seed: 22,
        rate: Some(800.0),
        limit: Some(EVENTS * 3),
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    let mut cfg = test_config(&urls.join(","), &sim.url(), "sigkill");
    cfg.stream.replicas = 3;
    cfg.cursor_kv.replicas = 3;
    // Defaults for everything that decides the recovery time (ack and probe timeouts, backoff).
    let defaults = fpaas_ingest::ShufflerConfig::default();
    cfg.publish_timeout_ms = defaults.publish_timeout_ms;
    cfg.backoff_min_ms = defaults.backoff_min_ms;
    cfg.backoff_max_ms = defaults.backoff_max_ms;
    let shuffler = Shuffler::new(cfg);
    let stats = shuffler.stats();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let mut task = tokio::spawn(shuffler.run(health.clone(), shutdown.clone()));
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(3)))
        .connect(urls.clone())
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);
    eventually(Duration::from_secs(20), || async {
        stream_len(&js, "FIREHOSE").await.unwrap_or(0) >= EVENTS / 2
    })
    .await
    .unwrap_or_else(|e| panic!("publishing before the kill: {e}; {:?}", stats.snapshot()));
    let victim = stream_leader(&js, "FIREHOSE").await.unwrap_or(0);
    tokio::task::block_in_place(|| cluster.kill_node(victim));
    let killed = Instant::now();
    // Acks already on their way land within moments; after that the count stands still until publishing resumes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = stats.published.load(Ordering::Relaxed);
    let victim_name = format!("n{victim}");
    let (mut elected, mut resumed) = (None, None);
    while killed.elapsed() < Duration::from_secs(20) && (elected.is_none() || resumed.is_none()) {
        assert!(!task.is_finished(), "the shuffler exited after the kill");
        if resumed.is_none() && stats.published.load(Ordering::Relaxed) > frozen {
            resumed = Some(killed.elapsed());
        }
        if elected.is_none()
            && quick_leader(&js, "FIREHOSE")
                .await
                .is_some_and(|l| l != victim_name)
        {
            elected = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elected = elected.expect("a new stream leader within 20 s");
    let resumed =
        resumed.unwrap_or_else(|| panic!("publishing resumed within 20 s; {:?}", stats.snapshot()));
    eprintln!(
        "SIGKILL n{victim}: new stream leader seen after {:.2} s, publishing resumed after {:.2} s ({:.2} s after the election)",
        elected.as_secs_f64(),
        resumed.as_secs_f64(),
        resumed.as_secs_f64() - elected.as_secs_f64()
    );
    assert!(
        resumed <= elected + Duration::from_millis(2_500),
        "publishing resumed {resumed:?} after the kill, the new leader was seen after {elected:?}"
    );
    assert!(resumed <= Duration::from_secs(12), "{resumed:?}");

    tokio::task::block_in_place(|| cluster.start_node(victim));
    eventually(Duration::from_secs(60), || async {
        sim.produced() >= EVENTS * 3
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
