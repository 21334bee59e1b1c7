//! The bus error: one `BusError { kind, detail, source }` in the async-nats shape, so callers branch
//! on a small `Copy` [`BusErrorKind`] (retry a timeout, drop an oversized message, stop on a bad
//! stream config) while the source chain keeps the async-nats detail for logs.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong, coarse enough to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BusErrorKind {
    /// Could not connect (bad URL, auth, TLS). Outages after connecting are retried by the client.
    Connect,
    /// A request or publish ack did not arrive in time (e.g. the server is down or restarting).
    Timeout,
    /// Nobody answered: JetStream disabled or no stream captures the subject.
    NoResponders,
    /// The stream/KV configuration is invalid or cannot be applied (e.g. a storage type change).
    StreamConfig,
    /// JetStream rejected or failed a publish (including a dropped connection).
    Publish,
    /// The message (payload plus headers) exceeds the server's `max_payload`; retrying cannot help.
    MaxPayload,
    /// The message itself is invalid (subject, header name or value); retrying cannot help.
    InvalidMessage,
    /// A key-value operation failed.
    Kv,
    /// A durable consumer could not be created, fetched from or acked.
    Consumer,
    /// A key is not a valid KV key.
    InvalidKey,
    /// A stored value could not be decoded (our own data is corrupt).
    Corrupt,
    /// The server cannot reserve the stream's `max_bytes` × replicas against its JetStream storage
    /// (`max_file_store`, 75% of free disk unless configured; JetStream error 10047). Lower the
    /// stream's `max_bytes` or raise the server's `max_file_store`; retrying cannot help.
    InsufficientStorage,
    /// A KV bucket's stream cannot be made to accept per-message TTLs (`allow_msg_ttl`, the
    /// `Nats-TTL` header; nats-server 2.11+): the server is older or refused the update. Upgrade
    /// the server, or stop asking for TTLs on that bucket; retrying cannot help.
    MessageTtl,
    /// Any other JetStream API failure.
    Other,
}

impl BusErrorKind {
    /// Whether retrying the same operation later can succeed (outages, timeouts, leader changes).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Timeout
                | Self::NoResponders
                | Self::Publish
                | Self::Kv
                | Self::Consumer
                | Self::Other
        )
    }

    /// A short stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::NoResponders => "no_responders",
            Self::StreamConfig => "stream_config",
            Self::Publish => "publish",
            Self::MaxPayload => "max_payload",
            Self::InvalidMessage => "invalid_message",
            Self::Kv => "kv",
            Self::Consumer => "consumer",
            Self::InvalidKey => "invalid_key",
            Self::Corrupt => "corrupt",
            Self::InsufficientStorage => "insufficient_storage",
            Self::MessageTtl => "message_ttl",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for BusErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// An error of the bus: a kind to branch on, a human detail, and the underlying cause.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct BusError {
    kind: BusErrorKind,
    detail: String,
    #[source]
    source: Option<Source>,
}

impl BusError {
    /// An error without an underlying cause.
    pub fn new(kind: BusErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            source: None,
        }
    }

    /// An error wrapping `source`.
    pub fn with_source(
        kind: BusErrorKind,
        detail: impl Into<String>,
        source: impl Into<Source>,
    ) -> Self {
        Self {
            kind,
            detail: detail.into(),
            source: Some(source.into()),
        }
    }

    /// An error of `kind` while doing `op` on `target` (a bucket, a consumer), wrapping `source`.
    pub(crate) fn during(
        kind: BusErrorKind,
        op: &str,
        target: &str,
        source: impl Into<Source>,
    ) -> Self {
        Self::with_source(kind, format!("{op} ({target})"), source)
    }

    /// The kind, for branching.
    pub fn kind(&self) -> BusErrorKind {
        self.kind
    }

    /// The human-readable detail (without the source chain).
    pub fn detail(&self) -> &str {
        &self.detail
    }
}
