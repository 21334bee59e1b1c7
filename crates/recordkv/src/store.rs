//! The record KV's view of a bucket: [`Kv`] is a [`fpaas_bus::KvBucket`] whose delete markers
//! carry the repository revision of the delete (`Fpaas-Rev`, [`HEADER_REV`]) and, when the handle
//! has a marker TTL, expire (`Nats-TTL`). The NATS mechanics (reads with revision, compare-and-set,
//! snapshots, watches) are the bus's; this module only maps them to [`EntryState`] / [`Current`].
//!
//! A marker without `Fpaas-Rev` (written by something else, or by the server when an entry
//! expires on a stream configured with `subject_delete_marker_ttl`) reads as
//! [`EntryState::Deleted`] with `rev: None`, which lets any later put through (as "no entry" does)
//! and makes a delete `already_deleted` — the same outcomes as after the original marker expired
//! without a trace.

use std::time::Duration;

use bytes::Bytes;
use fpaas_bus::{BusErrorKind, KvBucket, KvEntry, KvSettings, KvState};
use futures::{Stream, StreamExt};

use crate::error::Error;

pub use fpaas_bus::KvWrite as WriteResult;

/// Header carrying the repository revision a delete marker stands for.
pub const HEADER_REV: &str = "Fpaas-Rev";

/// What the KV holds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// A value.
    Value(Bytes),
    /// A delete (or purge) marker; `rev` is the repository revision of the delete, when known.
    Deleted {
        /// `Fpaas-Rev` of the marker.
        rev: Option<String>,
    },
}

impl From<KvState> for EntryState {
    fn from(state: KvState) -> Self {
        match state {
            KvState::Value(value) => EntryState::Value(value),
            KvState::Deleted { tag } => EntryState::Deleted { rev: tag },
        }
    }
}

/// The latest entry of a key and its KV revision (stream sequence), for compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    /// The stream sequence of the entry; pass it as `expected` to write over it.
    pub revision: u64,
    /// Value or marker.
    pub state: EntryState,
}

/// One key of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// The key (without the `$KV.<bucket>.` prefix).
    pub key: String,
    /// KV revision.
    pub revision: u64,
    /// Value or marker (the value is empty for headers-only snapshots).
    pub state: EntryState,
}

impl From<KvEntry> for SnapshotEntry {
    fn from(entry: KvEntry) -> Self {
        Self {
            key: entry.key,
            revision: entry.revision,
            state: entry.state.into(),
        }
    }
}

/// Options for creating a bucket.
#[derive(Clone, Debug)]
pub struct BucketOptions {
    /// Bucket name.
    pub bucket: String,
    /// Description stored with the bucket.
    pub description: String,
    /// Replicas.
    pub replicas: usize,
    /// How long the delete markers written through this handle stay (`Nats-TTL`, whole seconds,
    /// at least 1 s); `None` = forever. `Some` makes the bucket accept per-message TTLs
    /// (`fpaas_bus::KvSettings::allow_msg_ttl`). Any duration is taken here: the safety check
    /// (at least the firehose retention) is [`crate::RecordKvConfig::validate`]'s.
    pub delete_marker_ttl: Option<Duration>,
}

/// Handle on one KV bucket of the record KV or its indexes.
#[derive(Clone, Debug)]
pub struct Kv {
    bucket: KvBucket,
}

impl Kv {
    /// Opens the bucket, creating it (history 1, file storage) when missing (`fpaas_bus::ensure_kv`).
    /// With a [`BucketOptions::delete_marker_ttl`] the bucket is made to accept per-message TTLs
    /// (once on, they stay on) and this handle's delete markers carry `Nats-TTL`.
    ///
    /// # Errors
    /// [`Error::Config`] for a marker TTL under 1 s, [`Error::MarkerTtlUnsupported`] when the
    /// bucket cannot accept TTLs, [`Error::Bus`] when the server refuses or cannot be reached.
    pub async fn open_or_create(
        client: &fpaas_bus::Client,
        options: &BucketOptions,
    ) -> Result<Self, Error> {
        if options
            .delete_marker_ttl
            .is_some_and(|ttl| ttl < Duration::from_secs(1))
        {
            return Err(Error::Config(format!(
                "delete marker TTL {:?} below the server's minimum of 1 s",
                options.delete_marker_ttl
            )));
        }
        let settings = KvSettings {
            description: options.description.clone(),
            replicas: options.replicas.max(1),
            allow_msg_ttl: options.delete_marker_ttl.is_some(),
            ..KvSettings::bucket(&options.bucket)
        };
        let bucket = fpaas_bus::ensure_kv_on(client, &settings)
            .await
            .map_err(|e| match e.kind() {
                BusErrorKind::MessageTtl => Error::MarkerTtlUnsupported {
                    bucket: options.bucket.clone(),
                    source: e,
                },
                _ => Error::bus("ensure kv bucket", e),
            })?;
        Ok(Self {
            bucket: bucket.with_markers(Some(HEADER_REV), options.delete_marker_ttl),
        })
    }

    /// Opens an existing bucket.
    ///
    /// # Errors
    /// [`Error::Bus`] when it does not exist or the server cannot be reached.
    pub async fn open(client: &fpaas_bus::Client, bucket: &str) -> Result<Self, Error> {
        let bucket = KvBucket::open(client, bucket)
            .await
            .map_err(|e| Error::bus("open kv bucket", e))?;
        Ok(Self {
            bucket: bucket.with_markers(Some(HEADER_REV), None),
        })
    }

    /// How long the delete markers written through this handle stay (`None` = forever; always
    /// `None` for [`Kv::open`]).
    pub fn delete_marker_ttl(&self) -> Option<Duration> {
        self.bucket.delete_marker_ttl()
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        self.bucket.bucket()
    }

    /// The stream behind the bucket (`KV_<bucket>`).
    pub fn stream_name(&self) -> String {
        self.bucket.stream_name()
    }

    /// The latest entry of `key` with headers, or `None` when the key never existed (or was
    /// removed without a marker).
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure.
    pub async fn current(&self, key: &str) -> Result<Option<Current>, Error> {
        let entry = self
            .bucket
            .entry(key)
            .await
            .map_err(|e| Error::bus("kv get", e))?;
        Ok(entry.map(|e| Current {
            revision: e.revision,
            state: e.state.into(),
        }))
    }

    /// The current value of `key` (`None` when absent or deleted).
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.bucket
            .get(key)
            .await
            .map_err(|e| Error::bus("kv get", e))
    }

    /// Puts `value` only if the key's latest revision is `expected` (0 = the key has no entry).
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure (a conflict is [`WriteResult::Conflict`]).
    pub async fn put_expect(
        &self,
        key: &str,
        value: Bytes,
        expected: u64,
    ) -> Result<WriteResult, Error> {
        self.bucket
            .update(key, value, expected)
            .await
            .map_err(|e| Error::bus("kv put", e))
    }

    /// Writes a delete marker (carrying `Fpaas-Rev` when `rev` is given, and `Nats-TTL` when this
    /// handle has a marker TTL) only if the key's latest revision is `expected`.
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure.
    pub async fn delete_expect(
        &self,
        key: &str,
        expected: u64,
        rev: Option<&str>,
    ) -> Result<WriteResult, Error> {
        self.bucket
            .delete(key, Some(expected), rev)
            .await
            .map_err(|e| Error::bus("kv delete", e))
    }

    /// Unconditional put.
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<WriteResult, Error> {
        self.bucket
            .put(key, value)
            .await
            .map_err(|e| Error::bus("kv put", e))
    }

    /// Removes every message of `key` from the stream, leaving no marker (the subject disappears,
    /// and so does its server memory). Watchers do not see this removal: use it for derived
    /// data that is queried, not watched.
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure.
    pub async fn remove(&self, key: &str) -> Result<u64, Error> {
        self.bucket
            .remove(key)
            .await
            .map_err(|e| Error::bus("kv remove", e))
    }

    /// The latest entry of every key matching `pattern` (`*` / `>` wildcards). With
    /// `headers_only` the values are empty.
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure.
    pub async fn snapshot(
        &self,
        pattern: &str,
        headers_only: bool,
    ) -> Result<Vec<SnapshotEntry>, Error> {
        let entries = self
            .bucket
            .snapshot(pattern, headers_only)
            .await
            .map_err(|e| Error::bus("kv snapshot", e))?;
        Ok(entries.into_iter().map(SnapshotEntry::from).collect())
    }

    /// Like [`Kv::snapshot`], handing each entry to `f` instead of collecting them.
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure.
    pub async fn snapshot_each(
        &self,
        pattern: &str,
        headers_only: bool,
        mut f: impl FnMut(SnapshotEntry),
    ) -> Result<u64, Error> {
        self.bucket
            .snapshot_each(pattern, headers_only, |entry| f(entry.into()))
            .await
            .map_err(|e| Error::bus("kv snapshot", e))
    }

    /// Number of subjects matching `pattern` (values and markers alike).
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure.
    pub async fn count(&self, pattern: &str) -> Result<u64, Error> {
        self.bucket
            .count(pattern)
            .await
            .map_err(|e| Error::bus("kv count", e))
    }

    /// Watches the keys matching `pattern`: first the current entry of every key, then every change
    /// live. Each item is `(key, state, seen_current)`; `seen_current` turns true once the initial
    /// values have all been delivered.
    ///
    /// # Errors
    /// [`Error::Bus`] when the watch cannot be created.
    pub async fn watch(
        &self,
        pattern: &str,
    ) -> Result<impl Stream<Item = Result<(String, EntryState, bool), Error>> + use<>, Error> {
        let watch = self
            .bucket
            .watch(pattern)
            .await
            .map_err(|e| Error::bus("kv watch", e))?;
        Ok(watch.map(|item| {
            let (entry, seen_current) = item.map_err(|e| Error::bus("kv watch", e))?;
            Ok((entry.key, entry.state.into(), seen_current))
        }))
    }

    /// Bytes and messages (= subjects with history 1) held by the bucket's stream.
    ///
    /// # Errors
    /// [`Error::Bus`] on a server or connection failure.
    pub async fn usage(&self) -> Result<(u64, u64), Error> {
        self.bucket
            .usage()
            .await
            .map_err(|e| Error::bus("stream info", e))
    }
}
