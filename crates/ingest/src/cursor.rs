//! The persisted cursor: one key per shuffler instance in the cursor KV bucket, value
//! `{"seq", "relay", "stream", "instance", "updated_at"}` (JSON). A stored `seq` only ever comes from the
//! [`Watermark`](crate::watermark::Watermark), so every event up to it is in the record's stream.
//!
//! At start, and again before every relay reconnect, a shuffler resumes from the highest cursor of *any*
//! instance reading the same relay **into the same stream** (see [`resume_candidate`]): that is safe because
//! each instance's cursor only covers events acked by that stream, and it keeps an instance that was cut off
//! from re-publishing what its peer already stored (beyond the stream's dedup window that would create
//! duplicates). Cursors of other relays are ignored (`seq` is per relay), and so are cursors of other streams
//! (a staging shuffler's cursor says nothing about what production's stream holds).
//!
//! Records written before the `stream` field existed: the instance's *own* such record still counts (an
//! upgraded instance resumes where it stopped instead of starting live, which would be a gap); *another*
//! instance's is ignored, because it may belong to another stream and adopting it could skip events (a gap,
//! the one thing worse than a duplicate). The peer rewrites its record with the stream on its next save.
//!
//! Earlier versions stored a bare integer; it still reads as the own instance's cursor. The bucket is a
//! [`fpaas_bus::KvBucket`] from the bus's `ensure_kv`: this module owns the key and the value, the bus the
//! NATS operations.

use bytes::Bytes;
use fpaas_bus::{BusError, KvBucket};
use serde::{Deserialize, Serialize};

use crate::error::IngestError;

/// The value stored under an instance's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRecord {
    /// Relay seq up to which every event is acked by JetStream.
    pub seq: i64,
    /// The relay the seq belongs to, canonical form (full subscribeRepos URL without query).
    pub relay: String,
    /// The stream that holds every event up to `seq` (absent in records of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The instance that wrote it.
    pub instance: String,
    /// When it was written (RFC 3339, UTC).
    pub updated_at: String,
}

impl CursorRecord {
    /// A record written now.
    pub fn now(seq: i64, relay: &str, stream: &str, instance: &str) -> Self {
        Self {
            seq,
            relay: relay.to_owned(),
            stream: Some(stream.to_owned()),
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
    /// A bare integer (the format of earlier versions): seq of an unknown relay.
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

/// The stored cursor an instance would resume from (see [`resume_candidate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The relay seq.
    pub seq: i64,
    /// The key (instance) that stored it.
    pub key: String,
    /// When it was written (RFC 3339), if the record says.
    pub updated_at: Option<String>,
}

impl Candidate {
    /// How long ago it was written, if known.
    pub fn age(&self) -> Option<std::time::Duration> {
        let at = chrono::DateTime::parse_from_rfc3339(self.updated_at.as_deref()?).ok()?;
        (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
            .to_std()
            .ok()
    }
}

/// Where an instance resumes: the highest cursor among its own (a bare integer, or a record without a
/// stream, counts as its own) and the cursors of other instances on the same `relay` (canonical form) and
/// the same `stream`. `None` when nobody has one.
pub fn resume_candidate(
    instance: &str,
    relay: &str,
    stream: &str,
    stored: &[(String, StoredCursor)],
) -> Option<Candidate> {
    stored
        .iter()
        .filter_map(|(key, value)| match value {
            StoredCursor::Record(r)
                if r.relay == relay
                    && (r.stream.as_deref() == Some(stream)
                        || (r.stream.is_none() && key == instance)) =>
            {
                Some(Candidate {
                    seq: r.seq,
                    key: key.clone(),
                    updated_at: Some(r.updated_at.clone()),
                })
            }
            StoredCursor::Bare(seq) if key == instance => Some(Candidate {
                seq: *seq,
                key: key.clone(),
                updated_at: None,
            }),
            _ => None,
        })
        .max_by_key(|c| c.seq)
}

/// The seq of [`resume_candidate`].
pub fn resume_point(
    instance: &str,
    relay: &str,
    stream: &str,
    stored: &[(String, StoredCursor)],
) -> Option<i64> {
    resume_candidate(instance, relay, stream, stored).map(|c| c.seq)
}

/// The cursor bucket (a handle from the bus's `ensure_kv`).
#[derive(Clone, Debug)]
pub struct CursorKv {
    bucket: KvBucket,
}

fn cursor_err(what: impl Into<String>, source: BusError) -> IngestError {
    IngestError::Cursor {
        what: what.into(),
        source,
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
        let bucket =
            fpaas_bus::ensure_kv(js, settings)
                .await
                .map_err(|source| IngestError::Bus {
                    what: "open cursor bucket",
                    source,
                })?;
        Ok(Self { bucket })
    }

    /// Every readable cursor in the bucket, by key. Unreadable values are skipped with a warning.
    ///
    /// # Errors
    /// [`IngestError::Cursor`] when listing or reading fails.
    pub async fn load_all(&self) -> Result<Vec<(String, StoredCursor)>, IngestError> {
        let names = self
            .bucket
            .keys()
            .await
            .map_err(|e| cursor_err("list cursor keys", e))?;
        let mut out = Vec::with_capacity(names.len());
        for key in names {
            let Some(value) = self
                .bucket
                .get(&key)
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
    /// [`IngestError::Cursor`] when the put is not acked (or the value exceeds the server's
    /// `max_payload`).
    pub async fn save(&self, record: &CursorRecord) -> Result<u64, IngestError> {
        let what = || format!("put cursor {}", record.instance);
        match self
            .bucket
            .put(&record.instance, record.to_bytes())
            .await
            .map_err(|e| cursor_err(what(), e))?
        {
            fpaas_bus::KvWrite::Written(revision) => Ok(revision),
            other => Err(cursor_err(
                what(),
                BusError::new(fpaas_bus::BusErrorKind::Kv, format!("{other:?}")),
            )),
        }
    }

    /// The stored cursor of one instance.
    ///
    /// # Errors
    /// [`IngestError::Cursor`] when the read fails.
    pub async fn get(&self, instance: &str) -> Result<Option<StoredCursor>, IngestError> {
        let value = self
            .bucket
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
        StoredCursor::Record(CursorRecord::now(seq, relay, "FIREHOSE", instance))
    }

    fn rec_in(seq: i64, relay: &str, stream: Option<&str>, instance: &str) -> StoredCursor {
        let mut r = CursorRecord::now(seq, relay, "x", instance);
        r.stream = stream.map(str::to_owned);
        StoredCursor::Record(r)
    }

    #[test]
    fn record_round_trips_and_bare_integers_parse() {
        let r = CursorRecord::now(42, "ws://a/x", "FIREHOSE", "s1");
        assert_eq!(parse_stored(&r.to_bytes()), Some(StoredCursor::Record(r)));
        // A record of an older version (no stream) still parses.
        let old = br#"{"seq":5,"relay":"ws://a","instance":"s1","updated_at":"2026-11-23T20:15:01.123Z"}"#;
        match parse_stored(old) {
            Some(StoredCursor::Record(r)) => assert_eq!((r.seq, r.stream), (5, None)),
            other => panic!("{other:?}"),
        }
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
        let at = |i: &str, r: &str| resume_point(i, r, "FIREHOSE", &stored);
        assert_eq!(at("s1", "ws://a"), Some(250));
        assert_eq!(at("s3", "ws://b"), Some(9_999));
        assert_eq!(
            at("s4", "ws://c"),
            Some(7_777),
            "a bare integer counts only for its own key"
        );
        assert_eq!(at("s5", "ws://c"), None);
        // Our own cursor from another relay is not a position on this one.
        assert_eq!(at("s3", "ws://a"), Some(250));
    }

    #[test]
    fn resume_counts_only_the_same_stream_and_own_old_records() {
        let stored = vec![
            (
                "prod".to_owned(),
                rec_in(100, "ws://a", Some("FIREHOSE"), "prod"),
            ),
            (
                "staging".to_owned(),
                rec_in(900, "ws://a", Some("STAGING"), "staging"),
            ),
            (
                "old-peer".to_owned(),
                rec_in(800, "ws://a", None, "old-peer"),
            ),
            ("me".to_owned(), rec_in(50, "ws://a", None, "me")),
        ];
        // Staging's higher cursor and a peer's stream-less record are not ours to resume from.
        assert_eq!(
            resume_point("prod", "ws://a", "FIREHOSE", &stored),
            Some(100)
        );
        assert_eq!(
            resume_point("staging", "ws://a", "STAGING", &stored),
            Some(900)
        );
        assert_eq!(resume_point("new", "ws://a", "OTHER", &stored), None);
        // Our own record from before the stream field still counts (else an upgrade would start live).
        assert_eq!(resume_point("me", "ws://a", "OTHER", &stored), Some(50));
        assert_eq!(
            resume_point("old-peer", "ws://a", "FIREHOSE", &stored),
            Some(800)
        );
        let c = resume_candidate("prod", "ws://a", "FIREHOSE", &stored).expect("candidate");
        assert_eq!(c.key, "prod");
        assert!(c.age().expect("age") < std::time::Duration::from_secs(60));
    }
}
