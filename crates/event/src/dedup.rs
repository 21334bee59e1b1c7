//! The deterministic message id (`Nats-Msg-Id`); the rest of the wire message is in [`crate::wire`].
//!
//! The id depends only on what identifies an event everywhere, never on the relay `seq` (which is per relay):
//!
//! | kind | id |
//! |---|---|
//! | commit | `c:<did>:<rev>:<collection>/<rkey>` — `(did, rev, path)` identifies an op across relays |
//! | sync | `s:<did>:<rev>` |
//! | identity | `i:<did>:<h>` |
//! | account | `a:<did>:<h>` |
//!
//! where `<h>` is the first 16 bytes (32 hex digits) of the SHA-256 of the event's JSON with every `seq` set to 0:
//! all of the event's content (DID, time, handle; or active, status) and nothing relay-specific. So two
//! shufflers reading two relays publish the same id for the same op, and JetStream keeps one within its
//! `duplicate_window`, while two different identity or account events of one DID never share an id even when
//! their `time` strings are equal. Identity and account events carry no revision; two of them with identical
//! content are the same notification and are kept once. Every part of an id is validated syntax (DID, TID,
//! NSID, record key) or hex, so an id never contains whitespace or control characters.

use sha2::{Digest, Sha256};

use crate::model::{Event, Kind};

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
        Kind::Identity => format!("i:{}:{}", event.did, content_hash(event)),
        Kind::Account => format!("a:{}:{}", event.did, content_hash(event)),
    }
}

/// Hex of the first 16 bytes of the SHA-256 of the event's JSON with every relay `seq` zeroed.
fn content_hash(event: &Event) -> String {
    let mut e = event.clone();
    e.seq = 0;
    if let Some(i) = &mut e.identity {
        i.seq = 0;
    }
    if let Some(a) = &mut e.account {
        a.seq = 0;
    }
    let digest = Sha256::digest(e.to_json_vec());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
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

    fn identity(seq: i64, time: &str, handle: Option<&str>) -> Event {
        Event {
            did: "did:plc:abc".into(),
            time_us: 1,
            kind: Kind::Identity,
            seq,
            time: time.into(),
            commit: None,
            identity: Some(crate::model::IdentityEvent {
                did: "did:plc:abc".into(),
                handle: handle.map(str::to_owned),
                seq,
                time: time.into(),
            }),
            account: None,
            sync: None,
        }
    }

    #[test]
    fn identity_ids_come_from_content_not_seq() {
        let t = "2024-01-01T00:00:00Z";
        let a = msg_id(&identity(1, t, Some("a.example.com")));
        assert_eq!(a, msg_id(&identity(7, t, Some("a.example.com"))));
        // Same DID and time, different content: different ids (finding: `did + time` collided).
        assert_ne!(a, msg_id(&identity(2, t, Some("b.example.com"))));
        assert_ne!(a, msg_id(&identity(2, t, None)));
        assert!(a.starts_with("i:did:plc:abc:"));
        assert_eq!(a.len(), "i:did:plc:abc:".len() + 32);
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
