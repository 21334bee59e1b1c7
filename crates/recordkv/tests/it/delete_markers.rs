//! Delete markers expire (nats-server per-message TTLs): a marker written by the builder with a TTL
//! leaves the bucket after it, subject and all, while live records stay; with TTL 0 it stays; and a
//! marker the server writes itself on expiry (a bucket with `subject_delete_marker_ttl`, which we
//! never set) reads as a marker without a revision.
//!
//! The TTLs here are seconds, through `RecordKvBuilder::with_marker_ttl`, which skips the check
//! that a configured TTL is at least the firehose retention (`config::tests` cover that check).

use crate::common;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use fpaas_event::{CommitEvent, Event, Kind, Operation};
use fpaas_recordkv::apply::{Change, apply_change};
use fpaas_recordkv::key::RecordKey;
use fpaas_recordkv::store::{Current, EntryState, Kv};
use fpaas_recordkv::value::tid_from_micros;
use fpaas_recordkv::{Outcome, RecordKvBuilder, RecordKvConfig};
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const DRAIN: Duration = Duration::from_secs(30);
const DID: &str = "did:plc:ttlttlttlttlttlttlttlttl";

fn config(bucket: &str, durable: &str) -> RecordKvConfig {
    RecordKvConfig {
        bucket: bucket.into(),
        durable: durable.into(),
        ack_wait_ms: 1_000,
        ..Default::default()
    }
}

/// A commit event of [`DID`] at micro-time `t` (also its rev).
fn commit(t: u64, op: Operation, collection: &str, rkey: &str) -> (Event, bool) {
    let record = (op != Operation::Delete).then(|| match collection {
        LIKE => json!({"$type": LIKE, "createdAt": "2025-06-15T12:00:00Z",
            "subject": {"uri": "at://did:plc:elsewhere/app.bsky.feed.post/1", "cid": "bafyreisubject"}}),
        _ => json!({"$type": POST, "text": "stays", "createdAt": "2025-06-15T12:00:00Z"}),
    });
    let event = Event {
        did: DID.into(),
        time_us: t as i64,
        kind: Kind::Commit,
        seq: (t % 1_000_000) as i64,
        time: "2025-06-15T12:00:00Z".into(),
        commit: Some(CommitEvent {
            rev: tid_from_micros(t, 0),
            operation: op,
            collection: collection.into(),
            rkey: rkey.into(),
            cid: record.as_ref().map(|_| format!("bafyrei{t}")),
            record: record
                .as_ref()
                .map(fpaas_event::model::RecordJson::from_value),
        }),
        identity: None,
        account: None,
        sync: None,
    };
    (event, false)
}

fn key(collection: &str, rkey: &str) -> String {
    RecordKey::new(collection, DID, rkey).encode().unwrap()
}

/// A post that stays, and a like that is created then deleted (unlike).
fn post_like_unlike() -> Vec<(Event, bool)> {
    let t = 1_750_000_000_000_000;
    vec![
        commit(t, Operation::Create, POST, "3lpost"),
        commit(t + 1, Operation::Create, LIKE, "3llike"),
        commit(t + 2, Operation::Delete, LIKE, "3llike"),
    ]
}

async fn subjects(kv: &Kv) -> u64 {
    kv.count(">").await.expect("count subjects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_markers_expire_after_their_ttl_unless_it_is_zero() {
    const TTL: Duration = Duration::from_secs(3);
    let (_server, client) = start().await;
    // Every KV publish is seen here with its headers, at the time it is written (the marker of
    // the TTL bucket may be gone before a read of the bucket could see it).
    let mut writes = client
        .subscribe("$KV.*.app_bsky_feed_like.>")
        .await
        .unwrap();
    publish(&client, &post_like_unlike()).await;

    let shutdown = CancellationToken::new();
    let expiring =
        RecordKvBuilder::with_marker_ttl(&client, config("record_ttl", "record-kv-ttl"), Some(TTL))
            .await
            .expect("builder with a TTL");
    assert_eq!(expiring.kv().delete_marker_ttl(), Some(TTL));
    let forever = RecordKvBuilder::new(
        &client,
        RecordKvConfig {
            delete_marker_ttl_secs: 0,
            ..config("record_forever", "record-kv-forever")
        },
    )
    .await
    .expect("builder with TTL 0");
    assert_eq!(forever.kv().delete_marker_ttl(), None);
    let builders = [
        tokio::spawn(expiring.run(shutdown.clone())),
        tokio::spawn(forever.run(shutdown.clone())),
    ];

    // The like's create and its marker, in each bucket; only the TTL bucket's marker has Nats-TTL.
    let mut marker_written = None;
    for _ in 0..4 {
        let message = tokio::time::timeout(DRAIN, writes.next())
            .await
            .expect("KV write seen")
            .expect("subscription open");
        let headers = message.headers.clone().unwrap_or_default();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        let ttl = header("Nats-TTL");
        match (message.subject.as_str(), header("KV-Operation")) {
            (s, Some(op)) if s.starts_with("$KV.record_ttl.") => {
                assert_eq!(op, "DEL");
                assert_eq!(ttl.as_deref(), Some("3"), "the marker carries the TTL");
                marker_written = Some(Instant::now());
            }
            (_, Some(op)) => {
                assert_eq!(op, "DEL");
                assert_eq!(ttl, None, "TTL 0: no Nats-TTL header");
            }
            (_, None) => assert_eq!(ttl, None, "values never expire"),
        }
    }
    let marker_written = marker_written.expect("TTL bucket's marker seen");
    drained(&client, "FIREHOSE", "record-kv-ttl", DRAIN).await;
    drained(&client, "FIREHOSE", "record-kv-forever", DRAIN).await;

    let ttl_kv = Kv::open(&client, "record_ttl").await.unwrap();
    let forever_kv = Kv::open(&client, "record_forever").await.unwrap();
    let like = key(LIKE, "3llike");
    let post = key(POST, "3lpost");
    // The marker leaves the TTL bucket: its subject is gone, not replaced by anything.
    fpaas_testkit::eventually(Duration::from_secs(30), || async {
        subjects(&ttl_kv).await == 1
    })
    .await
    .expect("the marker expired");
    let gone_after = marker_written.elapsed();
    assert!(
        gone_after >= TTL - Duration::from_millis(500),
        "the marker went after {gone_after:?}, before its TTL of {TTL:?}"
    );
    assert_eq!(ttl_kv.current(&like).await.unwrap(), None);
    assert_eq!(ttl_kv.usage().await.unwrap().0, 1, "one message left");
    assert!(matches!(
        ttl_kv.current(&post).await.unwrap(),
        Some(Current {
            state: EntryState::Value(_),
            ..
        })
    ));
    // The TTL-0 bucket, written at the same time, still has both subjects and the marker.
    assert_eq!(subjects(&forever_kv).await, 2);
    assert!(matches!(
        forever_kv.current(&like).await.unwrap(),
        Some(Current {
            state: EntryState::Deleted { rev: Some(_) },
            ..
        })
    ));
    assert!(matches!(
        forever_kv.current(&post).await.unwrap(),
        Some(Current {
            state: EntryState::Value(_),
            ..
        })
    ));

    shutdown.cancel();
    for builder in builders {
        let stats = builder.await.unwrap().unwrap();
        assert_eq!(stats.outcome(Outcome::Deleted), 1, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_written_by_the_server_on_expiry_reads_as_a_marker_without_rev() {
    let (_server, client) = start().await;
    // Someone created the bucket with server delete markers (`subject_delete_marker_ttl`); the
    // builder keeps that setting (it only ever turns `allow_msg_ttl` on).
    let js = jetstream::new(client.clone());
    js.create_key_value(jetstream::kv::Config {
        bucket: "record".into(),
        limit_markers: Some(Duration::from_secs(60)),
        ..Default::default()
    })
    .await
    .expect("bucket with server markers");
    let builder = RecordKvBuilder::with_marker_ttl(
        &client,
        config("record", "record-kv"),
        Some(Duration::from_secs(1)),
    )
    .await
    .expect("builder");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(builder.run(shutdown.clone()));
    let events = post_like_unlike();
    publish(&client, &events).await;
    drained(&client, "FIREHOSE", "record-kv", DRAIN).await;

    let kv = Kv::open(&client, "record").await.unwrap();
    let like = key(LIKE, "3llike");
    // Our marker (with a rev) expires and the server's own marker (no rev) takes its place.
    let current = fpaas_testkit::eventually_some(Duration::from_secs(30), || async {
        match kv.current(&like).await.ok()? {
            Some(
                current @ Current {
                    state: EntryState::Deleted { rev: None },
                    ..
                },
            ) => Some(current),
            _ => None,
        }
    })
    .await
    .expect("the server's marker replaced ours");
    let raw = js
        .get_stream("KV_record")
        .await
        .unwrap()
        .direct_get(current.revision)
        .await
        .unwrap();
    assert_eq!(
        raw.headers
            .get("Nats-Marker-Reason")
            .map(|v| v.as_str().to_string())
            .as_deref(),
        Some("MaxAge"),
        "a server marker: {:?}",
        raw.headers
    );
    // Snapshots and watches see a deleted key, not an empty value.
    let (values, deleted) = kv_content(&kv).await;
    assert!(deleted.contains(&like) && !values.contains_key(&like));
    // It counts as "nothing here": a replayed older create gets through (the reason the marker
    // TTL must outlive every older event), and a repeated delete is `already_deleted`.
    let (create, _) = &events[1];
    let old_rev = create.commit.as_ref().unwrap().rev.clone();
    let delete = Change::Delete {
        rev: events[2].0.commit.as_ref().unwrap().rev.clone(),
    };
    assert_eq!(
        apply_change(&kv, &like, &delete).await.unwrap(),
        Outcome::AlreadyDeleted
    );
    let put = Change::Put {
        value: serde_json::to_vec(&json!({ "rev": old_rev }))
            .unwrap()
            .into(),
        rev: old_rev,
        create: true,
    };
    assert_eq!(
        apply_change(&kv, &like, &put).await.unwrap(),
        Outcome::Written
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
