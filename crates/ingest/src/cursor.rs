//! The persisted cursor: one key per shuffler instance in the cursor KV bucket, value
//! `{"seq", "relay", "instance", "updated_at"}` (JSON). A stored `seq` only ever comes from the
//! [`Watermark`](crate::watermark::Watermark), so every event up to it is in the stream.
//!
//! At start a shuffler resumes from the highest cursor of *any* instance reading the same relay (see
//! [`resume_point`]): that is safe because each instance's cursor only covers acked events, and it keeps a
//! restarted instance from re-publishing what its peer already stored (beyond the stream's dedup window that
//! would create duplicates). Cursors of other relays are ignored — `seq` is per relay.
//!
//! The bus crate's `CursorStore` stores a bare integer; this module keeps the richer record on the same kind of
//! bucket through the store handle the bus's `ensure_kv` returns (async-nats is a dependency here only to name
//! that type), and still reads a bare integer as the own instance's cursor.

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::IngestError;

/// The value stored under an instance's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRecord {
    /// Relay seq up to which every event is acked by JetStream.
    pub seq: i64,
    /// The relay the seq belongs to, canonical form (full subscribeRepos URL without query).
    pub relay: String,
    /// The instance that wrote it.
    pub instance: String,
    /// When it was written (RFC 3339, UTC).
    pub updated_at: String,
}

impl CursorRecord {
    /// A record written now.
    pub fn now(seq: i64, relay: &str, instance: &str) -> Self {
        Self {
            seq,
            relay: relay.to_owned(),
            instance: instance.to_owned(),
            updated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// JSON bytes of the record.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A stored value as found in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredCursor {
    /// A JSON record.
    Record(CursorRecord),
    /// A bare integer (the bus `CursorStore` format): seq of an unknown relay.
    Bare(i64),
}

/// Parses a stored value; `None` for anything unreadable (logged by the caller, never fatal).
pub fn parse_stored(value: &[u8]) -> Option<StoredCursor> {
    if let Ok(record) = serde_json::from_slice::<CursorRecord>(value) {
        return Some(StoredCursor::Record(record));
    }
    std::str::from_utf8(value)
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .map(StoredCursor::Bare)
}

/// Where an instance resumes: the highest seq among its own cursor (a bare integer counts as its own) and the
/// cursors of other instances on the same `relay` (canonical form). `None` when nobody has one.
pub fn resume_point(instance: &str, relay: &str, stored: &[(String, StoredCursor)]) -> Option<i64> {
    stored
        .iter()
        .filter_map(|(key, value)| match value {
            StoredCursor::Record(r) if r.relay == relay => Some(r.seq),
            StoredCursor::Bare(seq) if key == instance => Some(*seq),
            _ => None,
        })
        .max()
}

/// The cursor bucket (a handle from the bus's `ensure_kv`).
#[derive(Clone)]
pub struct CursorKv {
    store: async_nats::jetstream::kv::Store,
}

impl std::fmt::Debug for CursorKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorKv").finish_non_exhaustive()
    }
}

fn cursor_err(
    what: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> IngestError {
    IngestError::Cursor {
        what: what.into(),
        source: Box::new(source),
    }
}

impl CursorKv {
    /// Creates or updates the bucket and returns a handle.
    ///
    /// # Errors
    /// [`IngestError::Bus`] when NATS cannot be reached or refuses the bucket.
    pub async fn open(
        js: &fpaas_bus::JetStream,
        settings: &fpaas_bus::KvSettings,
    ) -> Result<Self, IngestError> {
        let store =
            fpaas_bus::ensure_kv(js, settings)
                .await
                .map_err(|source| IngestError::Bus {
                    what: "open cursor bucket",
                    source,
                })?;
        Ok(Self { store })
    }

    /// Every readable cursor in the bucket, by key. Unreadable values are skipped with a warning.
    ///
    /// # Errors
    /// [`IngestError::Cursor`] when listing or reading fails.
    pub async fn load_all(&self) -> Result<Vec<(String, StoredCursor)>, IngestError> {
        let mut keys = self
            .store
            .keys()
            .await
            .map_err(|e| cursor_err("list cursor keys", e))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| cursor_err("list cursor keys", e))?);
        }
        let mut out = Vec::with_capacity(names.len());
        for key in names {
            let Some(value) = self
                .store
                .get(key.as_str())
                .await
                .map_err(|e| cursor_err(format!("get cursor {key}"), e))?
            else {
                continue;
            };
            match parse_stored(&value) {
                Some(c) => out.push((key, c)),
                None => tracing::warn!(key = %key, "unreadable cursor value ignored"),
            }
        }
        Ok(out)
    }

    /// Stores `record` under its instance's key; returns the KV revision.
    ///
    /// # Errors
    /// [`IngestError::Cursor`] when the put is not acked.
    pub async fn save(&self, record: &CursorRecord) -> Result<u64, IngestError> {
        self.store
            .put(record.instance.as_str(), record.to_bytes())
            .await
            .map_err(|e| cursor_err(format!("put cursor {}", record.instance), e))
    }

    /// The stored cursor of one instance.
    ///
    /// # Errors
    /// [`IngestError::Cursor`] when the read fails.
    pub async fn get(&self, instance: &str) -> Result<Option<StoredCursor>, IngestError> {
        let value = self
            .store
            .get(instance)
            .await
            .map_err(|e| cursor_err(format!("get cursor {instance}"), e))?;
        Ok(value.as_deref().and_then(parse_stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: i64, relay: &str, instance: &str) -> StoredCursor {
        StoredCursor::Record(CursorRecord::now(seq, relay, instance))
    }

    #[test]
    fn record_round_trips_and_bare_integers_parse() {
        let r = CursorRecord::now(42, "ws://a/x", "s1");
        assert_eq!(parse_stored(&r.to_bytes()), Some(StoredCursor::Record(r)));
        assert_eq!(parse_stored(b"17"), Some(StoredCursor::Bare(17)));
        assert_eq!(parse_stored(b"{oops"), None);
        assert_eq!(parse_stored(b""), None);
    }

    #[test]
    fn resume_takes_the_max_over_the_same_relay_only() {
        let stored = vec![
            ("s1".to_owned(), rec(100, "ws://a", "s1")),
            ("s2".to_owned(), rec(250, "ws://a", "s2")),
            ("s3".to_owned(), rec(9_999, "ws://b", "s3")),
            ("s4".to_owned(), StoredCursor::Bare(7_777)),
        ];
        assert_eq!(resume_point("s1", "ws://a", &stored), Some(250));
        assert_eq!(resume_point("s3", "ws://b", &stored), Some(9_999));
        assert_eq!(
            resume_point("s4", "ws://c", &stored),
            Some(7_777),
            "a bare integer counts only for its own key"
        );
        assert_eq!(resume_point("s5", "ws://c", &stored), None);
        // Our own cursor from another relay is not a position on this one.
        assert_eq!(resume_point("s3", "ws://a", &stored), Some(250));
    }
}
