//! The route table: every operation of the API once — method, path, who may call it, its request and
//! response schemas — from which both the router ([`crate::router`]) and `/openapi.json`
//! ([`crate::openapi`]) are built, so the two cannot drift. The handlers follow, thin: authenticate, parse,
//! call the store, shape the answer.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post};
use fpaas_control::{
    AckRequest, AckResponse, ApiKeyRecord, Progress, PullRequest, PullResponse, Quotas, SubState,
    SubStats, Subscription, SubscriptionPatch, SubscriptionSpec, Tenant, TenantPatch, TenantSpec,
    Topic, TopicInfo, TopicSpec, Usage, layout,
};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::auth::{Admin, TenantAuth};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::state::AppState;

/// Who may call an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (no token).
    Public,
    /// The admin token.
    Admin,
    /// A tenant's API key; the operation only ever sees that tenant's resources.
    Tenant,
}

impl Access {
    /// `public`, `admin`, `tenant` (the `x-fpaas-access` of the OpenAPI operation).
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Admin => "admin",
            Access::Tenant => "tenant",
        }
    }
}

/// A schema of the OpenAPI document.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What a successful answer carries.
#[derive(Clone, Copy)]
pub enum Body {
    /// No body (204).
    Empty,
    /// JSON of a schema.
    Json(SchemaFn),
    /// The stored batch body, byte for byte (`application/json`).
    RawBatch,
    /// Server-Sent Events (`text/event-stream`) whose `data` are JSON of a schema.
    EventStream(SchemaFn),
}

/// One operation of the API.
#[derive(Clone, Copy)]
pub struct Operation {
    /// HTTP method, lowercase (`get`, `post`, `patch`, `delete`).
    pub method: &'static str,
    /// Path template with `{param}`s (axum and OpenAPI share the syntax).
    pub path: &'static str,
    /// OpenAPI `operationId` (also the CLI's vocabulary).
    pub operation_id: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Request body schema, when it takes one.
    pub request: Option<SchemaFn>,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// Success status.
    pub status: u16,
    /// Success body.
    pub response: Body,
    /// Error statuses it can answer besides 401/403 (listed in the document).
    pub errors: &'static [u16],
    /// The handler.
    pub handler: fn() -> MethodRouter<AppState>,
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method.to_uppercase(), self.path)
    }
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

const BODY_ERRORS: &[u16] = &[400, 413, 422];

/// Every operation. A new endpoint is added here (and nowhere else) — the tenant-isolation test walks the
/// document built from this list and fails on an operation it has no case for.
pub fn operations() -> Vec<Operation> {
    vec![
        Operation {
            method: "get",
            path: "/openapi.json",
            operation_id: "openapi",
            summary: "This document.",
            access: Access::Public,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(|_| schemars::json_schema!({"type": "object"})),
            errors: &[],
            handler: || get(crate::openapi::handler),
        },
        // ------------------------------------------------------------- admin
        Operation {
            method: "post",
            path: "/v1/tenants",
            operation_id: "createTenant",
            summary: "Create a tenant and its first API key (the token is shown once).",
            access: Access::Admin,
            request: Some(schema::<CreateTenant>),
            query: &[],
            status: 201,
            response: Body::Json(schema::<TenantCreated>),
            errors: BODY_ERRORS,
            handler: || post(create_tenant),
        },
        Operation {
            method: "get",
            path: "/v1/tenants",
            operation_id: "listTenants",
            summary: "List tenants.",
            access: Access::Admin,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<TenantList>),
            errors: &[],
            handler: || get(list_tenants),
        },
        Operation {
            method: "get",
            path: "/v1/tenants/{tenant_id}",
            operation_id: "getTenant",
            summary: "Get a tenant.",
            access: Access::Admin,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<Tenant>),
            errors: &[404],
            handler: || get(get_tenant),
        },
        Operation {
            method: "patch",
            path: "/v1/tenants/{tenant_id}",
            operation_id: "updateTenant",
            summary: "Change a tenant's name or quotas.",
            access: Access::Admin,
            request: Some(schema::<TenantPatch>),
            query: &[],
            status: 200,
            response: Body::Json(schema::<Tenant>),
            errors: &[400, 404, 409, 413, 422],
            handler: || patch(update_tenant),
        },
        Operation {
            method: "delete",
            path: "/v1/tenants/{tenant_id}",
            operation_id: "deleteTenant",
            summary: "Delete a tenant, its subscriptions and its API keys.",
            access: Access::Admin,
            request: None,
            query: &[],
            status: 204,
            response: Body::Empty,
            errors: &[404],
            handler: || delete(delete_tenant),
        },
        Operation {
            method: "post",
            path: "/v1/tenants/{tenant_id}/keys",
            operation_id: "createKey",
            summary: "Add an API key to a tenant (the token is shown once).",
            access: Access::Admin,
            request: Some(schema::<CreateKey>),
            query: &[],
            status: 201,
            response: Body::Json(schema::<KeyCreated>),
            errors: &[400, 404, 413, 422],
            handler: || post(create_key),
        },
        Operation {
            method: "get",
            path: "/v1/tenants/{tenant_id}/keys",
            operation_id: "listKeys",
            summary: "List a tenant's API keys (without tokens).",
            access: Access::Admin,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<KeyList>),
            errors: &[404],
            handler: || get(list_keys),
        },
        Operation {
            method: "delete",
            path: "/v1/tenants/{tenant_id}/keys/{key_id}",
            operation_id: "deleteKey",
            summary: "Revoke an API key.",
            access: Access::Admin,
            request: None,
            query: &[],
            status: 204,
            response: Body::Empty,
            errors: &[404],
            handler: || delete(delete_key),
        },
        // ------------------------------------------------------------- tenant
        Operation {
            method: "post",
            path: "/v1/subscriptions",
            operation_id: "createSubscription",
            summary: "Create a subscription (its signing secret is shown in this answer only).",
            access: Access::Tenant,
            request: Some(schema::<SubscriptionSpec>),
            query: &[],
            status: 201,
            response: Body::Json(schema::<Subscription>),
            errors: &[400, 413, 422, 429],
            handler: || post(create_sub),
        },
        Operation {
            method: "get",
            path: "/v1/subscriptions",
            operation_id: "listSubscriptions",
            summary: "List the tenant's subscriptions (secrets redacted).",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<SubscriptionList>),
            errors: &[],
            handler: || get(list_subs),
        },
        Operation {
            method: "get",
            path: "/v1/subscriptions/{sub_id}",
            operation_id: "getSubscription",
            summary: "Get a subscription (secrets redacted; `ETag` = its revision).",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<Subscription>),
            errors: &[404],
            handler: || get(get_sub),
        },
        Operation {
            method: "patch",
            path: "/v1/subscriptions/{sub_id}",
            operation_id: "updateSubscription",
            summary: "Change a subscription; with `If-Match: \"<revision>\"` only if unchanged since read.",
            access: Access::Tenant,
            request: Some(schema::<SubscriptionPatch>),
            query: &[],
            status: 200,
            response: Body::Json(schema::<Subscription>),
            errors: &[400, 404, 409, 413, 422, 429],
            handler: || patch(update_sub),
        },
        Operation {
            method: "delete",
            path: "/v1/subscriptions/{sub_id}",
            operation_id: "deleteSubscription",
            summary: "Delete a subscription.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 204,
            response: Body::Empty,
            errors: &[404],
            handler: || delete(delete_sub),
        },
        Operation {
            method: "post",
            path: "/v1/subscriptions/{sub_id}/pause",
            operation_id: "pauseSubscription",
            summary: "Pause: nothing is delivered until resumed; progress is kept.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<Subscription>),
            errors: &[404, 409],
            handler: || post(pause_sub),
        },
        Operation {
            method: "post",
            path: "/v1/subscriptions/{sub_id}/resume",
            operation_id: "resumeSubscription",
            summary: "Resume a paused or disabled subscription from its saved progress.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<Subscription>),
            errors: &[404, 409],
            handler: || post(resume_sub),
        },
        Operation {
            method: "post",
            path: "/v1/subscriptions/{sub_id}/rotate-secret",
            operation_id: "rotateSecret",
            summary: "New signing secret; the old ones stay valid for `overlap_secs` (shown in this answer only).",
            access: Access::Tenant,
            request: Some(schema::<RotateSecret>),
            query: &[],
            status: 200,
            response: Body::Json(schema::<Subscription>),
            errors: &[400, 404, 409, 413, 422],
            handler: || post(rotate_secret),
        },
        Operation {
            method: "get",
            path: "/v1/subscriptions/{sub_id}/stats",
            operation_id: "subscriptionStats",
            summary: "Delivery stats and progress of a subscription.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<StatsView>),
            errors: &[404],
            handler: || get(sub_stats),
        },
        Operation {
            method: "post",
            path: "/v1/subscriptions/{sub_id}/pull",
            operation_id: "pullSubscription",
            summary: "Fetch the next waiting batches of a `pull` subscription (leased for its visibility timeout; long poll with `max_wait_ms`).",
            access: Access::Tenant,
            request: Some(schema::<PullRequest>),
            query: &[],
            status: 200,
            response: Body::Json(schema::<PullResponse>),
            errors: &[400, 404, 409, 413, 422],
            handler: || post(pull_sub),
        },
        Operation {
            method: "post",
            path: "/v1/subscriptions/{sub_id}/ack",
            operation_id: "ackSubscription",
            summary: "Acknowledge fetched batches of a `pull` subscription by id: they are removed; ids not waiting are listed as `unknown`.",
            access: Access::Tenant,
            request: Some(schema::<AckRequest>),
            query: &[],
            status: 200,
            response: Body::Json(schema::<AckResponse>),
            errors: &[400, 404, 409, 413, 422],
            handler: || post(ack_sub),
        },
        Operation {
            method: "get",
            path: "/v1/subscriptions/{sub_id}/tail",
            operation_id: "tailSubscription",
            summary: "Server-Sent Events: the subscription's matches from now on (filter, predicate and transform applied; not delivered, not counted); keep-alive comments every 15 s.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::EventStream(schema::<crate::console_api::TailMatch>),
            errors: &[404, 429],
            handler: || get(crate::console_api::tail),
        },
        Operation {
            method: "post",
            path: "/v1/playground",
            operation_id: "playground",
            summary: "Run a filter and transform (as a subscription's) against the most recent events of the firehose or a topic: the matches and what the transform makes of them.",
            access: Access::Tenant,
            request: Some(schema::<crate::console_api::PlaygroundRequest>),
            query: &[],
            status: 200,
            response: Body::Json(schema::<crate::console_api::PlaygroundResult>),
            errors: &[400, 404, 413, 422, 429],
            handler: || post(crate::console_api::playground),
        },
        Operation {
            method: "get",
            path: "/v1/usage",
            operation_id: "usage",
            summary: "The tenant's metering: events matched, events and bytes delivered (sums over its subscriptions).",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<Usage>),
            errors: &[],
            handler: || get(usage),
        },
        Operation {
            method: "get",
            path: "/v1/subscriptions/{sub_id}/dead-letters",
            operation_id: "listDeadLetters",
            summary: "List dead-lettered batches, oldest first.",
            access: Access::Tenant,
            request: None,
            query: &[
                (
                    "from_seq",
                    "Only dead letters with seq ≥ this (paging: last seq + 1).",
                ),
                ("limit", "At most this many (1..=1000, default 100)."),
            ],
            status: 200,
            response: Body::Json(schema::<DeadLetterList>),
            errors: &[400, 404],
            handler: || get(list_dead_letters),
        },
        Operation {
            method: "delete",
            path: "/v1/subscriptions/{sub_id}/dead-letters",
            operation_id: "purgeDeadLetters",
            summary: "Remove every dead letter of the subscription.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<Purged>),
            errors: &[404],
            handler: || delete(purge_dead_letters),
        },
        Operation {
            method: "get",
            path: "/v1/subscriptions/{sub_id}/dead-letters/{seq}",
            operation_id: "getDeadLetter",
            summary: "The dead-lettered batch body exactly as it was POSTed (details in `Fpaas-*` headers).",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::RawBatch,
            errors: &[404],
            handler: || get(get_dead_letter),
        },
        Operation {
            method: "post",
            path: "/v1/subscriptions/{sub_id}/dead-letters/{seq}/replay",
            operation_id: "replayDeadLetter",
            summary: "POST the dead letter again, now, to the subscription's current URL with its current secrets and its original `webhook-id`; on a 2xx it is removed, otherwise kept (502 `delivery_failed`).",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<Replayed>),
            errors: &[404, 409, 502],
            handler: || post(replay_dead_letter),
        },
        Operation {
            method: "delete",
            path: "/v1/subscriptions/{sub_id}/dead-letters/{seq}",
            operation_id: "deleteDeadLetter",
            summary: "Remove one dead letter.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 204,
            response: Body::Empty,
            errors: &[404],
            handler: || delete(delete_dead_letter),
        },
        // -------------------------------------------------------------- topics
        Operation {
            method: "post",
            path: "/v1/topics",
            operation_id: "createTopic",
            summary: "Create a topic: a stream of the tenant's own, with its retention by age and size.",
            access: Access::Tenant,
            request: Some(schema::<TopicSpec>),
            query: &[],
            status: 201,
            response: Body::Json(schema::<Topic>),
            errors: &[400, 409, 413, 422, 429],
            handler: || post(create_topic),
        },
        Operation {
            method: "get",
            path: "/v1/topics",
            operation_id: "listTopics",
            summary: "List the tenant's topics, by name.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<TopicList>),
            errors: &[],
            handler: || get(list_topics),
        },
        Operation {
            method: "get",
            path: "/v1/topics/{topic}",
            operation_id: "getTopic",
            summary: "Get a topic with what its stream holds now.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<TopicInfo>),
            errors: &[404],
            handler: || get(get_topic),
        },
        Operation {
            method: "delete",
            path: "/v1/topics/{topic}",
            operation_id: "deleteTopic",
            summary: "Delete a topic and everything it holds (not while a subscription delivers into it: 409).",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 204,
            response: Body::Empty,
            errors: &[404, 409],
            handler: || delete(delete_topic),
        },
        // -------------------------------------------------------------- state
        Operation {
            method: "get",
            path: "/v1/state",
            operation_id: "listStateBuckets",
            summary: "List the tenant's state buckets (created by subscriptions with a `kv` delivery), by name.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<StateBucketList>),
            errors: &[],
            handler: || get(crate::state_api::list_buckets),
        },
        Operation {
            method: "get",
            path: "/v1/state/{bucket}",
            operation_id: "getStateBucket",
            summary: "Get a state bucket: its kind and how many keys it holds.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<crate::state_api::StateBucketInfo>),
            errors: &[404],
            handler: || get(crate::state_api::get_bucket),
        },
        Operation {
            method: "delete",
            path: "/v1/state/{bucket}",
            operation_id: "deleteStateBucket",
            summary: "Delete a state bucket and everything it holds (not while a subscription writes it: 409).",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 204,
            response: Body::Empty,
            errors: &[404, 409],
            handler: || delete(crate::state_api::delete_bucket),
        },
        Operation {
            method: "get",
            path: "/v1/state/{bucket}/keys",
            operation_id: "listStateKeys",
            summary: "Keys with their values, in key order, by prefix; page with `after` = the answer's `next_after`.",
            access: Access::Tenant,
            request: None,
            query: &[
                ("prefix", "Only keys starting with this."),
                (
                    "after",
                    "Only keys after this one (paging: the previous answer's `next_after`).",
                ),
                ("limit", "At most this many (1..=1000, default 100)."),
            ],
            status: 200,
            response: Body::Json(schema::<crate::state_api::StateKeyList>),
            errors: &[400, 404],
            handler: || get(crate::state_api::list_keys),
        },
        Operation {
            method: "get",
            path: "/v1/state/{bucket}/keys/{key}",
            operation_id: "getStateKey",
            summary: "One key's value (a counter's is a number), revision and time of the last write; a `/` in the key is sent as `%2F`.",
            access: Access::Tenant,
            request: None,
            query: &[],
            status: 200,
            response: Body::Json(schema::<crate::state_api::StateValue>),
            errors: &[400, 404],
            handler: || get(crate::state_api::get_key),
        },
        Operation {
            method: "get",
            path: "/v1/state/{bucket}/watch",
            operation_id: "watchState",
            summary: "Server-Sent Events: one event per change (`put` / `delete`), first the current value of every key unless `from` says otherwise; keep-alive comments every 15 s.",
            access: Access::Tenant,
            request: None,
            query: &[
                ("prefix", "Only keys starting with this."),
                (
                    "from",
                    "`current` (default): the current values first, then changes; `new`: only changes from now; a revision: every entry from that revision on.",
                ),
            ],
            status: 200,
            response: Body::EventStream(schema::<crate::state_api::StateChange>),
            errors: &[400, 404, 429],
            handler: || get(crate::state_api::watch),
        },
    ]
}

// ------------------------------------------------------------------ DTOs

/// Create a tenant.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Display name (≤ 200 characters).
    pub name: String,
    /// Limits; absent fields take their defaults.
    #[serde(default)]
    pub quotas: Quotas,
    /// Label of the first API key.
    #[serde(default)]
    pub key_label: Option<String>,
}

/// A new tenant and its first key.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct TenantCreated {
    /// The tenant.
    pub tenant: Tenant,
    /// The key (without its token).
    pub key: ApiKeyRecord,
    /// The bearer token of the key: shown once, only its hash is stored.
    pub token: String,
}

/// Tenants.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct TenantList {
    /// Oldest first.
    pub tenants: Vec<Tenant>,
}

/// Create an API key.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CreateKey {
    /// Free text to tell keys apart.
    pub label: Option<String>,
}

/// A new API key.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct KeyCreated {
    /// The key (without its token).
    pub key: ApiKeyRecord,
    /// The bearer token: shown once, only its hash is stored.
    pub token: String,
}

/// API keys.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct KeyList {
    /// Oldest first.
    pub keys: Vec<ApiKeyRecord>,
}

/// State buckets.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct StateBucketList {
    /// By name.
    pub buckets: Vec<fpaas_control::StateBucketDoc>,
}

/// Topics.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct TopicList {
    /// By name.
    pub topics: Vec<Topic>,
}

/// Subscriptions.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct SubscriptionList {
    /// Oldest first, secrets redacted.
    pub subscriptions: Vec<Subscription>,
}

/// Rotate a subscription's signing secret.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RotateSecret {
    /// How long the current secrets keep being used next to the new one, in seconds (0..=2,592,000).
    pub overlap_secs: u64,
}

impl Default for RotateSecret {
    fn default() -> Self {
        Self {
            overlap_secs: 86_400,
        }
    }
}

/// Longest rotation overlap: 30 days.
pub const MAX_OVERLAP_SECS: u64 = 30 * 24 * 60 * 60;

/// A subscription's stats and progress.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct StatsView {
    /// The subscription.
    pub subscription_id: String,
    /// Its state.
    pub state: SubState,
    /// Its generation.
    pub generation: u64,
    /// Its saved position (`null` before the first save).
    pub progress: Option<Progress>,
    /// Its counters (zeros before the worker's first report).
    pub stats: SubStats,
}

/// A dead-lettered batch (the body itself: `GET …/dead-letters/{seq}`).
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (its id here).
    pub seq: u64,
    /// The batch id (= `webhook-id` of its attempts).
    pub batch_id: Option<String>,
    /// Events in the batch.
    pub events: Option<u64>,
    /// Attempts made.
    pub attempts: Option<u64>,
    /// The last error.
    pub last_error: Option<String>,
    /// First firehose stream sequence of the batch.
    pub from_seq: Option<u64>,
    /// Last firehose stream sequence of the batch.
    pub to_seq: Option<u64>,
    /// Body size in bytes.
    pub bytes: u64,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
}

/// Dead letters.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct DeadLetterList {
    /// Oldest first.
    pub dead_letters: Vec<DeadLetter>,
}

/// A replayed dead letter the receiver accepted (it is removed from the dead letters).
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct Replayed {
    /// Its sequence in the dead-letter stream (no longer there).
    pub seq: u64,
    /// The batch id, sent as `webhook-id` exactly as in its first attempts.
    pub batch_id: String,
    /// Events in the batch.
    pub events: Option<u64>,
    /// The receiver's status code.
    pub status: u16,
    /// How long the receiver took, in milliseconds.
    pub elapsed_ms: u64,
}

/// What a purge removed.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct Purged {
    /// Dead letters removed.
    pub purged: u64,
}

/// The error body (every non-2xx answer).
pub fn error_schema(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<ErrorBody>()
}

// ------------------------------------------------------------------ admin handlers

async fn create_tenant(
    _: Admin,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantCreated>), ApiError> {
    let (tenant, key, token) = s
        .store
        .create_tenant(
            TenantSpec {
                name: body.name,
                quotas: body.quotas,
            },
            body.key_label.as_deref().unwrap_or("default"),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TenantCreated { tenant, key, token }),
    ))
}

async fn list_tenants(_: Admin, State(s): State<AppState>) -> Result<Json<TenantList>, ApiError> {
    Ok(Json(TenantList {
        tenants: s.store.list_tenants().await?,
    }))
}

async fn get_tenant(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(s.store.tenant(&id).await?))
}

async fn update_tenant(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TenantPatch>,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(s.store.update_tenant(&id, &body).await?))
}

async fn delete_tenant(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_tenant(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_key(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let (key, token) = s
        .store
        .create_key(&id, body.label.as_deref().unwrap_or(""))
        .await?;
    Ok((StatusCode::CREATED, Json(KeyCreated { key, token })))
}

async fn list_keys(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList {
        keys: s.store.list_keys(&id).await?,
    }))
}

async fn delete_key(
    _: Admin,
    State(s): State<AppState>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_key(&id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ tenant handlers

fn with_etag(revision: u64, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{revision}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("If-Match must be a revision from an ETag (\"123\")"))
}

/// The SSRF guard's check of a webhook URL without resolving it: a literal address (or `localhost`) that the
/// configured policy refuses is 422 `url_not_allowed`; a name is resolved and checked again at each delivery.
fn check_destination(s: &AppState, delivery: &fpaas_control::Delivery) -> Result<(), ApiError> {
    // A topic delivery is checked by the store (the topic must be the tenant's).
    let Some(webhook) = delivery.webhook() else {
        return Ok(());
    };
    let url = &webhook.url;
    fpaas_control::validate_webhook_url(url).map_err(|e| ApiError::validation(&e))?;
    s.sender.policy().check_url(url).map(drop).map_err(|e| {
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            if e.code() == "url_not_allowed" {
                "url_not_allowed"
            } else {
                "bad_url"
            },
            format!("delivery.url: {e}"),
        );
        err.field = Some("delivery.url".to_owned());
        err
    })
}

async fn create_sub(
    auth: TenantAuth,
    State(s): State<AppState>,
    ApiJson(spec): ApiJson<SubscriptionSpec>,
) -> Result<Response, ApiError> {
    check_destination(&s, &spec.delivery)?;
    let sub = s.store.create_subscription(&auth.tenant, spec).await?;
    let (_, revision) = s.store.subscription(&auth.tenant.id, &sub.id).await?;
    let mut response = with_etag(revision, (StatusCode::CREATED, Json(&sub)));
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/subscriptions/{}", sub.id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

async fn list_subs(
    auth: TenantAuth,
    State(s): State<AppState>,
) -> Result<Json<SubscriptionList>, ApiError> {
    let subscriptions = s
        .store
        .list_subscriptions(&auth.tenant.id)
        .await?
        .iter()
        .map(Subscription::redacted)
        .collect();
    Ok(Json(SubscriptionList { subscriptions }))
}

async fn get_sub(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (sub, revision) = s.store.subscription(&auth.tenant.id, &id).await?;
    Ok(with_etag(revision, Json(sub.redacted())))
}

async fn update_sub(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SubscriptionPatch>,
) -> Result<Response, ApiError> {
    if body.state == Some(SubState::Disabled) {
        return Err(ApiError::validation(&fpaas_control::ValidationError::new(
            fpaas_control::ValidationCode::BadValue,
            "state",
            "a subscription can be set active or paused; disabled is the server's",
        )));
    }
    if let Some(delivery) = &body.delivery {
        check_destination(&s, delivery)?;
    }
    let expected = if_match(&headers)?;
    let (sub, revision) = s
        .store
        .update_subscription(&auth.tenant, &id, expected, |cur| Ok(cur.patched(&body)))
        .await?;
    Ok(with_etag(revision, Json(sub.redacted())))
}

async fn delete_sub(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_subscription(&auth.tenant.id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_topic(
    auth: TenantAuth,
    State(s): State<AppState>,
    ApiJson(spec): ApiJson<TopicSpec>,
) -> Result<Response, ApiError> {
    let topic = s.store.create_topic(&auth.tenant, spec).await?;
    let mut response = (StatusCode::CREATED, Json(&topic)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/topics/{}", topic.name)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

async fn list_topics(
    auth: TenantAuth,
    State(s): State<AppState>,
) -> Result<Json<TopicList>, ApiError> {
    let topics = s.store.list_topics(&auth.tenant.id).await?;
    Ok(Json(TopicList { topics }))
}

async fn get_topic(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TopicInfo>, ApiError> {
    Ok(Json(s.store.topic_info(&auth.tenant.id, &name).await?))
}

async fn delete_topic(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_topic(&auth.tenant.id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_state(
    s: &AppState,
    auth: &TenantAuth,
    id: &str,
    state: SubState,
) -> Result<Response, ApiError> {
    let (sub, revision) = s
        .store
        .update_subscription(&auth.tenant, id, None, |cur| {
            let mut next = cur.clone();
            next.set_state(state);
            next.bump_if_changed(cur);
            Ok(next)
        })
        .await?;
    Ok(with_etag(revision, Json(sub.redacted())))
}

async fn pause_sub(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_state(&s, &auth, &id, SubState::Paused).await
}

async fn resume_sub(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_state(&s, &auth, &id, SubState::Active).await
}

async fn rotate_secret(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateSecret>,
) -> Result<Response, ApiError> {
    if body.overlap_secs > MAX_OVERLAP_SECS {
        return Err(ApiError::validation(&fpaas_control::ValidationError::new(
            fpaas_control::ValidationCode::LimitExceeded,
            "overlap_secs",
            format!("{} is more than {MAX_OVERLAP_SECS}", body.overlap_secs),
        )));
    }
    let (sub, revision) = s
        .store
        .update_subscription(&auth.tenant, &id, None, |cur| {
            Ok(cur.rotated(body.overlap_secs))
        })
        .await?;
    Ok(with_etag(revision, Json(sub)))
}

async fn sub_stats(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatsView>, ApiError> {
    let (sub, _) = s.store.subscription(&auth.tenant.id, &id).await?;
    let progress = s.store.progress(&auth.tenant.id, &id).await?;
    let stats = s
        .store
        .stats(&auth.tenant.id, &id)
        .await?
        .unwrap_or_default();
    Ok(Json(StatsView {
        subscription_id: sub.id,
        state: sub.state,
        generation: sub.generation,
        progress,
        stats,
    }))
}

async fn pull_sub(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PullRequest>,
) -> Result<Json<PullResponse>, ApiError> {
    Ok(Json(s.store.pull(&auth.tenant.id, &id, &body).await?))
}

async fn ack_sub(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AckRequest>,
) -> Result<Json<AckResponse>, ApiError> {
    Ok(Json(s.store.ack(&auth.tenant.id, &id, &body).await?))
}

async fn usage(auth: TenantAuth, State(s): State<AppState>) -> Result<Json<Usage>, ApiError> {
    Ok(Json(s.store.usage(&auth.tenant.id).await?))
}

// ------------------------------------------------------------------ dead letters

/// The DLQ subject of a subscription of the caller (404 when it is not theirs).
async fn dlq_subject(s: &AppState, auth: &TenantAuth, sub_id: &str) -> Result<String, ApiError> {
    s.store.subscription(&auth.tenant.id, sub_id).await?;
    Ok(layout::dlq_subject(&auth.tenant.id, sub_id))
}

/// The caller's dead letter `raw_seq` of subscription `sub_id` (404 when the subscription or the letter is not
/// theirs: a sequence is global to the stream, so the subject is checked).
async fn owned_dead_letter(
    s: &AppState,
    auth: &TenantAuth,
    sub_id: &str,
    raw_seq: &str,
) -> Result<fpaas_bus::LoggedMsg, ApiError> {
    let subject = dlq_subject(s, auth, sub_id).await?;
    let seq = parse_seq(raw_seq)?;
    s.dlq
        .get(seq)
        .await?
        .filter(|m| m.subject == subject)
        .ok_or_else(|| ApiError::not_found(format!("dead letter {seq}")))
}

fn parse_seq(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| ApiError::not_found(format!("dead letter {raw:?}")))
}

fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn summary(m: &fpaas_bus::LoggedMsg) -> DeadLetter {
    let num = |name: &str| m.header(name).and_then(|v| v.parse().ok());
    DeadLetter {
        seq: m.seq,
        batch_id: m.header(layout::HDR_BATCH_ID).map(str::to_owned),
        events: num(layout::HDR_EVENTS),
        attempts: num(layout::HDR_ATTEMPTS),
        last_error: m.header(layout::HDR_LAST_ERROR).map(str::to_owned),
        from_seq: num(layout::HDR_FROM_SEQ),
        to_seq: num(layout::HDR_TO_SEQ),
        bytes: m.payload.len() as u64,
        time: rfc3339(m.time),
    }
}

/// `from_seq` and `limit` of a query string.
fn dlq_query(raw: Option<&str>) -> Result<(u64, usize), ApiError> {
    let (mut from, mut limit) = (0u64, 100usize);
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "from_seq" => {
                from = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("from_seq {value:?} is not a number"))
                })?;
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1_000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit {value:?} is not 1..=1000"))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    Ok((from, limit))
}

async fn list_dead_letters(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(sub_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeadLetterList>, ApiError> {
    let (from, limit) = dlq_query(query.as_deref())?;
    let subject = dlq_subject(&s, &auth, &sub_id).await?;
    let dead_letters = s
        .dlq
        .list(&subject, from, limit)
        .await?
        .iter()
        .map(summary)
        .collect();
    Ok(Json(DeadLetterList { dead_letters }))
}

async fn get_dead_letter(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path((sub_id, seq)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let msg = owned_dead_letter(&s, &auth, &sub_id, &seq).await?;
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        msg.payload.clone(),
    )
        .into_response();
    for (name, value) in &msg.headers {
        if name.starts_with("Fpaas-")
            && let (Ok(n), Ok(v)) = (
                header::HeaderName::try_from(name.as_str()),
                HeaderValue::from_str(value),
            )
        {
            response.headers_mut().insert(n, v);
        }
    }
    Ok(response)
}

async fn delete_dead_letter(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path((sub_id, seq)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    // The owner is checked before deleting.
    let seq = owned_dead_letter(&s, &auth, &sub_id, &seq).await?.seq;
    if !s.dlq.delete(seq).await? {
        return Err(ApiError::not_found(format!("dead letter {seq}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn replay_dead_letter(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path((sub_id, seq)): Path<(String, String)>,
) -> Result<Json<Replayed>, ApiError> {
    let (sub, _) = s.store.subscription(&auth.tenant.id, &sub_id).await?;
    let msg = owned_dead_letter(&s, &auth, &sub_id, &seq).await?;
    let seq = msg.seq;
    let batch_id = msg
        .header(layout::HDR_BATCH_ID)
        .map_or_else(|| format!("{sub_id}.dlq{seq}"), str::to_owned);
    let now = chrono::Utc::now();
    let secrets = sub
        .secrets
        .iter()
        .filter(|e| e.expires_at.is_none_or(|t| t > now))
        .filter_map(|e| fpaas_webhook::Secret::parse(&e.secret).ok())
        .collect();
    let Some(webhook) = sub.delivery.webhook() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "replay POSTs to a webhook; this subscription delivers to a topic, a state bucket or pull (its dead letters can be read and deleted)",
        ));
    };
    let request = fpaas_webhook::BatchRequest {
        url: webhook.url.clone(),
        batch_id: batch_id.clone(),
        body: msg.payload.clone(),
        secrets,
        timeout: std::time::Duration::from_millis(webhook.timeout_ms),
    };
    let failed = |detail: String| {
        metrics::counter!("fpaas_api_dead_letter_replays_total", "outcome" => "failed")
            .increment(1);
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "delivery_failed",
            format!("the receiver did not accept the replay; the dead letter is kept: {detail}"),
        )
    };
    match s.sender.deliver(&request).await {
        fpaas_webhook::Outcome::Accepted {
            status, elapsed, ..
        } => {
            metrics::counter!("fpaas_api_dead_letter_replays_total", "outcome" => "accepted")
                .increment(1);
            s.dlq.delete(seq).await?;
            tracing::info!(tenant = %auth.tenant.id, subscription = %sub_id, seq, batch = %batch_id, "dead letter replayed");
            Ok(Json(Replayed {
                seq,
                batch_id,
                events: msg.header(layout::HDR_EVENTS).and_then(|v| v.parse().ok()),
                status,
                elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            }))
        }
        fpaas_webhook::Outcome::Gone => Err(failed("410 Gone".to_owned())),
        fpaas_webhook::Outcome::Retry { detail, .. } => Err(failed(detail)),
    }
}

async fn purge_dead_letters(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(sub_id): Path<String>,
) -> Result<Json<Purged>, ApiError> {
    let subject = dlq_subject(&s, &auth, &sub_id).await?;
    Ok(Json(Purged {
        purged: s.dlq.purge(&subject).await?,
    }))
}
