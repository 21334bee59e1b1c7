//! The whole path on a real 3-node nats-server cluster with everything at R=3 (the stream, the cursor, lease,
//! subscription, progress buckets, the dead letters): relay-sim → the shuffler pair (two instances, as in
//! production) → the firehose stream → a worker → a webhook. While the simulator produces at a steady pace, the
//! node leading the firehose stream is killed with SIGKILL, and later the node leading the worker's lease
//! bucket. Every event of the simulator reaches the receiver, every repeat carries the batch id of its first
//! delivery, delivery resumes (from the kill until an event the relay produced after it arrives: printed,
//! target < 10 s), and each killed node, restarted, catches up with the stream.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fpaas_control::{Subscription, SubscriptionSpec, layout};
use fpaas_sim::{Sim, SimConfig, TruthEvent};
use fpaas_testkit::stream::{stream_info, truth_key};
use fpaas_testkit::{NatsCluster, Reply, WebhookReceiver, eventually, eventually_some};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The node (server names `n0`, `n1`, …) leading `stream`.
async fn leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<usize> {
    let info = stream_info(js, stream).await?;
    info.cluster?.leader?.strip_prefix('n')?.parse().ok()
}

/// Event id → the batch ids it arrived in, from every request the receiver got.
fn arrivals(receiver: &WebhookReceiver) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in receiver.received() {
        let batch = r.header("webhook-id").unwrap_or_default().to_owned();
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        for e in body["events"].as_array().into_iter().flatten() {
            if let Some(id) = e["id"].as_str() {
                out.entry(id.to_owned()).or_default().push(batch.clone());
            }
        }
    }
    out
}

/// A soak run (`FPAAS_SOAK=1 bash scripts/test.sh`, or `--include-ignored`): ~60 s and three servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: a 3-node cluster and two node kills, ~60 s (FPAAS_SOAK=1)"]
async fn delivery_survives_the_loss_of_the_stream_leader_and_of_the_lease_leader() {
    // The worker's warnings help when this fails (RUST_LOG=fpaas_pipeline=debug for more).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(3));
    cluster.wait_ready().await;
    let urls = cluster.urls().join(",");
    let client = fpaas_bus::connect(&urls, "cluster-test")
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            replicas: 3,
            max_bytes: 1 << 30,
            ..Default::default()
        },
    )
    .await
    .expect("R=3 stream");
    let subs = fpaas_bus::ensure_kv_on(
        &client,
        &fpaas_bus::KvSettings {
            replicas: 3,
            ..fpaas_bus::KvSettings::bucket(layout::SUBS_BUCKET)
        },
    )
    .await
    .expect("subs bucket");
    let receiver = WebhookReceiver::start().await;
    receiver.respond_with(|_| Reply::ok());
    let spec: SubscriptionSpec = serde_json::from_value(json!({
        "batching": {"max_events": 50, "max_wait_ms": 50},
        "start": {"at": "retention_start"},
        "delivery": {"type": "webhook", "url": receiver.url("/all"), "timeout_ms": 2000,
                     "retry": {"schedule_ms": [100, 200, 400, 800, 1000, 1000, 1000, 1000]}}
    }))
    .unwrap();
    let sub = Subscription::from_spec("s_cluster".into(), "t_cluster".into(), spec);
    subs.put(
        &layout::sub_key("t_cluster", "s_cluster"),
        Bytes::from(serde_json::to_vec(&sub).unwrap()),
    )
    .await
    .expect("put subscription");

    let cancel = CancellationToken::new();
    let mut cfg = fpaas_pipeline::WorkerConfig {
        nats_url: urls.clone(),
        worker_id: "w_cluster".into(),
        partitions: 4,
        // The shipped lease lifetime (10 s): a lease-bucket election shorter than half of it does not stop the runners.
        lease_ttl_secs: fpaas_pipeline::WorkerConfig::default().lease_ttl_secs,
        replicas: 3,
        metrics_listen: None,
        ..Default::default()
    };
    cfg.webhook_addresses.allow_loopback = true;
    let worker = {
        let (client, cancel) = (client.clone(), cancel.clone());
        tokio::spawn(async move { fpaas_pipeline::run(client, cfg, cancel).await })
    };

    // The relay and the shuffler pair in front of the stream.
    const FRAMES: u64 = 15_000;
    let (sim, _) = Sim::start(SimConfig {
        seed: 77,
        rate: Some(300.0),
        limit: Some(FRAMES),
        ..Default::default()
    })
    .await
    .expect("sim");
    let shufflers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|instance| {
            let cfg = fpaas_ingest::ShufflerConfig {
                relay: sim.url(),
                instance: instance.into(),
                nats_url: urls.clone(),
                stream: fpaas_bus::StreamSettings {
                    replicas: 3,
                    max_bytes: 1 << 30,
                    ..Default::default()
                },
                cursor_kv: fpaas_bus::KvSettings {
                    replicas: 3,
                    ..Default::default()
                },
                cursor_save_interval_ms: 200,
                lease_ttl_ms: 3_000,
                start_cursor: Some(0),
                metrics_listen: None,
                ..Default::default()
            };
            let shuffler = fpaas_ingest::Shuffler::new(cfg);
            tokio::spawn(shuffler.run(fpaas_ops::Health::new(), cancel.clone()))
        })
        .collect();
    // The simulator's events by seq, as the ids the webhook carries (oversize ones are dropped by design).
    let ids_after = |seq: i64| -> Vec<String> {
        sim.truth()
            .iter()
            .filter(|t| matches!(t, TruthEvent::Op { seq: s, .. } if *s > seq))
            .filter_map(truth_key)
            .collect()
    };

    // Kills `node` once delivery is flowing; returns how long until the receiver got a new request.
    let mut recoveries = Vec::new();
    for (round, stream) in [(1, "FIREHOSE"), (2, "KV_fpaas_leases")] {
        eventually(Duration::from_secs(60), || async {
            sim.produced() >= round * 3_000 && receiver.count() > 0
        })
        .await
        .expect("publishing and delivering");
        let victim = eventually_some(Duration::from_secs(10), || leader(&js, stream))
            .await
            .expect("a leader");
        // Recovered = an event the relay produced after the kill has reached the receiver (the shufflers'
        // publishing, the stream's new leader, the worker's reader and leases, and the POST all work again).
        let mark = sim.head_seq().unwrap_or(0);
        let killed = Instant::now();
        tokio::task::block_in_place(|| cluster.kill_node(victim));
        eventually(Duration::from_secs(60), || async {
            let got = arrivals(&receiver);
            ids_after(mark).iter().any(|id| got.contains_key(id))
        })
        .await
        .unwrap_or_else(|e| {
            panic!("delivery resumed after killing {stream}'s leader n{victim}: {e}")
        });
        let recovery = killed.elapsed();
        eprintln!(
            "killed n{victim} (leader of {stream}): an event published after it arrived {recovery:?} later"
        );
        recoveries.push(recovery);
        // The node comes back and catches up with the stream.
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::block_in_place(|| cluster.start_node(victim));
        eventually(Duration::from_secs(60), || async {
            stream_info(&js, "FIREHOSE").await.is_some_and(|i| {
                i.cluster.is_some_and(|c| {
                    c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current && !r.offline)
                })
            })
        })
        .await
        .unwrap_or_else(|e| panic!("n{victim} caught up with the stream: {e}"));
    }
    eventually(Duration::from_secs(120), || async {
        sim.produced() >= FRAMES
    })
    .await
    .expect("the relay produced everything");
    for s in &shufflers {
        assert!(!s.is_finished(), "a shuffler exited");
    }

    // Every event delivered; a repeat only ever under the batch id of its first delivery.
    let want = ids_after(-1);
    let got = eventually_some(Duration::from_secs(60), || async {
        let got = arrivals(&receiver);
        want.iter().all(|id| got.contains_key(id)).then_some(got)
    })
    .await
    .unwrap_or_else(|_| {
        let got = arrivals(&receiver);
        let missing = want.iter().filter(|id| !got.contains_key(*id)).count();
        panic!("{missing} of {} events never delivered", want.len())
    });
    for (id, batches) in &got {
        assert!(
            batches.iter().all(|b| b == &batches[0]),
            "{id} arrived under different batch ids: {batches:?}"
        );
    }
    let repeats: usize = got.values().map(|b| b.len() - 1).sum();
    eprintln!(
        "{} events delivered, {repeats} repeats (same batch ids); recoveries {recoveries:?}",
        got.len()
    );
    for r in &recoveries {
        assert!(
            *r < Duration::from_secs(10),
            "recovery {r:?} (target < 10 s)"
        );
    }
    cancel.cancel();
    let _ = worker.await;
    for s in shufflers {
        s.await.expect("join").expect("the shuffler ran to the end");
    }
}
