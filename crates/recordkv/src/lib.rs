//! Record KV and indexes on top of the firehose stream.
//!
//! - [`builder`]: `fpaas record-kv` — a durable consumer on the `FIREHOSE` stream writes the current value
//!   of every record into the KV bucket `record`, key `<collection>.<did>.<rkey>` ([`key`]), value
//!   [`RecordValue`] JSON; deletes are delete markers (expiring after
//!   [`RecordKvConfig::delete_marker_ttl_secs`], 7 days by default), `#account` `deleted` removes the
//!   DID's records.
//! - [`apply`]: the revision rules that make re-applying, redelivery and imports safe.
//! - [`likes`]: `fpaas like-indexer` (likes-by-subject, likes-by-actor, unlikes undone) and its queries.
//! - [`import`]: `fpaas import-car` (every record of a `getRepo` CAR via its MST) and `put-record`.
//! - [`store`]: the record KV's view of a bus [`fpaas_bus::KvBucket`] (delete markers carry `Fpaas-Rev`).
//!   Every NATS operation goes through `fpaas-bus` (KV compare-and-set, durable readers, the consume loop
//!   that runs the builder and the indexer); this crate does not depend on async-nats.
//!
//! Readers watch the bucket like a stream: `$KV.record.app_bsky_feed_like.>` is every like from the
//! beginning, then live (see `docs/record-kv.md` for the filters of common watches and the memory cost).

pub mod apply;
mod batches;
pub mod builder;
pub mod config;
pub mod error;
pub mod import;
pub mod key;
mod keyed;
pub mod likes;
pub mod store;
pub mod value;

pub use apply::{Change, Outcome};
pub use builder::{BuildStats, RecordKvBuilder};
pub use config::{
    DEFAULT_LIKES_BUCKET, DEFAULT_RECORD_BUCKET, DEFAULT_STREAM, LikeIndexConfig, RecordKvConfig,
};
pub use error::Error;
pub use key::RecordKey;
pub use likes::{IndexStats, LikeEntry, LikeIndex, LikeIndexer};
pub use store::Kv;
pub use value::RecordValue;
