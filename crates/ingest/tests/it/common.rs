//! Helpers of the shuffler's integration tests: the stream readers and ground-truth assertions shared with the
//! binary's tests live in `fpaas_testkit::stream`; the shuffler config for tests is here.

#![allow(dead_code, unused_imports)]

pub use fpaas_testkit::stream::*;

/// A shuffler config for tests: fast cursor saves and retries, a small stream, no ops server.
pub fn test_config(nats_url: &str, relay: &str, instance: &str) -> fpaas_ingest::ShufflerConfig {
    fpaas_ingest::ShufflerConfig {
        relay: relay.to_owned(),
        instance: instance.to_owned(),
        nats_url: nats_url.to_owned(),
        stream: fpaas_bus::StreamSettings {
            max_bytes: 256 * 1024 * 1024,
            ..Default::default()
        },
        cursor_save_every_events: 100,
        cursor_save_interval_ms: 100,
        backoff_min_ms: 20,
        backoff_max_ms: 500,
        publish_timeout_ms: 3_000,
        // From the relay's first event (a live start would miss what the simulator produced before).
        start_cursor: Some(0),
        metrics_listen: None,
        ..Default::default()
    }
}
