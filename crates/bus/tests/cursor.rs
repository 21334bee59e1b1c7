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
