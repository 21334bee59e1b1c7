//! The firehose stream: its settings ([`StreamSettings`]) and idempotent provisioning
//! ([`ensure_stream`]) that creates the stream, or updates it in place and reports the drift.
//!
//! # Message size policy (`max_payload` / `max_msg_size`)
//! - Upstream limits one record to 1,000,000 bytes of DAG-CBOR. The shuffler drops larger records
//!   with a counted reason before they reach the bus.
//! - The stream accepts messages up to [`StreamSettings::max_msg_size`], **1 MiB by default: the
//!   `max_payload` of a nats-server with default settings**, so the defaults agree with every server
//!   the project starts (`fpaas dev` runs a default server; the test and bench servers allow 4 MiB)
//!   and with a stock deployment. An event larger than that (only a record near the 1,000,000-byte
//!   limit full of byte strings, which grow by a third in base64, can get there) is dropped and
//!   counted (`payload_too_large`) before it is sent. To carry those too, raise the server's
//!   `max_payload` (e.g. `max_payload: 4MB`, well below the 64 MiB hard ceiling) and then
//!   `max_msg_size` (e.g. 2 MiB).
//! - A `max_msg_size` above the connected server's `max_payload` does not crash anything:
//!   [`ensure_stream`] logs a warning and reports it ([`StreamReport::warnings`]); a message above
//!   the server's `max_payload` or the stream's `max_msg_size` fails with
//!   [`BusErrorKind::MaxPayload`] (not retryable), which the caller drops and counts.
//!
//! # Retention
//! Age-based (`max_age`, 24 h by default: the relay's own replay window is 24–72 h, so a cursor
//! older than our stream is replayed from the relay instead). `max_bytes` is a disk guard on top,
//! discarding the oldest messages first when it is reached.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::stream;
use serde::{Deserialize, Serialize};

use crate::error::{BusError, BusErrorKind};

/// Where JetStream keeps the stream's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk (survives restarts). The default and the only sane choice for the firehose.
    File,
    /// In memory (lost on restart); for experiments only.
    Memory,
}

/// Stream block compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// S2 compression of the stored blocks (nats-server 2.10+).
    S2,
    /// No compression.
    None,
}

/// Settings of the firehose JetStream stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// Stream name.
    pub name: String,
    /// Subjects captured by the stream.
    pub subjects: Vec<String>,
    /// Maximum age of a message in seconds.
    pub max_age_secs: u64,
    /// `Nats-Msg-Id` deduplication window in seconds.
    ///
    /// Must cover the worst time between two publishes of the same event: the skew between two
    /// shufflers reading different relays, a shuffler restart that replays from its persisted
    /// cursor, and the reconnect backoff plus republish of un-acked messages after an outage.
    /// Dedup ids are held in server memory for the whole window: measured ~300-400 B per id, so
    /// 300 s costs ~170 MB at 2,000 events/s and ~570 MB at 5,000/s (docs/shuffler.md, reproduce
    /// with `scripts/py/dedup_window_memory.py`); a bulk replay holds every id it publishes within
    /// the window.
    pub duplicate_window_secs: u64,
    /// Number of replicas: 1 (single server) or 3 (cluster). Values up to 5 are accepted.
    pub replicas: usize,
    /// Storage type. Cannot be changed on an existing stream.
    pub storage: Storage,
    /// Compression.
    pub compression: Compression,
    /// Disk guard in bytes; the oldest messages are discarded when it is reached. `-1` disables
    /// it. JetStream counts *uncompressed* record bytes (payload + subject + headers, ~880 B per
    /// event measured) against it, so S2 does not stretch it. Default 32 GiB: the full 24 h at up to
    /// ~1.27× today's average of 350 events/s (docs/storage.md); size it for your peaks with
    /// `fpaas storage-estimate`. Not larger by default because the server reserves it against its
    /// JetStream `max_file_store` (75% of free disk unless configured) and stream creation fails
    /// with "insufficient resources" when it does not fit.
    pub max_bytes: i64,
    /// Largest accepted message in bytes (payload plus headers). Default 1 MiB (a default
    /// nats-server's `max_payload`); see the module doc for the `max_payload` policy.
    pub max_msg_size: i32,
}

/// Default [`StreamSettings::max_bytes`]: 32 GiB.
pub const DEFAULT_STREAM_MAX_BYTES: i64 = 32 * 1024 * 1024 * 1024;
/// Default [`StreamSettings::max_msg_size`]: 1 MiB, the `max_payload` of a default nats-server.
pub const DEFAULT_MAX_MSG_SIZE: i32 = 1024 * 1024;
/// `max_payload` of a nats-server started without that setting (what `fpaas dev` runs).
pub const NATS_DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: "FIREHOSE".to_owned(),
            subjects: vec!["atproto.firehose.>".to_owned()],
            max_age_secs: 24 * 60 * 60,
            duplicate_window_secs: 5 * 60,
            replicas: 1,
            storage: Storage::File,
            compression: Compression::S2,
            max_bytes: DEFAULT_STREAM_MAX_BYTES,
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
        }
    }
}

impl StreamSettings {
    /// Checks the settings before they reach the server.
    ///
    /// # Errors
    /// [`BusErrorKind::StreamConfig`] naming the offending field.
    pub fn validate(&self) -> Result<(), BusError> {
        let invalid = |detail: String| Err(BusError::new(BusErrorKind::StreamConfig, detail));
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return invalid(format!("name {:?} is not a valid stream name", self.name));
        }
        if self.subjects.is_empty() {
            return invalid("subjects must not be empty".to_owned());
        }
        if let Some(bad) = self
            .subjects
            .iter()
            .find(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return invalid(format!("subject {bad:?} is not a valid subject"));
        }
        if self.max_age_secs == 0 {
            return invalid("max_age_secs must be > 0".to_owned());
        }
        if self.duplicate_window_secs == 0 || self.duplicate_window_secs > self.max_age_secs {
            return invalid(format!(
                "duplicate_window_secs ({}) must be > 0 and <= max_age_secs ({})",
                self.duplicate_window_secs, self.max_age_secs
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid(format!("replicas ({}) must be 1..=5", self.replicas));
        }
        if self.max_bytes != -1 && self.max_bytes <= 0 {
            return invalid(format!("max_bytes ({}) must be > 0 or -1", self.max_bytes));
        }
        if self.max_msg_size <= 0 {
            return invalid(format!("max_msg_size ({}) must be > 0", self.max_msg_size));
        }
        Ok(())
    }

    /// The async-nats stream config for these settings (limits retention, discard old).
    pub fn to_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            max_age: Duration::from_secs(self.max_age_secs),
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            num_replicas: self.replicas,
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            compression: Some(match self.compression {
                Compression::S2 => stream::Compression::S2,
                Compression::None => stream::Compression::None,
            }),
            max_bytes: self.max_bytes,
            max_message_size: self.max_msg_size,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }
}

/// What [`ensure_stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamAction {
    /// The stream did not exist and was created.
    Created,
    /// The stream existed with the configured settings.
    Unchanged,
    /// The stream existed with different settings and was updated in place.
    Updated,
}

/// The outcome of [`ensure_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    /// Created, unchanged or updated.
    pub action: StreamAction,
    /// One entry per changed field: `"max_age: was 3600s, now 86400s"`. Empty unless updated.
    pub drift: Vec<String>,
    /// Non-fatal problems, e.g. the server's `max_payload` is below `max_msg_size`.
    pub warnings: Vec<String>,
}

/// Creates the stream, or updates it to `settings` when its configuration differs (reporting each
/// changed field). Idempotent: a second call with the same settings reports
/// [`StreamAction::Unchanged`] and no drift.
///
/// # Errors
/// - [`BusErrorKind::StreamConfig`]: invalid settings, a change that cannot be applied in place
///   (storage type), or a configuration the server rejects.
/// - [`BusErrorKind::Timeout`] / [`BusErrorKind::NoResponders`]: the server is unreachable or
///   has JetStream disabled; retry later.
#[tracing::instrument(skip_all, fields(stream = %settings.name))]
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<StreamReport, BusError> {
    settings.validate()?;
    let wanted = settings.to_config();
    let warnings = payload_warnings(js, settings);

    let current = match js.get_stream(&settings.name).await {
        Ok(stream) => stream.cached_info().config.clone(),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                js.create_stream(wanted)
                    .await
                    .map_err(|e| map_create_error("create stream", e))?;
                tracing::info!(subjects = ?settings.subjects, replicas = settings.replicas, "stream created");
                return Ok(StreamReport {
                    action: StreamAction::Created,
                    drift: Vec::new(),
                    warnings,
                });
            }
            _ => return Err(map_get_error(err)),
        },
    };

    let drift = diff(&current, &wanted);
    if drift.is_empty() {
        tracing::debug!("stream unchanged");
        return Ok(StreamReport {
            action: StreamAction::Unchanged,
            drift,
            warnings,
        });
    }
    if current.storage != wanted.storage {
        return Err(BusError::new(
            BusErrorKind::StreamConfig,
            format!(
                "stream {}: storage cannot be changed in place (was {:?}, configured {:?}); \
                 migrate the stream or keep its storage type",
                settings.name, current.storage, wanted.storage
            ),
        ));
    }
    // Keep server-side fields we do not manage (metadata, consumer limits, ...) as they are.
    let mut update = current.clone();
    update.subjects = wanted.subjects;
    update.max_age = wanted.max_age;
    update.duplicate_window = wanted.duplicate_window;
    update.num_replicas = wanted.num_replicas;
    update.compression = wanted.compression;
    update.max_bytes = wanted.max_bytes;
    update.max_message_size = wanted.max_message_size;
    update.retention = wanted.retention;
    update.discard = wanted.discard;
    js.update_stream(update)
        .await
        .map_err(|e| map_create_error("update stream", e))?;
    tracing::warn!(drift = ?drift, "stream settings drifted; updated in place");
    Ok(StreamReport {
        action: StreamAction::Updated,
        drift,
        warnings,
    })
}

/// Fields we manage that differ between the server's config and ours, as "field: was X, now Y".
fn diff(current: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    let mut drift = Vec::new();
    let mut field = |name: &str, was: String, now: String| {
        if was != now {
            drift.push(format!("{name}: was {was}, now {now}"));
        }
    };
    let sorted = |subjects: &[String]| {
        let mut s = subjects.to_vec();
        s.sort();
        format!("{s:?}")
    };
    field(
        "subjects",
        sorted(&current.subjects),
        sorted(&wanted.subjects),
    );
    field(
        "max_age",
        format!("{}s", current.max_age.as_secs()),
        format!("{}s", wanted.max_age.as_secs()),
    );
    field(
        "duplicate_window",
        format!("{}s", current.duplicate_window.as_secs()),
        format!("{}s", wanted.duplicate_window.as_secs()),
    );
    field(
        "replicas",
        current.num_replicas.max(1).to_string(),
        wanted.num_replicas.to_string(),
    );
    field(
        "storage",
        format!("{:?}", current.storage),
        format!("{:?}", wanted.storage),
    );
    let compression = |c: &Option<stream::Compression>| {
        format!("{:?}", c.clone().unwrap_or(stream::Compression::None))
    };
    field(
        "compression",
        compression(&current.compression),
        compression(&wanted.compression),
    );
    field(
        "max_bytes",
        current.max_bytes.to_string(),
        wanted.max_bytes.to_string(),
    );
    field(
        "max_msg_size",
        current.max_message_size.to_string(),
        wanted.max_message_size.to_string(),
    );
    field(
        "retention",
        format!("{:?}", current.retention),
        format!("{:?}", wanted.retention),
    );
    field(
        "discard",
        format!("{:?}", current.discard),
        format!("{:?}", wanted.discard),
    );
    drift
}

/// Warns when the connected server's `max_payload` cannot carry `max_msg_size` messages.
fn payload_warnings(js: &jetstream::Context, settings: &StreamSettings) -> Vec<String> {
    let max_payload = js.client().server_info().max_payload;
    let wanted = usize::try_from(settings.max_msg_size).unwrap_or(0);
    if max_payload > 0 && max_payload < wanted {
        let warning = format!(
            "server max_payload {max_payload} < stream max_msg_size {wanted}: messages between \
             the two fail with max_payload; set `max_payload: 4MB` in the nats-server config"
        );
        tracing::warn!(
            max_payload,
            max_msg_size = wanted,
            "server max_payload below max_msg_size"
        );
        vec![warning]
    } else {
        Vec::new()
    }
}

/// Deletes the named streams that exist (KV buckets are `KV_<bucket>` streams; deleting a stream
/// deletes its consumers). Returns the names that were deleted.
///
/// # Errors
/// [`BusErrorKind::Other`] (or [`BusErrorKind::Timeout`]) on a server or connection failure.
pub async fn delete_streams(
    client: &async_nats::Client,
    names: &[String],
) -> Result<Vec<String>, BusError> {
    let js = jetstream::new(client.clone());
    let mut deleted = Vec::new();
    for name in names {
        if js.get_stream(name).await.is_ok() {
            js.delete_stream(name).await.map_err(|e| {
                BusError::with_source(BusErrorKind::Other, format!("delete stream {name}"), e)
            })?;
            tracing::info!(stream = %name, "stream deleted");
            deleted.push(name.clone());
        }
    }
    Ok(deleted)
}

/// Names of every stream in the account.
///
/// # Errors
/// [`BusErrorKind::Other`] on a server or connection failure.
pub async fn stream_names(client: &async_nats::Client) -> Result<Vec<String>, BusError> {
    use futures::StreamExt;
    let js = jetstream::new(client.clone());
    let mut names = js.stream_names();
    let mut out = Vec::new();
    while let Some(name) = names.next().await {
        out.push(name.map_err(|e| BusError::with_source(BusErrorKind::Other, "list streams", e))?);
    }
    Ok(out)
}

pub(crate) fn map_get_error(err: jetstream::context::GetStreamError) -> BusError {
    let kind = match err.kind() {
        GetStreamErrorKind::Request => request_kind(&err),
        GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => {
            BusErrorKind::StreamConfig
        }
        GetStreamErrorKind::JetStream(_) => BusErrorKind::Other,
    };
    BusError::with_source(kind, "get stream info", err)
}

/// The kind of a wrapped `RequestError` (timeout vs no responders vs other), found in the chain.
fn request_kind(err: &(dyn std::error::Error + 'static)) -> BusErrorKind {
    use async_nats::jetstream::context::{RequestError, RequestErrorKind};
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(req) = e.downcast_ref::<RequestError>() {
            return match req.kind() {
                RequestErrorKind::TimedOut => BusErrorKind::Timeout,
                RequestErrorKind::NoResponders => BusErrorKind::NoResponders,
                _ => BusErrorKind::Other,
            };
        }
        current = e.source();
    }
    BusErrorKind::Other
}

/// JetStream's "insufficient storage resources available" (the stream's reservation does not fit).
const INSUFFICIENT_STORAGE: ErrorCode = ErrorCode(10047);

pub(crate) fn map_create_error(what: &str, err: CreateStreamError) -> BusError {
    if let CreateStreamErrorKind::JetStream(e) = err.kind()
        && e.error_code() == INSUFFICIENT_STORAGE
    {
        return BusError::with_source(
            BusErrorKind::InsufficientStorage,
            format!(
                "{what}: the server cannot reserve max_bytes × replicas in its JetStream storage \
                 (max_file_store, 75% of free disk unless configured): lower the stream's max_bytes \
                 (--max-bytes) or raise max_file_store"
            ),
            err,
        );
    }
    let kind = match err.kind() {
        CreateStreamErrorKind::TimedOut => BusErrorKind::Timeout,
        CreateStreamErrorKind::JetStreamUnavailable => BusErrorKind::NoResponders,
        CreateStreamErrorKind::EmptyStreamName
        | CreateStreamErrorKind::InvalidStreamName
        | CreateStreamErrorKind::DomainAndExternalSet
        | CreateStreamErrorKind::JetStream(_) => BusErrorKind::StreamConfig,
        CreateStreamErrorKind::NotFound => BusErrorKind::Other,
        CreateStreamErrorKind::Response | CreateStreamErrorKind::ResponseParse => {
            request_kind(&err)
        }
    };
    BusError::with_source(kind, what, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let s = StreamSettings::default();
        s.validate().expect("defaults valid");
        let c = s.to_config();
        assert_eq!(c.max_age, Duration::from_secs(86_400));
        assert_eq!(c.duplicate_window, Duration::from_secs(300));
        assert_eq!(c.compression, Some(stream::Compression::S2));
        assert_eq!(c.storage, stream::StorageType::File);
        assert_eq!(c.max_message_size, 1024 * 1024);
        // The default fits a default server's max_payload (and so every server the project starts).
        assert!(DEFAULT_MAX_MSG_SIZE as usize <= NATS_DEFAULT_MAX_PAYLOAD);
    }

    #[test]
    fn validation_rejects_bad_fields() {
        let bad = [
            StreamSettings {
                name: "a.b".into(),
                ..Default::default()
            },
            StreamSettings {
                subjects: vec![],
                ..Default::default()
            },
            StreamSettings {
                duplicate_window_secs: 100_000,
                ..Default::default()
            },
            StreamSettings {
                replicas: 0,
                ..Default::default()
            },
            StreamSettings {
                max_bytes: 0,
                ..Default::default()
            },
        ];
        for settings in bad {
            let err = settings.validate().expect_err("invalid");
            assert_eq!(err.kind(), BusErrorKind::StreamConfig, "{err}");
        }
    }

    #[test]
    fn settings_deserialize_with_defaults_and_reject_unknown_fields() {
        let s: StreamSettings =
            serde_json::from_str(r#"{"replicas": 3, "compression": "none"}"#).expect("parse");
        assert_eq!(s.replicas, 3);
        assert_eq!(s.compression, Compression::None);
        assert_eq!(s.name, "FIREHOSE");
        assert!(serde_json::from_str::<StreamSettings>(r#"{"replica": 3}"#).is_err());
    }

    #[test]
    fn diff_names_changed_fields() {
        let a = StreamSettings::default().to_config();
        let b = StreamSettings {
            max_age_secs: 3600,
            ..Default::default()
        }
        .to_config();
        assert!(diff(&a, &a).is_empty());
        assert_eq!(
            diff(&a, &b),
            vec!["max_age: was 86400s, now 3600s".to_owned()]
        );
    }
}
