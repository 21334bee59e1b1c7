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

/// Settings of `fpaas record-kv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordKvConfig {
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
}

impl Default for RecordKvConfig {
    fn default() -> Self {
        Self {
            bucket: DEFAULT_RECORD_BUCKET.into(),
            stream: DEFAULT_STREAM.into(),
            durable: "record-kv".into(),
            collections: Vec::new(),
            dids: Vec::new(),
            batch_size: 500,
            concurrency: 128,
            ack_wait_ms: 30_000,
            replicas: 1,
        }
    }
}

impl RecordKvConfig {
    /// Checks ranges and builds the server-side filter subjects: one per collection pattern (or all
    /// commits), plus `atproto.firehose.account.deleted` and `atproto.firehose.sync`.
    ///
    /// # Errors
    /// [`Error::Config`] for an out-of-range number or a bad collection pattern.
    pub fn validate(&self) -> Result<Vec<String>, Error> {
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LikeIndexConfig {
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
}
