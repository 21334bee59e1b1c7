//! The pure mapping from a decoded firehose frame to normalized events.
//!
//! A `#commit` frame yields one event per op, in op order. An op whose record cannot be used (missing block,
//! CID mismatch, record too large, a strict DAG-CBOR or data-model violation, JSON over the per-record budget)
//! is dropped with a labelled reason while the frame's other ops still go through. `#identity`, `#account` and
//! `#sync` yield one event each. `#info`, error frames and unknown frames yield no events: they are control
//! information for the relay client, counted by the caller.
//!
//! **Bounded work per frame.** Each distinct record block is converted at most once per frame (ops sharing a
//! CID share the converted text), each conversion stops at [`Limits::max_record_json_bytes`], and the whole
//! frame's event JSON is held to [`Limits::max_frame_json_bytes`]: a frame over it yields no events and one
//! `frame_over_budget` drop, so a legal-looking commit of 200 ops that all point at one huge record costs the
//! budget, not 200 copies.

use std::collections::HashMap;

use crate::model::{
    AccountEvent, CommitEvent, Event, IdentityEvent, Kind, Operation, RecordJson, SyncEvent,
};
use fpaas_proto::JsonLimits;
use fpaas_proto::frame::{Action, Commit, Frame, FrameError};

/// Drop label of a frame whose events together exceed [`Limits::max_frame_json_bytes`].
pub const FRAME_OVER_BUDGET: &str = "frame_over_budget";

/// JSON bytes counted per event on top of its record (the envelope: DID, rev, collection, rkey, CID, keys).
const EVENT_OVERHEAD: usize = 256;

/// Bounds of normalizing one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest record JSON in bytes; a larger record is dropped (`record_json_too_large`) as soon as its
    /// conversion passes this. Default 1 MiB (a default nats-server's `max_payload`).
    pub max_record_json_bytes: usize,
    /// Largest total event JSON of one frame in bytes (records plus an estimated envelope per event); a frame
    /// over it yields no events and one `frame_over_budget` drop. Default 16 MiB: a legal frame carries at most
    /// 2 MB of blocks, whose JSON is a few times that even when every op has its own record.
    pub max_frame_json_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_json_bytes: 1 << 20,
            max_frame_json_bytes: 16 << 20,
        }
    }
}

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

/// Map one decoded frame to its events, with the default [`Limits`].
pub fn normalize(frame: &Frame) -> Normalized {
    normalize_with(frame, Limits::default())
}

/// Map one decoded frame to its events within `limits`.
pub fn normalize_with(frame: &Frame, limits: Limits) -> Normalized {
    let mut out = Normalized::default();
    match frame {
        Frame::Commit(c) => commit_events(c, limits, &mut out),
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
                status: m.status.map(|s| s.as_str().to_owned()),
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
                rev: m.rev.to_string(),
                commit: m.blocks.roots.first().map(|c| c.to_string()),
            }),
        }),
        Frame::Info(_) | Frame::Error(_) | Frame::Unknown(_) => {}
    }
    out
}

fn commit_events(c: &Commit, limits: Limits, out: &mut Normalized) {
    let t_us = time_us(&c.time);
    let json_limits = JsonLimits {
        max_json_bytes: limits.max_record_json_bytes,
    };
    // Converted records of this frame by CID: each block is converted once, its text shared by every op.
    let mut converted: HashMap<fpaas_proto::Cid, Result<Option<RecordJson>, FrameError>> =
        HashMap::new();
    let mut frame_bytes = 0usize;
    out.events.reserve(c.ops.len());
    for op in &c.ops {
        let what = || format!("{}/{}/{}", c.repo, op.collection, op.rkey);
        let record = match (&op.cid, op.action) {
            (Some(cid), Action::Create | Action::Update) => converted
                .entry(*cid)
                .or_insert_with(|| {
                    c.record_json_string(op, json_limits)
                        .map(|r| r.map(RecordJson::from_converted))
                })
                .as_ref()
                .map(Clone::clone)
                .map_err(|e| (e.kind().as_str(), e.to_string())),
            _ => c
                .record_json_string(op, json_limits)
                .map(|r| r.map(RecordJson::from_converted))
                .map_err(|e| (e.kind().as_str(), e.to_string())),
        };
        let record = match record {
            Ok(r) => r,
            Err((reason, detail)) => {
                out.dropped.push(Dropped {
                    reason: DropReason(reason),
                    what: what(),
                    detail,
                });
                continue;
            }
        };
        frame_bytes = frame_bytes
            .saturating_add(EVENT_OVERHEAD)
            .saturating_add(record.as_ref().map_or(0, |r| r.as_str().len()));
        if frame_bytes > limits.max_frame_json_bytes {
            out.events.clear();
            out.dropped.push(Dropped {
                reason: DropReason(FRAME_OVER_BUDGET),
                what: format!("{} seq {}", c.repo, c.seq),
                detail: format!(
                    "the frame's events exceed {} bytes of JSON ({} ops)",
                    limits.max_frame_json_bytes,
                    c.ops.len()
                ),
            });
            return;
        }
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
