//! KV buckets: generic provisioning ([`KvSettings`], [`ensure_kv`]) for the crates that keep state
//! in JetStream KV, and the [`CursorStore`] holding each shuffler instance's last persisted relay
//! cursor. Keys are validated against the KV key rules (`[-/_=.a-zA-Z0-9]`, no leading/trailing
//! `.`) before they reach the server; DIDs and other free-form values need a reversible encoding
//! by the caller.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{BusError, BusErrorKind};
use crate::stream::Storage;

/// Settings of a JetStream KV bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvSettings {
    /// Bucket name (`[-_a-zA-Z0-9]`). Default `fpaas_cursors`.
    pub bucket: String,
    /// Human-readable description stored with the bucket.
    pub description: String,
    /// Values kept per key (1..=64). Default 1.
    pub history: i64,
    /// Entry lifetime in seconds; 0 keeps entries forever (the default).
    pub max_age_secs: u64,
    /// Bucket size guard in bytes; -1 (the default) is unlimited.
    pub max_bytes: i64,
    /// Largest value in bytes; -1 (the default) is unlimited up to the server's `max_payload`.
    pub max_value_size: i32,
    /// Storage type. Default `file`.
    pub storage: Storage,
    /// Replicas: 1 (single server) or 3 (cluster).
    pub replicas: usize,
}

/// Default bucket of the [`CursorStore`].
pub const DEFAULT_CURSOR_BUCKET: &str = "fpaas_cursors";

impl Default for KvSettings {
    fn default() -> Self {
        Self {
            bucket: DEFAULT_CURSOR_BUCKET.to_owned(),
            description: "fpaas shuffler cursors (last relay seq whose events are all acked)"
                .to_owned(),
            history: 1,
            max_age_secs: 0,
            max_bytes: -1,
            max_value_size: -1,
            storage: Storage::File,
            replicas: 1,
        }
    }
}

impl KvSettings {
    /// Default settings with another bucket name.
    pub fn bucket(name: impl Into<String>) -> Self {
        Self {
            bucket: name.into(),
            description: String::new(),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), BusError> {
        let invalid = |detail: String| Err(BusError::new(BusErrorKind::StreamConfig, detail));
        if self.bucket.is_empty()
            || !self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return invalid(format!(
                "bucket {:?} must match [-_a-zA-Z0-9]+",
                self.bucket
            ));
        }
        if !(1..=64).contains(&self.history) {
            return invalid(format!("history ({}) must be 1..=64", self.history));
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid(format!("replicas ({}) must be 1..=5", self.replicas));
        }
        Ok(())
    }

    fn to_config(&self) -> kv::Config {
        kv::Config {
            bucket: self.bucket.clone(),
            description: self.description.clone(),
            history: self.history,
            max_age: Duration::from_secs(self.max_age_secs),
            max_bytes: self.max_bytes,
            max_value_size: self.max_value_size,
            storage: match self.storage {
                Storage::File => jetstream::stream::StorageType::File,
                Storage::Memory => jetstream::stream::StorageType::Memory,
            },
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// Creates the bucket, or updates it to `settings`; idempotent.
///
/// # Errors
/// [`BusErrorKind::StreamConfig`] for invalid settings or a rejected configuration,
/// [`BusErrorKind::Kv`] when the server cannot be reached or fails the request.
#[tracing::instrument(skip_all, fields(bucket = %settings.bucket))]
pub async fn ensure_kv(
    js: &jetstream::Context,
    settings: &KvSettings,
) -> Result<kv::Store, BusError> {
    settings.validate()?;
    js.create_or_update_key_value(settings.to_config())
        .await
        .map_err(|err| {
            let kind = match err.kind() {
                jetstream::context::CreateKeyValueErrorKind::InvalidStoreName
                | jetstream::context::CreateKeyValueErrorKind::TooLongHistory
                | jetstream::context::CreateKeyValueErrorKind::LimitMarkersNotSupported => {
                    BusErrorKind::StreamConfig
                }
                jetstream::context::CreateKeyValueErrorKind::TimedOut => BusErrorKind::Timeout,
                _ => BusErrorKind::Kv,
            };
            BusError::with_source(kind, format!("ensure kv bucket {}", settings.bucket), err)
        })
}

/// Whether `key` is a valid JetStream KV key: non-empty, only `[-/_=.a-zA-Z0-9]`, and neither
/// starting nor ending with `.`.
pub fn is_valid_kv_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'))
}

fn check_key(key: &str) -> Result<(), BusError> {
    if is_valid_kv_key(key) {
        Ok(())
    } else {
        Err(BusError::new(
            BusErrorKind::InvalidKey,
            format!("{key:?} is not a valid KV key ([-/_=.a-zA-Z0-9], no leading/trailing '.')"),
        ))
    }
}

/// The persisted relay cursor of each shuffler instance: key = instance name, value = the relay
/// `seq` (decimal ASCII) up to which every event has been acked by JetStream.
#[derive(Debug, Clone)]
pub struct CursorStore {
    store: kv::Store,
}

impl CursorStore {
    /// Opens (creating or updating) the bucket described by `settings`
    /// (use `KvSettings::default()` for `fpaas_cursors`).
    pub async fn open(js: &jetstream::Context, settings: &KvSettings) -> Result<Self, BusError> {
        Ok(Self {
            store: ensure_kv(js, settings).await?,
        })
    }

    /// The cursor of `instance`, or `None` when it never stored one.
    ///
    /// # Errors
    /// [`BusErrorKind::InvalidKey`], [`BusErrorKind::Timeout`] / [`BusErrorKind::Kv`] on server
    /// trouble, [`BusErrorKind::Corrupt`] when the stored value is not an integer.
    pub async fn get(&self, instance: &str) -> Result<Option<i64>, BusError> {
        check_key(instance)?;
        let value = self.store.get(instance).await.map_err(|err| {
            let kind = match err.kind() {
                kv::EntryErrorKind::TimedOut => BusErrorKind::Timeout,
                kv::EntryErrorKind::InvalidKey => BusErrorKind::InvalidKey,
                kv::EntryErrorKind::Other => BusErrorKind::Kv,
            };
            BusError::with_source(kind, format!("get cursor of {instance}"), err)
        })?;
        let Some(value) = value else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&value).ok();
        match text.and_then(|t| t.parse::<i64>().ok()) {
            Some(seq) => Ok(Some(seq)),
            None => Err(BusError::new(
                BusErrorKind::Corrupt,
                format!(
                    "cursor of {instance} is not an integer: {:?}",
                    String::from_utf8_lossy(&value)
                ),
            )),
        }
    }

    /// Stores `seq` as the cursor of `instance`; returns the KV revision.
    ///
    /// # Errors
    /// [`BusErrorKind::InvalidKey`], or [`BusErrorKind::Kv`] when the put is not acked.
    pub async fn put(&self, instance: &str, seq: i64) -> Result<u64, BusError> {
        check_key(instance)?;
        self.store
            .put(instance, Bytes::from(seq.to_string()))
            .await
            .map_err(|err| {
                let kind = match err.kind() {
                    kv::PutErrorKind::InvalidKey => BusErrorKind::InvalidKey,
                    kv::PutErrorKind::Publish | kv::PutErrorKind::Ack => BusErrorKind::Kv,
                };
                BusError::with_source(kind, format!("put cursor of {instance}"), err)
            })
    }

    /// The underlying KV store.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_key_rules() {
        for ok in ["shuffler-0", "a/b_c=d.e", "A9"] {
            assert!(is_valid_kv_key(ok), "{ok}");
        }
        for bad in ["", ".a", "a.", "did:plc:abc", "a b", "a*", "a>", "ü"] {
            assert!(!is_valid_kv_key(bad), "{bad}");
        }
    }

    #[test]
    fn kv_settings_validate() {
        KvSettings::default().validate().expect("defaults valid");
        assert!(KvSettings::bucket("bad.name").validate().is_err());
        let err = KvSettings {
            history: 0,
            ..Default::default()
        }
        .validate()
        .expect_err("history 0");
        assert_eq!(err.kind(), BusErrorKind::StreamConfig);
    }
}
