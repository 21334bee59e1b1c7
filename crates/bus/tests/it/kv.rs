//! `ensure_kv` and `KvBucket` against a real nats-server: compare-and-set, tagged delete markers,
//! keys, persistence across a server restart, per-message TTLs.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use fpaas_bus::{BusErrorKind, KvEntry, KvSettings, KvState, KvWrite, ensure_kv};
use fpaas_testkit::{NatsServer, eventually_some};

#[tokio::test]
async fn compare_and_set_and_markers_survive_a_server_restart() {
    let mut server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    let bucket = ensure_kv(&js, &KvSettings::bucket("cas"))
        .await
        .expect("open bucket")
        .with_markers(Some("Test-Tag"), None);
    let v = |s: &'static str| Bytes::from_static(s.as_bytes());

    assert_eq!(bucket.entry("a").await.expect("entry"), None);
    let KvWrite::Written(r1) = bucket.create("a", v("1")).await.expect("create") else {
        panic!("first create must write");
    };
    assert_eq!(
        bucket.create("a", v("x")).await.expect("create"),
        KvWrite::Conflict
    );
    assert_eq!(
        bucket.update("a", v("x"), r1 + 100).await.expect("update"),
        KvWrite::Conflict
    );
    let KvWrite::Written(r2) = bucket.update("a", v("2"), r1).await.expect("update") else {
        panic!("update at the revision read must write");
    };
    assert_eq!(bucket.get("a").await.expect("get"), Some(v("2")));
    bucket.put("b", v("3")).await.expect("put");
    assert_eq!(
        bucket
            .delete("a", Some(r1), Some("t1"))
            .await
            .expect("delete"),
        KvWrite::Conflict,
        "a stale revision does not delete"
    );
    let KvWrite::Written(r3) = bucket
        .delete("a", Some(r2), Some("t1"))
        .await
        .expect("delete")
    else {
        panic!("delete at the revision read must write");
    };
    assert_eq!(bucket.keys().await.expect("keys"), vec!["b".to_owned()]);

    server.stop();
    server.start();

    let entry = eventually_some(Duration::from_secs(15), || {
        let bucket = bucket.clone();
        async move { bucket.entry("a").await.ok() }
    })
    .await
    .expect("entry after restart");
    assert_eq!(
        entry,
        Some(KvEntry {
            key: "a".to_owned(),
            revision: r3,
            state: KvState::Deleted {
                tag: Some("t1".to_owned())
            },
        })
    );
    // A create over a delete marker writes.
    assert!(matches!(
        bucket.create("a", v("4")).await.expect("create"),
        KvWrite::Written(_)
    ));
    assert_eq!(bucket.get("b").await.expect("get"), Some(v("3")));
}

#[tokio::test]
async fn ensure_kv_is_idempotent_and_validates() {
    let server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    let settings = KvSettings {
        history: 5,
        ..KvSettings::bucket("records")
    };
    let first = ensure_kv(&js, &settings).await.expect("create");
    first.put("a", Bytes::from_static(b"1")).await.expect("put");
    let second = ensure_kv(&js, &settings).await.expect("idempotent");
    assert_eq!(
        second.get("a").await.expect("get").as_deref(),
        Some(&b"1"[..])
    );
    let config = stream_config(&js, "KV_records").await;
    assert_eq!(config.max_messages_per_subject, 5);

    let err = ensure_kv(&js, &KvSettings::bucket("no.dots"))
        .await
        .expect_err("invalid bucket");
    assert_eq!(err.kind(), BusErrorKind::StreamConfig);
}

/// Per-message TTLs on nats-server 2.15.1: `allow_msg_ttl` can be turned on for a bucket created
/// without it (data and history kept), is never turned off again by a later `ensure_kv` without
/// it, and an entry published with `Nats-TTL` then disappears (no server-written marker).
#[tokio::test]
async fn ensure_kv_turns_message_ttls_on_for_an_existing_bucket_and_keeps_them() {
    let server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    let plain = KvSettings {
        history: 3,
        ..KvSettings::bucket("ttl")
    };
    let store = ensure_kv(&js, &plain).await.expect("create without TTLs");
    assert!(!stream_config(&js, "KV_ttl").await.allow_message_ttl);
    store
        .put("kept", Bytes::from_static(b"1"))
        .await
        .expect("put");

    let with_ttl = KvSettings {
        allow_msg_ttl: true,
        ..plain.clone()
    };
    ensure_kv(&js, &with_ttl).await.expect("turn TTLs on");
    let config = &stream_config(&js, "KV_ttl").await;
    assert!(config.allow_message_ttl);
    assert_eq!(config.subject_delete_marker_ttl, None, "no server markers");
    assert_eq!(config.max_messages_per_subject, 3, "history kept");
    ensure_kv(&js, &with_ttl).await.expect("idempotent");
    // Without the flag the bucket keeps its TTLs (turning them off would be refused).
    let store = ensure_kv(&js, &plain).await.expect("keeps TTLs");
    assert!(stream_config(&js, "KV_ttl").await.allow_message_ttl);
    assert_eq!(
        store.get("kept").await.expect("get").as_deref(),
        Some(&b"1"[..])
    );

    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_TTL, "1");
    js.publish_with_headers("$KV.ttl.brief", headers, Bytes::from_static(b"x"))
        .await
        .expect("publish")
        .await
        .expect("ack");
    let gone = eventually_some(Duration::from_secs(10), || async {
        let info = js.get_stream("KV_ttl").await.ok()?;
        (info.cached_info().state.messages == 1).then_some(())
    })
    .await;
    assert!(gone.is_ok(), "the TTL entry did not expire");
    let last = store.entry("brief").await;
    assert!(
        matches!(last, Ok(None)),
        "nothing left on the expired subject: {last:?}"
    );

    // A new bucket gets them right away.
    ensure_kv(
        &js,
        &KvSettings {
            allow_msg_ttl: true,
            ..KvSettings::bucket("fresh")
        },
    )
    .await
    .expect("create with TTLs");
    assert!(stream_config(&js, "KV_fresh").await.allow_message_ttl);
}

async fn stream_config(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> async_nats::jetstream::stream::Config {
    let stream = js.get_stream(stream).await.expect("stream");
    stream.cached_info().config.clone()
}
