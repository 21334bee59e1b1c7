//! Applying one record change to the KV: the pure decision (write, or skip as duplicate / stale) from
//! the key's current entry and the change's repository revision, and the compare-and-set loop that
//! carries it out. Shared by the builder, `import-car` and `put-record`.
//!
//! Rules (TIDs sort by time, see [`rev_newer`]):
//!
//! | current entry | incoming put (rev R) | incoming delete (rev R) |
//! |---|---|---|
//! | none | write (expect no entry) | marker (`deleted`): a redelivered older create must not resurrect it |
//! | value at rev E | R > E write; R = E `duplicate`; R < E `stale` | R > E marker; R = E `duplicate`; R < E `stale` |
//! | marker at rev E | R > E write; else `stale` / `duplicate` | skip `already_deleted` (or `stale`) |
//! | marker without rev (manual delete) | write | skip `already_deleted` |
//!
//! Account deletions write markers whose rev is the TID of the account event's time, so records from
//! before the deletion stay deleted even if their events are ever delivered again.
//!
//! Markers expire (`RecordKvConfig::delete_marker_ttl_secs`): an expired marker is "none", so the
//! protection lasts as long as the marker, which is why its TTL must outlive every older event that
//! could still be delivered. A marker the server writes on expiry (only on a bucket with
//! `subject_delete_marker_ttl`, which we never set) is a "marker without rev". Deleted accounts stay
//! blocked after their markers expire: the builder checks the `<bucket>_accounts` side bucket.
//!
//! Every write is conditional on the KV revision that was read, so two writers (or a redelivery racing
//! a live write) can never make an older revision win; a conflict re-reads and decides again.

use bytes::Bytes;
use serde::Deserialize;

use crate::error::Error;
use crate::store::{Current, EntryState, Kv, WriteResult};
use crate::value::rev_newer;

/// How often a conflicting compare-and-set is retried before giving up on the key.
const MAX_ATTEMPTS: u32 = 16;

/// A change to one record key.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Put the record JSON written at `rev`.
    Put {
        /// Repository revision (TID).
        rev: String,
        /// The [`crate::RecordValue`] JSON.
        value: Bytes,
        /// The key is expected to be new (a `create`): try writing without reading first.
        create: bool,
    },
    /// Replace the record with a delete marker for `rev`.
    Delete {
        /// Repository revision (TID) of the delete.
        rev: String,
    },
}

impl Change {
    fn rev(&self) -> &str {
        match self {
            Change::Put { rev, .. } | Change::Delete { rev } => rev,
        }
    }
}

/// What applying a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The value was written.
    Written,
    /// A delete marker was written.
    Deleted,
    /// The same revision was already applied (redelivery, re-import).
    Duplicate,
    /// The key holds a newer revision; the change was ignored.
    Stale,
    /// A delete for a key that is already deleted.
    AlreadyDeleted,
    /// The value exceeds the server's `max_payload`; dropped.
    TooLarge,
}

impl Outcome {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::Deleted => "deleted",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::AlreadyDeleted => "already_deleted",
            Outcome::TooLarge => "too_large",
        }
    }
}

/// The decision for one change given the current entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write, expecting the key's latest KV revision to be this (0 = no entry).
    Write {
        /// Expected KV revision.
        expected: u64,
    },
    /// Do nothing.
    Skip(Outcome),
}

#[derive(Deserialize)]
struct RevOnly {
    rev: String,
}

/// The pure decision (see the module table).
pub fn decide(current: Option<&Current>, change: &Change) -> Decision {
    let incoming = change.rev();
    let Some(current) = current else {
        return match change {
            Change::Put { .. } => Decision::Write { expected: 0 },
            Change::Delete { .. } => Decision::Write { expected: 0 },
        };
    };
    let write = Decision::Write {
        expected: current.revision,
    };
    let compare = |existing: &str, newer: Decision| {
        if rev_newer(incoming, existing) {
            newer
        } else if incoming == existing {
            Decision::Skip(Outcome::Duplicate)
        } else {
            Decision::Skip(Outcome::Stale)
        }
    };
    match (&current.state, change) {
        (EntryState::Value(bytes), _) => match serde_json::from_slice::<RevOnly>(bytes) {
            Ok(existing) => compare(&existing.rev, write),
            // A value we cannot read (written by someone else) is replaced.
            Err(_) => write,
        },
        (
            EntryState::Deleted {
                rev: Some(existing),
            },
            Change::Put { .. },
        ) => compare(existing, write),
        (EntryState::Deleted { rev: None }, Change::Put { .. }) => write,
        (
            EntryState::Deleted {
                rev: Some(existing),
            },
            Change::Delete { .. },
        ) => compare(existing, Decision::Skip(Outcome::AlreadyDeleted)),
        (EntryState::Deleted { rev: None }, Change::Delete { .. }) => {
            Decision::Skip(Outcome::AlreadyDeleted)
        }
    }
}

/// Applies `change` to `key`: read, decide, conditional write; re-read on conflict.
///
/// # Errors
/// [`Error::Bus`] on a server failure, [`Error::Contended`] after [`MAX_ATTEMPTS`] conflicts.
pub async fn apply_change(kv: &Kv, key: &str, change: &Change) -> Result<Outcome, Error> {
    // Creates (95% of the firehose) skip the read: a write expecting "no entry" either succeeds or
    // conflicts, and only then is the entry read.
    let mut assume_absent = matches!(change, Change::Put { create: true, .. });
    for _ in 0..MAX_ATTEMPTS {
        let current = if assume_absent {
            assume_absent = false;
            None
        } else {
            kv.current(key).await?
        };
        let expected = match decide(current.as_ref(), change) {
            Decision::Skip(outcome) => return Ok(outcome),
            Decision::Write { expected } => expected,
        };
        let result = match change {
            Change::Put { value, .. } => kv.put_expect(key, value.clone(), expected).await?,
            Change::Delete { rev } => kv.delete_expect(key, expected, Some(rev)).await?,
        };
        match result {
            WriteResult::Written(_) => {
                return Ok(match change {
                    Change::Put { .. } => Outcome::Written,
                    Change::Delete { .. } => Outcome::Deleted,
                });
            }
            WriteResult::TooLarge => return Ok(Outcome::TooLarge),
            WriteResult::Conflict => {}
        }
    }
    Err(Error::Contended {
        key: key.to_string(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Writes a delete marker (with `rev` when given) over whatever value `key` holds (account
/// deletion, import pruning), whatever the value's revision. Returns whether a value was deleted.
///
/// # Errors
/// [`Error::Bus`] on a server failure, [`Error::Contended`] after repeated conflicts.
pub async fn delete_value(
    kv: &Kv,
    key: &str,
    mut expected: u64,
    rev: Option<&str>,
) -> Result<bool, Error> {
    for _ in 0..MAX_ATTEMPTS {
        match kv.delete_expect(key, expected, rev).await? {
            WriteResult::Written(_) => return Ok(true),
            WriteResult::TooLarge => return Ok(false),
            WriteResult::Conflict => match kv.current(key).await? {
                Some(Current {
                    revision,
                    state: EntryState::Value(_),
                }) => expected = revision,
                _ => return Ok(false),
            },
        }
    }
    Err(Error::Contended {
        key: key.to_string(),
        attempts: MAX_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(rev: &str) -> Current {
        Current {
            revision: 7,
            state: EntryState::Value(Bytes::from(format!(r#"{{"rev":"{rev}","x":1}}"#))),
        }
    }

    fn marker(rev: Option<&str>) -> Current {
        Current {
            revision: 9,
            state: EntryState::Deleted {
                rev: rev.map(String::from),
            },
        }
    }

    fn put(rev: &str) -> Change {
        Change::Put {
            rev: rev.into(),
            value: Bytes::new(),
            create: false,
        }
    }

    fn del(rev: &str) -> Change {
        Change::Delete { rev: rev.into() }
    }

    #[test]
    fn newer_revisions_win_and_older_ones_are_ignored() {
        use Decision::*;
        assert_eq!(decide(None, &put("b")), Write { expected: 0 });
        assert_eq!(decide(None, &del("b")), Write { expected: 0 });
        assert_eq!(decide(Some(&value("b")), &put("c")), Write { expected: 7 });
        assert_eq!(
            decide(Some(&value("b")), &put("b")),
            Skip(Outcome::Duplicate)
        );
        assert_eq!(decide(Some(&value("b")), &put("a")), Skip(Outcome::Stale));
        assert_eq!(decide(Some(&value("b")), &del("c")), Write { expected: 7 });
        assert_eq!(decide(Some(&value("b")), &del("a")), Skip(Outcome::Stale));
        assert_eq!(
            decide(Some(&marker(Some("b"))), &put("a")),
            Skip(Outcome::Stale)
        );
        assert_eq!(
            decide(Some(&marker(Some("b"))), &put("b")),
            Skip(Outcome::Duplicate)
        );
        assert_eq!(
            decide(Some(&marker(Some("b"))), &put("c")),
            Write { expected: 9 }
        );
        assert_eq!(
            decide(Some(&marker(Some("b"))), &del("c")),
            Skip(Outcome::AlreadyDeleted)
        );
        assert_eq!(
            decide(Some(&marker(None)), &put("a")),
            Write { expected: 9 }
        );
        assert_eq!(
            decide(Some(&marker(None)), &del("a")),
            Skip(Outcome::AlreadyDeleted)
        );
        let garbage = Current {
            revision: 3,
            state: EntryState::Value(Bytes::from_static(b"not json")),
        };
        assert_eq!(decide(Some(&garbage), &put("a")), Write { expected: 3 });
    }
}
