//! Subscription delivery on a real 3-node nats-server cluster with everything at R=3 (the stream, the
//! subscriptions, progress and lease buckets, the dead letters): events are published at a steady pace while
//! the node leading the firehose stream is killed with SIGKILL, and later the node leading the worker's lease
//! bucket. Every event reaches the receiver, every repeat carries the batch id of its first delivery, delivery
//! resumes (from the kill until an event published after it arrives; printed, bounded at 30 s), and a
//! restarted node catches up with the stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fpaas_control::{Subscription, SubscriptionSpec, layout};
use fpaas_testkit::stream::{corpus_events, stream_info};
use fpaas_testkit::{NatsCluster, Reply, WebhookReceiver, eventually, eventually_some};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The node (server names `n0`, `n1`, …) leading `stream`.
async fn leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<usize> {
    let info = stream_info(js, stream).await?;
    info.cluster?.leader?.strip_prefix('n')?.parse().ok()
}

/// Publishes `event` until JetStream acknowledges it (the dedup id makes a retry harmless).
async fn publish(js: &async_nats::jetstream::Context, event: &fpaas_event::Event) {
    let wire = fpaas_event::WireMessage::from_event(event);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(fpaas_event::HEADER_MSG_ID, wire.msg_id.as_str());
        for (name, value) in &wire.headers {
            headers.insert(*name, value.as_str());
        }
        let attempt = async {
            js.publish_with_headers(wire.subject.clone(), headers, wire.payload.clone().into())
                .await
                .ok()?
                .await
                .ok()
        };
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// A soak run (`FPAAS_SOAK=1 bash scripts/test.sh`, or `--include-ignored`): ~45 s and three servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: a 3-node cluster and two node kills, ~45 s (FPAAS_SOAK=1)"]
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
        lease_ttl_secs: 2,
        replicas: 3,
        metrics_listen: None,
        ..Default::default()
    };
    cfg.webhook_addresses.allow_loopback = true;
    let worker = {
        let (client, cancel) = (client.clone(), cancel.clone());
        tokio::spawn(async move { fpaas_pipeline::run(client, cfg, cancel).await })
    };

    // The publisher: 25 events every 50 ms (~500/s), each retried until acknowledged, until told to stop.
    let events = Arc::new(corpus_events(20_000));
    let published = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (js, events, published, done) =
            (js.clone(), events.clone(), published.clone(), done.clone());
        tokio::spawn(async move {
            for chunk in events.chunks(25) {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                for e in chunk {
                    publish(&js, e).await;
                    published.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Kills `node` once delivery is flowing; returns how long until the receiver got a new request.
    let mut recoveries = Vec::new();
    for (round, stream) in [(1, "FIREHOSE"), (2, "KV_fpaas_leases")] {
        eventually(Duration::from_secs(60), || async {
            published.load(Ordering::Relaxed) >= round * 1_000 && receiver.count() > 0
        })
        .await
        .expect("publishing and delivering");
        let victim = eventually_some(Duration::from_secs(10), || leader(&js, stream))
            .await
            .expect("a leader");
        // Recovered = an event published after the kill has reached the receiver (publishing, the stream's
        // new leader, the worker's reader and leases, and the POST all work again).
        let mark = published.load(Ordering::Relaxed);
        let killed = Instant::now();
        tokio::task::block_in_place(|| cluster.kill_node(victim));
        let after: Vec<String> = events[(mark + 1).min(events.len())..]
            .iter()
            .map(|e| fpaas_event::WireMessage::from_event(e).msg_id)
            .collect();
        eventually(Duration::from_secs(60), || async {
            let got = arrivals(&receiver);
            after.iter().any(|id| got.contains_key(id))
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
    // A little more after the last recovery, then stop publishing.
    let stop_at = published.load(Ordering::Relaxed) + 500;
    eventually(Duration::from_secs(60), || async {
        published.load(Ordering::Relaxed) >= stop_at
    })
    .await
    .expect("publishing after the recoveries");
    done.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let published = published.load(Ordering::Relaxed);

    // Every event delivered; a repeat only ever under the batch id of its first delivery.
    let want: Vec<String> = events[..published]
        .iter()
        .map(|e| fpaas_event::WireMessage::from_event(e).msg_id)
        .collect();
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
}
