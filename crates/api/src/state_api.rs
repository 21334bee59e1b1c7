//! The state endpoints (`/v1/state…`): a tenant's state buckets — written by subscriptions with a `kv`
//! delivery — their keys by prefix, one key, and a watch of changes as Server-Sent Events. Every handler first
//! looks the bucket up under the caller's tenant ([`fpaas_control::Store::open_state_bucket`]), so another
//! tenant's bucket is `404` like one that does not exist. Keys in URLs and answers are the keys as the
//! delivery computed them (`did:plc:…` included); the KV bucket holds them encoded
//! ([`fpaas_control::layout::encode_state_key`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use fpaas_bus::{StateEntry, WatchFrom};
use fpaas_control::{StateBucketDoc, StateKind, layout};
use futures::{Stream, StreamExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::routes::StateBucketList;
use crate::state::AppState;

/// Most watches one tenant may hold open on one API process (each is an ordered consumer on the server).
pub const MAX_WATCHES_PER_TENANT: usize = 16;
/// Most keys one list answer carries.
pub const MAX_LIST_LIMIT: usize = 1_000;
/// Keep-alive comment interval of a watch.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A state bucket with how many keys it holds.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct StateBucketInfo {
    /// The bucket.
    #[serde(flatten)]
    pub bucket: StateBucketDoc,
    /// Keys holding a value.
    pub keys: u64,
}

/// One key's value.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct StateValue {
    /// The key.
    pub key: String,
    /// The value: the JSON put (values), or the counter as a number (counters).
    pub value: serde_json::Value,
    /// The revision of the last write (grows with every write to the bucket).
    pub revision: u64,
    /// When it was last written (RFC 3339).
    pub updated_at: String,
}

/// A page of keys.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct StateKeyList {
    /// In key order (bytes of the key).
    pub entries: Vec<StateValue>,
    /// More keys follow: pass this as `after` for the next page.
    pub next_after: Option<String>,
}

/// One change, the `data` of a watch event (`event: put` or `event: delete`, `id:` the revision).
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct StateChange {
    /// `put` (a value or counter was written) or `delete` (the key was removed).
    pub op: String,
    /// The key.
    pub key: String,
    /// The new value (`null` for a delete).
    pub value: serde_json::Value,
    /// The revision of the change.
    pub revision: u64,
    /// When it happened (RFC 3339).
    pub updated_at: String,
}

fn rfc3339(unix_ns: i128) -> String {
    let ns = i64::try_from(unix_ns).unwrap_or(0);
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A stored value as JSON: a counter's number, a put's JSON (a string if it somehow is not JSON).
fn value_json(kind: StateKind, bytes: &[u8]) -> serde_json::Value {
    match kind {
        StateKind::Counters => std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .map_or_else(
                || serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()),
                serde_json::Value::from,
            ),
        StateKind::Values => serde_json::from_slice(bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())
        }),
    }
}

fn value_of(kind: StateKind, key: String, entry: &StateEntry) -> StateValue {
    StateValue {
        key,
        value: value_json(kind, &entry.value),
        revision: entry.revision,
        updated_at: rfc3339(entry.time_unix_ns),
    }
}

/// The query parameters, percent-decoded; any other name is 400.
fn query(uri: &Uri, allowed: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let Query(params) = Query::<BTreeMap<String, String>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    if let Some(other) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {other:?}"
        )));
    }
    Ok(params)
}

/// `GET /v1/state`.
pub(crate) async fn list_buckets(
    auth: TenantAuth,
    State(s): State<AppState>,
) -> Result<Json<StateBucketList>, ApiError> {
    Ok(Json(StateBucketList {
        buckets: s.store.list_state_buckets(&auth.tenant.id).await?,
    }))
}

/// `GET /v1/state/{bucket}`.
pub(crate) async fn get_bucket(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<StateBucketInfo>, ApiError> {
    let (doc, bucket) = s.store.open_state_bucket(&auth.tenant.id, &name).await?;
    let keys = bucket.keys(">").await?.len() as u64;
    Ok(Json(StateBucketInfo { bucket: doc, keys }))
}

/// `DELETE /v1/state/{bucket}`.
pub(crate) async fn delete_bucket(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_state_bucket(&auth.tenant.id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/state/{bucket}/keys/{key}`.
pub(crate) async fn get_key(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<StateValue>, ApiError> {
    let (doc, bucket) = s.store.open_state_bucket(&auth.tenant.id, &name).await?;
    let kv_key = layout::encode_state_key(&key).ok_or_else(|| {
        ApiError::bad_request(format!(
            "a key is 1 to {} bytes once encoded",
            layout::MAX_STATE_KEY_BYTES
        ))
    })?;
    let entry = bucket
        .get(&kv_key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {key:?} in state bucket {name}")))?;
    Ok(Json(value_of(doc.kind, key, &entry)))
}

/// `GET /v1/state/{bucket}/keys?prefix=&after=&limit=`: the bucket's keys are listed (one headers-only pass),
/// decoded, filtered and sorted here; only the page's values are read.
pub(crate) async fn list_keys(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Json<StateKeyList>, ApiError> {
    let params = query(&uri, &["prefix", "after", "limit"])?;
    let limit = match params.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit {v:?} is not 1..={MAX_LIST_LIMIT}"))
            })?,
    };
    let prefix = params.get("prefix").map_or("", String::as_str);
    let after = params.get("after");
    let (doc, bucket) = s.store.open_state_bucket(&auth.tenant.id, &name).await?;
    let mut keys: Vec<(String, String)> = bucket
        .keys(">")
        .await?
        .into_iter()
        .filter_map(|kv| layout::decode_state_key(&kv).map(|k| (k, kv)))
        .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k > a))
        .collect();
    keys.sort();
    let more = keys.len() > limit;
    keys.truncate(limit);
    let next_after = more.then(|| keys.last().map(|(k, _)| k.clone())).flatten();
    let reads = futures::stream::iter(keys)
        .map(|(key, kv)| {
            let bucket = &bucket;
            async move { bucket.get(&kv).await.map(|e| e.map(|e| (key, e))) }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await;
    let mut entries = Vec::with_capacity(reads.len());
    for read in reads {
        // A key removed since it was listed is simply left out.
        if let Some((key, entry)) = read? {
            entries.push(value_of(doc.kind, key, &entry));
        }
    }
    Ok(Json(StateKeyList {
        entries,
        next_after,
    }))
}

/// One open watch of a tenant, released when the event stream is dropped (the client went away).
pub(crate) struct WatchSlot {
    watches: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl WatchSlot {
    pub(crate) fn acquire(
        watches: &Arc<Mutex<HashMap<String, usize>>>,
        tenant: &str,
    ) -> Result<Self, ApiError> {
        let mut open = watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(tenant.to_owned()).or_insert(0);
        if *n >= MAX_WATCHES_PER_TENANT {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!("this tenant has {MAX_WATCHES_PER_TENANT} watches open here; close one"),
            ));
        }
        *n += 1;
        Ok(Self {
            watches: watches.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self
            .watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
        tracing::debug!(tenant = %self.tenant, "state watch closed");
    }
}

/// `GET /v1/state/{bucket}/watch?prefix=&from=`.
pub(crate) async fn watch(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let params = query(&uri, &["prefix", "from"])?;
    let from = match params.get("from").map(String::as_str) {
        None | Some("current") => WatchFrom::Current,
        Some("new") => WatchFrom::New,
        Some(rev) => WatchFrom::Revision(rev.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "from {rev:?} is not `current`, `new` or a revision"
            ))
        })?),
    };
    let prefix = params.get("prefix").cloned().unwrap_or_default();
    let (doc, bucket) = s.store.open_state_bucket(&auth.tenant.id, &name).await?;
    let slot = WatchSlot::acquire(&s.watches, &auth.tenant.id)?;
    let changes = bucket.watch(">", from).await?;
    tracing::debug!(tenant = %auth.tenant.id, bucket = %name, prefix, "state watch opened");
    let kind = doc.kind;
    let events = changes.filter_map(move |item| {
        // The slot lives as long as the stream.
        let _slot = &slot;
        let event = match item {
            Ok((entry, _)) => layout::decode_state_key(&entry.key)
                .filter(|k| k.starts_with(prefix.as_str()))
                .map(|key| {
                    let change = StateChange {
                        op: if entry.present { "put" } else { "delete" }.to_owned(),
                        value: if entry.present {
                            value_json(kind, &entry.value)
                        } else {
                            serde_json::Value::Null
                        },
                        key,
                        revision: entry.revision,
                        updated_at: rfc3339(entry.time_unix_ns),
                    };
                    Event::default()
                        .event(change.op.clone())
                        .id(entry.revision.to_string())
                        .data(serde_json::to_string(&change).unwrap_or_default())
                }),
            Err(e) => {
                tracing::warn!(error = %e, "state watch failed");
                Some(Event::default().event("error").data(
                    r#"{"error":"unavailable","message":"the watch was interrupted; reconnect"}"#,
                ))
            }
        };
        std::future::ready(event.map(Ok))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
