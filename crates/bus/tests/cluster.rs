//! A replicated (R=3) firehose stream in a real 3-node cluster: created by `ensure_stream`,
//! published to, and still accepting publishes after its stream leader is stopped.

mod common;

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
