//! [`StateBucket`]: a tenant's state bucket — a JetStream KV bucket that subscriptions write into and the API
//! reads — in one of two kinds ([`StateKind`]):
//!
//! - **values**: an ordinary KV bucket (history 1); writes are puts.
//! - **counters**: the bucket's stream has `allow_msg_counter` (nats-server 2.12+); writes are increments
//!   (`Nats-Incr: +N`, the server adds and stores `{"val":"N"}`). Measured on nats-server 2.15.1: a counter
//!   stream refuses `discard: new` (error 10052, so such a bucket is created as a stream here, with KV's
//!   naming and `discard: old`), refuses every message without `Nats-Incr` — puts and KV delete markers alike
//!   (10169) — and refuses `Nats-Incr` combined with `Nats-Expected-Last-Subject-Sequence` (10171): a counter
//!   bucket is increment-only and has no compare-and-set. An increment carrying a `Nats-Msg-Id` seen within the
//!   stream's duplicate window is answered `duplicate` and **not added again**, which is what makes a resent
//!   batch count once ([`COUNTER_DUPLICATE_WINDOW`]).
//!
//! Every write carries a `Nats-Msg-Id` chosen by the caller ([`StateWrite::msg_id`]), so a resent write within
//! the duplicate window is dropped by the server in both kinds (for a put this also keeps watchers from seeing
//! the same value twice).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, ErrorCode, kv, stream};
use bytes::Bytes;
use futures::StreamExt;

use crate::error::{BusError, BusErrorKind};
use crate::stream::{Storage, map_create_error, map_get_error};

/// The duplicate window of a counter bucket: an increment resent within it (same `Nats-Msg-Id`) is not added
/// again. The server keeps every id of the window in memory (about 100 bytes each).
pub const COUNTER_DUPLICATE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The duplicate window of a values bucket.
pub const VALUES_DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);

/// What a state bucket holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// Values written by puts.
    Values,
    /// Integer counters written by increments.
    Counters,
}

impl StateKind {
    /// `values` or `counters`.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Values => "values",
            StateKind::Counters => "counters",
        }
    }
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateWrite {
    /// The key (a valid KV key).
    pub key: String,
    /// The `Nats-Msg-Id`: the same write resent with the same id within the duplicate window is dropped.
    pub msg_id: String,
    /// The value (values) or the increment (counters).
    pub op: StateOp,
}

/// What a [`StateWrite`] does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateOp {
    /// Put these bytes (a values bucket).
    Put(Bytes),
    /// Add this (a counters bucket; may be negative).
    Incr(i64),
}

/// What [`StateBucket::write`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Writes the bucket stored.
    pub written: u64,
    /// Writes the bucket dropped as duplicates (resent within the duplicate window).
    pub duplicates: u64,
    /// Writes larger than the server accepts (dropped; retrying cannot help).
    pub too_large: u64,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFrom {
    /// With the current entry of every key, then every change.
    Current,
    /// With the changes from now on.
    New,
    /// With every entry still stored whose revision is at least this (history 1: the latest per key), then
    /// every change.
    Revision(u64),
}

/// A value read from a state bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct StateEntry {
    /// The key.
    pub key: String,
    /// The stored bytes (values) — for a counter its number, as JSON text.
    pub value: Bytes,
    /// The entry's revision (stream sequence).
    pub revision: u64,
    /// When it was written, unix nanoseconds.
    pub time_unix_ns: i128,
    /// False for a delete or purge marker (watches only).
    pub present: bool,
    /// The `Nats-Msg-Id` of the write (reads only): which batch wrote it.
    pub msg_id: Option<String>,
}

/// A watch of a state bucket ([`StateBucket::watch`]): a stream of `(entry, seen_current)`; its consumer is
/// deleted when it is dropped.
pub struct StateWatch {
    entries: futures::stream::BoxStream<'static, Result<(StateEntry, bool), BusError>>,
    stream: stream::Stream,
    consumer: String,
}

impl std::fmt::Debug for StateWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWatch")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl futures::Stream for StateWatch {
    type Item = Result<(StateEntry, bool), BusError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.entries.as_mut().poll_next(cx)
    }
}

impl Drop for StateWatch {
    fn drop(&mut self) {
        let (stream, name) = (self.stream.clone(), std::mem::take(&mut self.consumer));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Best effort: the inactivity threshold removes it anyway.
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

/// Handle on one state bucket.
#[derive(Clone)]
pub struct StateBucket {
    js: jetstream::Context,
    store: kv::Store,
    bucket: String,
    kind: StateKind,
    prefix: String,
}

impl std::fmt::Debug for StateBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBucket")
            .field("bucket", &self.bucket)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn stream_name(bucket: &str) -> String {
    format!("KV_{bucket}")
}

fn kind_of(config: &stream::Config) -> StateKind {
    if config.allow_message_counter {
        StateKind::Counters
    } else {
        StateKind::Values
    }
}

/// The number a counter message holds (`{"val":"N"}`), as JSON text (`0` when unreadable).
fn counter_value(payload: &[u8]) -> Bytes {
    #[derive(serde::Deserialize)]
    struct Val {
        val: String,
    }
    match serde_json::from_slice::<Val>(payload) {
        Ok(v)
            if !v.val.is_empty()
                && v.val
                    .trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit()) =>
        {
            Bytes::from(v.val)
        }
        _ => Bytes::from_static(b"0"),
    }
}

fn is_marker(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(crate::bucket::is_marker)
}

impl StateBucket {
    /// Opens the bucket `bucket`, creating it of `kind` when it does not exist.
    ///
    /// # Errors
    /// [`BusErrorKind::StreamConfig`] when it exists with the other kind or the server refuses the
    /// configuration; [`BusErrorKind::Kv`] / [`BusErrorKind::Timeout`] when the server cannot be reached.
    pub async fn ensure(
        js: &jetstream::Context,
        bucket: &str,
        kind: StateKind,
        replicas: usize,
        storage: Storage,
    ) -> Result<Self, BusError> {
        if let Some(existing) = Self::open(js, bucket).await? {
            if existing.kind != kind {
                return Err(BusError::new(
                    BusErrorKind::StreamConfig,
                    format!(
                        "state bucket {bucket} holds {}, not {}",
                        existing.kind.as_str(),
                        kind.as_str()
                    ),
                ));
            }
            return Ok(existing);
        }
        let counters = kind == StateKind::Counters;
        let config = stream::Config {
            name: stream_name(bucket),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            // A counter stream refuses `discard: new` (see the module docs).
            discard: if counters {
                stream::DiscardPolicy::Old
            } else {
                stream::DiscardPolicy::New
            },
            allow_direct: true,
            allow_rollup: true,
            deny_delete: true,
            duplicate_window: if counters {
                COUNTER_DUPLICATE_WINDOW
            } else {
                VALUES_DUPLICATE_WINDOW
            },
            num_replicas: replicas,
            storage: match storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            allow_message_counter: counters,
            description: Some(format!("fpaas state ({})", kind.as_str())),
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| map_create_error("create state bucket", e))?;
        let created = Self::open(js, bucket).await?.ok_or_else(|| {
            BusError::new(
                BusErrorKind::Kv,
                format!("state bucket {bucket} vanished after its creation"),
            )
        })?;
        if created.kind != kind {
            return Err(BusError::new(
                BusErrorKind::StreamConfig,
                format!(
                    "state bucket {bucket}: the server does not support {} (nats-server 2.12+ needed)",
                    kind.as_str()
                ),
            ));
        }
        tracing::info!(bucket, kind = kind.as_str(), "state bucket created");
        Ok(created)
    }

    /// Opens the bucket `bucket`, or `None` when it does not exist.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] / [`BusErrorKind::Timeout`] when the server cannot be reached.
    pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Option<Self>, BusError> {
        let config = match js.get_stream(stream_name(bucket)).await {
            Ok(stream) => stream.cached_info().config.clone(),
            Err(err) => {
                return match err.kind() {
                    GetStreamErrorKind::JetStream(e)
                        if e.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Ok(None)
                    }
                    _ => Err(map_get_error(err)),
                };
            }
        };
        let store = js
            .get_key_value(bucket)
            .await
            .map_err(|e| BusError::during(BusErrorKind::Kv, "open state bucket", bucket, e))?;
        Ok(Some(Self {
            js: js.clone(),
            store,
            bucket: bucket.to_owned(),
            kind: kind_of(&config),
            prefix: format!("$KV.{bucket}."),
        }))
    }

    /// Deletes the bucket and everything it holds; false when it did not exist.
    ///
    /// # Errors
    /// [`BusErrorKind::Other`] when the server refuses or cannot be reached.
    pub async fn delete(js: &jetstream::Context, bucket: &str) -> Result<bool, BusError> {
        let deleted = crate::stream::delete_streams(&js.client(), &[stream_name(bucket)]).await?;
        Ok(!deleted.is_empty())
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// What it holds.
    pub fn kind(&self) -> StateKind {
        self.kind
    }

    /// Stores `writes` (all published, then every acknowledgement awaited). Writes of the wrong kind for the
    /// bucket are refused before anything is sent.
    ///
    /// # Errors
    /// [`BusErrorKind::InvalidMessage`] for a write of the wrong kind or an invalid key; otherwise the first
    /// failed publish ([`BusErrorKind::Kv`], [`BusErrorKind::Timeout`]) — the others may have been stored, so the
    /// caller sends all of them again (with the same ids).
    pub async fn write(&self, writes: &[StateWrite]) -> Result<WriteReport, BusError> {
        for w in writes {
            let ok_kind = matches!(
                (&w.op, self.kind),
                (StateOp::Put(_), StateKind::Values) | (StateOp::Incr(_), StateKind::Counters)
            );
            if !ok_kind || !crate::is_valid_kv_key(&w.key) {
                return Err(BusError::new(
                    BusErrorKind::InvalidMessage,
                    format!(
                        "state bucket {} ({}): write of key {:?} refused",
                        self.bucket,
                        self.kind.as_str(),
                        w.key
                    ),
                ));
            }
        }
        let mut report = WriteReport::default();
        // Acks in flight at most this many at a time (each publish is a request of its own).
        for chunk in writes.chunks(256) {
            let mut acks = Vec::with_capacity(chunk.len());
            for w in chunk {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", w.msg_id.as_str());
                let payload = match &w.op {
                    StateOp::Put(bytes) => bytes.clone(),
                    StateOp::Incr(by) => {
                        headers.insert("Nats-Incr", format!("{by:+}").as_str());
                        Bytes::new()
                    }
                };
                let subject = format!("{}{}", self.prefix, w.key);
                let ack = self
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| {
                        BusError::during(BusErrorKind::Kv, "state publish", &self.bucket, e)
                    })?;
                acks.push(ack);
            }
            for ack in acks {
                match ack.await {
                    Ok(ack) if ack.duplicate => report.duplicates += 1,
                    Ok(_) => report.written += 1,
                    Err(err) => match err.kind() {
                        PublishErrorKind::MaxPayloadExceeded => report.too_large += 1,
                        PublishErrorKind::TimedOut => {
                            return Err(BusError::with_source(
                                BusErrorKind::Timeout,
                                format!("state publish ack ({})", self.bucket),
                                err,
                            ));
                        }
                        _ => {
                            return Err(BusError::during(
                                BusErrorKind::Kv,
                                "state publish ack",
                                &self.bucket,
                                err,
                            ));
                        }
                    },
                }
            }
        }
        Ok(report)
    }

    /// The current entry of `key` (`None` when it has none, or a delete marker).
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn get(&self, key: &str) -> Result<Option<StateEntry>, BusError> {
        let subject = format!("{}{key}", self.prefix);
        match self.store.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => {
                if is_marker(Some(&message.headers)) {
                    return Ok(None);
                }
                Ok(Some(StateEntry {
                    key: key.to_owned(),
                    msg_id: message
                        .headers
                        .get("Nats-Msg-Id")
                        .map(|v| v.as_str().to_owned()),
                    value: self.value_of(message.payload),
                    revision: message.sequence,
                    time_unix_ns: message.time.unix_timestamp_nanos(),
                    present: true,
                }))
            }
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(err) => Err(BusError::during(
                BusErrorKind::Kv,
                "state get",
                &self.bucket,
                err,
            )),
        }
    }

    /// The keys holding a value (markers left out) among those matching `pattern` (`>` = all), unordered.
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] on a server or connection failure.
    pub async fn keys(&self, pattern: &str) -> Result<Vec<String>, BusError> {
        let bucket =
            crate::bucket::KvBucket::new(self.js.clone(), self.store.clone(), &self.bucket);
        let mut keys = Vec::new();
        bucket
            .snapshot_each(pattern, true, |entry| {
                if matches!(entry.state, crate::KvState::Value(_)) {
                    keys.push(entry.key);
                }
            })
            .await?;
        Ok(keys)
    }

    /// Watches the keys matching `pattern` from `from`; items are `(entry, seen_current)`. The watch reads
    /// an ordered consumer (R=1, in memory) that is deleted when the returned stream is dropped (else the
    /// server would keep it for its 30-second inactivity threshold).
    ///
    /// # Errors
    /// [`BusErrorKind::Kv`] when the watch cannot be created.
    pub async fn watch(&self, pattern: &str, from: WatchFrom) -> Result<StateWatch, BusError> {
        use jetstream::consumer::DeliverPolicy;
        let deliver_policy = match from {
            WatchFrom::Current => DeliverPolicy::LastPerSubject,
            WatchFrom::New => DeliverPolicy::New,
            WatchFrom::Revision(rev) => DeliverPolicy::ByStartSequence {
                start_sequence: rev.max(1),
            },
        };
        let name = format!("state_watch_{}", rand::random::<u64>());
        let consumer = self
            .store
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                name: Some(name.clone()),
                description: Some("fpaas state watch".to_owned()),
                filter_subject: format!("{}{pattern}", self.prefix),
                deliver_policy,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::during(BusErrorKind::Kv, "state watch", &self.bucket, e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::during(BusErrorKind::Kv, "state watch", &self.bucket, e))?;
        let this = self.clone();
        let entries = messages.map(move |item| {
            let message = item
                .map_err(|e| BusError::during(BusErrorKind::Kv, "state watch", &this.bucket, e))?;
            let info = message
                .info()
                .map_err(|e| BusError::with_source(BusErrorKind::Kv, "state watch info", e))?;
            let (revision, pending, time) = (
                info.stream_sequence,
                info.pending,
                info.published.unix_timestamp_nanos(),
            );
            let present = !is_marker(message.headers.as_ref());
            let key = message
                .subject
                .as_str()
                .strip_prefix(&this.prefix)
                .unwrap_or_default()
                .to_owned();
            Ok((
                StateEntry {
                    key,
                    value: if present {
                        this.value_of(message.payload.clone())
                    } else {
                        Bytes::new()
                    },
                    revision,
                    time_unix_ns: time,
                    present,
                    msg_id: None,
                },
                pending == 0,
            ))
        });
        Ok(StateWatch {
            entries: Box::pin(entries),
            stream: self.store.stream.clone(),
            consumer: name,
        })
    }

    fn value_of(&self, payload: Bytes) -> Bytes {
        match self.kind {
            StateKind::Values => payload,
            StateKind::Counters => counter_value(&payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_values_are_numbers_or_zero() {
        assert_eq!(counter_value(br#"{"val":"42"}"#), Bytes::from_static(b"42"));
        assert_eq!(counter_value(br#"{"val":"-7"}"#), Bytes::from_static(b"-7"));
        for junk in [
            &b""[..],
            b"{}",
            br#"{"val":"1e3"}"#,
            br#"{"val":""}"#,
            b"[1]",
        ] {
            assert_eq!(counter_value(junk), Bytes::from_static(b"0"));
        }
    }
}
