//! [`MsgLog`]: a JetStream stream used as a log of individual messages that are read, deleted and purged by
//! subject and sequence — the shape of a dead-letter queue. Provisioning ([`ensure_msglog`]: limits
//! retention by age, file storage), publishing with headers (returns the stream sequence), listing the
//! messages of one subject from a sequence on, getting and deleting one message by sequence, purging a
//! subject, counting a subject's messages, and waiting for the next message published on a subject (a core
//! subscription: a JetStream publish reaches core subscribers too). Reads go through the stream leader (`STREAM.MSG.GET`), so they are consistent with the writes
//! just made. What the subjects and headers mean stays with the caller (`fpaas_control::layout`).

use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{BusError, BusErrorKind};
use crate::stream::Storage;

/// JetStream error of a failed message delete (`JSStreamMsgDeleteFailedF`); for a sequence that holds no
/// message its description is "sequence N not found" (measured on nats-server 2.15).
const MSG_DELETE_FAILED: u64 = 10_043;
/// JetStream store error (`JSStreamStoreFailedF`); for a sequence past the last one its description is
/// "stream store EOF".
const STORE_FAILED: u64 = 10_057;

/// Settings of a message log stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MsgLogSettings {
    /// Stream name.
    pub name: String,
    /// Subjects captured by the stream.
    pub subjects: Vec<String>,
    /// How long a message is kept, in seconds.
    pub max_age_secs: u64,
    /// Disk guard in bytes (oldest discarded first); -1 = unlimited.
    pub max_bytes: i64,
    /// Storage type.
    pub storage: Storage,
    /// Replicas: 1 (single server) or 3 (cluster).
    pub replicas: usize,
}

impl Default for MsgLogSettings {
    fn default() -> Self {
        Self {
            name: "FPAAS_DLQ".to_owned(),
            subjects: vec!["fpaas.dlq.>".to_owned()],
            max_age_secs: 7 * 24 * 60 * 60,
            max_bytes: -1,
            storage: Storage::File,
            replicas: 1,
        }
    }
}

/// One message of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedMsg {
    /// Stream sequence.
    pub seq: u64,
    /// Subject.
    pub subject: String,
    /// Headers (name, value), in the order received; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
    /// Payload.
    pub payload: Bytes,
    /// When the stream stored it.
    pub time: SystemTime,
}

impl LoggedMsg {
    /// The first value of header `name` (case-sensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Handle on a message log stream.
#[derive(Clone)]
pub struct MsgLog {
    js: jetstream::Context,
    stream: stream::Stream,
    name: String,
}

impl std::fmt::Debug for MsgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgLog")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Creates the stream, or updates its retention, size guard and replicas to `settings`; idempotent.
///
/// # Errors
/// [`BusErrorKind::StreamConfig`] for a configuration the server refuses, [`BusErrorKind::Timeout`] /
/// [`BusErrorKind::Other`] when the server cannot be reached.
pub async fn ensure_msglog(
    js: &jetstream::Context,
    settings: &MsgLogSettings,
) -> Result<MsgLog, BusError> {
    if settings.name.is_empty() || settings.subjects.is_empty() || settings.max_age_secs == 0 {
        return Err(BusError::new(
            BusErrorKind::StreamConfig,
            format!(
                "message log {:?}: name, subjects and max_age_secs are required",
                settings.name
            ),
        ));
    }
    let config = stream::Config {
        name: settings.name.clone(),
        subjects: settings.subjects.clone(),
        max_age: Duration::from_secs(settings.max_age_secs),
        max_bytes: settings.max_bytes,
        num_replicas: settings.replicas,
        storage: match settings.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(config.clone()).await.map_err(|e| {
        BusError::with_source(
            BusErrorKind::StreamConfig,
            format!("message log {}", settings.name),
            e,
        )
    })?;
    let current = stream.cached_info().config.clone();
    if current.max_age != config.max_age
        || current.max_bytes != config.max_bytes
        || current.num_replicas.max(1) != config.num_replicas.max(1)
        || current.subjects != config.subjects
    {
        let mut update = current;
        update.max_age = config.max_age;
        update.max_bytes = config.max_bytes;
        update.num_replicas = config.num_replicas;
        update.subjects = config.subjects;
        js.update_stream(update).await.map_err(|e| {
            BusError::with_source(
                BusErrorKind::StreamConfig,
                format!("update message log {}", settings.name),
                e,
            )
        })?;
        stream = js.get_stream(&settings.name).await.map_err(|e| {
            BusError::with_source(
                BusErrorKind::Other,
                format!("message log {}", settings.name),
                e,
            )
        })?;
    }
    Ok(MsgLog {
        js: js.clone(),
        stream,
        name: settings.name.clone(),
    })
}

impl MsgLog {
    /// The stream name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes `payload` with `headers` on `subject`; returns the stream sequence once stored.
    ///
    /// # Errors
    /// [`BusErrorKind::InvalidMessage`] for a bad header, [`BusErrorKind::MaxPayload`] when too large,
    /// [`BusErrorKind::Publish`] / [`BusErrorKind::Timeout`] otherwise.
    pub async fn publish(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: Bytes,
    ) -> Result<u64, BusError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if name.is_empty()
                || name.bytes().any(|b| b <= b' ' || b == b':' || b >= 127)
                || value.bytes().any(|b| b == b'\r' || b == b'\n')
            {
                return Err(BusError::new(
                    BusErrorKind::InvalidMessage,
                    format!("header {name:?} is not a valid NATS header"),
                ));
            }
            map.append(*name, *value);
        }
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), map, payload)
            .await
            .map_err(|e| BusError::during(BusErrorKind::Publish, "publish", &self.name, e))?;
        let ack = ack.await.map_err(|e| {
            use async_nats::jetstream::context::PublishErrorKind as K;
            let kind = match e.kind() {
                K::TimedOut => BusErrorKind::Timeout,
                K::MaxPayloadExceeded => BusErrorKind::MaxPayload,
                _ => BusErrorKind::Publish,
            };
            BusError::during(kind, "publish ack", &self.name, e)
        })?;
        Ok(ack.sequence)
    }

    fn to_msg(message: jetstream::message::StreamMessage) -> LoggedMsg {
        let mut headers = Vec::new();
        for (name, values) in message.headers.iter() {
            for value in values {
                headers.push((name.to_string(), value.as_str().to_owned()));
            }
        }
        LoggedMsg {
            seq: message.sequence,
            subject: message.subject.to_string(),
            headers,
            payload: message.payload,
            time: SystemTime::from(message.time),
        }
    }

    /// The message at `seq` (`None` when there is none: never written, deleted, purged or expired).
    ///
    /// # Errors
    /// [`BusErrorKind::Other`] on a server or connection failure.
    pub async fn get(&self, seq: u64) -> Result<Option<LoggedMsg>, BusError> {
        if seq == 0 {
            return Ok(None);
        }
        match self.stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(Self::to_msg(m))),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(BusError::during(
                BusErrorKind::Other,
                "message get",
                &self.name,
                e,
            )),
        }
    }

    /// Up to `limit` messages on `subject` (no wildcards needed, but allowed) with sequence ≥ `from_seq`, in
    /// sequence order.
    ///
    /// # Errors
    /// [`BusErrorKind::Other`] on a server or connection failure.
    pub async fn list(
        &self,
        subject: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LoggedMsg>, BusError> {
        let mut out = Vec::new();
        let mut next = from_seq.max(1);
        while out.len() < limit {
            match self
                .stream
                .get_first_raw_message_by_subject(subject, next)
                .await
            {
                Ok(m) => {
                    next = m.sequence + 1;
                    out.push(Self::to_msg(m));
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => {
                    return Err(BusError::during(
                        BusErrorKind::Other,
                        "message list",
                        &self.name,
                        e,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Deletes the message at `seq`; `false` when there was none.
    ///
    /// # Errors
    /// [`BusErrorKind::Other`] on a server or connection failure.
    pub async fn delete(&self, seq: u64) -> Result<bool, BusError> {
        use async_nats::jetstream::stream::DeleteMessageErrorKind as K;
        match self.stream.delete_message(seq).await {
            Ok(deleted) => Ok(deleted),
            Err(e) => match e.kind() {
                K::JetStream(js)
                    if js.error_code() == ErrorCode::NO_MESSAGE_FOUND
                        || (js.error_code() == ErrorCode(MSG_DELETE_FAILED)
                            && js.to_string().contains("not found"))
                        || (js.error_code() == ErrorCode(STORE_FAILED)
                            && js.to_string().contains("EOF")) =>
                {
                    Ok(false)
                }
                _ => Err(BusError::during(
                    BusErrorKind::Other,
                    "message delete",
                    &self.name,
                    e,
                )),
            },
        }
    }

    /// How many messages `subject` holds (one stream-info request with a subject filter; the server answers
    /// from its per-subject index).
    ///
    /// # Errors
    /// [`BusErrorKind::Other`] on a server or connection failure.
    pub async fn count(&self, subject: &str) -> Result<u64, BusError> {
        use futures::TryStreamExt;
        let counts =
            self.stream.info_with_subjects(subject).await.map_err(|e| {
                BusError::during(BusErrorKind::Other, "subject count", &self.name, e)
            })?;
        let all: Vec<(String, usize)> = counts
            .try_collect()
            .await
            .map_err(|e| BusError::during(BusErrorKind::Other, "subject count", &self.name, e))?;
        Ok(all.iter().map(|(_, n)| *n as u64).sum())
    }

    /// A core subscription on `subject`: [`SubjectWatch::wait`] returns when something is published on it
    /// (a message stored into this log on that subject included). Dropped = unsubscribed.
    ///
    /// # Errors
    /// [`BusErrorKind::Other`] when the subscription cannot be made.
    pub async fn watch(&self, subject: &str) -> Result<SubjectWatch, BusError> {
        let sub = self
            .js
            .client()
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| BusError::during(BusErrorKind::Other, "subscribe", &self.name, e))?;
        Ok(SubjectWatch { sub })
    }

    /// Removes every message on `subject` (wildcards allowed); returns how many.
    ///
    /// # Errors
    /// [`BusErrorKind::Other`] on a server or connection failure.
    pub async fn purge(&self, subject: &str) -> Result<u64, BusError> {
        let response = self
            .stream
            .purge()
            .filter(subject)
            .await
            .map_err(|e| BusError::during(BusErrorKind::Other, "purge", &self.name, e))?;
        Ok(response.purged)
    }
}

/// A core subscription on one subject of a [`MsgLog`] ([`MsgLog::watch`]).
#[derive(Debug)]
pub struct SubjectWatch {
    sub: async_nats::Subscriber,
}

impl SubjectWatch {
    /// Waits at most `timeout` for a message on the subject; `true` when one came.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        use futures::StreamExt;
        matches!(
            tokio::time::timeout(timeout, self.sub.next()).await,
            Ok(Some(_))
        )
    }
}
