//! The control plane of FPaaS: what a tenant configures and what the workers report back, as typed JSON
//! documents in bus KV buckets (the layout is `docs/api.md` and [`layout`]). The HTTP API (`crates/api`)
//! is a thin shell over this crate; the pipeline worker (`crates/pipeline`) reads subscriptions from the
//! same buckets and writes progress and stats.
//!
//! | module | owns |
//! |---|---|
//! | [`model`] | the documents: [`Tenant`], [`Quotas`], [`ApiKeyRecord`], [`Subscription`], [`Topic`], [`StateBucketDoc`] and what a tenant writes ([`SubscriptionSpec`], [`SubscriptionPatch`], [`TopicSpec`]), [`Progress`], [`SubStats`] |
//! | [`collect`] | a subscription's collector stage ([`collect::Collect`]: group key, window, aggregations) and its checks |
//! | [`layout`] | bucket, stream and subject names, key builders, DLQ header names |
//! | [`validate`] | checking a spec or patch completely before anything is written: [`ValidationError`] with a stable code |
//! | [`ids`] | ids (`t_`, `s_`, `k_`), API tokens (`fpk_`) and their SHA-256, webhook secrets (`whsec_`) |
//! | [`pull`] | pull delivery's reading side: [`Store::pull`] (lease the next visible batches, long poll) and [`Store::ack`], the lease record [`pull::PullState`] |
//! | [`store`] | [`Store`]: tenant, key, subscription, topic and state-bucket CRUD (tenant-scoped; a topic's stream and a state bucket's KV bucket with their documents), compare-and-set updates, progress and stats reads |
//! | `error` | [`StoreError`] with a `Copy` [`StoreErrorKind`] |

pub mod collect;
mod error;
pub mod ids;
pub mod layout;
pub mod model;
pub mod pull;
pub mod store;
pub mod validate;

pub use error::{StoreError, StoreErrorKind};
pub use model::{
    ApiKeyRecord, Batching, BatchingPatch, Delivery, KvDelivery, KvOp, PendingBatch, Progress,
    PullDelivery, Quotas, QuotasPatch, RetryPolicy, SecretEntry, Source, Start, StateBucketDoc,
    StateKind, SubState, SubStats, Subscription, SubscriptionPatch, SubscriptionSpec, Tenant,
    TenantPatch, TenantSpec, Topic, TopicDelivery, TopicInfo, TopicSpec, Usage, WebhookDelivery,
};
pub use pull::{AckRequest, AckResponse, PullRequest, PullResponse, PulledBatch};
pub use store::{Store, StoreSettings, pull_log_settings};
pub use validate::{ValidationCode, ValidationError, validate_webhook_url};
