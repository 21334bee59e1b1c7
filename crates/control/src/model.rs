//! The control-plane documents, as stored in KV and exchanged over the API (JSON). What a tenant (or the
//! admin) writes — [`SubscriptionSpec`], [`SubscriptionPatch`], [`TenantSpec`], [`TenantPatch`] and the
//! objects inside them — rejects unknown fields, so a typo is an error instead of a silently ignored
//! setting. Documents written by the server ([`Subscription`], [`Tenant`], [`Progress`], [`SubStats`])
//! accept unknown fields so an older reader keeps working after a newer writer added one.

use chrono::{DateTime, Utc};
use fpaas_filter::FilterSpec;
use serde::{Deserialize, Deserializer, Serialize};

/// The current time, as stored in documents.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// JSON Schema of [`FilterSpec`] (crates/filter has no schema derive; this mirrors its fields).
pub fn filter_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "Which events: every part optional; an empty filter matches every event (docs/filters.md).",
        "additionalProperties": false,
        "properties": {
            "kinds": {"type": "array", "items": {"enum": ["commit", "identity", "account", "sync"]},
                "description": "Event kinds; empty = all."},
            "operations": {"type": "array", "items": {"enum": ["create", "update", "delete"]},
                "description": "Commit operations; empty = all."},
            "collections": {"type": "array", "items": {"type": "string"}, "maxItems": 100,
                "description": "NSIDs (app.bsky.feed.like) or prefixes (app.bsky.feed.*); empty = all."},
            "dids": {"type": "array", "items": {"type": "string"}, "maxItems": 10000,
                "description": "Repository DIDs; empty = all (at most the tenant's max_dids_per_filter)."},
            "predicate": {"type": ["string", "null"], "maxLength": 4096,
                "description": "JMESPath on the event JSON; the event matches when it is truthy."}
        }
    })
}

fn optional_filter_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    filter_schema(g)
}

/// Per-tenant limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Most subscriptions the tenant may have (enforced by the API: 429 `quota_exceeded`).
    pub max_subscriptions: u32,
    /// Most DIDs in one subscription's filter (enforced by the API; the hard limit is 10,000).
    pub max_dids_per_filter: u32,
    /// Most events per second delivered to the tenant's receivers, all subscriptions together (read and
    /// enforced by the worker).
    pub max_delivery_events_per_s: u64,
    /// Most topics the tenant may have (enforced by the API: 429 `quota_exceeded`).
    pub max_topics: u32,
    /// Most bytes all the tenant's topics may hold together: the sum of their `max_bytes` (enforced by the
    /// API at creation: 429 `quota_exceeded`).
    pub max_topic_bytes: i64,
    /// Most state buckets the tenant may have (enforced by the API when a subscription with a `kv` delivery
    /// would create one: 429 `quota_exceeded`).
    pub max_state_buckets: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_subscriptions: 100,
            max_dids_per_filter: 10_000,
            max_delivery_events_per_s: 10_000,
            max_topics: 10,
            max_topic_bytes: 10 * 1024 * 1024 * 1024,
            max_state_buckets: 10,
        }
    }
}

/// A change of some quotas (admin `PATCH`); absent fields keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasPatch {
    /// New [`Quotas::max_subscriptions`].
    pub max_subscriptions: Option<u32>,
    /// New [`Quotas::max_dids_per_filter`].
    pub max_dids_per_filter: Option<u32>,
    /// New [`Quotas::max_delivery_events_per_s`].
    pub max_delivery_events_per_s: Option<u64>,
    /// New [`Quotas::max_topics`].
    pub max_topics: Option<u32>,
    /// New [`Quotas::max_topic_bytes`].
    pub max_topic_bytes: Option<i64>,
    /// New [`Quotas::max_state_buckets`].
    pub max_state_buckets: Option<u32>,
}

impl QuotasPatch {
    /// Applies the present fields to `quotas`.
    pub fn apply(&self, quotas: &mut Quotas) {
        if let Some(v) = self.max_subscriptions {
            quotas.max_subscriptions = v;
        }
        if let Some(v) = self.max_dids_per_filter {
            quotas.max_dids_per_filter = v;
        }
        if let Some(v) = self.max_delivery_events_per_s {
            quotas.max_delivery_events_per_s = v;
        }
        if let Some(v) = self.max_topics {
            quotas.max_topics = v;
        }
        if let Some(v) = self.max_topic_bytes {
            quotas.max_topic_bytes = v;
        }
        if let Some(v) = self.max_state_buckets {
            quotas.max_state_buckets = v;
        }
    }
}

/// What a tenant posts to create a topic: a JetStream stream of its own that subscriptions publish into and
/// read from (`docs/api.md`, Topics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic's name, unique within the tenant: 1–64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or
    /// digit.
    pub name: String,
    /// Messages older than this are removed, in seconds (60 s to 30 days; default 1 day).
    #[serde(default = "default_topic_max_age_secs")]
    pub max_age_secs: u64,
    /// The oldest messages are removed beyond this many bytes (1 MiB up to the tenant's `max_topic_bytes`;
    /// default 1 GiB).
    #[serde(default = "default_topic_max_bytes")]
    pub max_bytes: i64,
}

fn default_topic_max_age_secs() -> u64 {
    24 * 60 * 60
}

fn default_topic_max_bytes() -> i64 {
    1024 * 1024 * 1024
}

/// A topic as stored and returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Topic {
    /// The topic's name (unique within the tenant).
    pub name: String,
    /// The owner.
    pub tenant_id: String,
    /// Retention by age, in seconds.
    pub max_age_secs: u64,
    /// Retention by size, in bytes.
    pub max_bytes: i64,
    /// The JetStream stream holding it.
    pub stream: String,
    /// The subject its messages are stored under.
    pub subject: String,
    /// Creation time.
    #[schemars(with = "String")]
    pub created_at: DateTime<Utc>,
}

impl Topic {
    /// A new topic of `tenant_id` from a (validated) spec.
    pub fn from_spec(tenant_id: &str, spec: TopicSpec) -> Self {
        Self {
            stream: crate::layout::topic_stream(tenant_id, &spec.name),
            subject: crate::layout::topic_subject(tenant_id, &spec.name),
            name: spec.name,
            tenant_id: tenant_id.to_owned(),
            max_age_secs: spec.max_age_secs,
            max_bytes: spec.max_bytes,
            created_at: now(),
        }
    }
}

/// A topic with what its stream holds now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TopicInfo {
    /// The topic.
    #[serde(flatten)]
    pub topic: Topic,
    /// Messages it holds.
    pub messages: u64,
    /// Sequence of its oldest message (last + 1 when empty).
    pub first_seq: u64,
    /// Sequence of its newest message (0 when nothing was ever stored).
    pub last_seq: u64,
}

/// A tenant: the owner of API keys and subscriptions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tenant {
    /// `t_` + 16 base32 characters.
    pub id: String,
    /// Display name (≤ 200 characters).
    pub name: String,
    /// Limits.
    #[serde(default)]
    pub quotas: Quotas,
    /// Creation time.
    #[schemars(with = "String")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[schemars(with = "String")]
    pub updated_at: DateTime<Utc>,
}

/// What the admin posts to create a tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Display name (≤ 200 characters).
    pub name: String,
    /// Limits; absent fields take their defaults.
    #[serde(default)]
    pub quotas: Quotas,
}

/// What the admin patches on a tenant; absent fields are unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPatch {
    /// New display name.
    pub name: Option<String>,
    /// Quotas to change.
    pub quotas: Option<QuotasPatch>,
}

/// An API key as stored (under the SHA-256 of its token; the token itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiKeyRecord {
    /// The tenant the key acts for.
    pub tenant_id: String,
    /// `k_` + 16 base32 characters (to list and revoke keys without their tokens).
    pub key_id: String,
    /// Free text to tell keys apart.
    #[serde(default)]
    pub label: String,
    /// Creation time.
    #[schemars(with = "String")]
    pub created_at: DateTime<Utc>,
}

/// Where a subscription's events come from: `"firehose"` or `{"topic": "<name>"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The firehose stream.
    #[default]
    Firehose,
    /// One of the tenant's topics (it must exist when the subscription is created): its messages, in order,
    /// filtered by the predicate only (they are whatever the subscription publishing into it delivered).
    Topic(String),
}

impl Source {
    /// The topic's name, for a topic source.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Source::Firehose => None,
            Source::Topic(t) => Some(t),
        }
    }
}

/// The lifecycle state of a subscription.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SubState {
    /// Matching and delivering.
    #[default]
    Active,
    /// Stopped by the tenant; resumes from its saved progress.
    Paused,
    /// Stopped by the server (the receiver answered `410 Gone`); see `disabled_reason`. Resume re-enables it.
    Disabled,
}

/// Batch limits: a batch is sent when any is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// Most events in a batch (1..=10,000).
    pub max_events: u32,
    /// Most bytes of a batch body (1 KiB..=8 MiB).
    pub max_bytes: u64,
    /// Longest time the first event of a batch waits before the batch is sent, in ms (0..=60,000).
    pub max_wait_ms: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_events: 1_000,
            max_bytes: 1024 * 1024,
            max_wait_ms: 1_000,
        }
    }
}

/// A change of some batch limits; absent fields keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingPatch {
    /// New [`Batching::max_events`].
    pub max_events: Option<u32>,
    /// New [`Batching::max_bytes`].
    pub max_bytes: Option<u64>,
    /// New [`Batching::max_wait_ms`].
    pub max_wait_ms: Option<u64>,
}

impl BatchingPatch {
    /// `batching` with the present fields replaced.
    pub fn applied_to(&self, batching: &Batching) -> Batching {
        Batching {
            max_events: self.max_events.unwrap_or(batching.max_events),
            max_bytes: self.max_bytes.unwrap_or(batching.max_bytes),
            max_wait_ms: self.max_wait_ms.unwrap_or(batching.max_wait_ms),
        }
    }
}

/// Where in the stream a new subscription starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "at", rename_all = "snake_case", deny_unknown_fields)]
pub enum Start {
    /// With the events published from now on. (Variants without data are written `Live {}` so that
    /// unknown fields next to `at` are refused too.)
    Live {},
    /// With the oldest event the stream still holds.
    RetentionStart {},
    /// With the first event published at or after `time`.
    Time {
        /// RFC 3339.
        #[schemars(with = "String")]
        time: DateTime<Utc>,
    },
    /// With the event at stream sequence `seq` (or the first after it).
    Seq {
        /// Stream sequence.
        seq: u64,
    },
}

impl Default for Start {
    fn default() -> Self {
        Start::Live {}
    }
}

/// A retry schedule: attempts = 1 + its length; after the last, the batch is dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Waits before each retry, in ms (≤ 20 entries, each ≤ 24 h); jitter is added by the worker, and a
    /// receiver's `Retry-After` (capped at 1 h) replaces the wait.
    pub schedule_ms: Vec<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            schedule_ms: vec![1_000, 5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000],
        }
    }
}

/// A webhook target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDelivery {
    /// `https://…` (or `http://…`); checked for syntax here and against the SSRF policy by the worker.
    pub url: String,
    /// How long one POST may take, in ms (100..=60,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// A topic of the tenant that receives the receiver's answers: a 2xx whose body is
    /// `{"events": [ … ]}` has each of those JSON values published into it, with the id
    /// `<batch id>:<index>` (a retried batch publishes the same ids, which the topic drops). MapReduce by
    /// chaining: another subscription takes the topic as its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_topic: Option<String>,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// Publishing into one of the tenant's topics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicDelivery {
    /// The topic's name (it must exist when the subscription is created or changed).
    pub topic: String,
    /// Retries of a batch whose publish failed (the topic's stream unreachable, full or deleted), then it is
    /// dead-lettered.
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// What a `kv` delivery does with each event.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum KvOp {
    /// Put `value` under `key` (a bucket of values).
    #[default]
    Put,
    /// Add `by` to the counter `key` (a bucket of counters).
    Incr,
}

impl KvOp {
    /// `put` or `incr`.
    pub fn as_str(self) -> &'static str {
        match self {
            KvOp::Put => "put",
            KvOp::Incr => "incr",
        }
    }

    /// The kind of bucket it writes.
    pub fn kind(self) -> StateKind {
        match self {
            KvOp::Put => StateKind::Values,
            KvOp::Incr => StateKind::Counters,
        }
    }
}

/// Writing every event of a batch into one of the tenant's state buckets (`docs/mapreduce.md`, State).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KvDelivery {
    /// The state bucket (1-64 of `a-z 0-9 - _`); created with the subscription when the tenant has none of
    /// that name (its kind follows `op`: values for `put`, counters for `incr`).
    pub bucket: String,
    /// JMESPath on each delivered event (after the transform) giving the key: a string of
    /// `[-/_=.a-zA-Z0-9]`, not starting or ending with `.`, at most 1,024 bytes. Events without one are
    /// skipped and counted.
    pub key: String,
    /// `put` (default) or `incr`.
    #[serde(default)]
    pub op: KvOp,
    /// For `put`: JMESPath giving the value stored (JSON); default the whole event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For `incr`: JMESPath giving the integer added; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Retries of a batch whose writes failed (the bucket unreachable), then it is dead-lettered. For `incr`
    /// the waits may add up to 10 minutes at most, so that a resent increment is still inside the bucket's
    /// 15-minute duplicate window (default: 1, 5, 30, 120 s).
    #[serde(default = "default_kv_retry")]
    pub retry: RetryPolicy,
}

fn default_kv_retry() -> RetryPolicy {
    RetryPolicy {
        schedule_ms: vec![1_000, 5_000, 30_000, 120_000],
    }
}

/// What a state bucket holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// JSON values, written by `put`.
    Values,
    /// Integer counters, written by `incr`.
    Counters,
}

impl StateKind {
    /// The bus's kind.
    pub fn bus(self) -> fpaas_bus::StateKind {
        match self {
            StateKind::Values => fpaas_bus::StateKind::Values,
            StateKind::Counters => fpaas_bus::StateKind::Counters,
        }
    }
}

/// Batches kept for the tenant's clients to fetch (`POST /v1/subscriptions/{id}/pull`) and acknowledge
/// (`…/ack`); see `docs/mapreduce.md`, Pull delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PullDelivery {
    /// How long a fetched batch stays invisible to other pulls; not acknowledged by then, the next pull gets
    /// it again (its `deliveries` one higher). In ms, 1,000..=43,200,000 (12 h); default 30,000.
    #[serde(default = "default_visibility_timeout_ms")]
    pub visibility_timeout_ms: u64,
    /// Most batches waiting (stored, not acknowledged) for this subscription: at this bound the worker stops
    /// forming batches until some are acknowledged (backpressure, not a failure). 1..=1,000; default 100.
    #[serde(default = "default_max_waiting_batches")]
    pub max_waiting_batches: u32,
}

fn default_visibility_timeout_ms() -> u64 {
    30_000
}

fn default_max_waiting_batches() -> u32 {
    100
}

impl Default for PullDelivery {
    fn default() -> Self {
        Self {
            visibility_timeout_ms: default_visibility_timeout_ms(),
            max_waiting_batches: default_max_waiting_batches(),
        }
    }
}

/// A state bucket of a tenant, as stored and returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StateBucketDoc {
    /// The bucket's name (unique within the tenant).
    pub name: String,
    /// The owner.
    pub tenant_id: String,
    /// Values or counters.
    pub kind: StateKind,
    /// The NATS KV bucket holding it (`fpaas_state_<tenant>_<name>`).
    pub kv_bucket: String,
    /// Creation time.
    #[schemars(with = "String")]
    pub created_at: DateTime<Utc>,
}

/// How batches are delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delivery {
    /// POST to a URL, signed (Standard Webhooks).
    Webhook(WebhookDelivery),
    /// Publish every event of the batch into a topic of the tenant, one message each, with an id derived from
    /// the subscription and the source event (a redelivered batch is deduplicated by the topic's stream).
    Topic(TopicDelivery),
    /// Write every event of the batch into a state bucket of the tenant: put a value or increment a counter
    /// under a key computed from the event (a redelivered batch is written once).
    Kv(KvDelivery),
    /// Keep each batch (the webhook body) until a client fetches and acknowledges it.
    Pull(PullDelivery),
}

impl Delivery {
    /// The webhook part, for a webhook delivery.
    pub fn webhook(&self) -> Option<&WebhookDelivery> {
        match self {
            Delivery::Webhook(w) => Some(w),
            Delivery::Topic(_) | Delivery::Kv(_) | Delivery::Pull(_) => None,
        }
    }

    /// The kv part, for a kv delivery.
    pub fn kv(&self) -> Option<&KvDelivery> {
        match self {
            Delivery::Kv(k) => Some(k),
            Delivery::Webhook(_) | Delivery::Topic(_) | Delivery::Pull(_) => None,
        }
    }

    /// The pull part, for a pull delivery.
    pub fn pull(&self) -> Option<&PullDelivery> {
        match self {
            Delivery::Pull(p) => Some(p),
            Delivery::Webhook(_) | Delivery::Topic(_) | Delivery::Kv(_) => None,
        }
    }

    /// The retry policy (a pull delivery has none: storing a batch is retried until it succeeds).
    pub fn retry(&self) -> Option<&RetryPolicy> {
        match self {
            Delivery::Webhook(w) => Some(&w.retry),
            Delivery::Topic(t) => Some(&t.retry),
            Delivery::Kv(k) => Some(&k.retry),
            Delivery::Pull(_) => None,
        }
    }
}

/// A signing secret of a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecretEntry {
    /// `whsec_` + base64 of the key bytes.
    pub secret: String,
    /// When it stops being used (set on rotation); `None` = current.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl SecretEntry {
    /// Whether the worker still signs with it at `at`.
    pub fn is_live(&self, at: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|e| e > at)
    }
}

/// What a tenant posts to create a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Optional display name (≤ 200 characters).
    #[serde(default)]
    pub name: Option<String>,
    /// Event source.
    #[serde(default)]
    pub source: Source,
    /// Which events (an empty filter matches every event).
    #[serde(default)]
    #[schemars(schema_with = "filter_schema")]
    pub filter: FilterSpec,
    /// Optional JMESPath projection applied to each matched event's JSON.
    #[serde(default)]
    pub transform: Option<String>,
    /// Optional collector: groups, windows and aggregates the (transformed) events; its closed windows are
    /// what is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<crate::collect::Collect>,
    /// Batch limits.
    #[serde(default)]
    pub batching: Batching,
    /// Where to start (fixed at creation).
    #[serde(default)]
    pub start: Start,
    /// Where to deliver.
    pub delivery: Delivery,
}

/// What a tenant patches on a subscription: every field optional, absent fields unchanged. `transform:
/// null` removes the transform; `filter` and `delivery` replace the whole object; `batching` changes the
/// given limits. The start position is fixed at creation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionPatch {
    /// New name (`null` removes it).
    #[serde(
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<Option<String>>,
    /// New state: `active` or `paused` (`disabled` is the server's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<SubState>,
    /// New filter (replaces the old one).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_filter_schema")]
    pub filter: Option<FilterSpec>,
    /// New transform (`null` removes it).
    #[serde(
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub transform: Option<Option<String>>,
    /// New collector (`null` removes it; a changed collector starts with empty windows).
    #[serde(
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub collect: Option<Option<crate::collect::Collect>>,
    /// Batch limits to change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingPatch>,
    /// New delivery (replaces the old one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// `Some(None)` for an explicit `null`, `Some(Some(v))` for a value (absent = `None` through `default`).
fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// A subscription as stored and returned: the spec and the server's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Subscription {
    /// `s_` + 16 base32 characters.
    pub id: String,
    /// The owner.
    pub tenant_id: String,
    /// Optional display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Lifecycle state.
    pub state: SubState,
    /// Why the server disabled it (`state: disabled`).
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Event source.
    #[serde(default)]
    pub source: Source,
    /// Which events.
    #[serde(default)]
    #[schemars(schema_with = "filter_schema")]
    pub filter: FilterSpec,
    /// Optional JMESPath projection.
    #[serde(default)]
    pub transform: Option<String>,
    /// Optional collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<crate::collect::Collect>,
    /// Batch limits.
    #[serde(default)]
    pub batching: Batching,
    /// Where it started.
    #[serde(default)]
    pub start: Start,
    /// Where to deliver.
    pub delivery: Delivery,
    /// Signing secrets, newest first (the worker signs with every live one). The API shows them only on
    /// create and rotate.
    pub secrets: Vec<SecretEntry>,
    /// +1 on every change of filter, transform, batching, delivery or state (part of batch ids).
    pub generation: u64,
    /// Creation time.
    #[schemars(with = "String")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[schemars(with = "String")]
    pub updated_at: DateTime<Utc>,
}

impl Subscription {
    /// A new active subscription of `tenant_id` from a (validated) spec, with one fresh secret.
    pub fn from_spec(id: String, tenant_id: String, spec: SubscriptionSpec) -> Self {
        let at = now();
        Self {
            id,
            tenant_id,
            name: spec.name,
            state: SubState::Active,
            disabled_reason: None,
            source: spec.source,
            filter: spec.filter,
            transform: spec.transform,
            collect: spec.collect,
            batching: spec.batching,
            start: spec.start,
            delivery: spec.delivery,
            secrets: vec![SecretEntry {
                secret: crate::ids::new_webhook_secret(),
                expires_at: None,
            }],
            generation: 1,
            created_at: at,
            updated_at: at,
        }
    }

    /// The subscription with `patch` applied (not validated: see [`crate::validate::subscription`]).
    /// The generation grows by one when filter, transform, batching, delivery or state change.
    pub fn patched(&self, patch: &SubscriptionPatch) -> Self {
        let mut next = self.clone();
        if let Some(name) = &patch.name {
            next.name.clone_from(name);
        }
        if let Some(state) = patch.state {
            next.set_state(state);
        }
        if let Some(filter) = &patch.filter {
            next.filter = filter.clone();
        }
        if let Some(transform) = &patch.transform {
            next.transform.clone_from(transform);
        }
        if let Some(collect) = &patch.collect {
            next.collect.clone_from(collect);
        }
        if let Some(batching) = &patch.batching {
            next.batching = batching.applied_to(&self.batching);
        }
        if let Some(delivery) = &patch.delivery {
            next.delivery = delivery.clone();
        }
        next.bump_if_changed(self);
        next
    }

    /// Sets the state (clearing `disabled_reason` unless disabled).
    pub fn set_state(&mut self, state: SubState) {
        self.state = state;
        if state != SubState::Disabled {
            self.disabled_reason = None;
        }
    }

    /// Adds one to the generation and stamps `updated_at` when anything the worker acts on differs from
    /// `before`; stamps `updated_at` for other changes.
    pub fn bump_if_changed(&mut self, before: &Subscription) {
        let worker_visible = self.filter != before.filter
            || self.transform != before.transform
            || self.collect != before.collect
            || self.batching != before.batching
            || self.delivery != before.delivery
            || self.state != before.state;
        if worker_visible {
            self.generation = before.generation + 1;
        }
        if worker_visible || self != before {
            self.updated_at = now();
        }
    }

    /// The subscription with a new secret first and every current secret expiring `overlap_secs` from now
    /// (already-expired ones are dropped). Not a generation change: signing follows the secrets list.
    pub fn rotated(&self, overlap_secs: u64) -> Self {
        let at = now();
        let expires = at
            + chrono::Duration::seconds(
                i64::try_from(overlap_secs).unwrap_or(i64::MAX / 1_000_000),
            );
        let mut next = self.clone();
        next.secrets = std::iter::once(SecretEntry {
            secret: crate::ids::new_webhook_secret(),
            expires_at: None,
        })
        .chain(
            self.secrets
                .iter()
                .filter(|s| s.is_live(at))
                .map(|s| SecretEntry {
                    secret: s.secret.clone(),
                    expires_at: Some(s.expires_at.map_or(expires, |e| e.min(expires))),
                }),
        )
        .collect();
        next.updated_at = at;
        next
    }

    /// The subscription as shown by reads: secrets hidden (`"whsec_…"` replaced by a hint).
    pub fn redacted(&self) -> Self {
        let mut out = self.clone();
        for s in &mut out.secrets {
            s.secret = redact_secret(&s.secret);
        }
        out
    }
}

/// `whsec_abcd…` (prefix and the first 4 characters).
pub fn redact_secret(secret: &str) -> String {
    let shown: String = secret
        .strip_prefix(crate::ids::SECRET_PREFIX)
        .unwrap_or(secret)
        .chars()
        .take(4)
        .collect();
    format!("{}{shown}…", crate::ids::SECRET_PREFIX)
}

/// A batch in flight (written before the first attempt, cleared after the receiver accepted it or it was
/// dead-lettered).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PendingBatch {
    /// `<sub_id>.<from_seq>-<to_seq>.g<generation>`.
    pub batch_id: String,
    /// First stream sequence.
    pub from_seq: u64,
    /// Last stream sequence.
    pub to_seq: u64,
    /// Attempts made so far.
    pub attempt: u32,
}

/// A subscription's position, written by the worker only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Progress {
    /// Every matching event with stream sequence ≤ this was accepted (2xx) or dead-lettered.
    pub acked_seq: u64,
    /// The batch in flight, if any.
    #[serde(default)]
    pub pending: Option<PendingBatch>,
}

/// A subscription's counters, written by the worker (at most once a second per subscription).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct SubStats {
    /// Events that matched the filter.
    pub matched_events: u64,
    /// Events in batches the receiver accepted.
    pub delivered_events: u64,
    /// Batches the receiver accepted.
    pub delivered_batches: u64,
    /// Body bytes of the batches the receiver accepted.
    pub delivered_bytes: u64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: u64,
    /// Events in dead-lettered batches.
    pub dead_lettered_events: u64,
    /// Whether a batch is waiting for a retry.
    pub retrying: bool,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// When it happened.
    #[schemars(with = "Option<String>")]
    pub last_error_at: Option<DateTime<Utc>>,
    /// Matching events not yet delivered (estimate).
    pub lag_events: u64,
    /// Age of the oldest undelivered matching event, in seconds.
    pub lag_seconds: f64,
    /// When the worker wrote these figures.
    #[schemars(with = "Option<String>")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// A tenant's metering: sums over its subscriptions' stats.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Usage {
    /// The tenant.
    pub tenant_id: String,
    /// Its subscriptions.
    pub subscriptions: u64,
    /// Events that matched its filters.
    pub matched_events: u64,
    /// Events delivered (accepted by its receivers).
    pub delivered_events: u64,
    /// Body bytes delivered.
    pub delivered_bytes: u64,
    /// Batches delivered.
    pub delivered_batches: u64,
    /// Events dead-lettered.
    pub dead_lettered_events: u64,
}

impl Usage {
    /// Adds one subscription's stats.
    pub fn add(&mut self, stats: &SubStats) {
        self.matched_events += stats.matched_events;
        self.delivered_events += stats.delivered_events;
        self.delivered_bytes += stats.delivered_bytes;
        self.delivered_batches += stats.delivered_batches;
        self.dead_lettered_events += stats.dead_lettered_events;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_json() -> serde_json::Value {
        json!({
            "name": "likes",
            "filter": {"collections": ["app.bsky.feed.like"]},
            "batching": {"max_events": 500},
            "start": {"at": "seq", "seq": 42},
            "delivery": {"type": "webhook", "url": "https://example.com/hook"}
        })
    }

    #[test]
    fn spec_defaults_and_round_trip() {
        let spec: SubscriptionSpec = serde_json::from_value(spec_json()).unwrap();
        assert_eq!(spec.batching.max_events, 500);
        assert_eq!(spec.batching.max_wait_ms, 1_000);
        assert_eq!(spec.start, Start::Seq { seq: 42 });
        assert_eq!(spec.delivery.webhook().expect("webhook").timeout_ms, 10_000);
        assert_eq!(spec.delivery.retry().expect("retry").schedule_ms.len(), 7);
        let pull: Delivery = serde_json::from_value(json!({"type": "pull"})).unwrap();
        assert_eq!(pull, Delivery::Pull(PullDelivery::default()));
        assert!(
            serde_json::from_value::<Delivery>(json!({"type": "pull", "url": "https://x.example"}))
                .is_err()
        );
        let back: SubscriptionSpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);

        let sub = Subscription::from_spec("s_a".into(), "t_a".into(), spec);
        let text = serde_json::to_string(&sub).unwrap();
        let back: Subscription = serde_json::from_str(&text).unwrap();
        assert_eq!(back, sub);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["state"], "active");
        assert_eq!(v["delivery"]["type"], "webhook");
        assert_eq!(v["source"], "firehose");
        assert_eq!(v["start"], json!({"at": "seq", "seq": 42}));
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere_a_tenant_writes() {
        let with = |path: &[&str], extra: &str| {
            let mut v = spec_json();
            let mut at = &mut v;
            for p in path {
                at = at.get_mut(*p).unwrap();
            }
            at[extra] = json!(1);
            serde_json::from_value::<SubscriptionSpec>(v)
        };
        assert!(with(&[], "bogus").is_err());
        assert!(with(&["filter"], "bogus").is_err());
        assert!(with(&["batching"], "bogus").is_err());
        assert!(with(&["start"], "bogus").is_err());
        assert!(with(&["delivery"], "bogus").is_err());
        let live = json!({"delivery": {"type": "webhook", "url": "https://x.example"},
            "start": {"at": "live", "bogus": 1}});
        assert!(serde_json::from_value::<SubscriptionSpec>(live).is_err());
        let start: Start = serde_json::from_value(json!({"at": "retention_start"})).unwrap();
        assert_eq!(start, Start::RetentionStart {});
        assert_eq!(
            serde_json::to_value(Start::default()).unwrap(),
            json!({"at": "live"})
        );
        let retry = json!({"delivery": {"type": "webhook", "url": "https://x.example",
            "retry": {"schedule_ms": [1], "x": 2}}});
        assert!(serde_json::from_value::<SubscriptionSpec>(retry).is_err());
        assert!(serde_json::from_value::<SubscriptionPatch>(json!({"nme": "x"})).is_err());
        assert!(serde_json::from_value::<TenantSpec>(json!({"name": "a", "x": 1})).is_err());
        assert!(serde_json::from_value::<TenantPatch>(json!({"quotas": {"max_subs": 1}})).is_err());
        let other_type = json!({"delivery": {"type": "kafka", "url": "https://x.example"}});
        assert!(serde_json::from_value::<SubscriptionSpec>(other_type).is_err());
    }

    #[test]
    fn patch_null_absent_and_generation() {
        let p: SubscriptionPatch = serde_json::from_value(json!({"transform": null})).unwrap();
        assert_eq!(p.transform, Some(None));
        assert_eq!(p.name, None);
        let p2: SubscriptionPatch = serde_json::from_value(json!({"name": "n"})).unwrap();
        assert_eq!(p2.name, Some(Some("n".into())));

        let spec: SubscriptionSpec = serde_json::from_value(spec_json()).unwrap();
        let mut sub = Subscription::from_spec("s_a".into(), "t_a".into(), spec);
        sub.transform = Some("did".into());
        let renamed = sub.patched(&p2);
        assert_eq!(
            renamed.generation, sub.generation,
            "a name is not worker-visible"
        );
        let cleared = sub.patched(&p);
        assert_eq!(cleared.transform, None);
        assert_eq!(cleared.generation, sub.generation + 1);
        let batching: SubscriptionPatch =
            serde_json::from_value(json!({"batching": {"max_wait_ms": 5}})).unwrap();
        let b = sub.patched(&batching);
        assert_eq!(b.batching.max_wait_ms, 5);
        assert_eq!(b.batching.max_events, 500);
        assert_eq!(b.generation, sub.generation + 1);
        let paused = sub.patched(&SubscriptionPatch {
            state: Some(SubState::Paused),
            ..Default::default()
        });
        assert_eq!(paused.state, SubState::Paused);
        assert_eq!(paused.generation, sub.generation + 1);
    }

    #[test]
    fn stored_documents_tolerate_new_fields_and_defaults() {
        let stats: SubStats =
            serde_json::from_value(json!({"delivered_events": 3, "new": 1})).unwrap();
        assert_eq!(stats.delivered_events, 3);
        let progress: Progress = serde_json::from_value(json!({"acked_seq": 9, "pending":
            {"batch_id": "s_a.1-9.g1", "from_seq": 1, "to_seq": 9, "attempt": 2}}))
        .unwrap();
        assert_eq!(progress.pending.unwrap().attempt, 2);
        let q: Quotas = serde_json::from_value(json!({"max_subscriptions": 3})).unwrap();
        assert_eq!(q.max_dids_per_filter, 10_000);
        assert_eq!(q.max_delivery_events_per_s, 10_000);
    }

    #[test]
    fn secrets() {
        let live = SecretEntry {
            secret: "whsec_abcdefgh".into(),
            expires_at: None,
        };
        assert!(live.is_live(now()));
        let expired = SecretEntry {
            expires_at: Some(now() - chrono::Duration::seconds(1)),
            ..live.clone()
        };
        assert!(!expired.is_live(now()));
        assert_eq!(redact_secret("whsec_abcdefgh"), "whsec_abcd…");

        let spec: SubscriptionSpec = serde_json::from_value(spec_json()).unwrap();
        let sub = Subscription::from_spec("s_a".into(), "t_a".into(), spec);
        let r = sub.rotated(60);
        assert_eq!(r.secrets.len(), 2);
        assert_ne!(r.secrets[0].secret, sub.secrets[0].secret);
        assert_eq!(r.secrets[0].expires_at, None);
        assert_eq!(r.secrets[1].secret, sub.secrets[0].secret);
        assert!(r.secrets[1].expires_at.unwrap() > now());
        assert_eq!(r.generation, sub.generation);
        let r0 = r.rotated(0);
        assert_eq!(
            r0.secrets.len(),
            3,
            "expiring now, dropped on the next rotation"
        );
        assert_eq!(r0.rotated(0).secrets.len(), 2);
    }
}
