//! A replicated (R=3) firehose stream in a real 3-node cluster: created by `ensure_stream`,
//! published to, and still accepting publishes after its stream leader is stopped.

use crate::common;

use std::time::Duration;

use fpaas_bus::{Publisher, StreamAction, ensure_stream};
use fpaas_testkit::{NatsCluster, eventually_some};

#[tokio::test]
async fn r3_stream_survives_losing_its_leader() {
    let mut cluster = NatsCluster::start(3);
    cluster.wait_ready().await;
    let js = common::js_with_timeout(&cluster.urls().join(",")).await;

    let mut settings = common::settings("FIREHOSE", "atproto.firehose.>");
    settings.replicas = 3;
    let report = eventually_some(Duration::from_secs(20), || {
        let js = js.clone();
        let settings = settings.clone();
        async move { ensure_stream(&js, &settings).await.ok() }
    })
    .await
    .expect("create R3 stream");
    assert_eq!(report.action, StreamAction::Created);

    let mut publisher = Publisher::new(js.clone(), 128);
    let (stored, _, _) = common::publish_until_acked(
        &mut publisher,
        (0..1_000)
            .map(|i| common::msg("atproto.firehose.t", i))
            .collect(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(stored, 1_000);

    let info = js
        .get_stream("FIREHOSE")
        .await
        .expect("info")
        .cached_info()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("stream has a leader");
    let leader_index: usize = leader
        .trim_start_matches('n')
        .parse()
        .expect("node names are n<i>");
    cluster.stop_node(leader_index);

    let (stored, dup, _) = common::publish_until_acked(
        &mut publisher,
        (1_000..2_000)
            .map(|i| common::msg("atproto.firehose.t", i))
            .collect(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(stored + dup, 1_000);
    assert_eq!(common::stream_messages(&js, "FIREHOSE").await, 2_000);
}

/// Two publishers sending the same message ids at once to an R=3 stream (the HA shuffler pair): a publish
/// whose id the other's copy holds in process (error 10158) is sent again until the stream answers, so no
/// publish fails with that conflict (it would end a shuffler's relay session), and each id is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_of_the_same_ids_both_complete_on_a_replicated_stream() {
    let cluster = tokio::task::block_in_place(|| NatsCluster::start(3));
    cluster.wait_ready().await;
    let urls = cluster.urls().join(",");
    let js = common::js_with_timeout(&urls).await;
    let mut settings = common::settings("FIREHOSE", "atproto.firehose.>");
    settings.replicas = 3;
    eventually_some(Duration::from_secs(20), || {
        let js = js.clone();
        let settings = settings.clone();
        async move { ensure_stream(&js, &settings).await.ok() }
    })
    .await
    .expect("create R3 stream");

    const N: u64 = 3_000;
    // Each racer sends every id until acknowledged; a failure may be a timeout on a loaded machine (sent
    // again), never the in-process conflict.
    let race = |js: async_nats::jetstream::Context| async move {
        let mut publisher = Publisher::new(js, 256);
        let mut acked = Vec::new();
        let mut pending: Vec<u64> = (0..N).collect();
        for _round in 0..10 {
            let mut failed = Vec::new();
            let mut take = |c: fpaas_bus::Completion, failed: &mut Vec<u64>| match c {
                Ok(a) => acked.push(a),
                Err(f) => {
                    let error = f.error.to_string();
                    assert!(!error.contains("in process"), "{}: {error}", f.msg.msg_id);
                    failed.push(f.msg.token);
                }
            };
            for i in pending.drain(..) {
                publisher
                    .publish(common::msg("atproto.firehose.t", i))
                    .await;
                while let Some(c) = publisher.try_next_completion() {
                    take(c, &mut failed);
                }
            }
            for c in common::drain(&mut publisher).await {
                take(c, &mut failed);
            }
            if failed.is_empty() {
                break;
            }
            pending = failed;
        }
        acked
    };
    // Two connections, like two shuffler processes.
    let other = common::js_with_timeout(&urls).await;
    let (a, b) = tokio::join!(tokio::spawn(race(js.clone())), tokio::spawn(race(other)));
    let (a, b) = (a.expect("join"), b.expect("join"));
    assert_eq!(
        a.len() + b.len(),
        2 * N as usize,
        "every publish acknowledged"
    );
    let stored: u64 = a
        .iter()
        .chain(b.iter())
        .map(|a| u64::from(!a.duplicate))
        .sum();
    // (Fewer than N "stored" acks only when a stored publish's ack timed out and its resend was a duplicate.)
    assert!(stored <= N, "{stored} acks said stored for {N} ids");
    assert_eq!(common::stream_messages(&js, "FIREHOSE").await, N);
}
