//! `ensure_stream` against a real nats-server: creation with the configured settings, idempotence,
//! drift reporting and in-place updates, the storage-change error, the `max_payload` warning and the
//! typed error when `max_bytes` does not fit the server's JetStream storage.

use crate::common;

use std::time::Duration;

use async_nats::jetstream::stream::{Compression, StorageType};
use fpaas_bus::{BusErrorKind, Storage, StreamAction, ensure_stream};
use fpaas_testkit::{NatsServer, NatsServerOptions};

#[tokio::test]
async fn stream_is_created_then_idempotent_then_updated_with_drift() {
    let server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    let settings = common::settings("FIREHOSE", "atproto.firehose.>");

    let report = ensure_stream(&js, &settings).await.expect("create");
    assert_eq!(report.action, StreamAction::Created);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    let stream = js.get_stream("FIREHOSE").await.expect("stream exists");
    let config = &stream.cached_info().config;
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(config.compression, Some(Compression::S2));
    assert_eq!(config.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(config.duplicate_window, Duration::from_secs(300));
    assert_eq!(config.max_message_size, 1024 * 1024);
    assert_eq!(config.subjects, vec!["atproto.firehose.>".to_owned()]);

    let again = ensure_stream(&js, &settings).await.expect("second call");
    assert_eq!(again.action, StreamAction::Unchanged);
    assert!(again.drift.is_empty(), "{:?}", again.drift);

    let mut changed = settings.clone();
    changed.max_age_secs = 3600;
    changed.duplicate_window_secs = 120;
    changed.compression = fpaas_bus::Compression::None;
    let report = ensure_stream(&js, &changed).await.expect("update");
    assert_eq!(report.action, StreamAction::Updated);
    assert!(
        report
            .drift
            .contains(&"max_age: was 86400s, now 3600s".to_owned()),
        "{:?}",
        report.drift
    );
    assert!(
        report
            .drift
            .contains(&"duplicate_window: was 300s, now 120s".to_owned()),
        "{:?}",
        report.drift
    );
    assert!(report.drift.iter().any(|d| d.starts_with("compression:")));
    assert_eq!(report.drift.len(), 3, "{:?}", report.drift);

    let config = js
        .get_stream("FIREHOSE")
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(config.duplicate_window, Duration::from_secs(120));

    let settled = ensure_stream(&js, &changed).await.expect("third call");
    assert_eq!(settled.action, StreamAction::Unchanged);

    // Storage cannot change in place: a clear error, and the stream is left as it was.
    let mut memory = changed.clone();
    memory.storage = Storage::Memory;
    let err = ensure_stream(&js, &memory)
        .await
        .expect_err("storage change");
    assert_eq!(err.kind(), BusErrorKind::StreamConfig);
    assert!(err.to_string().contains("storage"), "{err}");
    let config = js
        .get_stream("FIREHOSE")
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    assert_eq!(config.storage, StorageType::File);
}

#[tokio::test]
async fn invalid_settings_and_small_max_payload_are_reported() {
    let server = NatsServer::with_options(NatsServerOptions {
        max_payload: None,
        ..Default::default()
    });
    let js = common::js_with_timeout(&server.url()).await;
    // Wait for the background connect so server_info is known.
    common::wait_connected(&js).await;

    // The default max_msg_size fits a default server (what `fpaas dev` runs): no warning.
    let report = ensure_stream(&js, &common::settings("DEFAULT", "default.>"))
        .await
        .expect("create");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // Above the server's max_payload: reported.
    let mut small = common::settings("SMALL", "small.>");
    small.max_msg_size = 2 * 1024 * 1024;
    let report = ensure_stream(&js, &small).await.expect("create");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("max_payload"));

    let mut bad = common::settings("BAD", "bad.>");
    bad.duplicate_window_secs = bad.max_age_secs + 1;
    let err = ensure_stream(&js, &bad).await.expect_err("invalid");
    assert_eq!(err.kind(), BusErrorKind::StreamConfig);
}

#[tokio::test]
async fn max_bytes_larger_than_the_server_store_is_a_typed_error() {
    let server = NatsServer::with_options(NatsServerOptions {
        max_file_store: "64MB".to_owned(),
        ..Default::default()
    });
    let js = common::js_with_timeout(&server.url()).await;

    let mut too_big = common::settings("BIG", "big.>");
    too_big.max_bytes = 1 << 30;
    let err = ensure_stream(&js, &too_big)
        .await
        .expect_err("1 GiB in 64 MB");
    assert_eq!(err.kind(), BusErrorKind::InsufficientStorage, "{err}");
    assert!(!err.kind().is_retryable());
    assert!(err.to_string().contains("max_file_store"), "{err}");

    // The same stream with a guard that fits is created.
    let mut fits = too_big.clone();
    fits.max_bytes = 32 << 20;
    let report = ensure_stream(&js, &fits).await.expect("32 MiB in 64 MB");
    assert_eq!(report.action, StreamAction::Created);
}
