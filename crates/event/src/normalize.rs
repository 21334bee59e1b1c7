//! The pure mapping from a decoded firehose frame to normalized events.
//!
//! A `#commit` frame yields one event per op, in op order. An op whose record cannot be used (missing block,
//! CID mismatch, record too large, undecodable CBOR) is dropped with a labelled reason while the frame's other
//! ops still go through. `#identity`, `#account` and `#sync` yield one event each. `#info`, error frames and
//! unknown frames yield no events: they are control information for the relay client, counted by the caller.

use crate::model::{AccountEvent, CommitEvent, Event, IdentityEvent, Kind, Operation, SyncEvent};
use fpaas_proto::frame::{Action, Frame};

/// Why an op or frame produced no event. The label is the metric label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropReason(pub &'static str);

/// One op (or frame) that produced no event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// Stable label, e.g. `missing_block`, `cid_mismatch`, `record_too_large`.
    pub reason: DropReason,
    /// `did`/`collection/rkey` of the op, for logs.
    pub what: String,
    /// The error text, for logs.
    pub detail: String,
}

/// The result of normalizing one frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Normalized {
    /// Events in frame order.
    pub events: Vec<Event>,
    /// Ops that could not be turned into events.
    pub dropped: Vec<Dropped>,
}

/// Parse an RFC 3339 time into microseconds since the epoch; 0 when unparseable (the original string is kept in
/// `Event::time`, and an event is never dropped for a cosmetic field).
pub fn time_us(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .map(|t| t.timestamp_micros())
        .unwrap_or(0)
}

fn operation(action: &Action) -> Operation {
    match action {
        Action::Create => Operation::Create,
        Action::Update => Operation::Update,
        Action::Delete => Operation::Delete,
    }
}

/// Map one decoded frame to its events.
pub fn normalize(frame: &Frame) -> Normalized {
    let mut out = Normalized::default();
    match frame {
        Frame::Commit(c) => {
            let t_us = time_us(&c.time);
            out.events.reserve(c.ops.len());
            for op in &c.ops {
                let record = match c.record_json(op) {
                    Ok(r) => r,
                    Err(e) => {
                        out.dropped.push(Dropped {
                            reason: DropReason(e.kind().as_str()),
                            what: format!("{}/{}/{}", c.repo, op.collection, op.rkey),
                            detail: e.to_string(),
                        });
                        continue;
                    }
                };
                let operation = operation(&op.action);
                let cid = match operation {
                    Operation::Delete => None,
                    _ => op.cid.as_ref().map(|c| c.to_string()),
                };
                out.events.push(Event {
                    did: c.repo.to_string(),
                    time_us: t_us,
                    kind: Kind::Commit,
                    seq: c.seq,
                    time: c.time.clone(),
                    commit: Some(CommitEvent {
                        rev: c.rev.to_string(),
                        operation,
                        collection: op.collection.to_string(),
                        rkey: op.rkey.to_string(),
                        record,
                        cid,
                    }),
                    identity: None,
                    account: None,
                    sync: None,
                });
            }
        }
        Frame::Identity(m) => out.events.push(Event {
            did: m.did.to_string(),
            time_us: time_us(&m.time),
            kind: Kind::Identity,
            seq: m.seq,
            time: m.time.clone(),
            commit: None,
            identity: Some(IdentityEvent {
                did: m.did.to_string(),
                handle: m.handle.as_ref().map(|h| h.to_string()),
                seq: m.seq,
                time: m.time.clone(),
            }),
            account: None,
            sync: None,
        }),
        Frame::Account(m) => out.events.push(Event {
            did: m.did.to_string(),
            time_us: time_us(&m.time),
            kind: Kind::Account,
            seq: m.seq,
            time: m.time.clone(),
            commit: None,
            identity: None,
            account: Some(AccountEvent {
                active: m.active,
                did: m.did.to_string(),
                seq: m.seq,
                time: m.time.clone(),
                status: m.status.clone(),
            }),
            sync: None,
        }),
        Frame::Sync(m) => out.events.push(Event {
            did: m.did.to_string(),
            time_us: time_us(&m.time),
            kind: Kind::Sync,
            seq: m.seq,
            time: m.time.clone(),
            commit: None,
            identity: None,
            account: None,
            sync: Some(SyncEvent {
                rev: m.rev.clone(),
                commit: m.blocks.roots.first().map(|c| c.to_string()),
            }),
        }),
        Frame::Info(_) | Frame::Error(_) | Frame::Unknown(_) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_parses_or_falls_back_to_zero() {
        assert_eq!(time_us("1970-01-01T00:00:01.5Z"), 1_500_000);
        assert_eq!(time_us("2024-01-01T00:00:00+01:00"), 1_704_063_600_000_000);
        assert_eq!(time_us("yesterday"), 0);
    }
}
