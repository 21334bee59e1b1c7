//! The record KV and the like index fed by the relay simulator's generator: frames are decoded and
//! normalized exactly as the shuffler does (fpaas-proto + fpaas-event), published into the FIREHOSE stream,
//! and the resulting bucket and index must equal the model of the same events.

use crate::common;

use std::time::Duration;

use common::*;
use fpaas_recordkv::store::Kv;
use fpaas_recordkv::{LikeIndex, LikeIndexConfig, LikeIndexer, RecordKvBuilder, RecordKvConfig};
use fpaas_sim::generate::{FaultConfig, Generator};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sim_events_build_a_kv_and_index_equal_to_the_model() {
    let (_server, client) = start().await;
    let mut generator = Generator::new(42, 300, 1, FaultConfig::default()).with_rare_boost(50);
    let mut events = Vec::new();
    for _ in 0..3_000 {
        let generated = generator.next_event().expect("generate");
        let frame = generated.frames.last().expect("the event frame");
        let decoded = fpaas_proto::decode_frame(frame).expect("sim frames decode");
        let normalized = fpaas_event::normalize(&decoded);
        assert!(normalized.dropped.is_empty(), "{:?}", normalized.dropped);
        events.extend(normalized.events.into_iter().map(|e| (e, false)));
    }
    let deletes = events
        .iter()
        .filter(|(e, _)| e.operation() == Some(fpaas_event::Operation::Delete))
        .count();
    assert!(deletes > 50, "the mix has deletes/unlikes ({deletes})");
    publish(&client, &events).await;
    let mut model = Model::default();
    model.apply(&events, None, None);

    let shutdown = CancellationToken::new();
    let config = RecordKvConfig {
        ack_wait_ms: 1_000,
        ..Default::default()
    };
    let b = tokio::spawn(
        RecordKvBuilder::new(&client, config)
            .await
            .unwrap()
            .run(shutdown.clone()),
    );
    let index_config = LikeIndexConfig {
        ack_wait_ms: 1_000,
        ..Default::default()
    };
    let i = tokio::spawn(
        LikeIndexer::new(&client, index_config)
            .await
            .unwrap()
            .run(shutdown.clone()),
    );
    drained(&client, "FIREHOSE", "record-kv", Duration::from_secs(30)).await;
    drained(
        &client,
        "KV_record",
        "like-indexer",
        Duration::from_secs(30),
    )
    .await;

    let kv = Kv::open(&client, "record").await.unwrap();
    let (values, deleted) = kv_content(&kv).await;
    assert_eq!(values.len(), model.values().len(), "record count");
    assert!(
        values == model.values(),
        "record values differ from the model"
    );
    assert!(
        deleted == model.deleted_keys(),
        "delete markers differ from the model"
    );

    let index = LikeIndex::open(&client, "likes").await.unwrap();
    let by_subject = model.likes_by_subject();
    assert!(by_subject.len() > 20);
    for (subject, expected) in &by_subject {
        let got: std::collections::BTreeSet<(String, String)> = index
            .likers(subject)
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.liker, l.rkey))
            .collect();
        assert_eq!(&got, expected, "likers of {subject}");
    }
    let likes = Kv::open(&client, "likes").await.unwrap();
    let live: usize = by_subject.values().map(|s| s.len()).sum();
    assert_eq!(likes.count("s.>").await.unwrap(), live as u64);
    assert_eq!(likes.count("a.>").await.unwrap(), live as u64);
    shutdown.cancel();
    b.await.unwrap().unwrap();
    i.await.unwrap().unwrap();
}
