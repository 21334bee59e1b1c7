//! The deterministic message id (`Nats-Msg-Id`) and the headers published with every event.
//!
//! The id depends only on what identifies an event everywhere, never on the relay `seq` (which is per relay):
//!
//! | kind | id |
//! |---|---|
//! | commit | `c:<did>:<rev>:<collection>/<rkey>` — `(did, rev, path)` identifies an op across relays |
//! | sync | `s:<did>:<rev>` |
//! | identity | `i:<did>:<time>` |
//! | account | `a:<did>:<time>:<active>:<status>` |
//!
//! So two shufflers reading two relays publish the same id for the same op, and JetStream keeps one within its
//! `duplicate_window`. Identity and account events have no revision; their id relies on the event `time`, which
//! relays pass through from the originating PDS — a relay that rewrote `time` would defeat dedup for those rare
//! kinds only (documented in docs/event-model.md).

use crate::model::{Event, Kind};

/// Header carrying the event's DID, so a matcher can filter by DID without parsing the JSON payload.
pub const HEADER_DID: &str = "Fpaas-Did";
/// Header carrying the relay sequence number of the source frame.
pub const HEADER_SEQ: &str = "Fpaas-Seq";
/// Header carrying `time_us`.
pub const HEADER_TIME_US: &str = "Fpaas-Time-Us";

/// The dedup id of an event.
pub fn msg_id(event: &Event) -> String {
    match event.kind {
        Kind::Commit => match &event.commit {
            Some(c) => format!("c:{}:{}:{}/{}", event.did, c.rev, c.collection, c.rkey),
            None => format!("c:{}:{}", event.did, event.time),
        },
        Kind::Sync => match &event.sync {
            Some(s) => format!("s:{}:{}", event.did, s.rev),
            None => format!("s:{}:{}", event.did, event.time),
        },
        Kind::Identity => format!("i:{}:{}", event.did, event.time),
        Kind::Account => match &event.account {
            Some(a) => format!(
                "a:{}:{}:{}:{}",
                event.did,
                event.time,
                a.active,
                a.status.as_deref().unwrap_or("")
            ),
            None => format!("a:{}:{}", event.did, event.time),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CommitEvent, Operation};

    fn ev(seq: i64, rkey: &str) -> Event {
        Event {
            did: "did:plc:abc".into(),
            time_us: 1,
            kind: Kind::Commit,
            seq,
            time: "2024-01-01T00:00:00Z".into(),
            commit: Some(CommitEvent {
                rev: "3lrev".into(),
                operation: Operation::Create,
                collection: "app.bsky.feed.like".into(),
                rkey: rkey.into(),
                record: None,
                cid: None,
            }),
            identity: None,
            account: None,
            sync: None,
        }
    }

    #[test]
    fn id_ignores_relay_seq_but_not_the_op() {
        assert_eq!(msg_id(&ev(1, "a")), msg_id(&ev(99, "a")));
        assert_ne!(msg_id(&ev(1, "a")), msg_id(&ev(1, "b")));
        assert_eq!(
            msg_id(&ev(1, "a")),
            "c:did:plc:abc:3lrev:app.bsky.feed.like/a"
        );
    }
}
