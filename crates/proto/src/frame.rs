//! Firehose frames (`com.atproto.sync.subscribeRepos`): a DAG-CBOR header `{op, t}` followed by a
//! DAG-CBOR body, decoded into typed messages.
//!
//! Untrusted input: every failure is a [`FrameError`] with a stable [`FrameErrorKind`] label for
//! metrics; unknown `op`/`t` values are not errors but [`Frame::Unknown`]. Bodies are decoded with
//! borrowing serde structs; the `blocks` CAR is indexed, not decoded — records are only decoded
//! (and hash-checked) on demand by [`Commit::record_json`].

use std::fmt;

use bytes::Bytes;
use cid::Cid;
use serde::Deserialize;
use serde::de::{IgnoredAny, SeqAccess, Visitor};

use crate::car::{Car, CarError, verify_block};
use crate::cbor_json::{JsonLimits, RecordErrorKind, record_to_json_string};
use crate::limits::{
    MAX_BLOCKS_BYTES, MAX_CAR_BLOCKS, MAX_FRAME_BYTES, MAX_OPS_PER_COMMIT, MAX_RECORD_BYTES,
    MAX_SYNC_BLOCKS_BYTES, MAX_TIME_LEN,
};
use crate::syntax::{Did, Handle, Nsid, RecordKey, Tid, is_datetime};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong decoding a frame; `as_str` gives a stable snake_case metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameErrorKind {
    /// The frame exceeds [`MAX_FRAME_BYTES`].
    FrameTooLarge,
    /// The `{op, t}` header is missing or malformed.
    BadHeader,
    /// The body is not valid DAG-CBOR of the expected shape (or has trailing bytes).
    BadBody,
    /// The `blocks` field is not a valid CAR v1.
    BadCar,
    /// `blocks` exceeds [`MAX_BLOCKS_BYTES`] (or [`MAX_SYNC_BLOCKS_BYTES`] for `#sync`).
    BlocksTooLarge,
    /// More than [`MAX_OPS_PER_COMMIT`] ops.
    TooManyOps,
    /// The repo DID is invalid.
    BadDid,
    /// The commit `rev` is not a TID.
    BadRev,
    /// An op path is not `<collection NSID>/<record key>`.
    BadPath,
    /// An op has an unknown action, or a create/update without a CID.
    BadOp,
    /// An op's record block is not in `blocks`.
    MissingBlock,
    /// A record block does not hash to the op's CID.
    CidMismatch,
    /// A record block exceeds [`MAX_RECORD_BYTES`].
    RecordTooLarge,
    /// A record block is not acceptable data-model DAG-CBOR; the inner kind says why.
    Record(RecordErrorKind),
    /// `seq` is negative.
    BadSeq,
    /// `time` is not an ATProto datetime (RFC 3339 with `T`, seconds and a time zone).
    BadTime,
    /// A create/update op's CID is not a CIDv1 of a DAG-CBOR block with sha2-256 (e.g. a raw-codec CID).
    BadOpCid,
    /// Two ops of one commit name the same path.
    DuplicateOpPath,
    /// The `blocks` CAR holds more than [`MAX_CAR_BLOCKS`] blocks.
    TooManyBlocks,
}

impl FrameErrorKind {
    /// Every kind, for pre-registering metric labels.
    pub const ALL: [FrameErrorKind; 34] = [
        Self::FrameTooLarge,
        Self::BadHeader,
        Self::BadBody,
        Self::BadCar,
        Self::BlocksTooLarge,
        Self::TooManyOps,
        Self::BadDid,
        Self::BadRev,
        Self::BadPath,
        Self::BadOp,
        Self::MissingBlock,
        Self::CidMismatch,
        Self::RecordTooLarge,
        Self::BadSeq,
        Self::BadTime,
        Self::BadOpCid,
        Self::DuplicateOpPath,
        Self::TooManyBlocks,
        Self::Record(RecordErrorKind::NotAnObject),
        Self::Record(RecordErrorKind::Float),
        Self::Record(RecordErrorKind::IntegerRange),
        Self::Record(RecordErrorKind::TooDeep),
        Self::Record(RecordErrorKind::ReservedKey),
        Self::Record(RecordErrorKind::BadLink),
        Self::Record(RecordErrorKind::UnknownTag),
        Self::Record(RecordErrorKind::NonCanonical),
        Self::Record(RecordErrorKind::DuplicateKey),
        Self::Record(RecordErrorKind::NonStringKey),
        Self::Record(RecordErrorKind::IndefiniteLength),
        Self::Record(RecordErrorKind::InvalidUtf8),
        Self::Record(RecordErrorKind::BadSimpleValue),
        Self::Record(RecordErrorKind::Truncated),
        Self::Record(RecordErrorKind::TrailingBytes),
        Self::Record(RecordErrorKind::JsonTooLarge),
    ];

    /// Stable snake_case label, e.g. `"cid_mismatch"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::FrameTooLarge => "frame_too_large",
            Self::BadHeader => "bad_header",
            Self::BadBody => "bad_body",
            Self::BadCar => "bad_car",
            Self::BlocksTooLarge => "blocks_too_large",
            Self::TooManyOps => "too_many_ops",
            Self::BadDid => "bad_did",
            Self::BadRev => "bad_rev",
            Self::BadPath => "bad_path",
            Self::BadOp => "bad_op",
            Self::MissingBlock => "missing_block",
            Self::CidMismatch => "cid_mismatch",
            Self::RecordTooLarge => "record_too_large",
            Self::Record(kind) => kind.as_str(),
            Self::BadSeq => "bad_seq",
            Self::BadTime => "bad_time",
            Self::BadOpCid => "bad_op_cid",
            Self::DuplicateOpPath => "duplicate_op_path",
            Self::TooManyBlocks => "too_many_blocks",
        }
    }
}

impl fmt::Display for FrameErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame decoding error: a [`FrameErrorKind`] plus the underlying cause, if any.
#[derive(Debug)]
pub struct FrameError {
    kind: FrameErrorKind,
    source: Option<BoxError>,
}

impl FrameError {
    /// An error of this kind with a cause.
    pub fn with_source(kind: FrameErrorKind, source: impl Into<BoxError>) -> Self {
        FrameError {
            kind,
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> FrameErrorKind {
        self.kind
    }
}

impl From<FrameErrorKind> for FrameError {
    fn from(kind: FrameErrorKind) -> Self {
        FrameError { kind, source: None }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// One decoded firehose frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// `#commit`: repository changes with their blocks.
    Commit(Box<Commit>),
    /// `#sync`: the repository is now at this commit.
    Sync(SyncMsg),
    /// `#identity`: re-resolve this DID (handle or DID document changed).
    Identity(IdentityMsg),
    /// `#account`: hosting status changed.
    Account(AccountMsg),
    /// `#info`: informational, e.g. `OutdatedCursor`.
    Info(InfoMsg),
    /// `op = -1`: the server reports an error and closes.
    Error(ErrorFrame),
    /// A valid header with an `op`/`t` this decoder does not know (including legacy `#handle`,
    /// `#migration`, `#tombstone`). The body is not decoded.
    Unknown(UnknownFrame),
}

impl Frame {
    /// The relay sequence number, for the message kinds that carry one.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Frame::Commit(c) => Some(c.seq),
            Frame::Sync(s) => Some(s.seq),
            Frame::Identity(i) => Some(i.seq),
            Frame::Account(a) => Some(a.seq),
            Frame::Info(_) | Frame::Error(_) | Frame::Unknown(_) => None,
        }
    }

    /// Stable label: `"commit"`, `"sync"`, `"identity"`, `"account"`, `"info"`, `"error"`,
    /// `"unknown"`.
    pub fn kind_label(&self) -> &'static str {
        match self {
            Frame::Commit(_) => "commit",
            Frame::Sync(_) => "sync",
            Frame::Identity(_) => "identity",
            Frame::Account(_) => "account",
            Frame::Info(_) => "info",
            Frame::Error(_) => "error",
            Frame::Unknown(_) => "unknown",
        }
    }
}

/// A `#commit` message.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// Relay sequence number.
    pub seq: i64,
    /// The repository (account) DID.
    pub repo: Did,
    /// Revision of this commit.
    pub rev: Tid,
    /// Revision of the previous commit, if any.
    pub since: Option<String>,
    /// CID of the signed commit block.
    pub commit: Cid,
    /// The record operations.
    pub ops: Vec<RepoOp>,
    /// CAR slice with the commit, MST proof nodes and new records.
    pub blocks: Car,
    /// Root of the MST before this commit (sync 1.1).
    pub prev_data: Option<Cid>,
    /// When the relay/PDS emitted it (an ATProto datetime, validated).
    pub time: String,
    /// Legacy: the commit was too big to include blocks.
    pub too_big: bool,
    /// Legacy: the repo was rebased.
    pub rebase: bool,
}

/// A record operation's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A new record.
    Create,
    /// A changed record.
    Update,
    /// A removed record.
    Delete,
}

impl Action {
    /// `"create"`, `"update"` or `"delete"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        match s {
            "create" => Some(Action::Create),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One operation of a commit, its path split into collection and record key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoOp {
    /// Create, update or delete.
    pub action: Action,
    /// Collection NSID (the path before `/`).
    pub collection: Nsid,
    /// Record key (the path after `/`).
    pub rkey: RecordKey,
    /// The new record's CID (create/update); `None` for deletes.
    pub cid: Option<Cid>,
    /// The previous record's CID (update/delete, sync 1.1), if given.
    pub prev: Option<Cid>,
}

impl RepoOp {
    /// The MST key, `"<collection>/<rkey>"`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.collection, self.rkey)
    }
}

/// A `#sync` message: the repository is now at the commit in `blocks`.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncMsg {
    /// Relay sequence number.
    pub seq: i64,
    /// The account DID.
    pub did: Did,
    /// Revision of the commit (a TID).
    pub rev: Tid,
    /// CAR with the commit block.
    pub blocks: Car,
    /// Emission time (an ATProto datetime, validated).
    pub time: String,
}

/// An `#identity` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityMsg {
    /// Relay sequence number.
    pub seq: i64,
    /// The account DID.
    pub did: Did,
    /// Emission time (an ATProto datetime, validated).
    pub time: String,
    /// The current handle, if given and syntactically valid (an invalid handle is dropped, not
    /// an error: the event's meaning — "re-resolve this DID" — does not depend on it).
    pub handle: Option<Handle>,
}

/// An `#account` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountMsg {
    /// Relay sequence number.
    pub seq: i64,
    /// The account DID.
    pub did: Did,
    /// Emission time (an ATProto datetime, validated).
    pub time: String,
    /// Whether the account is active.
    pub active: bool,
    /// Why not active. The wire value is free text; it is mapped onto the known statuses, anything else is
    /// [`AccountStatus::Other`] (so no relay-supplied text reaches a subject or a metric label).
    pub status: Option<AccountStatus>,
}

/// The hosting status of an `#account` message (`com.atproto.sync.subscribeRepos#account`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    /// `takendown`
    Takendown,
    /// `suspended`
    Suspended,
    /// `deleted`
    Deleted,
    /// `deactivated`
    Deactivated,
    /// `desynchronized`
    Desynchronized,
    /// `throttled`
    Throttled,
    /// Any other value (the lexicon's set is open).
    Other,
}

impl AccountStatus {
    /// Maps the wire value; unknown values are [`AccountStatus::Other`].
    pub fn parse(s: &str) -> AccountStatus {
        match s {
            "takendown" => Self::Takendown,
            "suspended" => Self::Suspended,
            "deleted" => Self::Deleted,
            "deactivated" => Self::Deactivated,
            "desynchronized" => Self::Desynchronized,
            "throttled" => Self::Throttled,
            _ => Self::Other,
        }
    }

    /// The lowercase name (`"other"` for unknown values).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Takendown => "takendown",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
            Self::Deactivated => "deactivated",
            Self::Desynchronized => "desynchronized",
            Self::Throttled => "throttled",
            Self::Other => "other",
        }
    }
}

/// An `#info` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoMsg {
    /// E.g. `OutdatedCursor`.
    pub name: String,
    /// Human-readable detail.
    pub message: Option<String>,
}

/// An error frame (`op = -1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    /// E.g. `FutureCursor`, `ConsumerTooSlow`.
    pub error: String,
    /// Human-readable detail.
    pub message: Option<String>,
}

/// A frame with an unrecognized header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownFrame {
    /// The header `op`.
    pub op: i64,
    /// The header `t`, if present.
    pub t: Option<String>,
}

// ---- wire structs -------------------------------------------------------------------------

#[derive(Deserialize)]
struct Header<'a> {
    op: i64,
    #[serde(borrow, default)]
    t: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommitBody<'a> {
    seq: i64,
    repo: &'a str,
    rev: &'a str,
    #[serde(borrow, default)]
    since: Option<&'a str>,
    commit: Cid,
    #[serde(borrow)]
    ops: BoundedOps<'a>,
    blocks: &'a [u8],
    #[serde(default)]
    prev_data: Option<Cid>,
    time: &'a str,
    #[serde(default)]
    too_big: bool,
    #[serde(default)]
    rebase: bool,
}

#[derive(Deserialize)]
struct WireOp<'a> {
    action: &'a str,
    path: &'a str,
    #[serde(default)]
    cid: Option<Cid>,
    #[serde(default)]
    prev: Option<Cid>,
}

/// Ops, keeping at most `MAX_OPS_PER_COMMIT` and counting the rest without allocating.
struct BoundedOps<'a> {
    ops: Vec<WireOp<'a>>,
    total: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for BoundedOps<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = BoundedOps<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of repo ops")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut ops =
                    Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_OPS_PER_COMMIT));
                let mut total = 0usize;
                loop {
                    if ops.len() < MAX_OPS_PER_COMMIT {
                        match seq.next_element::<WireOp<'a>>()? {
                            Some(op) => ops.push(op),
                            None => break,
                        }
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    total = total.saturating_add(1);
                }
                Ok(BoundedOps { ops, total })
            }
        }
        deserializer.deserialize_seq(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct SyncBody<'a> {
    seq: i64,
    did: &'a str,
    rev: &'a str,
    blocks: &'a [u8],
    time: &'a str,
}

#[derive(Deserialize)]
struct IdentityBody<'a> {
    seq: i64,
    did: &'a str,
    time: &'a str,
    #[serde(borrow, default)]
    handle: Option<&'a str>,
}

#[derive(Deserialize)]
struct AccountBody<'a> {
    seq: i64,
    did: &'a str,
    time: &'a str,
    active: bool,
    #[serde(borrow, default)]
    status: Option<&'a str>,
}

#[derive(Deserialize)]
struct InfoBody<'a> {
    name: &'a str,
    #[serde(borrow, default)]
    message: Option<&'a str>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(borrow, default)]
    message: Option<&'a str>,
}

// ---- decoding -----------------------------------------------------------------------------

/// Where the `blocks` bytes come from: copied out of a borrowed frame, or sliced out of a shared
/// [`Bytes`] frame without copying.
#[derive(Clone, Copy)]
enum Source<'a> {
    Slice,
    Shared(&'a Bytes),
}

impl Source<'_> {
    fn blocks(self, blocks: &[u8]) -> Bytes {
        match self {
            Source::Slice => Bytes::copy_from_slice(blocks),
            Source::Shared(frame) => {
                let base = frame.as_ptr() as usize;
                let start = (blocks.as_ptr() as usize).wrapping_sub(base);
                match start.checked_add(blocks.len()) {
                    // `blocks` was borrowed from `frame`, so this range is always in bounds.
                    Some(end) if end <= frame.len() && start <= end => frame.slice(start..end),
                    _ => Bytes::copy_from_slice(blocks),
                }
            }
        }
    }
}

/// Decodes one firehose frame (header + body).
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, FrameError> {
    decode(bytes, Source::Slice)
}

/// Like [`decode_frame`], but the commit/sync `blocks` share `frame`'s buffer instead of being
/// copied.
pub fn decode_frame_bytes(frame: &Bytes) -> Result<Frame, FrameError> {
    decode(frame, Source::Shared(frame))
}

/// Deserializes the body from the header's deserializer and rejects trailing bytes. A macro
/// because the deserializer's reader type is not nameable outside `serde_ipld_dagcbor`.
macro_rules! body {
    ($de:expr) => {{
        let de = &mut $de;
        match Deserialize::deserialize(&mut *de) {
            Ok(value) => match de.end() {
                Ok(()) => Ok(value),
                Err(e) => Err(FrameError::with_source(
                    FrameErrorKind::BadBody,
                    format!("after body: {e}"),
                )),
            },
            Err(e) => Err(FrameError::with_source(
                FrameErrorKind::BadBody,
                e.to_string(),
            )),
        }
    }};
}

fn decode(bytes: &[u8], source: Source<'_>) -> Result<Frame, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::with_source(
            FrameErrorKind::FrameTooLarge,
            format!("{} bytes > {MAX_FRAME_BYTES}", bytes.len()),
        ));
    }
    let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(bytes);
    let header = Header::deserialize(&mut de)
        .map_err(|e| FrameError::with_source(FrameErrorKind::BadHeader, e))?;
    match (header.op, header.t) {
        (1, Some("#commit")) => {
            decode_commit(body!(de)?, source).map(|c| Frame::Commit(Box::new(c)))
        }
        (1, Some("#sync")) => decode_sync(body!(de)?, source).map(Frame::Sync),
        (1, Some("#identity")) => {
            let b: IdentityBody<'_> = body!(de)?;
            Ok(Frame::Identity(IdentityMsg {
                seq: check_seq(b.seq)?,
                did: parse_did(b.did)?,
                time: check_time(b.time)?,
                handle: b.handle.and_then(|h| Handle::parse(h).ok()),
            }))
        }
        (1, Some("#account")) => {
            let b: AccountBody<'_> = body!(de)?;
            Ok(Frame::Account(AccountMsg {
                seq: check_seq(b.seq)?,
                did: parse_did(b.did)?,
                time: check_time(b.time)?,
                active: b.active,
                status: b.status.map(AccountStatus::parse),
            }))
        }
        (1, Some("#info")) => {
            let b: InfoBody<'_> = body!(de)?;
            Ok(Frame::Info(InfoMsg {
                name: b.name.to_owned(),
                message: b.message.map(str::to_owned),
            }))
        }
        (-1, _) => {
            let b: ErrorBody<'_> = body!(de)?;
            Ok(Frame::Error(ErrorFrame {
                error: b.error.to_owned(),
                message: b.message.map(str::to_owned),
            }))
        }
        (op, t) => Ok(Frame::Unknown(UnknownFrame {
            op,
            t: t.map(str::to_owned),
        })),
    }
}

fn parse_did(s: &str) -> Result<Did, FrameError> {
    Did::parse(s).map_err(|e| FrameError::with_source(FrameErrorKind::BadDid, e))
}

fn check_seq(seq: i64) -> Result<i64, FrameError> {
    if seq < 0 {
        return Err(FrameError::with_source(
            FrameErrorKind::BadSeq,
            format!("negative seq {seq}"),
        ));
    }
    Ok(seq)
}

/// The `time` field: an ATProto datetime. It reaches event JSON, dedup ids and logs, so nothing else passes.
fn check_time(time: &str) -> Result<String, FrameError> {
    if time.len() > MAX_TIME_LEN || !is_datetime(time) {
        let shown: String = time.chars().take(MAX_TIME_LEN).collect();
        return Err(FrameError::with_source(
            FrameErrorKind::BadTime,
            format!("not a datetime: {shown:?}"),
        ));
    }
    Ok(time.to_owned())
}

fn parse_car(blocks: Bytes) -> Result<Car, FrameError> {
    Car::parse_bytes_limited(blocks, MAX_CAR_BLOCKS).map_err(|e| match e {
        CarError::TooManyBlocks(_) => FrameError::with_source(FrameErrorKind::TooManyBlocks, e),
        e => FrameError::with_source(FrameErrorKind::BadCar, e),
    })
}

fn decode_commit(b: CommitBody<'_>, source: Source<'_>) -> Result<Commit, FrameError> {
    if b.ops.total > MAX_OPS_PER_COMMIT {
        return Err(FrameError::with_source(
            FrameErrorKind::TooManyOps,
            format!("{} ops > {MAX_OPS_PER_COMMIT}", b.ops.total),
        ));
    }
    if b.blocks.len() > MAX_BLOCKS_BYTES {
        return Err(FrameError::with_source(
            FrameErrorKind::BlocksTooLarge,
            format!("{} bytes > {MAX_BLOCKS_BYTES}", b.blocks.len()),
        ));
    }
    let seq = check_seq(b.seq)?;
    let repo = parse_did(b.repo)?;
    let rev = Tid::parse(b.rev).map_err(|e| FrameError::with_source(FrameErrorKind::BadRev, e))?;
    let time = check_time(b.time)?;
    let ops = b
        .ops
        .ops
        .into_iter()
        .map(convert_op)
        .collect::<Result<Vec<_>, _>>()?;
    check_unique_paths(&ops)?;
    let blocks = parse_car(source.blocks(b.blocks))?;
    Ok(Commit {
        seq,
        repo,
        rev,
        since: b.since.map(str::to_owned),
        commit: b.commit,
        ops,
        blocks,
        prev_data: b.prev_data,
        time,
        too_big: b.too_big,
        rebase: b.rebase,
    })
}

fn convert_op(op: WireOp<'_>) -> Result<RepoOp, FrameError> {
    let action = Action::parse(op.action).ok_or_else(|| {
        FrameError::with_source(
            FrameErrorKind::BadOp,
            format!("unknown action {:?}", op.action),
        )
    })?;
    if action != Action::Delete {
        let Some(cid) = &op.cid else {
            return Err(FrameError::with_source(
                FrameErrorKind::BadOp,
                format!("{action} without cid"),
            ));
        };
        // A record is a DAG-CBOR block hashed with sha2-256; any other CID can never verify.
        if cid.version() != cid::Version::V1
            || cid.codec() != crate::data::DAG_CBOR
            || cid.hash().code() != crate::data::SHA2_256
        {
            return Err(FrameError::with_source(
                FrameErrorKind::BadOpCid,
                format!("{action} cid {cid} is not a dag-cbor sha2-256 CIDv1"),
            ));
        }
    }
    let (collection, rkey) = op
        .path
        .split_once('/')
        .ok_or_else(|| FrameError::with_source(FrameErrorKind::BadPath, "path has no '/'"))?;
    let collection =
        Nsid::parse(collection).map_err(|e| FrameError::with_source(FrameErrorKind::BadPath, e))?;
    let rkey =
        RecordKey::parse(rkey).map_err(|e| FrameError::with_source(FrameErrorKind::BadPath, e))?;
    Ok(RepoOp {
        action,
        collection,
        rkey,
        cid: op.cid,
        prev: op.prev,
    })
}

/// One op per path: a commit that creates, updates or deletes a path twice is not a valid MST change, and
/// would give two events with one dedup id.
fn check_unique_paths(ops: &[RepoOp]) -> Result<(), FrameError> {
    let mut paths: Vec<(&str, &str)> = ops
        .iter()
        .map(|o| (o.collection.as_str(), o.rkey.as_str()))
        .collect();
    paths.sort_unstable();
    match paths.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(FrameError::with_source(
            FrameErrorKind::DuplicateOpPath,
            format!("two ops on {}/{}", w[0].0, w[0].1),
        )),
        None => Ok(()),
    }
}

fn decode_sync(b: SyncBody<'_>, source: Source<'_>) -> Result<SyncMsg, FrameError> {
    if b.blocks.len() > MAX_SYNC_BLOCKS_BYTES {
        return Err(FrameError::with_source(
            FrameErrorKind::BlocksTooLarge,
            format!("{} bytes > {MAX_SYNC_BLOCKS_BYTES}", b.blocks.len()),
        ));
    }
    let seq = check_seq(b.seq)?;
    let did = parse_did(b.did)?;
    let rev = Tid::parse(b.rev).map_err(|e| FrameError::with_source(FrameErrorKind::BadRev, e))?;
    let time = check_time(b.time)?;
    let blocks = parse_car(source.blocks(b.blocks))?;
    Ok(SyncMsg {
        seq,
        did,
        rev,
        blocks,
        time,
    })
}

impl Commit {
    /// The verified record block of a create/update op (`Ok(None)` for a delete): present in
    /// `blocks`, at most [`MAX_RECORD_BYTES`], and hashing to `op.cid`.
    pub fn record_block(&self, op: &RepoOp) -> Result<Option<&[u8]>, FrameError> {
        let Some(cid) = op.cid.as_ref().filter(|_| op.action != Action::Delete) else {
            return Ok(None);
        };
        let block = self.blocks.get(cid).ok_or_else(|| {
            FrameError::with_source(FrameErrorKind::MissingBlock, format!("no block for {cid}"))
        })?;
        if block.len() > MAX_RECORD_BYTES {
            return Err(FrameError::with_source(
                FrameErrorKind::RecordTooLarge,
                format!("{} bytes > {MAX_RECORD_BYTES}", block.len()),
            ));
        }
        if !verify_block(cid, block) {
            return Err(FrameError::with_source(
                FrameErrorKind::CidMismatch,
                format!("block does not hash to {cid}"),
            ));
        }
        Ok(Some(block))
    }

    /// The record of a create/update op as ATProto JSON text, after checking its block hashes to `op.cid`,
    /// converted by the strict, bounded [`crate::cbor_json`] (at most `limits.max_json_bytes` of JSON).
    /// `Ok(None)` for a delete.
    ///
    /// # Errors
    /// Missing block, CID mismatch, record too large, or [`FrameErrorKind::Record`] with the reason.
    pub fn record_json_string(
        &self,
        op: &RepoOp,
        limits: JsonLimits,
    ) -> Result<Option<String>, FrameError> {
        let Some(block) = self.record_block(op)? else {
            return Ok(None);
        };
        record_to_json_string(block, limits)
            .map(Some)
            .map_err(|e| FrameError::with_source(FrameErrorKind::Record(e.kind), e))
    }

    /// [`Commit::record_json_string`] with the default limits, parsed into a [`serde_json::Value`] (for tools
    /// and tests; the shuffler keeps the text).
    ///
    /// # Errors
    /// As [`Commit::record_json_string`].
    pub fn record_json(&self, op: &RepoOp) -> Result<Option<serde_json::Value>, FrameError> {
        let Some(text) = self.record_json_string(op, JsonLimits::default())? else {
            return Ok(None);
        };
        // Our own output: valid JSON within serde_json's depth limit.
        serde_json::from_str(&text).map(Some).map_err(|e| {
            FrameError::with_source(FrameErrorKind::Record(RecordErrorKind::NotAnObject), e)
        })
    }
}
