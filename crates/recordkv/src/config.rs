//! Typed configuration of the record KV builder and the like indexer. The doc comments are the user
//! documentation of each setting; [`RecordKvConfig::validate`] / [`LikeIndexConfig::validate`] are the
//! one place where values are checked.

use std::time::Duration;

use fpaas_event::{Kind, SubjectFilter};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Default record KV bucket name.
pub const DEFAULT_RECORD_BUCKET: &str = "record";
/// Default like index bucket name.
pub const DEFAULT_LIKES_BUCKET: &str = "likes";
/// Default firehose stream name.
pub const DEFAULT_STREAM: &str = "FIREHOSE";
/// Default [`RecordKvConfig::delete_marker_ttl_secs`]: 7 days.
pub const DEFAULT_DELETE_MARKER_TTL_SECS: u64 = 7 * 86_400;
/// Smallest nonzero [`RecordKvConfig::delete_marker_ttl_secs`]: the firehose stream's retention
/// (24 h, `fpaas_bus::StreamSettings` default `max_age`).
pub const MIN_DELETE_MARKER_TTL_SECS: u64 = 86_400;

/// Default NATS URL of the record-KV processes.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Settings of `fpaas record-kv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RecordKvConfig {
    /// NATS URL(s), comma separated.
    pub nats_url: String,
    /// Address of the ops HTTP server (`/metrics`, `/health`, `/ready`, `/health/detailed`) when run as
    /// `fpaas record-kv`; absent or `none` = no server.
    pub metrics_listen: Option<String>,
    /// The KV bucket that holds the records (`record`).
    pub bucket: String,
    /// The JetStream stream the events are read from (`FIREHOSE`).
    pub stream: String,
    /// Name of the durable consumer on that stream; its position is the builder's cursor
    /// (`record-kv`). Two builders with the same name share the work; a new name starts over.
    pub durable: String,
    /// Collections to keep: NSIDs (`app.bsky.feed.like`) or prefixes (`app.bsky.feed.*`); empty =
    /// every collection. Filtered on the server, so unwanted events are never delivered.
    pub collections: Vec<String>,
    /// DIDs to keep; empty = every DID. Matched here from the `Fpaas-Did` header.
    pub dids: Vec<String>,
    /// Messages fetched per batch; the next batch is fetched only after every write of this one was
    /// acknowledged by the server (backpressure).
    pub batch_size: usize,
    /// KV writes in flight at once within a batch (different keys; one key's writes stay in order).
    pub concurrency: usize,
    /// How long the server waits for an ack before redelivering, in milliseconds.
    pub ack_wait_ms: u64,
    /// Replicas of the KV bucket when it is created (1 for a single server, 3 in a cluster).
    pub replicas: usize,
    /// How long a delete marker stays in the bucket, in seconds (7 days, 604800); 0 = forever.
    /// When nonzero it must be at least 86400, the firehose stream's 24 h retention. A marker only
    /// has to outlive the older events of its key that could still be delivered: they were all
    /// published before the delete that wrote the marker, so once the marker has outlived the
    /// stream's retention none is left to resurrect the record, and the key disappears with its
    /// server memory. Events a relay replays (up to 24–72 h back) are published again after the
    /// marker, so covering them takes retention plus replay window (~4 days): hence 7 days. Raise
    /// it when the stream keeps events longer. The like indexer must not lag this builder by more
    /// than this, or it misses the unlikes whose markers expired; an `import-car` of an export
    /// older than a marker can bring its record back (`docs/record-kv.md`, "Delete markers
    /// expire").
    pub delete_marker_ttl_secs: u64,
}

impl Default for RecordKvConfig {
    fn default() -> Self {
        Self {
            nats_url: DEFAULT_NATS_URL.into(),
            metrics_listen: Some("127.0.0.1:9101".into()),
            bucket: DEFAULT_RECORD_BUCKET.into(),
            stream: DEFAULT_STREAM.into(),
            durable: "record-kv".into(),
            collections: Vec::new(),
            dids: Vec::new(),
            batch_size: 500,
            concurrency: 128,
            ack_wait_ms: 30_000,
            replicas: 1,
            delete_marker_ttl_secs: DEFAULT_DELETE_MARKER_TTL_SECS,
        }
    }
}

impl RecordKvConfig {
    /// Checks ranges and builds the server-side filter subjects: one per collection pattern (or all
    /// commits), plus `atproto.firehose.account.deleted` and `atproto.firehose.sync`.
    ///
    /// # Errors
    /// [`Error::Config`] for an out-of-range number (including a delete marker TTL below the
    /// firehose retention, see [`delete_marker_ttl`]) or a bad collection pattern.
    pub fn validate(&self) -> Result<Vec<String>, Error> {
        delete_marker_ttl(self.delete_marker_ttl_secs)?;
        self.filters()
    }

    /// [`RecordKvConfig::delete_marker_ttl_secs`] as a duration (`None` = markers never expire),
    /// unchecked: [`RecordKvConfig::validate`] checks it.
    pub fn delete_marker_ttl(&self) -> Option<Duration> {
        (self.delete_marker_ttl_secs > 0).then(|| Duration::from_secs(self.delete_marker_ttl_secs))
    }

    /// Everything [`RecordKvConfig::validate`] checks except the delete marker TTL.
    pub(crate) fn filters(&self) -> Result<Vec<String>, Error> {
        check_common(
            &self.bucket,
            &self.durable,
            self.batch_size,
            self.concurrency,
            self.ack_wait_ms,
        )?;
        let mut filters = Vec::new();
        if self.collections.is_empty() {
            filters.push(SubjectFilter::Kind(Kind::Commit).to_subject());
        }
        for pattern in &self.collections {
            let filter = SubjectFilter::collection(None, pattern)
                .map_err(|e| Error::Config(e.to_string()))?;
            filters.push(filter.to_subject());
        }
        filters.sort();
        filters.dedup();
        filters.push(format!("{}.account.deleted", fpaas_event::SUBJECT_PREFIX));
        filters.push(SubjectFilter::Kind(Kind::Sync).to_subject());
        Ok(filters)
    }

    /// [`RecordKvConfig::ack_wait_ms`] as a duration.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }
}

/// Settings of `fpaas like-indexer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LikeIndexConfig {
    /// NATS URL(s), comma separated.
    pub nats_url: String,
    /// Address of the ops HTTP server (`/metrics`, `/health`, `/ready`, `/health/detailed`) when run as
    /// `fpaas like-indexer`; absent or `none` = no server.
    pub metrics_listen: Option<String>,
    /// The record KV bucket it reads (`record`).
    pub record_bucket: String,
    /// The index bucket it writes (`likes`).
    pub bucket: String,
    /// Durable consumer on the record bucket's stream (`like-indexer`).
    pub durable: String,
    /// Messages per batch (acked after the batch's index writes).
    pub batch_size: usize,
    /// Index writes in flight within a batch.
    pub concurrency: usize,
    /// Ack wait of the consumer, in milliseconds.
    pub ack_wait_ms: u64,
    /// Replicas of the index bucket when it is created.
    pub replicas: usize,
}

impl Default for LikeIndexConfig {
    fn default() -> Self {
        Self {
            nats_url: DEFAULT_NATS_URL.into(),
            metrics_listen: Some("127.0.0.1:9102".into()),
            record_bucket: DEFAULT_RECORD_BUCKET.into(),
            bucket: DEFAULT_LIKES_BUCKET.into(),
            durable: "like-indexer".into(),
            batch_size: 500,
            concurrency: 128,
            ack_wait_ms: 30_000,
            replicas: 1,
        }
    }
}

impl LikeIndexConfig {
    /// Checks ranges.
    ///
    /// # Errors
    /// [`Error::Config`] for an out-of-range value.
    pub fn validate(&self) -> Result<(), Error> {
        check_common(
            &self.bucket,
            &self.durable,
            self.batch_size,
            self.concurrency,
            self.ack_wait_ms,
        )?;
        check_name("record_bucket", &self.record_bucket)
    }

    /// [`LikeIndexConfig::ack_wait_ms`] as a duration.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }
}

/// A delete marker TTL in seconds as a duration: `None` for 0 (markers never expire), else at
/// least [`MIN_DELETE_MARKER_TTL_SECS`] (see [`RecordKvConfig::delete_marker_ttl_secs`] for why).
/// Shared by `fpaas record-kv` and `fpaas import-car --prune`.
///
/// # Errors
/// [`Error::Config`] for a nonzero TTL below [`MIN_DELETE_MARKER_TTL_SECS`].
pub fn delete_marker_ttl(secs: u64) -> Result<Option<Duration>, Error> {
    match secs {
        0 => Ok(None),
        secs if secs < MIN_DELETE_MARKER_TTL_SECS => Err(Error::Config(format!(
            "delete_marker_ttl_secs {secs} is below {MIN_DELETE_MARKER_TTL_SECS} (the firehose \
             stream's 24 h retention): a marker that expires while an older create of its record \
             can still be delivered lets that create bring the deleted record back; use at least \
             {MIN_DELETE_MARKER_TTL_SECS}, or 0 to keep markers forever"
        ))),
        secs => Ok(Some(Duration::from_secs(secs))),
    }
}

fn check_common(
    bucket: &str,
    durable: &str,
    batch_size: usize,
    concurrency: usize,
    ack_wait_ms: u64,
) -> Result<(), Error> {
    check_name("bucket", bucket)?;
    check_name("durable", durable)?;
    if !(1..=10_000).contains(&batch_size) {
        return Err(Error::Config(format!(
            "batch_size {batch_size} not in 1..=10000"
        )));
    }
    if !(1..=4_096).contains(&concurrency) {
        return Err(Error::Config(format!(
            "concurrency {concurrency} not in 1..=4096"
        )));
    }
    if ack_wait_ms < 100 {
        return Err(Error::Config(format!(
            "ack_wait_ms {ack_wait_ms} below 100"
        )));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {name:?} must be non-empty [-_a-zA-Z0-9]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_cover_collections_account_deletion_and_sync() {
        let mut c = RecordKvConfig::default();
        assert_eq!(
            c.validate().unwrap(),
            vec![
                "atproto.firehose.commit.>",
                "atproto.firehose.account.deleted",
                "atproto.firehose.sync"
            ]
        );
        c.collections = vec!["app.bsky.feed.like".into(), "app.bsky.graph.*".into()];
        assert_eq!(
            c.validate().unwrap()[..2],
            [
                "atproto.firehose.commit.*.app.bsky.feed.like",
                "atproto.firehose.commit.*.app.bsky.graph.>"
            ]
        );
        c.collections = vec!["app.bsky".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn ranges_and_unknown_fields_are_rejected() {
        let c = RecordKvConfig {
            batch_size: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = LikeIndexConfig {
            bucket: "a.b".into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        assert!(serde_json::from_str::<RecordKvConfig>(r#"{"colections":[]}"#).is_err());
        let c: RecordKvConfig =
            serde_json::from_str(r#"{"collections":["app.bsky.feed.like"]}"#).unwrap();
        assert_eq!(c.batch_size, 500);
    }

    #[test]
    fn delete_marker_ttl_is_zero_or_at_least_the_firehose_retention() {
        let c = RecordKvConfig::default();
        assert_eq!(c.delete_marker_ttl_secs, 604_800);
        assert_eq!(c.delete_marker_ttl(), Some(Duration::from_secs(604_800)));
        c.validate().expect("default valid");
        for ok in [0, 86_400, 86_401, 30 * 86_400] {
            let c = RecordKvConfig {
                delete_marker_ttl_secs: ok,
                ..Default::default()
            };
            c.validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let off = RecordKvConfig {
            delete_marker_ttl_secs: 0,
            ..Default::default()
        };
        assert_eq!(off.delete_marker_ttl(), None);
        for bad in [1, 60, 3_600, 86_399] {
            let c = RecordKvConfig {
                delete_marker_ttl_secs: bad,
                ..Default::default()
            };
            let err = c.validate().expect_err("below the retention");
            assert!(
                matches!(&err, Error::Config(m) if m.contains("86400") && m.contains("0 to keep")),
                "{bad}: {err}"
            );
        }
        assert_eq!(delete_marker_ttl(0).unwrap(), None);
        assert!(delete_marker_ttl(86_399).is_err());
        let c: RecordKvConfig = serde_json::from_str(r#"{"delete_marker_ttl_secs":0}"#).unwrap();
        assert_eq!(c.delete_marker_ttl(), None);
    }
}
