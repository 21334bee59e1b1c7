//! The shuffler: reads a relay's `subscribeRepos` firehose, decodes and normalizes every frame, and publishes one
//! message per event into JetStream without loss, duplicates or crashes. See `docs/shuffler.md`.
//!
//! | module | owns |
//! |---|---|
//! | [`relay`] | the WebSocket client for a relay (URL building, cursor, frame size limits) |
//! | [`shuffler`] | the run loop: backpressure, publish failures, reconnects, shutdown ([`run`], [`Shuffler`]) |
//! | [`watermark`] | which relay seq is safe to persist (pure, unit-tested) |
//! | [`cursor`] | the cursor record in the KV bucket (through `fpaas_bus::KvBucket`), resume point across instances |
//! | [`lease`] | the instance-name lease (one running process per cursor key; compare-and-set through `fpaas_bus::KvBucket`) |
//! | [`config`] | [`ShufflerConfig`] with defaults and validation |
//! | [`metrics`] | metric names, [`LiveStats`] / [`ShufflerStats`] |
//! | [`error`] | [`IngestError`] |

pub mod config;
pub mod cursor;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod relay;
pub mod shuffler;
pub mod watermark;

pub use config::{DEFAULT_RELAY, ShufflerConfig};
pub use error::IngestError;
pub use metrics::{LiveStats, ShufflerStats};
pub use shuffler::{COMPONENT_NATS, COMPONENT_RELAY, COMPONENT_STREAM, Shuffler, run};
pub use watermark::Watermark;
