//! The normalized event: the JSON every consumer of FPaaS sees.
//!
//! Shape (a superset of Jetstream's): `{"did", "time_us", "kind", "seq", "time", "commit": {"rev", "operation",
//! "collection", "rkey", "record"?, "cid"?}}`, or `identity` / `account` / `sync` instead of `commit`.
//! `record` and `cid` are absent on deletes. `time_us` is the event's own `time` (set where the event
//! originated, not when we received it) in microseconds since the Unix epoch, so the JSON of an event is a pure
//! function of the frame: replays and a second shuffler produce byte-identical messages.

use serde::{Deserialize, Serialize};

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One record operation of a `#commit` frame.
    Commit,
    /// A `#identity` frame: the DID document or handle may have changed.
    Identity,
    /// A `#account` frame: hosting status changed.
    Account,
    /// A `#sync` frame: "the repository is now at this revision"; consumers may need to resync it.
    Sync,
}

impl Kind {
    /// The lowercase name used in JSON, subjects and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Identity => "identity",
            Kind::Account => "account",
            Kind::Sync => "sync",
        }
    }
}

/// A record operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A new record.
    Create,
    /// A new version of an existing record.
    Update,
    /// The record was removed; no record body is carried.
    Delete,
}

impl Operation {
    /// The lowercase name used in JSON, subjects and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// One normalized event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The repository (account) the event is about.
    pub did: String,
    /// The event's `time` in microseconds since the Unix epoch (0 if the relay sent an unparseable time).
    pub time_us: i64,
    /// Which of `commit`, `identity`, `account`, `sync` is present.
    pub kind: Kind,
    /// The relay sequence number of the frame the event came from (per relay; not an identity across relays).
    pub seq: i64,
    /// The event's `time` exactly as the relay sent it (RFC 3339).
    pub time: String,
    /// Present when `kind` is `commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitEvent>,
    /// Present when `kind` is `identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityEvent>,
    /// Present when `kind` is `account`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountEvent>,
    /// Present when `kind` is `sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncEvent>,
}

/// One record operation of a commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitEvent {
    /// The repository revision (TID) of the commit.
    pub rev: String,
    /// create, update or delete.
    pub operation: Operation,
    /// The record's collection NSID, e.g. `app.bsky.feed.like`.
    pub collection: String,
    /// The record key.
    pub rkey: String,
    /// The record as ATProto JSON (`$link`, `$bytes`); absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<serde_json::Value>,
    /// The record's CID; absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// Identity change of a DID.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentityEvent {
    /// The DID.
    pub did: String,
    /// The handle, when the relay included it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// Relay sequence number.
    pub seq: i64,
    /// Event time (RFC 3339).
    pub time: String,
}

/// Hosting status change of an account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountEvent {
    /// Whether the account is active.
    pub active: bool,
    /// The DID.
    pub did: String,
    /// Relay sequence number.
    pub seq: i64,
    /// Event time (RFC 3339).
    pub time: String,
    /// `takendown`, `suspended`, `deleted`, `deactivated`, `desynchronized`, `throttled`, … when not active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// A `#sync` event: the repository is now at `rev`, with the given commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncEvent {
    /// The repository revision after the sync.
    pub rev: String,
    /// The CID of the signed commit carried by the frame, when it could be identified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl Event {
    /// The operation, for commit events.
    pub fn operation(&self) -> Option<Operation> {
        self.commit.as_ref().map(|c| c.operation)
    }

    /// Serialize as compact JSON (the NATS message payload and the NDJSON line).
    pub fn to_json_vec(&self) -> Vec<u8> {
        // Serializing these plain structs and a serde_json::Value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
