//! The one module of this crate that uses async-nats types: KV bucket provisioning, reads of the
//! current entry with its headers, compare-and-set puts and delete markers (expiring ones with a
//! `Nats-TTL` header when the handle has a marker TTL), marker-free removal, last-per-subject
//! snapshots of a key pattern, and the durable pull consumers the builder and the indexer read from.
//!
//! A marker is recognised by `KV-Operation: DEL` / `PURGE`, or by `Nats-Marker-Reason`: the marker
//! the server itself writes when an entry expires on a stream with `subject_delete_marker_ttl`. We
//! never enable that (an expired marker's subject just disappears), but a bucket configured so by
//! someone else must not turn such a marker into an empty value: it reads as a marker without
//! `Fpaas-Rev` ([`EntryState::Deleted`] with `rev: None`), which lets any later put through (as
//! "no entry" does) and makes a delete `already_deleted` — the same outcomes as after the original
//! marker expired without a trace.
//!
//! Everything outside this module sees [`Kv`], [`Current`], [`SnapshotEntry`], [`DurableReader`] and
//! [`Delivery`], so a change of client API stays here.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{NATS_MARKER_REASON, NATS_MESSAGE_TTL};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, AckKind, kv};
use bytes::Bytes;
use futures::StreamExt;

use crate::error::Error;

/// Header naming the KV operation of a marker (`DEL`, `PURGE`); absent on puts.
const KV_OPERATION: &str = "KV-Operation";
/// Header carrying the repository revision a delete marker stands for.
pub const HEADER_REV: &str = "Fpaas-Rev";
/// Compare-and-set: the last sequence the subject must have (0 = no message).
const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";

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

/// The latest entry of a key and its KV revision (stream sequence), for compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    /// The stream sequence of the entry; pass it as `expected` to write over it.
    pub revision: u64,
    /// Value or marker.
    pub state: EntryState,
}

/// The result of a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// Written at this KV revision.
    Written(u64),
    /// The key changed since `expected` (someone else wrote): re-read and decide again.
    Conflict,
    /// The message exceeds the server's `max_payload`.
    TooLarge,
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

/// Handle on one KV bucket.
#[derive(Clone, Debug)]
pub struct Kv {
    js: jetstream::Context,
    store: kv::Store,
    bucket: String,
    /// `$KV.<bucket>.`
    prefix: String,
    /// `Nats-TTL` of the delete markers written through this handle (`None` = they never expire).
    marker_ttl: Option<Duration>,
}

/// Most keys read by one direct batch get before falling back to a consumer.
const DIRECT_BATCH: usize = 1_000;

/// Longest wait of one snapshot pull request (an empty answer ends the read).
const SNAPSHOT_IDLE: Duration = Duration::from_secs(2);

impl Kv {
    /// Opens the bucket, creating it (history 1, file storage) when missing (`fpaas_bus::ensure_kv`).
    /// With a [`BucketOptions::delete_marker_ttl`] the bucket is made to accept per-message TTLs
    /// (once on, they stay on) and this handle's delete markers carry `Nats-TTL`.
    ///
    /// # Errors
    /// [`Error::Config`] for a marker TTL under 1 s, [`Error::MarkerTtlUnsupported`] when the
    /// bucket cannot accept TTLs, [`Error::Nats`] when the server refuses or cannot be reached.
    pub async fn open_or_create(
        client: &async_nats::Client,
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
        let js = jetstream::new(client.clone());
        let settings = fpaas_bus::KvSettings {
            description: options.description.clone(),
            replicas: options.replicas.max(1),
            allow_msg_ttl: options.delete_marker_ttl.is_some(),
            ..fpaas_bus::KvSettings::bucket(&options.bucket)
        };
        let store = fpaas_bus::ensure_kv(&js, &settings)
            .await
            .map_err(|e| match e.kind() {
                fpaas_bus::BusErrorKind::MessageTtl => Error::MarkerTtlUnsupported {
                    bucket: options.bucket.clone(),
                    source: e,
                },
                _ => Error::nats("ensure kv bucket", e),
            })?;
        let mut kv = Self::from_store(js, store, &options.bucket);
        kv.marker_ttl = options.delete_marker_ttl;
        Ok(kv)
    }

    /// Opens an existing bucket.
    ///
    /// # Errors
    /// [`Error::Nats`] when it does not exist or the server cannot be reached.
    pub async fn open(client: &async_nats::Client, bucket: &str) -> Result<Self, Error> {
        let js = jetstream::new(client.clone());
        let store = js
            .get_key_value(bucket)
            .await
            .map_err(|e| Error::nats("open kv bucket", e))?;
        Ok(Self::from_store(js, store, bucket))
    }

    fn from_store(js: jetstream::Context, store: kv::Store, bucket: &str) -> Self {
        Self {
            js,
            store,
            bucket: bucket.to_string(),
            prefix: format!("$KV.{bucket}."),
            marker_ttl: None,
        }
    }

    /// How long the delete markers written through this handle stay (`None` = forever; always
    /// `None` for [`Kv::open`]).
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

    /// The latest entry of `key` with headers, or `None` when the key never existed (or was
    /// removed without a marker).
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn current(&self, key: &str) -> Result<Option<Current>, Error> {
        let subject = format!("{}{key}", self.prefix);
        match self.store.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(Current {
                revision: message.sequence,
                state: state_of(&message.headers, message.payload),
            })),
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::nats("kv get", err)),
        }
    }

    /// The current value of `key` (`None` when absent or deleted).
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        Ok(match self.current(key).await? {
            Some(Current {
                state: EntryState::Value(v),
                ..
            }) => Some(v),
            _ => None,
        })
    }

    /// Puts `value` only if the key's latest revision is `expected` (0 = the key has no entry).
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure (a conflict is [`WriteResult::Conflict`]).
    pub async fn put_expect(
        &self,
        key: &str,
        value: Bytes,
        expected: u64,
    ) -> Result<WriteResult, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(EXPECTED_LAST_SUBJECT_SEQ, expected.to_string());
        self.publish(key, headers, value).await
    }

    /// Writes a delete marker (carrying `Fpaas-Rev` when `rev` is given, and `Nats-TTL` when this
    /// handle has a marker TTL) only if the key's latest revision is `expected`.
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn delete_expect(
        &self,
        key: &str,
        expected: u64,
        rev: Option<&str>,
    ) -> Result<WriteResult, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        headers.insert(EXPECTED_LAST_SUBJECT_SEQ, expected.to_string());
        if let Some(rev) = rev {
            headers.insert(HEADER_REV, rev);
        }
        if let Some(ttl) = self.marker_ttl {
            headers.insert(NATS_MESSAGE_TTL, ttl.as_secs().to_string());
        }
        self.publish(key, headers, Bytes::new()).await
    }

    /// Unconditional put.
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<WriteResult, Error> {
        self.publish(key, HeaderMap::new(), value).await
    }

    async fn publish(
        &self,
        key: &str,
        headers: HeaderMap,
        value: Bytes,
    ) -> Result<WriteResult, Error> {
        let subject = format!("{}{key}", self.prefix);
        let ack = self
            .js
            .publish_with_headers(subject, headers, value)
            .await
            .map_err(|e| Error::nats("kv publish", e))?;
        match ack.await {
            Ok(ack) => Ok(WriteResult::Written(ack.sequence)),
            Err(err) => match err.kind() {
                PublishErrorKind::WrongLastSequence => Ok(WriteResult::Conflict),
                PublishErrorKind::MaxPayloadExceeded => Ok(WriteResult::TooLarge),
                _ => Err(Error::nats("kv publish ack", err)),
            },
        }
    }

    /// Removes every message of `key` from the stream, leaving no marker (the subject disappears,
    /// and so does its server memory). Watchers do not see this removal: use it for derived
    /// data that is queried, not watched.
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn remove(&self, key: &str) -> Result<u64, Error> {
        let subject = format!("{}{key}", self.prefix);
        let response = self
            .store
            .stream
            .purge()
            .filter(subject)
            .await
            .map_err(|e| Error::nats("kv remove", e))?;
        Ok(response.purged)
    }

    /// The latest entry of every key matching `pattern` (`*` / `>` wildcards), read once through an
    /// ephemeral last-per-subject consumer. With `headers_only` the values are empty.
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn snapshot(
        &self,
        pattern: &str,
        headers_only: bool,
    ) -> Result<Vec<SnapshotEntry>, Error> {
        let mut out = Vec::new();
        self.snapshot_each(pattern, headers_only, |entry| out.push(entry))
            .await?;
        Ok(out)
    }

    /// Like [`Kv::snapshot`], handing each entry to `f` instead of collecting them.
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn snapshot_each(
        &self,
        pattern: &str,
        headers_only: bool,
        mut f: impl FnMut(SnapshotEntry),
    ) -> Result<u64, Error> {
        if !headers_only && let Some(entries) = self.direct_batch(pattern).await? {
            let n = entries.len() as u64;
            entries.into_iter().for_each(f);
            return Ok(n);
        }
        let consumer = self
            .store
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
            .map_err(|e| Error::nats("create snapshot consumer", e))?;
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
                .map_err(|e| Error::nats("snapshot read", e))?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| Error::nats("snapshot read", e))?;
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
                f(SnapshotEntry {
                    key,
                    revision,
                    state: state_of(&headers, message.payload.clone()),
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

    /// The latest entry of every key matching `pattern` in one direct batch get (ADR-31,
    /// `multi_last`; nats-server 2.11+): no consumer is created, so a small read costs about one round
    /// trip. Returns `None` when the answer does not fit in one batch ([`DIRECT_BATCH`] keys) or the
    /// server does not answer the batch form; the caller then reads through a consumer.
    async fn direct_batch(&self, pattern: &str) -> Result<Option<Vec<SnapshotEntry>>, Error> {
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::nats("direct get subscribe", e))?;
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
            .map_err(|e| Error::nats("direct get", e))?;
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
                    out.push(SnapshotEntry {
                        key,
                        revision,
                        state: state_of(&headers, message.payload),
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
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn count(&self, pattern: &str) -> Result<u64, Error> {
        if let Some(entries) = self.direct_batch(pattern).await? {
            return Ok(entries.len() as u64);
        }
        let consumer = self
            .store
            .stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: AckPolicy::None,
                filter_subject: format!("{}{pattern}", self.prefix),
                headers_only: true,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats("create count consumer", e))?;
        let total = consumer.cached_info().num_pending;
        let _ = self
            .store
            .stream
            .delete_consumer(&consumer.cached_info().name)
            .await;
        Ok(total)
    }

    /// Watches the keys matching `pattern`: first the current entry of every key, then every change
    /// live. Each item is `(key, state, seen_current)`; `seen_current` turns true once the initial
    /// values have all been delivered.
    ///
    /// # Errors
    /// [`Error::Nats`] when the watch cannot be created.
    pub async fn watch(
        &self,
        pattern: &str,
    ) -> Result<impl futures::Stream<Item = Result<(String, EntryState, bool), Error>>, Error> {
        let watch = self
            .store
            .watch_with_history(pattern)
            .await
            .map_err(|e| Error::nats("kv watch", e))?;
        Ok(watch.map(|item| {
            let entry = item.map_err(|e| Error::nats("kv watch", e))?;
            let state = match entry.operation {
                kv::Operation::Put => EntryState::Value(entry.value),
                kv::Operation::Delete | kv::Operation::Purge => EntryState::Deleted { rev: None },
            };
            Ok((entry.key, state, entry.seen_current))
        }))
    }

    /// Bytes and messages (= subjects with history 1) held by the bucket's stream.
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn usage(&self) -> Result<(u64, u64), Error> {
        let info = self
            .store
            .stream
            .get_info()
            .await
            .map_err(|e| Error::nats("stream info", e))?;
        Ok((info.state.messages, info.state.bytes))
    }
}

/// A KV delete or purge marker, or a marker the server wrote (see the module docs).
fn is_marker(headers: &HeaderMap) -> bool {
    matches!(
        headers.get(KV_OPERATION).map(|v| v.as_str()),
        Some("DEL") | Some("PURGE")
    ) || headers.get(NATS_MARKER_REASON).is_some()
}

fn state_of(headers: &HeaderMap, payload: Bytes) -> EntryState {
    if is_marker(headers) {
        EntryState::Deleted {
            rev: headers.get(HEADER_REV).map(|v| v.as_str().to_string()),
        }
    } else {
        EntryState::Value(payload)
    }
}

/// A durable pull consumer read in bounded batches with explicit acks.
#[derive(Debug)]
pub struct DurableReader {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    /// `max_age` of the stream read (0 = no age limit).
    stream_max_age: Duration,
}

/// Settings of a [`DurableReader`].
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    /// Stream to read.
    pub stream: String,
    /// Durable consumer name.
    pub durable: String,
    /// Filter subjects (empty = everything).
    pub filters: Vec<String>,
    /// Ack wait.
    pub ack_wait: Duration,
    /// Most unacknowledged messages the server hands out.
    pub max_ack_pending: i64,
}

impl DurableReader {
    /// Creates the durable consumer, or updates its filters and ack wait when it exists (its
    /// position is kept).
    ///
    /// # Errors
    /// [`Error::Nats`] when the stream does not exist or the server refuses the consumer.
    pub async fn ensure(
        client: &async_nats::Client,
        options: &ReaderOptions,
    ) -> Result<Self, Error> {
        let js = jetstream::new(client.clone());
        let stream = js
            .get_stream(&options.stream)
            .await
            .map_err(|e| Error::nats("get stream", e))?;
        let stream_max_age = stream.cached_info().config.max_age;
        let (filter_subject, filter_subjects) = match options.filters.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(options.durable.clone()),
                description: Some("fpaas recordkv".into()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                max_deliver: -1,
                filter_subject,
                filter_subjects,
                max_ack_pending: options.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats("create durable consumer", e))?;
        Ok(Self {
            consumer,
            stream_max_age,
        })
    }

    /// The retention (`max_age`) of the stream read, as it was when the reader was created;
    /// zero when the stream has no age limit.
    pub fn stream_max_age(&self) -> Duration {
        self.stream_max_age
    }

    /// Fetches up to `max` messages, waiting at most `wait` for the first.
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, Error> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| Error::nats("fetch", e))?;
        let mut out = Vec::with_capacity(max);
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| Error::nats("fetch", e))?;
            let headers = message.headers.clone().unwrap_or_default();
            let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
            let info = message.info().ok();
            out.push(Delivery {
                redelivered: info.as_ref().is_some_and(|i| i.delivered > 1),
                stream_seq: info.as_ref().map(|i| i.stream_sequence).unwrap_or(0),
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
                did: header(fpaas_event::HEADER_DID),
                kv_deleted: is_marker(&headers),
                message,
            });
        }
        Ok(out)
    }

    /// Messages not yet delivered plus delivered and not acked, from the server.
    ///
    /// # Errors
    /// [`Error::Nats`] on a server or connection failure.
    pub async fn backlog(&mut self) -> Result<u64, Error> {
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| Error::nats("consumer info", e))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}

/// One delivered message.
#[derive(Debug)]
pub struct Delivery {
    /// Its subject.
    pub subject: String,
    /// Its payload.
    pub payload: Bytes,
    /// The `Fpaas-Did` header (firehose events).
    pub did: Option<String>,
    /// A KV delete or purge marker (KV streams).
    pub kv_deleted: bool,
    /// Stream sequence.
    pub stream_seq: u64,
    /// Delivered before (not acked in time, e.g. by a killed instance): it may arrive after
    /// messages that followed it in the stream.
    pub redelivered: bool,
    message: jetstream::Message,
}

impl Delivery {
    /// Acknowledges: the message will not be delivered again.
    ///
    /// # Errors
    /// [`Error::Nats`] when the ack cannot be sent (it is then redelivered: harmless).
    pub async fn ack(&self) -> Result<(), Error> {
        self.message.ack().await.map_err(|e| Error::nats("ack", e))
    }

    /// Terminates: the message is poison and will never be delivered again.
    ///
    /// # Errors
    /// [`Error::Nats`] when the ack cannot be sent.
    pub async fn term(&self) -> Result<(), Error> {
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| Error::nats("term", e))
    }
}

/// Deletes the named streams that exist (KV buckets are `KV_<bucket>` streams; deleting a stream
/// deletes its consumers). Returns the names that were deleted.
///
/// # Errors
/// [`Error::Nats`] on a server or connection failure.
pub async fn delete_streams(
    client: &async_nats::Client,
    names: &[String],
) -> Result<Vec<String>, Error> {
    let js = jetstream::new(client.clone());
    let mut deleted = Vec::new();
    for name in names {
        if js.get_stream(name).await.is_ok() {
            js.delete_stream(name)
                .await
                .map_err(|e| Error::nats("delete stream", e))?;
            deleted.push(name.clone());
        }
    }
    Ok(deleted)
}

/// Names of every stream in the account.
///
/// # Errors
/// [`Error::Nats`] on a server or connection failure.
pub async fn stream_names(client: &async_nats::Client) -> Result<Vec<String>, Error> {
    let js = jetstream::new(client.clone());
    let mut names = js.stream_names();
    let mut out = Vec::new();
    while let Some(name) = names.next().await {
        out.push(name.map_err(|e| Error::nats("list streams", e))?);
    }
    Ok(out)
}
