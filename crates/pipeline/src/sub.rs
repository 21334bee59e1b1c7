//! [`SubConfig`]: a subscription compiled for the worker: its filter (for the shared index and for its own
//! catch-up reader, with the server-side subject filters that make catching up cheap), its transform, batch
//! limits, start and webhook target.

use std::sync::Arc;
use std::time::Duration;

use fpaas_event::{Kind, Operation, SUBJECT_PREFIX};
use fpaas_filter::{CollectionPattern, Expr, FilterSpec};

use crate::batch::{Item, Limits};
use crate::event::StreamEvent;

/// Where a subscription without saved progress starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// With the next event published.
    Live,
    /// With the oldest event the stream still holds.
    RetentionStart,
    /// With the first event stored at or after this RFC 3339 time.
    Time(String),
    /// With this stream sequence.
    Seq(u64),
}

/// Where and how batches are sent.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    /// The receiver's URL.
    pub url: String,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Waits before attempts 2, 3, …; after the last one the batch is dead-lettered.
    pub retry_schedule_ms: Vec<u64>,
    /// Signing secrets (`whsec_…`) with their expiry (unix seconds; None = no expiry), newest first.
    pub secrets: Vec<(String, Option<i64>)>,
    /// The subject of the topic that receives the receiver's answers (`{"events": [...]}`), if any.
    pub output_subject: Option<String>,
}

/// Where a subscription's batches go.
#[derive(Clone, Debug)]
pub enum Target {
    /// Signed POSTs to a receiver.
    Webhook(WebhookTarget),
    /// One message per event into a topic's stream.
    Topic {
        /// The topic's subject (`fpaas.topic.<tenant>.<name>`).
        subject: String,
        /// Waits before attempts 2, 3, …; after the last one the batch is dead-lettered.
        retry_schedule_ms: Vec<u64>,
    },
    /// Puts or increments in a state bucket ([`crate::state`]).
    Kv(Arc<crate::state::KvTarget>),
    /// One message per batch into the pull stream, for clients to fetch and acknowledge.
    Pull {
        /// The subscription's subject in the pull stream (`fpaas.pull.<tenant>.<sub>`).
        subject: String,
        /// At this many waiting batches the runner waits for acks before storing another.
        max_waiting: u32,
    },
}

/// A subscription as the worker runs it.
#[derive(Debug)]
pub struct SubConfig {
    /// Subscription id.
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Changes with every edit; part of batch ids.
    pub generation: u64,
    /// The filter, compiled once: shared by the shared reader's index and this subscription's catch-up
    /// reading (which checks it without the index). `compiled.spec` is the filter as written.
    pub compiled: Arc<fpaas_filter::spec::Compiled>,
    /// The filter's predicate, compiled.
    predicate: Option<Expr>,
    /// The JMESPath transform.
    pub transform: Option<Expr>,
    /// Batch limits.
    pub limits: Limits,
    /// Where it starts without progress.
    pub start: Start,
    /// Delivery.
    pub target: Target,
    /// Its collector stage, if any (the runner compiles its own [`crate::collect::Collector`]: it holds state).
    pub collect: Option<fpaas_control::collect::Collect>,
    /// For a subscription of a topic: the topic's stream, read on the runner's own reader (never through the
    /// shared firehose reader). `None`: the firehose.
    pub source_stream: Option<String>,
    /// Tenant's delivery rate limit in events per second (per worker).
    pub max_events_per_s: u32,
}

/// A subscription the worker cannot run (its stored spec does not validate any more).
#[derive(Debug, thiserror::Error)]
#[error("subscription {id}: {message}")]
pub struct SubConfigError {
    /// Subscription id.
    pub id: String,
    /// What is wrong.
    pub message: String,
}

/// What a subscription's transform made of an event.
#[derive(Debug)]
pub enum Transformed {
    /// Deliver this.
    Item(Item),
    /// The transform failed on this event (counted; the event is skipped).
    Failed(String),
}

impl SubConfig {
    /// Compiles a subscription.
    ///
    /// # Errors
    /// [`SubConfigError`] when the filter or transform does not compile.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &str,
        tenant: &str,
        generation: u64,
        filter: FilterSpec,
        transform: Option<&str>,
        limits: Limits,
        start: Start,
        target: Target,
        max_events_per_s: u32,
    ) -> Result<Self, SubConfigError> {
        let err = |message: String| SubConfigError {
            id: id.to_owned(),
            message,
        };
        let compiled = Arc::new(filter.compile().map_err(|e| err(format!("filter: {e}")))?);
        let predicate = compiled.predicate.clone();
        let transform = transform
            .map(Expr::compile)
            .transpose()
            .map_err(|e| err(format!("transform: {e}")))?;
        Ok(Self {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            generation,
            compiled,
            predicate,
            transform,
            limits,
            start,
            target,
            source_stream: None,
            collect: None,
            max_events_per_s,
        })
    }

    /// Does the subscription need the event's JSON to decide (predicate) or to deliver (transform)?
    pub fn needs_json(&self) -> bool {
        self.compiled.spec.predicate.is_some() || self.transform.is_some()
    }

    /// Is the predicate (if any) truthy on the event? (The shared reader's index has checked the rest.)
    pub fn predicate_matches(&self, event: &StreamEvent) -> bool {
        self.predicate
            .as_ref()
            .is_none_or(|p| event.data().is_some_and(|data| p.matches_data(data)))
    }

    /// Does the event match (index dimensions and predicate)?
    pub fn matches(&self, event: &StreamEvent) -> bool {
        let key = event.key();
        self.compiled.admits(&key) && self.predicate_matches(event)
    }

    /// The event as delivered: the event JSON, or the transform's result.
    pub fn transform(&self, event: &StreamEvent) -> Transformed {
        let data = match &self.transform {
            None => event.payload.to_vec(),
            Some(expr) => {
                let Some(data) = event.data() else {
                    return Transformed::Failed("the event is not JSON".into());
                };
                match expr.search_data(data) {
                    Ok(v) => match serde_json::to_vec(&v) {
                        Ok(bytes) => bytes,
                        Err(e) => return Transformed::Failed(e.to_string()),
                    },
                    Err(e) => return Transformed::Failed(e.to_string()),
                }
            }
        };
        Transformed::Item(Item {
            seq: event.seq,
            id: event.id.clone(),
            time_us: event.time_us,
            data,
        })
    }

    /// The event as a collector sees it: its JSON, or the transform's result, parsed.
    ///
    /// # Errors
    /// Why the event has no JSON or the transform failed.
    pub fn transform_data(&self, event: &StreamEvent) -> Result<fpaas_filter::Data, String> {
        let Some(data) = event.data() else {
            return Err("the event is not JSON".into());
        };
        match &self.transform {
            None => Ok(data.clone()),
            Some(expr) => expr.eval_data(data).map_err(|e| e.to_string()),
        }
    }

    /// Server-side subject filters covering every event the filter can match (empty = the whole stream).
    pub fn subject_filters(&self) -> Vec<String> {
        subject_filters(&self.compiled.spec)
    }
}

/// Server-side subject filters covering every event `filter` can match (empty = everything). Collections do
/// not exclude events without one (identity, account, sync), so those kinds get their own subjects unless
/// the kinds exclude them.
pub fn subject_filters(filter: &FilterSpec) -> Vec<String> {
    let wants = |k: Kind| filter.kinds.is_empty() || filter.kinds.contains(&k);
    if filter.collections.is_empty() && filter.operations.is_empty() && filter.kinds.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if wants(Kind::Commit) {
        let ops: Vec<&str> = match filter.operations.as_slice() {
            [] => vec!["*"],
            ops if ops.len() == 3 => vec!["*"],
            ops => ops.iter().map(|o: &Operation| o.as_str()).collect(),
        };
        let collections: Vec<String> = if filter.collections.is_empty() {
            vec![">".into()]
        } else {
            filter
                .collections
                .iter()
                .filter_map(|c| CollectionPattern::parse(c).ok())
                .map(|p| match p {
                    CollectionPattern::Exact(nsid) => nsid,
                    CollectionPattern::Prefix(prefix) => format!("{prefix}.>"),
                })
                .collect()
        };
        for op in &ops {
            for c in &collections {
                out.push(format!("{SUBJECT_PREFIX}.commit.{op}.{c}"));
            }
        }
    }
    if wants(Kind::Identity) {
        out.push(format!("{SUBJECT_PREFIX}.identity"));
    }
    if wants(Kind::Account) {
        out.push(format!("{SUBJECT_PREFIX}.account.>"));
    }
    if wants(Kind::Sync) {
        out.push(format!("{SUBJECT_PREFIX}.sync"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpaas_event::subject::subject_matches;

    fn spec(json: serde_json::Value) -> FilterSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn subject_filters_cover_what_the_filter_admits() {
        let cases = [
            (serde_json::json!({}), vec![]),
            (
                serde_json::json!({"kinds": ["commit"], "collections": ["app.bsky.feed.like", "app.bsky.graph.*"], "operations": ["create"]}),
                vec![
                    "atproto.firehose.commit.create.app.bsky.feed.like",
                    "atproto.firehose.commit.create.app.bsky.graph.>",
                ],
            ),
            (
                serde_json::json!({"collections": ["app.bsky.feed.post"]}),
                vec![
                    "atproto.firehose.commit.*.app.bsky.feed.post",
                    "atproto.firehose.identity",
                    "atproto.firehose.account.>",
                    "atproto.firehose.sync",
                ],
            ),
            (
                serde_json::json!({"kinds": ["account"]}),
                vec!["atproto.firehose.account.>"],
            ),
        ];
        for (json, want) in cases {
            assert_eq!(subject_filters(&spec(json.clone())), want, "{json}");
        }
        let f = subject_filters(&spec(
            serde_json::json!({"kinds": ["commit"], "collections": ["app.bsky.feed.*"]}),
        ));
        assert!(
            f.iter()
                .any(|f| subject_matches(f, "atproto.firehose.commit.delete.app.bsky.feed.repost"))
        );
        assert!(
            !f.iter().any(|f| subject_matches(
                f,
                "atproto.firehose.commit.create.app.bsky.graph.follow"
            ))
        );
    }
}
