//! [`KvBucket`]: the operations on one KV bucket, in the shape every caller above the bus uses —
//! reads of the latest entry with its revision, compare-and-set writes (create, update if the
//! revision is still the one read, delete if it is), delete markers (optionally tagged by a
//! caller-chosen header and expiring through `Nats-TTL`), marker-free removal, keys and
//! last-per-subject snapshots of a key pattern, and watches. What the keys and values mean stays
//! with the caller (record KV, like index, cursors, leases).
//!
//! A marker is recognised by `KV-Operation: DEL` / `PURGE`, or by `Nats-Marker-Reason`: the marker
//! the server itself writes when an entry expires on a stream with `subject_delete_marker_ttl`. We
//! never enable that (an expired marker's subject just disappears), but a bucket configured so by
//! someone else must not turn such a marker into an empty value: it reads as a marker without a tag
//! ([`KvState::Deleted`] with `tag: None`).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{NATS_MARKER_REASON, NATS_MESSAGE_TTL};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;

use crate::error::{BusError, BusErrorKind};

/// Header naming the KV operation of a marker (`DEL`, `PURGE`); absent on puts.
const KV_OPERATION: &str = "KV-Operation";
/// Compare-and-set: the last sequence the subject must have (0 = no message).
const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
/// Most keys read by one direct batch get before falling back to a consumer.
const DIRECT_BATCH: usize = 1_000;
/// Longest wait of one snapshot pull request (an empty answer ends the read).
const SNAPSHOT_IDLE: Duration = Duration::from_secs(2);

/// What the bucket holds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvState {
    /// A value.
    Value(Bytes),
    /// A delete (or purge) marker; `tag` is the value of the handle's marker tag header, if any.
    Deleted {
        /// The marker's tag (see [`KvBucket::with_markers`]).
        tag: Option<String>,
    },
}

/// The latest entry of a key and its revision (stream sequence), for compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    /// The key (without the `$KV.<bucket>.` prefix).
    pub key: String,
    /// The revision; pass it as `expected` to write over it.
    pub revision: u64,
    /// Value or marker (the value is empty for headers-only snapshots).
    pub state: KvState,
}

/// The result of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvWrite {
    /// Written at this revision.
    Written(u64),
    /// The key changed since `expected` (someone else wrote): re-read and decide again.
    Conflict,
    /// The message exceeds the server's `max_payload`.
    TooLarge,
}

/// Handle on one KV bucket.
#[derive(Clone)]
pub struct KvBucket {
    js: jetstream::Context,
    store: kv::Store,
    bucket: String,
    /// `$KV.<bucket>.`
    prefix: String,
    /// Header whose value tags the delete markers written through this handle.
    marker_tag: Option<&'static str>,
    /// `Nats-TTL` of the delete markers written through this handle (`None` = they never expire).
    marker_ttl: Option<Duration>,
}

impl std::fmt::Debug for KvBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvBucket")
            .field("bucket", &self.bucket)
            .field("marker_tag", &self.marker_tag)
            .field("marker_ttl", &self.marker_ttl)
            .finish_non_exhaustive()
    }
}

impl KvBucket {
    pub(crate) fn new(js: jetstream::Context, store: kv::Store, bucket: &str) -> Self {
        Self {
            js,
            store,
            bucket: bucket.to_owned(),
            prefix: format!("$KV.{bucket}."),
            marker_tag: None,
            marker_ttl: None,
        }
    }

    /// Opens an existing bucket.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] when it does not exist or the server cannot be reached.
    pub async fn open(client: &async_nats::Client, bucket: &str) -> Result<Self, BusError> {
        let js = jetstream::new(client.clone());
        let store = js
            .get_key_value(bucket)
            .await
            .map_err(|e| BusError::during(BusErrorKind::Kv, "open kv bucket", bucket, e))?;
        Ok(Self::new(js, store, bucket))
    }

    /// This handle with delete markers tagged by the header `tag` (read back as
    /// [`KvState::Deleted::tag`]) and expiring after `ttl` (`Nats-TTL` in whole seconds; the bucket
    /// must accept per-message TTLs, [`crate::KvSettings::allow_msg_ttl`]).
    pub fn with_markers(mut self, tag: Option<&'static str>, ttl: Option<Duration>) -> Self {
        self.marker_tag = tag;
        self.marker_ttl = ttl;
        self
    }

    /// How long the delete markers written through this handle stay (`None` = forever).
    pub fn delete_marker_ttl(&self) -> Option<Duration> {
        self.marker_ttl
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The stream behind the bucket (`KV_<bucket>`).
    pub fn stream_name(&self) -> String {
        format!("KV_{}", self.bucket)
    }

    /// The latest entry of `key` (value or marker), or `None` when the key never existed (or was
    /// removed without a marker).
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn entry(&self, key: &str) -> Result<Option<KvEntry>, BusError> {
        let subject = format!("{}{key}", self.prefix);
        match self.store.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(KvEntry {
                key: key.to_owned(),
                revision: message.sequence,
                state: self.state_of(&message.headers, message.payload),
            })),
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(err) => Err(BusError::during(
                BusErrorKind::Kv,
                "kv get",
                &self.bucket,
                err,
            )),
        }
    }

    /// The current value of `key` (`None` when absent or deleted).
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BusError> {
        Ok(match self.entry(key).await? {
            Some(KvEntry {
                state: KvState::Value(v),
                ..
            }) => Some(v),
            _ => None,
        })
    }

    /// Creates `key` with `value` when it has no entry or its latest entry is a delete marker;
    /// [`KvWrite::Conflict`] when it holds a value.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<KvWrite, BusError> {
        match self.update(key, value.clone(), 0).await? {
            KvWrite::Conflict => match self.entry(key).await? {
                Some(KvEntry {
                    revision,
                    state: KvState::Deleted { .. },
                    ..
                }) => self.update(key, value, revision).await,
                _ => Ok(KvWrite::Conflict),
            },
            done => Ok(done),
        }
    }

    /// Puts `value` only if the key's latest revision is `expected` (0 = the key has no entry).
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure (a conflict is
    /// [`KvWrite::Conflict`]).
    pub async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: u64,
    ) -> Result<KvWrite, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(EXPECTED_LAST_SUBJECT_SEQ, expected.to_string());
        self.publish(key, headers, value).await
    }

    /// Unconditional put.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<KvWrite, BusError> {
        self.publish(key, HeaderMap::new(), value).await
    }

    /// Writes a delete marker — only if the key's latest revision is `expected` when given —
    /// carrying the handle's tag header set to `tag` (when both are given) and `Nats-TTL` when the
    /// handle has a marker TTL.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn delete(
        &self,
        key: &str,
        expected: Option<u64>,
        tag: Option<&str>,
    ) -> Result<KvWrite, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        if let Some(expected) = expected {
            headers.insert(EXPECTED_LAST_SUBJECT_SEQ, expected.to_string());
        }
        if let (Some(name), Some(tag)) = (self.marker_tag, tag) {
            headers.insert(name, tag);
        }
        if let Some(ttl) = self.marker_ttl {
            headers.insert(NATS_MESSAGE_TTL, ttl.as_secs().to_string());
        }
        self.publish(key, headers, Bytes::new()).await
    }

    async fn publish(
        &self,
        key: &str,
        headers: HeaderMap,
        value: Bytes,
    ) -> Result<KvWrite, BusError> {
        let subject = format!("{}{key}", self.prefix);
        let ack = self
            .js
            .publish_with_headers(subject, headers, value)
            .await
            .map_err(|e| BusError::during(BusErrorKind::Kv, "kv publish", &self.bucket, e))?;
        match ack.await {
            Ok(ack) => Ok(KvWrite::Written(ack.sequence)),
            Err(err) => match err.kind() {
                PublishErrorKind::WrongLastSequence => Ok(KvWrite::Conflict),
                PublishErrorKind::MaxPayloadExceeded => Ok(KvWrite::TooLarge),
                PublishErrorKind::TimedOut => Err(BusError::with_source(
                    BusErrorKind::Timeout,
                    format!("kv publish ack ({})", self.bucket),
                    err,
                )),
                _ => Err(BusError::during(
                    BusErrorKind::Kv,
                    "kv publish ack",
                    &self.bucket,
                    err,
                )),
            },
        }
    }

    /// Removes every message of `key` from the stream, leaving no marker (the subject disappears,
    /// and so does its server memory). Watchers do not see this removal.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn remove(&self, key: &str) -> Result<u64, BusError> {
        let subject = format!("{}{key}", self.prefix);
        let response = self
            .store
            .stream
            .purge()
            .filter(subject)
            .await
            .map_err(|e| BusError::during(BusErrorKind::Kv, "kv remove", &self.bucket, e))?;
        Ok(response.purged)
    }

    /// The keys whose latest entry is a value (markers left out).
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn keys(&self) -> Result<Vec<String>, BusError> {
        let mut keys = Vec::new();
        self.snapshot_each(">", true, |entry| {
            if matches!(entry.state, KvState::Value(_)) {
                keys.push(entry.key);
            }
        })
        .await?;
        Ok(keys)
    }

    /// The latest entry of every key matching `pattern` (`*` / `>` wildcards). With
    /// `headers_only` the values are empty.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn snapshot(
        &self,
        pattern: &str,
        headers_only: bool,
    ) -> Result<Vec<KvEntry>, BusError> {
        let mut out = Vec::new();
        self.snapshot_each(pattern, headers_only, |entry| out.push(entry))
            .await?;
        Ok(out)
    }

    /// Like [`KvBucket::snapshot`], handing each entry to `f` instead of collecting them; returns
    /// how many there were. Up to [`DIRECT_BATCH`] values are read in one direct batch get, more
    /// through an ephemeral last-per-subject consumer.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn snapshot_each(
        &self,
        pattern: &str,
        headers_only: bool,
        mut f: impl FnMut(KvEntry),
    ) -> Result<u64, BusError> {
        if !headers_only && let Some(entries) = self.direct_batch(pattern).await? {
            let n = entries.len() as u64;
            entries.into_iter().for_each(f);
            return Ok(n);
        }
        let consumer = self.last_per_subject(pattern, headers_only).await?;
        let total = consumer.cached_info().num_pending;
        let name = consumer.cached_info().name.clone();
        let mut seen = 0u64;
        // Pull exactly what is pending, in requests of up to 1,000; stop at `pending == 0` or when a
        // request comes back empty (entries removed after the consumer was created).
        'read: while seen < total {
            let want = usize::try_from(total - seen)
                .unwrap_or(usize::MAX)
                .min(1_000);
            let mut batch = consumer
                .fetch()
                .max_messages(want)
                .expires(SNAPSHOT_IDLE)
                .messages()
                .await
                .map_err(|e| {
                    BusError::during(BusErrorKind::Kv, "snapshot read", &self.bucket, e)
                })?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| {
                    BusError::during(BusErrorKind::Kv, "snapshot read", &self.bucket, e)
                })?;
                got += 1;
                let Ok(info) = message.info() else { continue };
                let (revision, pending) = (info.stream_sequence, info.pending);
                let key = message
                    .subject
                    .as_str()
                    .strip_prefix(&self.prefix)
                    .unwrap_or_default()
                    .to_string();
                let headers = message.headers.clone().unwrap_or_default();
                seen += 1;
                f(KvEntry {
                    key,
                    revision,
                    state: self.state_of(&headers, message.payload.clone()),
                });
                if pending == 0 {
                    break 'read;
                }
            }
            if got == 0 {
                break;
            }
        }
        // Best effort: the inactive threshold removes it anyway.
        let _ = self.store.stream.delete_consumer(&name).await;
        Ok(seen)
    }

    async fn last_per_subject(
        &self,
        pattern: &str,
        headers_only: bool,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
        self.store
            .stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: AckPolicy::None,
                filter_subject: format!("{}{pattern}", self.prefix),
                headers_only,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                BusError::during(
                    BusErrorKind::Kv,
                    "create snapshot consumer",
                    &self.bucket,
                    e,
                )
            })
    }

    /// The latest entry of every key matching `pattern` in one direct batch get (ADR-31,
    /// `multi_last`; nats-server 2.11+): no consumer is created, so a small read costs about one
    /// round trip. Returns `None` when the answer does not fit in one batch ([`DIRECT_BATCH`] keys)
    /// or the server does not answer the batch form; the caller then reads through a consumer.
    async fn direct_batch(&self, pattern: &str) -> Result<Option<Vec<KvEntry>>, BusError> {
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| {
            BusError::during(BusErrorKind::Kv, "direct get subscribe", &self.bucket, e)
        })?;
        let request = serde_json::json!({
            "multi_last": [format!("{}{pattern}", self.prefix)],
            "batch": DIRECT_BATCH,
        });
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.stream_name()),
                inbox,
                request.to_string().into(),
            )
            .await
            .map_err(|e| BusError::during(BusErrorKind::Kv, "direct get", &self.bucket, e))?;
        let mut out = Vec::new();
        loop {
            let Ok(Some(message)) = tokio::time::timeout(SNAPSHOT_IDLE, replies.next()).await
            else {
                return Ok(None);
            };
            let headers = message.headers.clone().unwrap_or_default();
            let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
            match message.status.map(u16::from) {
                None => {
                    let Some(subject) = header("Nats-Subject") else {
                        return Ok(None);
                    };
                    let key = subject
                        .strip_prefix(&self.prefix)
                        .unwrap_or_default()
                        .to_string();
                    let revision = header("Nats-Sequence")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    out.push(KvEntry {
                        key,
                        revision,
                        state: self.state_of(&headers, message.payload),
                    });
                }
                // End of batch: complete only if nothing is left.
                Some(204) => {
                    let pending: u64 = header("Nats-Num-Pending")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(1);
                    return Ok((pending == 0).then_some(out));
                }
                Some(404) => return Ok(Some(Vec::new())),
                Some(_) => return Ok(None),
            }
        }
    }

    /// Number of subjects matching `pattern` (values and markers alike): one direct batch get when
    /// there are at most [`DIRECT_BATCH`], else the pending count of a last-per-subject consumer.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn count(&self, pattern: &str) -> Result<u64, BusError> {
        if let Some(entries) = self.direct_batch(pattern).await? {
            return Ok(entries.len() as u64);
        }
        let consumer = self.last_per_subject(pattern, true).await?;
        let total = consumer.cached_info().num_pending;
        let _ = self
            .store
            .stream
            .delete_consumer(&consumer.cached_info().name)
            .await;
        Ok(total)
    }

    /// Watches the keys matching `pattern`: first the current entry of every key, then every
    /// change live. Each item is `(entry, seen_current)`; `seen_current` turns true once the
    /// initial values have all been delivered. Markers carry no tag here.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] when the watch cannot be created.
    pub async fn watch(
        &self,
        pattern: &str,
    ) -> Result<impl futures::Stream<Item = Result<(KvEntry, bool), BusError>> + use<>, BusError>
    {
        let bucket = self.bucket.clone();
        let watch = self
            .store
            .watch_with_history(pattern)
            .await
            .map_err(|e| BusError::during(BusErrorKind::Kv, "kv watch", &self.bucket, e))?;
        Ok(watch.map(move |item| {
            let entry =
                item.map_err(|e| BusError::during(BusErrorKind::Kv, "kv watch", &bucket, e))?;
            let state = match entry.operation {
                kv::Operation::Put => KvState::Value(entry.value),
                kv::Operation::Delete | kv::Operation::Purge => KvState::Deleted { tag: None },
            };
            let seen_current = entry.seen_current;
            Ok((
                KvEntry {
                    key: entry.key,
                    revision: entry.revision,
                    state,
                },
                seen_current,
            ))
        }))
    }

    /// Messages and bytes held by the bucket's stream (messages = subjects with history 1).
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn usage(&self) -> Result<(u64, u64), BusError> {
        let info = self
            .store
            .stream
            .get_info()
            .await
            .map_err(|e| BusError::during(BusErrorKind::Kv, "stream info", &self.bucket, e))?;
        Ok((info.state.messages, info.state.bytes))
    }

    fn state_of(&self, headers: &HeaderMap, payload: Bytes) -> KvState {
        if is_marker(headers) {
            KvState::Deleted {
                tag: self
                    .marker_tag
                    .and_then(|name| headers.get(name))
                    .map(|v| v.as_str().to_string()),
            }
        } else {
            KvState::Value(payload)
        }
    }
}

/// A KV delete or purge marker, or a marker the server wrote (see the module docs).
pub(crate) fn is_marker(headers: &HeaderMap) -> bool {
    matches!(
        headers.get(KV_OPERATION).map(|v| v.as_str()),
        Some("DEL") | Some("PURGE")
    ) || headers.get(NATS_MARKER_REASON).is_some()
}
