//! KV bucket provisioning ([`KvSettings`], [`ensure_kv`]) for the crates that keep state in
//! JetStream KV; [`ensure_kv`] hands back the [`KvBucket`](crate::KvBucket) the operations go
//! through. Keys must follow the KV key rules (`[-/_=.a-zA-Z0-9]`, no leading/trailing `.`,
//! [`is_valid_kv_key`]); DIDs and other free-form values need a reversible encoding by the caller.
//!
//! # Per-message TTLs
//! [`KvSettings::allow_msg_ttl`] makes the bucket's stream accept the `Nats-TTL` header
//! (`allow_msg_ttl`, nats-server 2.11+), so single entries can expire. Measured on nats-server
//! 2.15.1: the header takes whole seconds (`"604800"`), Go durations (`"90000s"`, `"1m"`,
//! `"2000ms"`, `"1h30m"`) or `never`; `0`, negative and sub-second values are refused (error 10165),
//! and a stream without `allow_msg_ttl` refuses any `Nats-TTL` (error 10166). The setting can be
//! turned on for an existing stream but never off again ("message TTL status can not be disabled",
//! 10052), so [`ensure_kv`] never tries: an existing bucket that has it keeps it. async-nats' own
//! KV option (`limit_markers`) is not used because it also sets `subject_delete_marker_ttl`, which
//! makes the server write a marker of its own (headers `Nats-Marker-Reason: MaxAge`, `Nats-TTL`,
//! `Nats-Rollup: sub`, no `KV-Operation`) when an entry expires; without it an expired entry's
//! subject simply disappears.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{kv, stream};
use serde::{Deserialize, Serialize};

use crate::bucket::KvBucket;
use crate::error::{BusError, BusErrorKind};
use crate::stream::{Storage, map_create_error, map_get_error};

/// Settings of a JetStream KV bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KvSettings {
    /// Bucket name (`[-_a-zA-Z0-9]`).
    pub bucket: String,
    /// Human-readable description stored with the bucket.
    pub description: String,
    /// Values kept per key (1..=64).
    pub history: i64,
    /// Entry lifetime in seconds; 0 keeps entries forever (the default).
    pub max_age_secs: u64,
    /// Bucket size guard in bytes; -1 (the default) is unlimited.
    pub max_bytes: i64,
    /// Largest value in bytes; -1 (the default) is unlimited up to the server's `max_payload`.
    pub max_value_size: i32,
    /// Storage type.
    pub storage: Storage,
    /// Replicas: 1 (single server) or 3 (cluster).
    pub replicas: usize,
    /// Let single entries expire: the bucket's stream accepts the `Nats-TTL` header
    /// (`allow_msg_ttl`; nats-server 2.11+). It can be turned on for an existing
    /// bucket but never off (the server refuses), so with false an existing bucket that has it
    /// keeps it. No server-written markers are enabled: an expired entry's subject disappears.
    pub allow_msg_ttl: bool,
}

/// Default bucket: the shuffler's cursors.
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
            allow_msg_ttl: false,
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

    fn storage_type(&self) -> stream::StorageType {
        match self.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        }
    }

    /// The async-nats KV config (without `allow_msg_ttl`, which it cannot express alone).
    fn to_config(&self) -> kv::Config {
        kv::Config {
            bucket: self.bucket.clone(),
            description: self.description.clone(),
            history: self.history,
            max_age: Duration::from_secs(self.max_age_secs),
            max_bytes: self.max_bytes,
            max_value_size: self.max_value_size,
            storage: self.storage_type(),
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// `current` (the bucket's stream config) with the fields these settings manage applied;
    /// `allow_msg_ttl` is only ever turned on. Fields we do not manage are kept.
    fn apply_to(&self, current: &stream::Config) -> stream::Config {
        let mut update = current.clone();
        if current.description.as_deref().unwrap_or("") != self.description {
            update.description = Some(self.description.clone());
        }
        update.max_messages_per_subject = self.history;
        update.max_age = Duration::from_secs(self.max_age_secs);
        update.max_bytes = self.max_bytes;
        update.max_message_size = self.max_value_size;
        update.num_replicas = self.replicas;
        update.allow_message_ttl |= self.allow_msg_ttl;
        update
    }
}

/// Creates the bucket, or updates it to `settings`; idempotent. With
/// [`KvSettings::allow_msg_ttl`] the bucket's stream is switched to accept per-message TTLs (a new
/// bucket right after its creation); a bucket that already accepts them keeps doing so whatever
/// `settings` say (see the module docs).
///
/// # Errors
/// [`BusErrorKind::StreamConfig`] for invalid settings or a rejected configuration (e.g. a storage
/// type change), [`BusErrorKind::MessageTtl`] when the stream cannot be made to accept TTLs,
/// [`BusErrorKind::Kv`] / [`BusErrorKind::Timeout`] when the server cannot be reached or fails the
/// request.
#[tracing::instrument(skip_all, fields(bucket = %settings.bucket))]
pub async fn ensure_kv(
    js: &jetstream::Context,
    settings: &KvSettings,
) -> Result<KvBucket, BusError> {
    let store = ensure_store(js, settings).await?;
    Ok(KvBucket::new(js.clone(), store, &settings.bucket))
}

/// Like [`ensure_kv`] on a plain JetStream context of `client`.
///
/// # Errors
/// As [`ensure_kv`].
pub async fn ensure_kv_on(
    client: &async_nats::Client,
    settings: &KvSettings,
) -> Result<KvBucket, BusError> {
    ensure_kv(&jetstream::new(client.clone()), settings).await
}

async fn ensure_store(
    js: &jetstream::Context,
    settings: &KvSettings,
) -> Result<kv::Store, BusError> {
    settings.validate()?;
    let current = match js.get_stream(format!("KV_{}", settings.bucket)).await {
        Ok(stream) => Some(stream.cached_info().config.clone()),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                None
            }
            _ => return Err(map_get_error(err)),
        },
    };
    match current {
        // An update through the KV config would send `allow_msg_ttl: false`, which the server
        // refuses for a stream that has it: such a bucket is updated as a stream.
        Some(current) if current.allow_message_ttl || settings.allow_msg_ttl => {
            update_in_place(js, settings, &current).await
        }
        _ => {
            let store = create_or_update_kv(js, settings).await?;
            if settings.allow_msg_ttl {
                let created = store.stream.cached_info().config.clone();
                update_in_place(js, settings, &created).await
            } else {
                Ok(store)
            }
        }
    }
}

/// Updates the bucket's stream to `settings` (when anything differs) and opens the bucket.
async fn update_in_place(
    js: &jetstream::Context,
    settings: &KvSettings,
    current: &stream::Config,
) -> Result<kv::Store, BusError> {
    if current.storage != settings.storage_type() {
        return Err(BusError::new(
            BusErrorKind::StreamConfig,
            format!(
                "bucket {}: storage cannot be changed in place (was {:?}, configured {:?})",
                settings.bucket, current.storage, settings.storage
            ),
        ));
    }
    let update = settings.apply_to(current);
    if &update != current {
        let enabling = update.allow_message_ttl && !current.allow_message_ttl;
        let ttl_error = |source: Option<jetstream::context::UpdateStreamError>| {
            let detail = format!(
                "bucket {}: its stream cannot be switched to accept per-message TTLs \
                 (allow_msg_ttl, nats-server 2.11+ needed); upgrade the server, or stop asking \
                 for TTLs on this bucket",
                settings.bucket
            );
            match source {
                Some(source) => BusError::with_source(BusErrorKind::MessageTtl, detail, source),
                None => BusError::new(BusErrorKind::MessageTtl, detail),
            }
        };
        let info = js.update_stream(&update).await.map_err(|err| {
            if enabling {
                ttl_error(Some(err))
            } else {
                map_create_error("update kv bucket", err)
            }
        })?;
        // A server that does not know the field ignores it.
        if update.allow_message_ttl && !info.config.allow_message_ttl {
            return Err(ttl_error(None));
        }
        if enabling {
            tracing::info!("bucket now accepts per-message TTLs (allow_msg_ttl)");
        }
    }
    js.get_key_value(&settings.bucket).await.map_err(|err| {
        BusError::with_source(
            BusErrorKind::Kv,
            format!("open kv bucket {}", settings.bucket),
            err,
        )
    })
}

async fn create_or_update_kv(
    js: &jetstream::Context,
    settings: &KvSettings,
) -> Result<kv::Store, BusError> {
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
