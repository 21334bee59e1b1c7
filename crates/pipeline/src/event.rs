//! A firehose message as the worker sees it ([`StreamEvent`]): sequence, dedup id, event time and the
//! payload, with what the filter index needs ([`fpaas_filter::EventKey`]) read from the subject and the
//! `Fpaas-Did` header, and the JSON parsed at most once, only when a predicate or transform asks for it.

use std::sync::OnceLock;

use bytes::Bytes;
use fpaas_bus::tail::TailMsg;
use fpaas_event::wire::{HEADER_DID, HEADER_MSG_ID, HEADER_TIME_US};
use fpaas_event::{Kind, Operation, SUBJECT_PREFIX};
use fpaas_filter::EventKey;

/// One message of the firehose stream, shared by every subscription it matches.
#[derive(Debug)]
pub struct StreamEvent {
    /// Stream sequence.
    pub seq: u64,
    /// The event's dedup id (`Nats-Msg-Id`).
    pub id: String,
    /// Event time in unix microseconds (`Fpaas-Time-Us`; 0 when absent).
    pub time_us: i64,
    /// The repository DID (`Fpaas-Did`).
    pub did: String,
    /// Kind, operation and collection, from the subject.
    pub kind: Kind,
    /// Commit operation.
    pub operation: Option<Operation>,
    /// Commit collection.
    pub collection: Option<String>,
    /// The event JSON.
    pub payload: Bytes,
    data: OnceLock<Option<fpaas_filter::Data>>,
}

impl StreamEvent {
    /// The event of a stream message; `None` when the subject is not a firehose event subject (such a
    /// message is skipped and counted by the caller).
    pub fn from_msg(msg: &TailMsg) -> Option<Self> {
        let (kind, operation, collection) = parse_subject(&msg.subject)?;
        Some(Self {
            did: msg.header(HEADER_DID).unwrap_or_default().to_owned(),
            kind,
            operation,
            collection,
            ..Self::from_topic_msg(msg)
        })
    }

    /// A message of a topic: whatever a subscription delivered into it, with its id and event time from the
    /// headers; it has no kind, operation, collection or DID (topic subscriptions filter by predicate only).
    pub fn from_topic_msg(msg: &TailMsg) -> Self {
        Self {
            seq: msg.seq,
            id: msg
                .header(HEADER_MSG_ID)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("seq-{}", msg.seq)),
            time_us: msg
                .header(HEADER_TIME_US)
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            did: String::new(),
            kind: Kind::Commit,
            operation: None,
            collection: None,
            payload: msg.payload.clone(),
            data: OnceLock::new(),
        }
    }

    /// What the filter index needs.
    pub fn key(&self) -> EventKey<'_> {
        EventKey {
            kind: self.kind,
            operation: self.operation,
            collection: self.collection.as_deref(),
            did: &self.did,
        }
    }

    /// The payload parsed for JMESPath (once, shared by every predicate and transform that reads it);
    /// `None` when it is not JSON.
    pub fn data(&self) -> Option<&fpaas_filter::Data> {
        self.data
            .get_or_init(|| fpaas_filter::Data::from_json_bytes(&self.payload).ok())
            .as_ref()
    }
}

/// Kind, operation and collection of a firehose subject (see `fpaas_event::subject`).
pub fn parse_subject(subject: &str) -> Option<(Kind, Option<Operation>, Option<String>)> {
    let rest = subject.strip_prefix(SUBJECT_PREFIX)?.strip_prefix('.')?;
    let (kind, rest) = rest.split_once('.').unwrap_or((rest, ""));
    match kind {
        "commit" => {
            let (op, collection) = rest.split_once('.')?;
            let operation = match op {
                "create" => Operation::Create,
                "update" => Operation::Update,
                "delete" => Operation::Delete,
                _ => return None,
            };
            if collection.is_empty() {
                return None;
            }
            Some((Kind::Commit, Some(operation), Some(collection.to_owned())))
        }
        "identity" => Some((Kind::Identity, None, None)),
        "account" => Some((Kind::Account, None, None)),
        "sync" => Some((Kind::Sync, None, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_back_to_their_parts() {
        assert_eq!(
            parse_subject("atproto.firehose.commit.create.app.bsky.feed.like"),
            Some((
                Kind::Commit,
                Some(Operation::Create),
                Some("app.bsky.feed.like".into())
            ))
        );
        assert_eq!(
            parse_subject("atproto.firehose.account.deleted"),
            Some((Kind::Account, None, None))
        );
        assert_eq!(
            parse_subject("atproto.firehose.identity"),
            Some((Kind::Identity, None, None))
        );
        for bad in [
            "atproto.firehose.commit.create",
            "atproto.firehose.commit.upsert.a.b.c",
            "atproto.firehose",
            "other.firehose.identity",
            "atproto.firehose.unknown",
        ] {
            assert_eq!(parse_subject(bad), None, "{bad}");
        }
    }
}
