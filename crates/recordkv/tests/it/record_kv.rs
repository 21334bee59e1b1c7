//! The record KV builder and the like indexer against a real nats-server: the KV equals a model of
//! the same events, the like index equals a recount, both survive being killed mid-stream, filters
//! keep only what is asked, and a collection can be watched from the beginning then live.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use fpaas_recordkv::store::{EntryState, Kv};
use fpaas_recordkv::{LikeIndex, LikeIndexConfig, LikeIndexer, RecordKvBuilder, RecordKvConfig};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

const DRAIN: Duration = Duration::from_secs(30);

fn kv_config() -> RecordKvConfig {
    RecordKvConfig {
        batch_size: 100,
        concurrency: 32,
        ack_wait_ms: 1_000,
        ..Default::default()
    }
}

fn index_config() -> LikeIndexConfig {
    LikeIndexConfig {
        batch_size: 100,
        concurrency: 32,
        ack_wait_ms: 1_000,
        ..Default::default()
    }
}

/// Compares the record KV with the model: same values, same delete markers.
async fn assert_kv_matches(client: &async_nats::Client, model: &Model) {
    let kv = Kv::open(client, "record")
        .await
        .expect("open record bucket");
    let (values, deleted) = kv_content(&kv).await;
    let expected = model.values();
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !values.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = values
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (key, value) in &expected {
        assert_eq!(&values[key], value, "value of {key}");
    }
    let want = model.deleted_keys();
    let missing: Vec<_> = want.difference(&deleted).take(5).collect();
    let extra: Vec<_> = deleted.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "delete markers: {} in KV, {} in model; missing {missing:?}, extra {extra:?}",
        deleted.len(),
        want.len()
    );
}

/// Compares the like index with a recount of the model's live likes.
async fn assert_index_matches(client: &async_nats::Client, model: &Model) {
    let index = LikeIndex::open(client, "likes").await.expect("open index");
    let by_subject = model.likes_by_subject();
    assert!(by_subject.len() > 3, "too few liked subjects to be a test");
    assert!(
        by_subject.values().any(|s| s.len() > 3),
        "no popular subject"
    );
    for (subject, expected) in &by_subject {
        let likers: BTreeSet<(String, String)> = index
            .likers(subject)
            .await
            .expect("likers")
            .into_iter()
            .map(|l| (l.liker, l.rkey))
            .collect();
        assert_eq!(&likers, expected, "likers of {subject}");
        assert_eq!(
            index.count(subject).await.expect("count"),
            expected.len() as u64
        );
    }
    let by_actor = model.likes_by_actor();
    for did in model_dids(model) {
        let got: BTreeSet<(String, String)> = index
            .likes_by(&did)
            .await
            .expect("likes_by")
            .into_iter()
            .map(|l| (l.rkey, l.subject))
            .collect();
        assert_eq!(
            got,
            by_actor.get(&did).cloned().unwrap_or_default(),
            "likes by {did}"
        );
    }
    // No leftovers: the index holds exactly two keys per live like.
    let kv = Kv::open(client, "likes").await.expect("open likes");
    let live: usize = by_subject.values().map(BTreeSet::len).sum();
    assert_eq!(kv.count("s.>").await.unwrap(), live as u64, "s. keys");
    assert_eq!(kv.count("a.>").await.unwrap(), live as u64, "a. keys");
}

fn model_dids(model: &Model) -> BTreeSet<String> {
    model
        .entries
        .keys()
        .filter_map(|k| fpaas_recordkv::RecordKey::decode(k).ok())
        .map(|k| k.did)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_like_index_equal_the_model_of_the_events() {
    let (_server, client) = start().await;
    let mut generator = Gen::new(7, 24);
    let events = generator.events(3_000);
    let count =
        |pred: &dyn Fn(&fpaas_event::Event) -> bool| events.iter().filter(|(e, _)| pred(e)).count();
    // The mix is what the test claims to cover.
    assert!(count(&|e| e.operation() == Some(fpaas_event::Operation::Update)) > 20);
    assert!(
        count(&|e| {
            e.commit.as_ref().is_some_and(|c| {
                c.collection == LIKE && c.operation == fpaas_event::Operation::Delete
            })
        }) > 100
    );
    assert!(
        count(&|e| e
            .account
            .as_ref()
            .is_some_and(|a| a.status.as_deref() == Some("deleted")))
            >= 1
    );
    assert!(events.iter().filter(|(_, replay)| *replay).count() > 20);
    publish(&client, &events).await;
    let mut model = Model::default();
    model.apply(&events, None, None);

    let shutdown = CancellationToken::new();
    let builder = RecordKvBuilder::new(&client, kv_config())
        .await
        .expect("builder");
    let b = tokio::spawn(builder.run(shutdown.clone()));
    let indexer = LikeIndexer::new(&client, index_config())
        .await
        .expect("indexer");
    let i = tokio::spawn(indexer.run(shutdown.clone()));
    drained(&client, "FIREHOSE", "record-kv", DRAIN).await;
    assert_kv_matches(&client, &model).await;
    drained(&client, "KV_record", "like-indexer", DRAIN).await;
    assert_index_matches(&client, &model).await;

    // Live: more events after the catch-up go through the same path.
    let more = generator.events(500);
    publish(&client, &more).await;
    model.apply(&more, None, None);
    drained(&client, "FIREHOSE", "record-kv", DRAIN).await;
    assert_kv_matches(&client, &model).await;
    drained(&client, "KV_record", "like-indexer", DRAIN).await;
    assert_index_matches(&client, &model).await;

    shutdown.cancel();
    let stats = b.await.unwrap().unwrap();
    assert!(
        stats.account_deletions >= 1 && stats.account_records_deleted > 0,
        "{stats:?}"
    );
    assert!(stats.syncs > 0, "{stats:?}");
    assert!(
        stats.outcome(fpaas_recordkv::Outcome::Stale)
            + stats.outcome(fpaas_recordkv::Outcome::Duplicate)
            > 0,
        "{stats:?}"
    );
    let istats = i.await.unwrap().unwrap();
    assert!(istats.removed > 50, "{istats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_builder_and_indexer_mid_stream_gives_the_same_result() {
    let (server, client) = start().await;
    let mut generator = Gen::new(11, 20);
    let events = generator.events(4_000);
    publish(&client, &events).await;
    let mut model = Model::default();
    model.apply(&events, None, None);
    let total = events.len() as u64;

    // Kill both several times at different points (abort = the task stops at whatever await it is
    // in, with unacked messages outstanding; the connection is dropped too).
    for round in 0..3u64 {
        // A separate connection per incarnation, so a kill also drops its subscriptions.
        let c = connect(&server).await;
        let builder = RecordKvBuilder::new(&c, kv_config())
            .await
            .expect("builder");
        let indexer = LikeIndexer::new(&c, index_config()).await.expect("indexer");
        let shutdown = CancellationToken::new();
        let b = tokio::spawn(builder.run(shutdown.clone()));
        let i = tokio::spawn(indexer.run(shutdown.clone()));
        let before = backlog(&client, "FIREHOSE", "record-kv").await.min(total);
        let target = before.saturating_sub(total / 5 + round * 7);
        fpaas_testkit::eventually(DRAIN, || async {
            backlog(&client, "FIREHOSE", "record-kv").await <= target
        })
        .await
        .expect("builder made progress");
        b.abort();
        i.abort();
        let _ = b.await;
        let _ = i.await;
        drop(c);
    }
    // Restart and let it finish.
    let shutdown = CancellationToken::new();
    let b = tokio::spawn(
        RecordKvBuilder::new(&client, kv_config())
            .await
            .unwrap()
            .run(shutdown.clone()),
    );
    let i = tokio::spawn(
        LikeIndexer::new(&client, index_config())
            .await
            .unwrap()
            .run(shutdown.clone()),
    );
    drained(&client, "FIREHOSE", "record-kv", DRAIN).await;
    assert_kv_matches(&client, &model).await;
    drained(&client, "KV_record", "like-indexer", DRAIN).await;
    assert_index_matches(&client, &model).await;
    shutdown.cancel();
    b.await.unwrap().unwrap();
    i.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_and_did_filters_keep_only_what_is_asked() {
    let (_server, client) = start().await;
    let mut generator = Gen::new(3, 12);
    let events = generator.events(1_500);
    publish(&client, &events).await;
    let dids: Vec<String> = generator.dids[..4].to_vec();
    let config = RecordKvConfig {
        collections: vec![LIKE.into(), "app.bsky.actor.*".into()],
        dids: dids.clone(),
        ..kv_config()
    };
    let shutdown = CancellationToken::new();
    let b = tokio::spawn(
        RecordKvBuilder::new(&client, config)
            .await
            .unwrap()
            .run(shutdown.clone()),
    );
    drained(&client, "FIREHOSE", "record-kv", DRAIN).await;
    let mut model = Model::default();
    model.apply(&events, Some(&[LIKE, PROFILE]), Some(&dids));
    assert!(model.values().len() > 20, "filtered model too small");
    assert_kv_matches(&client, &model).await;
    shutdown.cancel();
    let stats = b.await.unwrap().unwrap();
    assert!(
        stats.skipped.get("did_filtered").copied().unwrap_or(0) > 100,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_collection_can_be_watched_from_the_beginning_then_live() {
    let (_server, client) = start().await;
    let mut generator = Gen::new(5, 10);
    let events = generator.events(800);
    publish(&client, &events).await;
    let shutdown = CancellationToken::new();
    let b = tokio::spawn(
        RecordKvBuilder::new(&client, kv_config())
            .await
            .unwrap()
            .run(shutdown.clone()),
    );
    drained(&client, "FIREHOSE", "record-kv", DRAIN).await;
    let mut model = Model::default();
    model.apply(&events, None, None);

    let kv = Kv::open(&client, "record").await.unwrap();
    let pattern = fpaas_recordkv::key::collection_pattern(LIKE).unwrap();
    let mut watch = Box::pin(kv.watch(&pattern).await.unwrap());
    // Initial values: every like key of the model (values and markers), nothing else.
    let expected: BTreeMap<String, bool> = model
        .entries
        .iter()
        .filter(|(k, _)| k.starts_with("app_bsky_feed_like."))
        .map(|(k, e)| (k.clone(), matches!(e, ModelEntry::Value(_))))
        .collect();
    let mut seen = BTreeMap::new();
    while seen.len() < expected.len() {
        let (key, state, _) = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("initial values arrive")
            .expect("watch open")
            .expect("entry");
        seen.insert(key, matches!(state, EntryState::Value(_)));
    }
    assert_eq!(seen, expected);
    // Live: one new like and one post arrive; only the like is seen.
    let mut live = Vec::new();
    while live
        .iter()
        .filter(|(e, _): &&(fpaas_event::Event, bool)| {
            e.commit.as_ref().is_some_and(|c| {
                c.collection == LIKE && c.operation == fpaas_event::Operation::Create
            })
        })
        .count()
        == 0
    {
        live.push(generator.step());
    }
    publish(&client, &live).await;
    model.apply(&live, None, None);
    let new_like = live
        .iter()
        .rev()
        .find_map(|(e, _)| {
            e.commit
                .as_ref()
                .filter(|c| c.collection == LIKE && c.operation == fpaas_event::Operation::Create)
                .map(|c| {
                    fpaas_recordkv::RecordKey::new(LIKE, &e.did, &c.rkey)
                        .encode()
                        .unwrap()
                })
        })
        .unwrap();
    loop {
        let (key, state, current) = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("live change arrives")
            .expect("watch open")
            .expect("entry");
        assert!(key.starts_with("app_bsky_feed_like."), "{key}");
        assert!(current);
        if key == new_like {
            assert!(matches!(state, EntryState::Value(_)));
            break;
        }
    }
    shutdown.cancel();
    b.await.unwrap().unwrap();
}
