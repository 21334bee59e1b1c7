//! `CursorStore` and `ensure_kv` against a real nats-server: get/put, key validation and
//! persistence across a server restart.

mod common;

use std::time::Duration;

use fpaas_bus::{BusErrorKind, CursorStore, KvSettings, ensure_kv};
use fpaas_testkit::{NatsServer, eventually_some};

#[tokio::test]
async fn cursor_survives_a_server_restart() {
    let mut server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    let cursors = CursorStore::open(&js, &KvSettings::default())
        .await
        .expect("open cursor store");

    assert_eq!(cursors.get("shuffler-0").await.expect("get"), None);
    cursors.put("shuffler-0", 41).await.expect("put");
    cursors.put("shuffler-0", 42).await.expect("put");
    cursors.put("shuffler-1", -1).await.expect("put");
    assert_eq!(cursors.get("shuffler-0").await.expect("get"), Some(42));

    let err = cursors
        .put("did:plc:abc", 1)
        .await
        .expect_err("invalid key");
    assert_eq!(err.kind(), BusErrorKind::InvalidKey);
    let err = cursors.get(".hidden").await.expect_err("invalid key");
    assert_eq!(err.kind(), BusErrorKind::InvalidKey);

    server.stop();
    server.start();

    let reopened = eventually_some(Duration::from_secs(15), || {
        let js = js.clone();
        async move { CursorStore::open(&js, &KvSettings::default()).await.ok() }
    })
    .await
    .expect("reopen after restart");
    let value = eventually_some(Duration::from_secs(15), || {
        let reopened = reopened.clone();
        async move { reopened.get("shuffler-0").await.ok() }
    })
    .await
    .expect("get after restart");
    assert_eq!(value, Some(42));
    assert_eq!(reopened.get("shuffler-1").await.expect("get"), Some(-1));
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
    first
        .put("a", bytes::Bytes::from_static(b"1"))
        .await
        .expect("put");
    let second = ensure_kv(&js, &settings).await.expect("idempotent");
    assert_eq!(
        second.get("a").await.expect("get").as_deref(),
        Some(&b"1"[..])
    );
    let status = second.status().await.expect("status");
    assert_eq!(status.history(), 5);

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
    assert!(!store.stream.cached_info().config.allow_message_ttl);
    store
        .put("kept", bytes::Bytes::from_static(b"1"))
        .await
        .expect("put");

    let with_ttl = KvSettings {
        allow_msg_ttl: true,
        ..plain.clone()
    };
    let store = ensure_kv(&js, &with_ttl).await.expect("turn TTLs on");
    let config = &store.stream.cached_info().config;
    assert!(config.allow_message_ttl);
    assert_eq!(config.subject_delete_marker_ttl, None, "no server markers");
    assert_eq!(config.max_messages_per_subject, 3, "history kept");
    ensure_kv(&js, &with_ttl).await.expect("idempotent");
    // Without the flag the bucket keeps its TTLs (turning them off would be refused).
    let store = ensure_kv(&js, &plain).await.expect("keeps TTLs");
    assert!(store.stream.cached_info().config.allow_message_ttl);
    assert_eq!(
        store.get("kept").await.expect("get").as_deref(),
        Some(&b"1"[..])
    );

    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_TTL, "1");
    js.publish_with_headers("$KV.ttl.brief", headers, bytes::Bytes::from_static(b"x"))
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
    let last = store
        .stream
        .direct_get_last_for_subject("$KV.ttl.brief")
        .await;
    assert!(
        last.is_err(),
        "nothing left on the expired subject: {last:?}"
    );

    // A new bucket gets them right away.
    let fresh = ensure_kv(
        &js,
        &KvSettings {
            allow_msg_ttl: true,
            ..KvSettings::bucket("fresh")
        },
    )
    .await
    .expect("create with TTLs");
    assert!(fresh.stream.cached_info().config.allow_message_ttl);
}
