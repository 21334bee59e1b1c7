//! [`Store`]: the control plane's documents in bus KV buckets ([`crate::layout`]). Every read and write of a
//! tenant's resource takes the tenant id and builds the key from it, so a subscription id of another tenant is
//! simply not found; ids from outside are checked for shape first (never a wildcard in a key). Writes are
//! compare-and-set on the revision read; a change is computed from the latest document and retried a few
//! times when someone else wrote in between (the worker disabling a subscription), unless the caller pinned a
//! revision (`If-Match`), which then is a conflict. Everything a write needs is validated before the first
//! write, so nothing is ever half-created.

use bytes::Bytes;
use fpaas_bus::{
    JetStream, KvBucket, KvSettings, KvState, KvWrite, MsgLog, MsgLogSettings, Storage,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{StoreError, StoreErrorKind};
use crate::ids;
use crate::layout;
use crate::model::{
    ApiKeyRecord, Progress, StateBucketDoc, SubStats, Subscription, SubscriptionSpec, Tenant,
    TenantPatch, TenantSpec, Topic, TopicInfo, TopicSpec, Usage, now,
};
use crate::validate;

/// The settings of the stream of waiting pull batches ([`layout::PULL_STREAM`]), the same for the API and the
/// worker (so neither changes what the other created).
pub fn pull_log_settings(replicas: usize) -> MsgLogSettings {
    MsgLogSettings {
        name: layout::PULL_STREAM.to_owned(),
        subjects: vec![layout::PULL_SUBJECTS.to_owned()],
        max_age_secs: layout::PULL_DEFAULT_MAX_AGE_SECS,
        replicas,
        ..MsgLogSettings::default()
    }
}

/// How often a compare-and-set write is retried after a conflict (without a pinned revision).
const CAS_ATTEMPTS: usize = 5;

/// How the control-plane buckets are created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Replicas of the control-plane KV buckets when created: 1 (single server) or 3 (cluster).
    pub replicas: usize,
    /// Storage of the control-plane KV buckets when created.
    pub storage: Storage,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            storage: Storage::File,
        }
    }
}

/// The control-plane store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    tenants: KvBucket,
    subs: KvBucket,
    progress: KvBucket,
    stats: KvBucket,
    pull_state: KvBucket,
    pull_log: MsgLog,
    js: JetStream,
    settings: StoreSettings,
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Corrupt,
            format!("stored document {key} cannot be decoded"),
            e,
        )
    })
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    // Our own model types always serialize.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn written(result: KvWrite, what: &str) -> Result<Option<u64>, StoreError> {
    match result {
        KvWrite::Written(rev) => Ok(Some(rev)),
        KvWrite::Conflict => Ok(None),
        KvWrite::TooLarge => Err(StoreError::new(
            StoreErrorKind::TooLarge,
            format!("{what} is larger than the server accepts"),
        )),
    }
}

impl Store {
    /// Creates (or opens) the buckets [`layout::TENANTS_BUCKET`], [`layout::SUBS_BUCKET`],
    /// [`layout::PROGRESS_BUCKET`], [`layout::STATS_BUCKET`] and [`layout::PULL_BUCKET`], and the stream
    /// [`layout::PULL_STREAM`].
    ///
    /// # Errors
    /// [`StoreErrorKind::Unavailable`] when NATS cannot be reached or refuses the buckets.
    pub async fn open(js: &JetStream, settings: &StoreSettings) -> Result<Self, StoreError> {
        let kv = |name: &str, description: &str| KvSettings {
            bucket: name.to_owned(),
            description: description.to_owned(),
            replicas: settings.replicas,
            storage: settings.storage,
            ..KvSettings::default()
        };
        Ok(Self {
            tenants: fpaas_bus::ensure_kv(
                js,
                &kv(layout::TENANTS_BUCKET, "fpaas tenants and API keys"),
            )
            .await?,
            subs: fpaas_bus::ensure_kv(js, &kv(layout::SUBS_BUCKET, "fpaas subscriptions")).await?,
            progress: fpaas_bus::ensure_kv(
                js,
                &kv(layout::PROGRESS_BUCKET, "fpaas subscription progress"),
            )
            .await?,
            stats: fpaas_bus::ensure_kv(js, &kv(layout::STATS_BUCKET, "fpaas subscription stats"))
                .await?,
            pull_state: fpaas_bus::ensure_kv(
                js,
                &kv(layout::PULL_BUCKET, "fpaas pull subscriptions' leases"),
            )
            .await?,
            pull_log: fpaas_bus::ensure_msglog(js, &pull_log_settings(settings.replicas)).await?,
            js: js.clone(),
            settings: settings.clone(),
        })
    }

    /// The subscriptions bucket (workers watch it).
    pub fn subs_bucket(&self) -> &KvBucket {
        &self.subs
    }

    /// The progress bucket.
    pub fn progress_bucket(&self) -> &KvBucket {
        &self.progress
    }

    /// The stats bucket.
    pub fn stats_bucket(&self) -> &KvBucket {
        &self.stats
    }

    /// The pull subscriptions' lease records.
    pub fn pull_bucket(&self) -> &KvBucket {
        &self.pull_state
    }

    /// The stream of waiting pull batches.
    pub fn pull_log(&self) -> &MsgLog {
        &self.pull_log
    }

    async fn read<T: DeserializeOwned>(
        bucket: &KvBucket,
        key: &str,
    ) -> Result<Option<(T, u64)>, StoreError> {
        match bucket.entry(key).await? {
            Some(entry) => match entry.state {
                KvState::Value(bytes) => Ok(Some((decode(key, &bytes)?, entry.revision))),
                KvState::Deleted { .. } => Ok(None),
            },
            None => Ok(None),
        }
    }

    async fn list<T: DeserializeOwned>(
        bucket: &KvBucket,
        pattern: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut corrupt = None;
        bucket
            .snapshot_each(pattern, false, |entry| {
                if let KvState::Value(bytes) = entry.state {
                    match decode(&entry.key, &bytes) {
                        Ok(v) => out.push(v),
                        Err(e) => corrupt = Some(e),
                    }
                }
            })
            .await?;
        match corrupt {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    // ---------------------------------------------------------------- tenants and keys

    /// Creates a tenant and its first API key; returns the tenant, the key record and the token (shown once).
    ///
    /// # Errors
    /// [`StoreErrorKind::Invalid`] for a bad spec, [`StoreErrorKind::Unavailable`] on NATS failures.
    pub async fn create_tenant(
        &self,
        spec: TenantSpec,
        key_label: &str,
    ) -> Result<(Tenant, ApiKeyRecord, String), StoreError> {
        validate::tenant(&spec)?;
        validate::name("label", key_label)?;
        let at = now();
        let tenant = Tenant {
            id: ids::new_tenant_id(),
            name: spec.name,
            quotas: spec.quotas,
            created_at: at,
            updated_at: at,
        };
        let key = layout::tenant_key(&tenant.id);
        if written(self.tenants.create(&key, encode(&tenant)).await?, "tenant")?.is_none() {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                "tenant id collision",
            ));
        }
        let (record, token) = self.create_key(&tenant.id, key_label).await?;
        tracing::info!(tenant = %tenant.id, "tenant created");
        Ok((tenant, record, token))
    }

    /// A tenant.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`].
    pub async fn tenant(&self, tenant_id: &str) -> Result<Tenant, StoreError> {
        Ok(self.tenant_entry(tenant_id).await?.0)
    }

    async fn tenant_entry(&self, tenant_id: &str) -> Result<(Tenant, u64), StoreError> {
        if !ids::is_id(tenant_id, ids::TENANT_PREFIX) {
            return Err(StoreError::not_found(format_args!("tenant {tenant_id:?}")));
        }
        Self::read(&self.tenants, &layout::tenant_key(tenant_id))
            .await?
            .ok_or_else(|| StoreError::not_found(format_args!("tenant {tenant_id}")))
    }

    /// Every tenant.
    ///
    /// # Errors
    /// [`StoreErrorKind::Unavailable`] on NATS failures.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut out: Vec<Tenant> =
            Self::list(&self.tenants, &format!("{}*", layout::TENANT_KEY_PREFIX)).await?;
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Changes a tenant's name or quotas.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`], [`StoreErrorKind::Invalid`], [`StoreErrorKind::Conflict`] after
    /// repeated concurrent writes.
    pub async fn update_tenant(
        &self,
        tenant_id: &str,
        patch: &TenantPatch,
    ) -> Result<Tenant, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut tenant, revision) = self.tenant_entry(tenant_id).await?;
            if let Some(name) = &patch.name {
                tenant.name.clone_from(name);
            }
            if let Some(q) = &patch.quotas {
                q.apply(&mut tenant.quotas);
            }
            validate::tenant(&TenantSpec {
                name: tenant.name.clone(),
                quotas: tenant.quotas.clone(),
            })?;
            tenant.updated_at = now();
            let key = layout::tenant_key(tenant_id);
            let result = self.tenants.update(&key, encode(&tenant), revision).await?;
            if written(result, "tenant")?.is_some() {
                return Ok(tenant);
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Conflict,
            format!("tenant {tenant_id} changed concurrently; retry"),
        ))
    }

    /// Deletes a tenant with its subscriptions and API keys (subscriptions first, so workers stop).
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`], [`StoreErrorKind::Unavailable`].
    pub async fn delete_tenant(&self, tenant_id: &str) -> Result<(), StoreError> {
        self.tenant_entry(tenant_id).await?;
        for sub in self.list_subscriptions(tenant_id).await? {
            match self.delete_subscription(tenant_id, &sub.id).await {
                Ok(()) => {}
                Err(e) if e.kind() == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for topic in self.list_topics(tenant_id).await? {
            match self.delete_topic(tenant_id, &topic.name).await {
                Ok(()) => {}
                Err(e) if e.kind() == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for bucket in self.list_state_buckets(tenant_id).await? {
            match self.delete_state_bucket(tenant_id, &bucket.name).await {
                Ok(()) => {}
                Err(e) if e.kind() == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for (hash, _) in self.keys_of(tenant_id).await? {
            self.tenants
                .delete(&layout::api_key_key(&hash), None, None)
                .await?;
        }
        self.tenants
            .delete(&layout::tenant_key(tenant_id), None, None)
            .await?;
        tracing::info!(tenant = %tenant_id, "tenant deleted");
        Ok(())
    }

    /// Creates a topic of `tenant`: its document in the tenants bucket, then its stream (removed again if
    /// the stream cannot be created).
    ///
    /// # Errors
    /// [`StoreErrorKind::Invalid`] for a bad spec, [`StoreErrorKind::Quota`] beyond `max_topics` or
    /// `max_topic_bytes`, [`StoreErrorKind::Conflict`] when the tenant has a topic of that name,
    /// [`StoreErrorKind::Unavailable`] when NATS fails or refuses the stream.
    pub async fn create_topic(
        &self,
        tenant: &Tenant,
        spec: TopicSpec,
    ) -> Result<Topic, StoreError> {
        validate::topic(&spec, &tenant.quotas)?;
        let existing = self.list_topics(&tenant.id).await?;
        let quota = |field: &str, message: String| -> StoreError {
            validate::ValidationError::new(validate::ValidationCode::QuotaExceeded, field, message)
                .into()
        };
        if existing.iter().any(|t| t.name == spec.name) {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!("a topic named {} exists", spec.name),
            ));
        }
        if existing.len() >= tenant.quotas.max_topics as usize {
            return Err(quota(
                "topics",
                format!(
                    "this tenant has {} topics; its quota is {}",
                    existing.len(),
                    tenant.quotas.max_topics
                ),
            ));
        }
        let held: i64 = existing.iter().map(|t| t.max_bytes).sum();
        if held.saturating_add(spec.max_bytes) > tenant.quotas.max_topic_bytes {
            return Err(quota(
                "max_bytes",
                format!(
                    "this tenant's topics hold up to {held} bytes; {} more exceeds its quota of {}",
                    spec.max_bytes, tenant.quotas.max_topic_bytes
                ),
            ));
        }
        let topic = Topic::from_spec(&tenant.id, spec);
        let key = layout::topic_key(&tenant.id, &topic.name);
        if written(self.tenants.create(&key, encode(&topic)).await?, "topic")?.is_none() {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!("a topic named {} exists", topic.name),
            ));
        }
        let settings = fpaas_bus::StreamSettings {
            name: topic.stream.clone(),
            subjects: vec![topic.subject.clone()],
            max_age_secs: topic.max_age_secs,
            max_bytes: topic.max_bytes,
            replicas: self.settings.replicas,
            storage: self.settings.storage,
            ..fpaas_bus::StreamSettings::default()
        };
        if let Err(e) = fpaas_bus::ensure_stream(&self.js, &settings).await {
            let _ = self.tenants.delete(&key, None, None).await;
            return Err(StoreError::with_source(
                StoreErrorKind::Unavailable,
                format!("the stream of topic {} could not be created", topic.name),
                e,
            ));
        }
        tracing::info!(tenant = %tenant.id, topic = %topic.name, stream = %topic.stream, "topic created");
        Ok(topic)
    }

    /// A topic delivery must name one of the tenant's topics.
    async fn check_delivery_topic(
        &self,
        tenant_id: &str,
        delivery: &crate::model::Delivery,
    ) -> Result<(), StoreError> {
        match delivery {
            crate::model::Delivery::Topic(t) => {
                self.check_topic_exists(tenant_id, &t.topic, "delivery.topic")
                    .await
            }
            crate::model::Delivery::Webhook(w) => match &w.output_topic {
                Some(t) => {
                    self.check_topic_exists(tenant_id, t, "delivery.output_topic")
                        .await
                }
                None => Ok(()),
            },
            // The bucket is created (or its kind checked) by `ensure_state_bucket`.
            crate::model::Delivery::Kv(_) => Ok(()),
            crate::model::Delivery::Pull(_) => Ok(()),
        }
    }

    async fn check_topic_exists(
        &self,
        tenant_id: &str,
        topic: &str,
        field: &str,
    ) -> Result<(), StoreError> {
        match self.topic(tenant_id, topic).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == StoreErrorKind::NotFound => Err(validate::ValidationError::new(
                validate::ValidationCode::BadValue,
                field,
                format!("this tenant has no topic named {topic}"),
            )
            .into()),
            Err(e) => Err(e),
        }
    }

    /// The tenant's topics, by name.
    ///
    /// # Errors
    /// [`StoreErrorKind::Unavailable`], [`StoreErrorKind::Corrupt`].
    pub async fn list_topics(&self, tenant_id: &str) -> Result<Vec<Topic>, StoreError> {
        let mut out = Vec::new();
        let mut bad = None;
        self.tenants
            .snapshot_each(&layout::tenant_topics_pattern(tenant_id), false, |entry| {
                if let KvState::Value(bytes) = &entry.state {
                    match decode::<Topic>(&entry.key, bytes) {
                        Ok(t) => out.push(t),
                        Err(e) => bad = Some(e),
                    }
                }
            })
            .await?;
        if let Some(e) = bad {
            return Err(e);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A topic of the tenant.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] when the tenant has no topic of that name.
    pub async fn topic(&self, tenant_id: &str, name: &str) -> Result<Topic, StoreError> {
        let key = layout::topic_key(tenant_id, name);
        if !fpaas_bus::is_valid_kv_key(&key) {
            return Err(StoreError::new(StoreErrorKind::NotFound, "no such topic"));
        }
        match self.tenants.get(&key).await? {
            Some(bytes) => decode(&key, &bytes),
            None => Err(StoreError::new(StoreErrorKind::NotFound, "no such topic")),
        }
    }

    /// A topic of the tenant with what its stream holds now.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`], [`StoreErrorKind::Unavailable`].
    pub async fn topic_info(&self, tenant_id: &str, name: &str) -> Result<TopicInfo, StoreError> {
        let topic = self.topic(tenant_id, name).await?;
        let bounds = fpaas_bus::tail::stream_bounds(&self.js.client(), &topic.stream).await?;
        Ok(TopicInfo {
            topic,
            messages: bounds.messages,
            first_seq: bounds.first_seq,
            last_seq: bounds.last_seq,
        })
    }

    /// Deletes a topic: its stream and its document.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`], [`StoreErrorKind::Conflict`] while a subscription delivers into it,
    /// [`StoreErrorKind::Unavailable`].
    pub async fn delete_topic(&self, tenant_id: &str, name: &str) -> Result<(), StoreError> {
        let topic = self.topic(tenant_id, name).await?;
        let users: Vec<String> = self
            .list_subscriptions(tenant_id)
            .await?
            .into_iter()
            .filter(|s| {
                matches!(&s.delivery, crate::model::Delivery::Topic(t) if t.topic == name)
                    || s.delivery.webhook().and_then(|w| w.output_topic.as_deref()) == Some(name)
                    || s.source.topic() == Some(name)
            })
            .map(|s| s.id)
            .collect();
        if !users.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!(
                    "topic {name} is the source or delivery of {}; change or delete them first",
                    users.join(", ")
                ),
            ));
        }
        fpaas_bus::delete_streams(&self.js.client(), std::slice::from_ref(&topic.stream)).await?;
        self.tenants
            .delete(&layout::topic_key(tenant_id, name), None, None)
            .await?;
        tracing::info!(tenant = %tenant_id, topic = %name, "topic deleted");
        Ok(())
    }

    // ---------------------------------------------------------------- state buckets

    /// The state bucket `name` of the tenant, created (document, then its KV bucket) when it has none of that
    /// name; an existing one must be of `kind`.
    ///
    /// # Errors
    /// [`StoreErrorKind::Invalid`] (`delivery.op`) for a bucket of the other kind, [`StoreErrorKind::Quota`]
    /// beyond `max_state_buckets`, [`StoreErrorKind::Unavailable`] when NATS fails or refuses the bucket.
    pub async fn ensure_state_bucket(
        &self,
        tenant: &Tenant,
        name: &str,
        kind: crate::model::StateKind,
    ) -> Result<StateBucketDoc, StoreError> {
        if !validate::topic_name_ok(name) {
            return Err(validate::ValidationError::new(
                validate::ValidationCode::BadValue,
                "delivery.bucket",
                "not a bucket name (1-64 of a-z, 0-9, '-', '_')",
            )
            .into());
        }
        let existing = self.list_state_buckets(&tenant.id).await?;
        let doc = match existing.iter().find(|b| b.name == name) {
            Some(doc) if doc.kind != kind => {
                return Err(validate::ValidationError::new(
                    validate::ValidationCode::BadValue,
                    "delivery.op",
                    format!(
                        "state bucket {name} holds {}; put writes a bucket of values, incr one of counters",
                        doc.kind.bus().as_str()
                    ),
                )
                .into());
            }
            Some(doc) => doc.clone(),
            None => {
                if existing.len() >= tenant.quotas.max_state_buckets as usize {
                    return Err(validate::ValidationError::new(
                        validate::ValidationCode::QuotaExceeded,
                        "delivery.bucket",
                        format!(
                            "this tenant has {} state buckets; its quota is {}",
                            existing.len(),
                            tenant.quotas.max_state_buckets
                        ),
                    )
                    .into());
                }
                let doc = StateBucketDoc {
                    name: name.to_owned(),
                    tenant_id: tenant.id.clone(),
                    kind,
                    kv_bucket: layout::state_kv_bucket(&tenant.id, name),
                    created_at: now(),
                };
                let key = layout::state_key(&tenant.id, name);
                if written(
                    self.tenants.create(&key, encode(&doc)).await?,
                    "state bucket",
                )?
                .is_none()
                {
                    // Created concurrently: use that one (its kind is checked again below).
                    let doc: StateBucketDoc = self.state_bucket(&tenant.id, name).await?;
                    if doc.kind != kind {
                        return Err(StoreError::new(
                            StoreErrorKind::Conflict,
                            format!("state bucket {name} was just created with the other kind"),
                        ));
                    }
                    doc
                } else {
                    tracing::info!(tenant = %tenant.id, bucket = %name, kind = kind.bus().as_str(), "state bucket created");
                    doc
                }
            }
        };
        if let Err(e) = fpaas_bus::StateBucket::ensure(
            &self.js,
            &doc.kv_bucket,
            kind.bus(),
            self.settings.replicas,
            self.settings.storage,
        )
        .await
        {
            return Err(StoreError::with_source(
                StoreErrorKind::Unavailable,
                format!("the KV bucket of state bucket {name} could not be created"),
                e,
            ));
        }
        Ok(doc)
    }

    /// The tenant's state buckets, by name.
    ///
    /// # Errors
    /// [`StoreErrorKind::Unavailable`], [`StoreErrorKind::Corrupt`].
    pub async fn list_state_buckets(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<StateBucketDoc>, StoreError> {
        if !ids::is_id(tenant_id, ids::TENANT_PREFIX) {
            return Ok(Vec::new());
        }
        let mut out: Vec<StateBucketDoc> =
            Self::list(&self.tenants, &layout::tenant_states_pattern(tenant_id)).await?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A state bucket of the tenant.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] when the tenant has no state bucket of that name.
    pub async fn state_bucket(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<StateBucketDoc, StoreError> {
        let key = layout::state_key(tenant_id, name);
        if !ids::is_id(tenant_id, ids::TENANT_PREFIX) || !validate::topic_name_ok(name) {
            return Err(StoreError::not_found(format_args!("state bucket {name:?}")));
        }
        match Self::read(&self.tenants, &key).await? {
            Some((doc, _)) => Ok(doc),
            None => Err(StoreError::not_found(format_args!("state bucket {name}"))),
        }
    }

    /// The KV handle of a state bucket of the tenant.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] when the tenant has no state bucket of that name (or its KV bucket is
    /// gone), [`StoreErrorKind::Unavailable`].
    pub async fn open_state_bucket(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<(StateBucketDoc, fpaas_bus::StateBucket), StoreError> {
        let doc = self.state_bucket(tenant_id, name).await?;
        match fpaas_bus::StateBucket::open(&self.js, &doc.kv_bucket).await? {
            Some(bucket) => Ok((doc, bucket)),
            None => Err(StoreError::not_found(format_args!("state bucket {name}"))),
        }
    }

    /// Deletes a state bucket: its KV bucket and its document.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`], [`StoreErrorKind::Conflict`] while a subscription writes it,
    /// [`StoreErrorKind::Unavailable`].
    pub async fn delete_state_bucket(&self, tenant_id: &str, name: &str) -> Result<(), StoreError> {
        let doc = self.state_bucket(tenant_id, name).await?;
        let users: Vec<String> = self
            .list_subscriptions(tenant_id)
            .await?
            .into_iter()
            .filter(|s| s.delivery.kv().is_some_and(|k| k.bucket == name))
            .map(|s| s.id)
            .collect();
        if !users.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!(
                    "state bucket {name} is written by {}; change or delete them first",
                    users.join(", ")
                ),
            ));
        }
        fpaas_bus::StateBucket::delete(&self.js, &doc.kv_bucket).await?;
        self.tenants
            .delete(&layout::state_key(tenant_id, name), None, None)
            .await?;
        tracing::info!(tenant = %tenant_id, bucket = %name, "state bucket deleted");
        Ok(())
    }

    /// Adds an API key to a tenant; returns the record and the token (shown once; only its hash is stored).
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] for an unknown tenant.
    pub async fn create_key(
        &self,
        tenant_id: &str,
        label: &str,
    ) -> Result<(ApiKeyRecord, String), StoreError> {
        validate::name("label", label)?;
        self.tenant_entry(tenant_id).await?;
        let token = ids::new_token();
        let record = ApiKeyRecord {
            tenant_id: tenant_id.to_owned(),
            key_id: ids::new_key_id(),
            label: label.to_owned(),
            created_at: now(),
        };
        let key = layout::api_key_key(&ids::token_hash(&token));
        if written(self.tenants.create(&key, encode(&record)).await?, "api key")?.is_none() {
            return Err(StoreError::new(StoreErrorKind::Conflict, "token collision"));
        }
        Ok((record, token))
    }

    async fn keys_of(&self, tenant_id: &str) -> Result<Vec<(String, ApiKeyRecord)>, StoreError> {
        let mut out = Vec::new();
        let mut corrupt = None;
        self.tenants
            .snapshot_each(&format!("{}*", layout::API_KEY_PREFIX), false, |entry| {
                if let KvState::Value(bytes) = entry.state {
                    match decode::<ApiKeyRecord>(&entry.key, &bytes) {
                        Ok(r) if r.tenant_id == tenant_id => {
                            let hash = entry
                                .key
                                .strip_prefix(layout::API_KEY_PREFIX)
                                .unwrap_or_default()
                                .to_owned();
                            out.push((hash, r));
                        }
                        Ok(_) => {}
                        Err(e) => corrupt = Some(e),
                    }
                }
            })
            .await?;
        match corrupt {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A tenant's API keys (without tokens).
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] for an unknown tenant.
    pub async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.tenant_entry(tenant_id).await?;
        let mut keys: Vec<ApiKeyRecord> = self
            .keys_of(tenant_id)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        keys.sort_by_key(|a| a.created_at);
        Ok(keys)
    }

    /// Revokes a tenant's API key.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] for an unknown tenant or a key of another tenant.
    pub async fn delete_key(&self, tenant_id: &str, key_id: &str) -> Result<(), StoreError> {
        self.tenant_entry(tenant_id).await?;
        let Some((hash, _)) = self
            .keys_of(tenant_id)
            .await?
            .into_iter()
            .find(|(_, r)| r.key_id == key_id)
        else {
            return Err(StoreError::not_found(format_args!("key {key_id}")));
        };
        self.tenants
            .delete(&layout::api_key_key(&hash), None, None)
            .await?;
        Ok(())
    }

    /// The key record of `token`, when it is a live key of an existing tenant.
    ///
    /// # Errors
    /// [`StoreErrorKind::Unavailable`] on NATS failures.
    pub async fn authenticate(&self, token: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        if !token.starts_with(ids::TOKEN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        let key = layout::api_key_key(&ids::token_hash(token));
        Ok(Self::read::<ApiKeyRecord>(&self.tenants, &key)
            .await?
            .map(|(r, _)| r))
    }

    // ---------------------------------------------------------------- subscriptions

    /// Validates `spec` completely (limits, JMESPath, URL, the tenant's DID quota), checks the tenant's
    /// subscription quota, then writes the new subscription (with a fresh secret) in one put.
    ///
    /// # Errors
    /// [`StoreErrorKind::Invalid`], [`StoreErrorKind::Quota`], [`StoreErrorKind::Unavailable`].
    pub async fn create_subscription(
        &self,
        tenant: &Tenant,
        spec: SubscriptionSpec,
    ) -> Result<Subscription, StoreError> {
        validate::spec(&spec, &tenant.quotas)?;
        self.check_delivery_topic(&tenant.id, &spec.delivery)
            .await?;
        if let Some(topic) = spec.source.topic() {
            self.check_topic_exists(&tenant.id, topic, "source.topic")
                .await?;
        }
        let count = self.count_subscriptions(&tenant.id).await?;
        if count >= u64::from(tenant.quotas.max_subscriptions) {
            return Err(validate::ValidationError::new(
                validate::ValidationCode::QuotaExceeded,
                "subscriptions",
                format!(
                    "this tenant has {count} subscriptions; its quota is {}",
                    tenant.quotas.max_subscriptions
                ),
            )
            .into());
        }
        if let Some(kv) = spec.delivery.kv() {
            self.ensure_state_bucket(tenant, &kv.bucket, kv.op.kind())
                .await?;
        }
        let sub = Subscription::from_spec(ids::new_sub_id(), tenant.id.clone(), spec);
        let key = layout::sub_key(&tenant.id, &sub.id);
        if written(self.subs.create(&key, encode(&sub)).await?, "subscription")?.is_none() {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                "subscription id collision",
            ));
        }
        tracing::info!(tenant = %tenant.id, sub = %sub.id, "subscription created");
        Ok(sub)
    }

    /// How many subscriptions the tenant has.
    ///
    /// # Errors
    /// [`StoreErrorKind::Unavailable`].
    pub async fn count_subscriptions(&self, tenant_id: &str) -> Result<u64, StoreError> {
        let mut n = 0u64;
        self.subs
            .snapshot_each(&layout::tenant_subs_pattern(tenant_id), true, |entry| {
                if matches!(entry.state, KvState::Value(_)) {
                    n += 1;
                }
            })
            .await?;
        Ok(n)
    }

    /// A subscription of the tenant and its revision (for `ETag` / `If-Match`).
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] when it does not exist or belongs to another tenant.
    pub async fn subscription(
        &self,
        tenant_id: &str,
        sub_id: &str,
    ) -> Result<(Subscription, u64), StoreError> {
        if !ids::is_id(tenant_id, ids::TENANT_PREFIX) || !ids::is_id(sub_id, ids::SUB_PREFIX) {
            return Err(StoreError::not_found(format_args!(
                "subscription {sub_id:?}"
            )));
        }
        Self::read(&self.subs, &layout::sub_key(tenant_id, sub_id))
            .await?
            .ok_or_else(|| StoreError::not_found(format_args!("subscription {sub_id}")))
    }

    /// The tenant's subscriptions, oldest first.
    ///
    /// # Errors
    /// [`StoreErrorKind::Unavailable`].
    pub async fn list_subscriptions(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<Subscription>, StoreError> {
        if !ids::is_id(tenant_id, ids::TENANT_PREFIX) {
            return Ok(Vec::new());
        }
        let mut out: Vec<Subscription> =
            Self::list(&self.subs, &layout::tenant_subs_pattern(tenant_id)).await?;
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Changes a subscription: `change` computes the new document from the current one (it may refuse with
    /// an error); the result is validated against the tenant's quotas and written if the revision is still
    /// the one read. With `expected` (an `If-Match` revision) a different current revision is a
    /// [`StoreErrorKind::Conflict`]; without, a concurrent write makes it re-read and retry.
    /// Returns the new document and its revision.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`], [`StoreErrorKind::Invalid`], [`StoreErrorKind::Quota`],
    /// [`StoreErrorKind::Conflict`], [`StoreErrorKind::Unavailable`].
    pub async fn update_subscription(
        &self,
        tenant: &Tenant,
        sub_id: &str,
        expected: Option<u64>,
        change: impl Fn(&Subscription) -> Result<Subscription, StoreError>,
    ) -> Result<(Subscription, u64), StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (current, revision) = self.subscription(&tenant.id, sub_id).await?;
            if let Some(expected) = expected
                && expected != revision
            {
                return Err(StoreError::new(
                    StoreErrorKind::Conflict,
                    format!(
                        "subscription {sub_id} is at revision {revision}, not {expected}; re-read it"
                    ),
                ));
            }
            let mut next = change(&current)?;
            // The server's fields stay the server's.
            next.id.clone_from(&current.id);
            next.tenant_id.clone_from(&current.tenant_id);
            next.created_at = current.created_at;
            validate::subscription(&next, &tenant.quotas)?;
            if next.delivery != current.delivery {
                self.check_delivery_topic(&tenant.id, &next.delivery)
                    .await?;
                if let Some(kv) = next.delivery.kv() {
                    self.ensure_state_bucket(tenant, &kv.bucket, kv.op.kind())
                        .await?;
                }
            }
            if next == current {
                return Ok((current, revision));
            }
            let key = layout::sub_key(&tenant.id, sub_id);
            let result = self.subs.update(&key, encode(&next), revision).await?;
            if let Some(rev) = written(result, "subscription")? {
                if current.delivery.pull().is_some() && next.delivery.pull().is_none() {
                    // Nobody can pull them any more.
                    self.purge_pull(&tenant.id, sub_id).await?;
                }
                return Ok((next, rev));
            }
            if expected.is_some() {
                return Err(StoreError::new(
                    StoreErrorKind::Conflict,
                    format!("subscription {sub_id} changed concurrently; re-read it"),
                ));
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Conflict,
            format!("subscription {sub_id} changed concurrently; retry"),
        ))
    }

    /// Deletes a subscription (a delete marker, so watching workers stop it).
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`], [`StoreErrorKind::Unavailable`].
    pub async fn delete_subscription(
        &self,
        tenant_id: &str,
        sub_id: &str,
    ) -> Result<(), StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (sub, revision) = self.subscription(tenant_id, sub_id).await?;
            let key = layout::sub_key(tenant_id, sub_id);
            if written(
                self.subs.delete(&key, Some(revision), None).await?,
                "delete",
            )?
            .is_some()
            {
                if sub.delivery.pull().is_some() {
                    // The worker purges again once its runner stopped (a batch it stored meanwhile).
                    self.purge_pull(tenant_id, sub_id).await?;
                }
                tracing::info!(tenant = %tenant_id, sub = %sub_id, "subscription deleted");
                return Ok(());
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Conflict,
            format!("subscription {sub_id} changed concurrently; retry"),
        ))
    }

    /// A subscription's progress (`None` before the worker saved any).
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] when the subscription is not the tenant's.
    pub async fn progress(
        &self,
        tenant_id: &str,
        sub_id: &str,
    ) -> Result<Option<Progress>, StoreError> {
        self.subscription(tenant_id, sub_id).await?;
        Ok(Self::read(&self.progress, &layout::progress_key(sub_id))
            .await?
            .map(|(p, _)| p))
    }

    /// A subscription's stats (`None` before the worker wrote any).
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] when the subscription is not the tenant's.
    pub async fn stats(
        &self,
        tenant_id: &str,
        sub_id: &str,
    ) -> Result<Option<SubStats>, StoreError> {
        self.subscription(tenant_id, sub_id).await?;
        self.stats_unchecked(sub_id).await
    }

    async fn stats_unchecked(&self, sub_id: &str) -> Result<Option<SubStats>, StoreError> {
        Ok(Self::read(&self.stats, &layout::stats_key(sub_id))
            .await?
            .map(|(s, _)| s))
    }

    /// The tenant's metering: the sums of its (current) subscriptions' stats.
    ///
    /// # Errors
    /// [`StoreErrorKind::Unavailable`].
    pub async fn usage(&self, tenant_id: &str) -> Result<Usage, StoreError> {
        let mut usage = Usage {
            tenant_id: tenant_id.to_owned(),
            ..Usage::default()
        };
        for sub in self.list_subscriptions(tenant_id).await? {
            usage.subscriptions += 1;
            if let Some(stats) = self.stats_unchecked(&sub.id).await? {
                usage.add(&stats);
            }
        }
        Ok(usage)
    }
}
