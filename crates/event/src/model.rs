//! The normalized event: the JSON every consumer of FPaaS sees.
//!
//! Shape (a superset of Jetstream's): `{"did", "time_us", "kind", "seq", "time", "commit": {"rev", "operation",
//! "collection", "rkey", "record"?, "cid"?}}`, or `identity` / `account` / `sync` instead of `commit`.
//! `record` and `cid` are absent on deletes. `time_us` is the event's own `time` (set where the event
//! originated, not when we received it) in microseconds since the Unix epoch, so the JSON of an event is a pure
//! function of the frame: replays and a second shuffler produce byte-identical messages.

use std::sync::Arc;

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
    pub record: Option<RecordJson>,
    /// The record's CID; absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// A record as ATProto JSON text: always a JSON object, at most [`fpaas_proto::MAX_RECORD_DEPTH`] deep.
///
/// Kept as text, not as a `serde_json::Value` tree: the shuffler converts each record block once, straight to
/// bytes, and copies those bytes into the message (a tree of a hostile record can be ~700 times larger than
/// its CBOR). Cheap to clone (shared). Serializes as the raw JSON object it holds.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordJson(Arc<str>);

impl RecordJson {
    /// Wraps text this crate produced with `fpaas_proto::cbor_json` (valid JSON object by construction).
    pub(crate) fn from_converted(text: String) -> Self {
        Self(Arc::from(text))
    }

    /// Parses and wraps JSON text, which must be an object.
    ///
    /// # Errors
    /// Invalid JSON or not an object.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(text)?;
        Self::from_raw(&raw)
    }

    fn from_raw(raw: &serde_json::value::RawValue) -> Result<Self, serde_json::Error> {
        let text = raw.get();
        if !text.starts_with('{') {
            return Err(serde::de::Error::custom("a record must be a JSON object"));
        }
        Ok(Self(Arc::from(text)))
    }

    /// The JSON of a value (compact).
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(Arc::from(value.to_string()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The record as a `serde_json::Value`.
    ///
    /// # Errors
    /// Only if the text is not JSON, which [`RecordJson`]'s constructors rule out.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl std::fmt::Debug for RecordJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RecordJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.0.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RecordJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(deserializer)?;
        Self::from_raw(&raw).map_err(serde::de::Error::custom)
    }
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
    /// `takendown`, `suspended`, `deleted`, `deactivated`, `desynchronized`, `throttled`, or `other` for any
    /// other value a relay sent (mapped, so that no free text reaches subjects).
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

    /// Serialize as compact JSON (the NATS message payload and the NDJSON line): the same bytes as
    /// `serde_json::to_vec(self)`, written by hand so the record text is copied, not re-parsed.
    pub fn to_json_vec(&self) -> Vec<u8> {
        let record_len = self
            .commit
            .as_ref()
            .and_then(|c| c.record.as_ref())
            .map_or(0, |r| r.as_str().len());
        let mut out = Vec::with_capacity(256 + record_len);
        self.write_json(&mut out);
        out
    }

    /// Appends the compact JSON of the event to `out` (see [`Event::to_json_vec`]).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = JsonWriter { out, first: true };
        w.open();
        w.str_field("did", &self.did);
        w.int_field("time_us", self.time_us);
        w.str_field("kind", self.kind.as_str());
        w.int_field("seq", self.seq);
        w.str_field("time", &self.time);
        if let Some(c) = &self.commit {
            w.key("commit");
            w.open();
            w.str_field("rev", &c.rev);
            w.str_field("operation", c.operation.as_str());
            w.str_field("collection", &c.collection);
            w.str_field("rkey", &c.rkey);
            if let Some(r) = &c.record {
                w.key("record");
                w.out.extend_from_slice(r.as_str().as_bytes());
            }
            if let Some(cid) = &c.cid {
                w.str_field("cid", cid);
            }
            w.close();
        }
        if let Some(i) = &self.identity {
            w.key("identity");
            w.open();
            w.str_field("did", &i.did);
            if let Some(h) = &i.handle {
                w.str_field("handle", h);
            }
            w.int_field("seq", i.seq);
            w.str_field("time", &i.time);
            w.close();
        }
        if let Some(a) = &self.account {
            w.key("account");
            w.open();
            w.key("active");
            w.out
                .extend_from_slice(if a.active { b"true" } else { b"false" });
            w.str_field("did", &a.did);
            w.int_field("seq", a.seq);
            w.str_field("time", &a.time);
            if let Some(s) = &a.status {
                w.str_field("status", s);
            }
            w.close();
        }
        if let Some(s) = &self.sync {
            w.key("sync");
            w.open();
            w.str_field("rev", &s.rev);
            if let Some(c) = &s.commit {
                w.str_field("commit", c);
            }
            w.close();
        }
        w.close();
    }
}

/// A minimal compact JSON writer for [`Event::write_json`]; strings are escaped by `serde_json`.
struct JsonWriter<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl JsonWriter<'_> {
    fn open(&mut self) {
        self.out.push(b'{');
        self.first = true;
    }

    fn close(&mut self) {
        self.out.push(b'}');
        self.first = false;
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.string(k);
        self.out.push(b':');
    }

    fn string(&mut self, s: &str) {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, s);
    }

    fn str_field(&mut self, k: &str, v: &str) {
        self.key(k);
        self.string(v);
    }

    fn int_field(&mut self, k: &str, v: i64) {
        self.key(k);
        self.out.extend_from_slice(v.to_string().as_bytes());
    }
}
