//! The NATS subject scheme of the firehose stream.
//!
//! ```text
//! atproto.firehose.commit.<operation>.<collection NSID segments…>   e.g. atproto.firehose.commit.create.app.bsky.feed.like
//! atproto.firehose.identity
//! atproto.firehose.account.<active | status>                         e.g. atproto.firehose.account.deleted
//! atproto.firehose.sync
//! ```
//!
//! Subjects carry kind, operation and collection only: never a DID or an rkey. Measured on this machine
//! (docs/measurements.md, "Subject cardinality"), DIDs in subjects (437k distinct) cost 1.1 GB of server memory and made
//! 1,000 filtered consumers' p99 delivery 3–15 s; kind/op/collection (≈170 distinct) kept p99 near 0.1 s. The DID
//! travels in a header instead (see [`crate::dedup`]), for our own matcher. Because each NSID segment is its own
//! token, a consumer filters on the server by exact collection (`…commit.*.app.bsky.feed.like`) or by NSID
//! prefix (`…commit.*.app.bsky.feed.>`), and by operation.

use crate::model::{Event, Kind, Operation};
use std::fmt::Write as _;

/// Every firehose subject starts with this.
pub const SUBJECT_PREFIX: &str = "atproto.firehose";

/// The subject an event is published on.
pub fn subject(event: &Event) -> String {
    let mut s = String::with_capacity(64);
    s.push_str(SUBJECT_PREFIX);
    s.push('.');
    s.push_str(event.kind.as_str());
    match event.kind {
        Kind::Commit => {
            if let Some(c) = &event.commit {
                s.push('.');
                s.push_str(c.operation.as_str());
                s.push('.');
                // NSID segments are `[a-zA-Z0-9-]`, all legal subject tokens; a collection that somehow is not
                // a valid token list is sanitized rather than allowed to break the subject grammar.
                for (i, seg) in c.collection.split('.').enumerate() {
                    if i > 0 {
                        s.push('.');
                    }
                    push_token(&mut s, seg);
                }
            }
        }
        Kind::Account => {
            if let Some(a) = &event.account {
                s.push('.');
                match (&a.status, a.active) {
                    (_, true) => s.push_str("active"),
                    (Some(status), false) => push_token(&mut s, status),
                    (None, false) => s.push_str("inactive"),
                }
            }
        }
        Kind::Identity | Kind::Sync => {}
    }
    s
}

fn push_token(s: &mut String, token: &str) {
    if token.is_empty() {
        s.push('_');
        return;
    }
    for ch in token.chars() {
        if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
            s.push(ch);
        } else {
            // Keep subjects a pure function of the input without ever emitting `.`, `*`, `>` or whitespace.
            let _ = write!(s, "_{:x}", ch as u32);
        }
    }
}

/// Errors building a subject filter from user input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubjectError {
    /// The collection pattern is not an NSID or an NSID prefix ending in `.*`.
    #[error(
        "invalid collection pattern {pattern:?}: expected an NSID like app.bsky.feed.like or a prefix like app.bsky.feed.*"
    )]
    InvalidCollection {
        /// What the user gave.
        pattern: String,
    },
}

/// A server-side filter on the firehose stream, rendered with [`SubjectFilter::to_subject`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectFilter {
    /// Everything.
    All,
    /// One kind of event (any operation, collection or status).
    Kind(Kind),
    /// Commit events by operation (None = any) and collection pattern: an exact NSID, or a prefix ending in
    /// `.*` (`app.bsky.feed.*` = every collection under `app.bsky.feed`), or `*` for any collection.
    Collection {
        /// Restrict to one operation.
        operation: Option<Operation>,
        /// Validated segments; a trailing `>` marks a prefix.
        segments: Vec<String>,
    },
}

impl SubjectFilter {
    /// Build a collection filter from user input such as `app.bsky.feed.like`, `app.bsky.feed.*` or `*`.
    pub fn collection(operation: Option<Operation>, pattern: &str) -> Result<Self, SubjectError> {
        let bad = || SubjectError::InvalidCollection {
            pattern: pattern.to_string(),
        };
        if pattern == "*" {
            return Ok(SubjectFilter::Collection {
                operation,
                segments: vec![">".to_string()],
            });
        }
        let (body, prefix) = match pattern.strip_suffix(".*") {
            Some(body) => (body, true),
            None => (pattern, false),
        };
        let mut segments = Vec::new();
        for seg in body.split('.') {
            let ok = !seg.is_empty()
                && seg.len() <= 63
                && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(bad());
            }
            segments.push(seg.to_string());
        }
        // An exact NSID has at least three segments; a prefix at least one.
        if (!prefix && segments.len() < 3) || segments.is_empty() {
            return Err(bad());
        }
        if prefix {
            segments.push(">".to_string());
        }
        Ok(SubjectFilter::Collection {
            operation,
            segments,
        })
    }

    /// The NATS subject filter string.
    pub fn to_subject(&self) -> String {
        match self {
            SubjectFilter::All => format!("{SUBJECT_PREFIX}.>"),
            SubjectFilter::Kind(Kind::Identity) => format!("{SUBJECT_PREFIX}.identity"),
            SubjectFilter::Kind(Kind::Sync) => format!("{SUBJECT_PREFIX}.sync"),
            SubjectFilter::Kind(k) => format!("{SUBJECT_PREFIX}.{}.>", k.as_str()),
            SubjectFilter::Collection {
                operation,
                segments,
            } => format!(
                "{SUBJECT_PREFIX}.commit.{}.{}",
                operation.map(Operation::as_str).unwrap_or("*"),
                segments.join(".")
            ),
        }
    }
}

/// Does a concrete subject match a NATS filter (`*` one token, `>` one or more trailing tokens)? The same
/// semantics the server applies; used by tests and by in-process matchers.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountEvent, CommitEvent};

    fn commit(op: Operation, collection: &str) -> Event {
        Event {
            did: "did:plc:abc".into(),
            time_us: 0,
            kind: Kind::Commit,
            seq: 1,
            time: String::new(),
            commit: Some(CommitEvent {
                rev: "3l".into(),
                operation: op,
                collection: collection.into(),
                rkey: "k".into(),
                record: None,
                cid: None,
            }),
            identity: None,
            account: None,
            sync: None,
        }
    }

    #[test]
    fn commit_subject_has_op_and_collection_tokens_only() {
        let e = commit(Operation::Create, "app.bsky.feed.like");
        assert_eq!(
            subject(&e),
            "atproto.firehose.commit.create.app.bsky.feed.like"
        );
        assert!(!subject(&e).contains("did"));
    }

    #[test]
    fn account_subject_carries_status() {
        let mut e = commit(Operation::Create, "x.y.z");
        e.kind = Kind::Account;
        e.commit = None;
        e.account = Some(AccountEvent {
            active: false,
            did: "did:plc:abc".into(),
            seq: 1,
            time: String::new(),
            status: Some("deleted".into()),
        });
        assert_eq!(subject(&e), "atproto.firehose.account.deleted");
        if let Some(a) = e.account.as_mut() {
            a.status = Some("we.ird*".into());
        }
        assert_eq!(subject(&e), "atproto.firehose.account.we_2eird_2a");
    }

    #[test]
    fn filters_match_like_the_server() {
        let like = subject(&commit(Operation::Create, "app.bsky.feed.like"));
        let follow = subject(&commit(Operation::Delete, "app.bsky.graph.follow"));
        let exact = SubjectFilter::collection(None, "app.bsky.feed.like")
            .unwrap()
            .to_subject();
        let prefix = SubjectFilter::collection(None, "app.bsky.feed.*")
            .unwrap()
            .to_subject();
        let deletes = SubjectFilter::collection(Some(Operation::Delete), "*")
            .unwrap()
            .to_subject();
        assert_eq!(prefix, "atproto.firehose.commit.*.app.bsky.feed.>");
        assert!(subject_matches(&exact, &like));
        assert!(!subject_matches(&exact, &follow));
        assert!(subject_matches(&prefix, &like));
        assert!(!subject_matches(&prefix, &follow));
        assert!(subject_matches(&deletes, &follow));
        assert!(!subject_matches(&deletes, &like));
        assert!(subject_matches(&SubjectFilter::All.to_subject(), &like));
        assert!(subject_matches(
            &SubjectFilter::Kind(Kind::Commit).to_subject(),
            &like
        ));
        assert!(!subject_matches(
            &SubjectFilter::Kind(Kind::Identity).to_subject(),
            &like
        ));
        // A prefix must not match a longer sibling segment.
        let feedx = subject(&commit(Operation::Create, "app.bsky.feedx.like"));
        assert!(!subject_matches(&prefix, &feedx));
    }

    #[test]
    fn bad_collection_patterns_are_rejected() {
        for p in [
            "",
            "app",
            "app.bsky",
            "app..like",
            "app.bsky.*.like",
            "app.b sky.x",
            "a.b.>",
            ".*",
        ] {
            assert!(
                SubjectFilter::collection(None, p).is_err(),
                "{p:?} accepted"
            );
        }
        assert!(SubjectFilter::collection(None, "app.*").is_ok());
    }
}
