//! The two reading endpoints the web console needs beyond the rest of `/v1`: the JMESPath playground
//! (`POST /v1/playground`: a filter and transform, validated exactly as a subscription's, run against the
//! most recent events of the firehose or of one of the tenant's topics) and a subscription's live tail
//! (`GET /v1/subscriptions/{sub_id}/tail`: its matches from now on, as Server-Sent Events). Both match with
//! the worker's own pieces: [`fpaas_pipeline::event::StreamEvent`] for the index key and the parsed JSON,
//! [`fpaas_pipeline::sub::subject_filters`] for the server-side subject filters, `fpaas-filter` for the
//! predicate and the transform — so what the playground shows is what a subscription would deliver.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use fpaas_bus::tail::{From, StreamTail, TailMsg};
use fpaas_control::model::filter_schema;
use fpaas_control::{Delivery, Source, ValidationCode, ValidationError, validate};
use fpaas_filter::spec::Compiled;
use fpaas_filter::{Expr, FilterSpec};
use fpaas_pipeline::event::StreamEvent;
use futures::Stream;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::TenantAuth;
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use crate::state_api::{KEEP_ALIVE, WatchSlot};

/// Default number of recent events the playground scans.
pub const DEFAULT_SCAN: u64 = 1_000;
/// Most recent events one playground run may scan.
pub const MAX_SCAN: u64 = 10_000;
/// Default number of matches a playground answer carries.
pub const DEFAULT_LIMIT: usize = 100;
/// Most matches a playground answer carries.
pub const MAX_LIMIT: usize = 500;
/// How long a playground run may read the stream.
pub const SCAN_BUDGET: Duration = Duration::from_secs(3);
/// Matches a live tail holds for a client that reads slower than they come; beyond, they are skipped (and
/// counted in the next event's `skipped`).
pub const TAIL_BUFFER: usize = 256;

/// A playground run: the same `source`, `filter` and `transform` as a subscription.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaygroundRequest {
    /// What to read: `"firehose"` (default) or `{"topic": "<name>"}`.
    #[serde(default)]
    pub source: Source,
    /// The filter, as in a subscription (an empty filter matches every event).
    #[serde(default)]
    #[schemars(schema_with = "filter_schema")]
    pub filter: FilterSpec,
    /// The transform, as in a subscription.
    #[serde(default)]
    pub transform: Option<String>,
    /// How many of the source's most recent events to scan (1..=10,000; default 1,000).
    #[serde(default)]
    pub scan: Option<u64>,
    /// At most this many matches in the answer, newest last (1..=500; default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One matching event.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct Matched {
    /// Its sequence in the source stream.
    pub seq: u64,
    /// Event time, unix microseconds (0 when unknown).
    pub time_us: i64,
    /// The event as stored.
    pub event: serde_json::Value,
    /// What the transform made of it (the event itself without a transform; `null` when it failed).
    pub output: serde_json::Value,
    /// Why the transform failed on this event (a subscription skips such an event and counts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A playground answer.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct PlaygroundResult {
    /// Events read (those the server-side subject filters let through, in the window).
    pub scanned: u64,
    /// Of those, events that matched (kinds, operations, collections, DIDs and predicate).
    pub matched: u64,
    /// The window: the source stream's sequences `from_seq..=to_seq`.
    pub from_seq: u64,
    /// See `from_seq`.
    pub to_seq: u64,
    /// The time budget (3 s) ran out before the window was read to its end.
    pub truncated: bool,
    /// The last `limit` matches, oldest first.
    pub results: Vec<Matched>,
}

/// One live-tail event's `data` (`event: match`, `id:` the sequence).
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct TailMatch {
    /// The match.
    #[serde(flatten)]
    pub matched: Matched,
    /// Matches skipped just before this one because the client read slower than they came.
    pub skipped: u64,
}

/// A compiled filter and transform over a source stream.
struct Matcher {
    compiled: Compiled,
    transform: Option<Expr>,
    /// A topic's messages have no kind, collection or DID: the predicate alone decides.
    topic: bool,
}

impl Matcher {
    /// Compiles `filter` and `transform`, validated as a subscription's (same codes and fields).
    fn new(
        source: &Source,
        filter: &FilterSpec,
        transform: Option<&str>,
        quotas: &fpaas_control::Quotas,
    ) -> Result<Self, ValidationError> {
        validate::filter(filter, quotas)?;
        if let Some(t) = transform {
            validate::transform(t)?;
        }
        validate::source(source, filter, &Delivery::Pull(Default::default()))?;
        let compiled = filter.compile().map_err(|e| {
            ValidationError::new(ValidationCode::BadFilter, "filter", e.to_string())
        })?;
        let transform = transform.map(Expr::compile).transpose().map_err(|e| {
            ValidationError::new(ValidationCode::BadJmespath, "transform", e.to_string())
        })?;
        Ok(Self {
            compiled,
            transform,
            topic: source.topic().is_some(),
        })
    }

    /// Server-side subject filters (empty: every subject).
    fn subjects(&self) -> Vec<String> {
        if self.topic {
            Vec::new()
        } else {
            fpaas_pipeline::sub::subject_filters(&self.compiled.spec)
        }
    }

    /// The match, when `msg` matches.
    fn check(&self, msg: &TailMsg) -> Option<Matched> {
        let event = if self.topic {
            StreamEvent::from_topic_msg(msg)
        } else {
            StreamEvent::from_msg(msg)?
        };
        if !self.topic && !self.compiled.admits(&event.key()) {
            return None;
        }
        if let Some(p) = &self.compiled.predicate
            && !event.data().is_some_and(|d| p.matches_data(d))
        {
            return None;
        }
        let json =
            serde_json::from_slice::<serde_json::Value>(&event.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&event.payload).into_owned())
            });
        let (output, error) = match &self.transform {
            None => (json.clone(), None),
            Some(expr) => match event.data().map(|d| expr.search_data(d)) {
                Some(Ok(v)) => (v, None),
                Some(Err(e)) => (serde_json::Value::Null, Some(e.to_string())),
                None => (
                    serde_json::Value::Null,
                    Some("the event is not JSON".to_owned()),
                ),
            },
        };
        Some(Matched {
            seq: event.seq,
            time_us: event.time_us,
            event: json,
            output,
            error,
        })
    }
}

/// The compiled filter and transform (validated as a subscription's) and the stream of the source (a topic
/// must be the caller's: 404 otherwise).
async fn prepare(
    s: &AppState,
    auth: &TenantAuth,
    source: &Source,
    filter: &FilterSpec,
    transform: Option<&str>,
) -> Result<(Matcher, String), ApiError> {
    let matcher = Matcher::new(source, filter, transform, &auth.tenant.quotas)
        .map_err(|v| ApiError::validation(&v))?;
    let stream = match source.topic() {
        None => s.firehose_stream.clone(),
        Some(name) => s.store.topic(&auth.tenant.id, name).await?.stream,
    };
    Ok((matcher, stream))
}

fn bounded<T: Copy + PartialOrd + std::fmt::Display>(
    field: &str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ApiError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::validation(&ValidationError::new(
            ValidationCode::LimitExceeded,
            field,
            format!("{field} {v} is not {}..={}", range.start(), range.end()),
        )))
    }
}

/// `POST /v1/playground`.
pub(crate) async fn playground(
    auth: TenantAuth,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<PlaygroundRequest>,
) -> Result<Json<PlaygroundResult>, ApiError> {
    let scan = bounded("scan", req.scan, DEFAULT_SCAN, 1..=MAX_SCAN)?;
    let limit = bounded("limit", req.limit, DEFAULT_LIMIT, 1..=MAX_LIMIT)?;
    let (matcher, stream) = prepare(
        &s,
        &auth,
        &req.source,
        &req.filter,
        req.transform.as_deref(),
    )
    .await?;
    let recent = fpaas_bus::tail::recent(&s.client, &stream, matcher.subjects(), scan, SCAN_BUDGET)
        .await?
        .unwrap_or_default();
    let mut results: std::collections::VecDeque<Matched> = std::collections::VecDeque::new();
    let mut matched = 0;
    for msg in &recent.messages {
        if let Some(m) = matcher.check(msg) {
            matched += 1;
            if results.len() == limit {
                results.pop_front();
            }
            results.push_back(m);
        }
    }
    Ok(Json(PlaygroundResult {
        scanned: recent.messages.len() as u64,
        matched,
        from_seq: recent.from_seq,
        to_seq: recent.to_seq,
        truncated: recent.truncated,
        results: results.into(),
    }))
}

/// `GET /v1/subscriptions/{sub_id}/tail`: a task reads the source from now, matches and sends into a
/// bounded channel that the event stream drains; it ends when the client goes (the channel closes) and its
/// ordered consumer goes with it.
pub(crate) async fn tail(
    auth: TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (sub, _) = s.store.subscription(&auth.tenant.id, &id).await?;
    let (matcher, stream) = prepare(
        &s,
        &auth,
        &sub.source,
        &sub.filter,
        sub.transform.as_deref(),
    )
    .await?;
    let slot = WatchSlot::acquire(&s.watches, &auth.tenant.id)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(TAIL_BUFFER);
    let mut reader = StreamTail::new(&s.client, &stream, From::New, matcher.subjects());
    tracing::debug!(tenant = %auth.tenant.id, sub = %id, "live tail opened");
    tokio::spawn(async move {
        let _slot = slot;
        let mut skipped = 0u64;
        loop {
            let next = tokio::select! {
                () = tx.closed() => break,
                next = reader.next(Duration::from_secs(1)) => next,
            };
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "live tail failed");
                    let _ = tx.try_send(Event::default().event("error").data(
                        r#"{"error":"unavailable","message":"the tail was interrupted; reconnect"}"#,
                    ));
                    break;
                }
            };
            let Some(matched) = matcher.check(&msg) else {
                continue;
            };
            let seq = matched.seq;
            let data = serde_json::to_string(&TailMatch { matched, skipped }).unwrap_or_default();
            let event = Event::default()
                .event("match")
                .id(seq.to_string())
                .data(data);
            match tx.try_send(event) {
                Ok(()) => skipped = 0,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => skipped += 1,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        tracing::debug!("live tail closed");
    });
    let events =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
