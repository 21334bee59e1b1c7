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

use crate::car::{Car, verify_block};
use crate::limits::{
    MAX_BLOCKS_BYTES, MAX_FRAME_BYTES, MAX_OPS_PER_COMMIT, MAX_RECORD_BYTES, MAX_SYNC_BLOCKS_BYTES,
};
use crate::syntax::{Did, Handle, Nsid, RecordKey, Tid};

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
    /// A record block is not valid data-model DAG-CBOR.
    BadRecord,
}

impl FrameErrorKind {
    /// Every kind, for pre-registering metric labels.
    pub const ALL: [FrameErrorKind; 14] = [
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
        Self::BadRecord,
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
            Self::BadRecord => "bad_record",
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
    /// When the relay/PDS emitted it (RFC 3339), unvalidated.
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
    /// Revision of the commit.
    pub rev: String,
    /// CAR with the commit block.
    pub blocks: Car,
    /// Emission time (RFC 3339), unvalidated.
    pub time: String,
}

/// An `#identity` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityMsg {
    /// Relay sequence number.
    pub seq: i64,
    /// The account DID.
    pub did: Did,
    /// Emission time (RFC 3339), unvalidated.
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
    /// Emission time (RFC 3339), unvalidated.
    pub time: String,
    /// Whether the account is active.
    pub active: bool,
    /// Why not active: `takendown`, `suspended`, `deleted`, `deactivated`, … (open set).
    pub status: Option<String>,
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
                seq: b.seq,
                did: parse_did(b.did)?,
                time: b.time.to_owned(),
                handle: b.handle.and_then(|h| Handle::parse(h).ok()),
            }))
        }
        (1, Some("#account")) => {
            let b: AccountBody<'_> = body!(de)?;
            Ok(Frame::Account(AccountMsg {
                seq: b.seq,
                did: parse_did(b.did)?,
                time: b.time.to_owned(),
                active: b.active,
                status: b.status.map(str::to_owned),
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
    let repo = parse_did(b.repo)?;
    let rev = Tid::parse(b.rev).map_err(|e| FrameError::with_source(FrameErrorKind::BadRev, e))?;
    let ops = b
        .ops
        .ops
        .into_iter()
        .map(convert_op)
        .collect::<Result<Vec<_>, _>>()?;
    let blocks = Car::parse_bytes(source.blocks(b.blocks))
        .map_err(|e| FrameError::with_source(FrameErrorKind::BadCar, e))?;
    Ok(Commit {
        seq: b.seq,
        repo,
        rev,
        since: b.since.map(str::to_owned),
        commit: b.commit,
        ops,
        blocks,
        prev_data: b.prev_data,
        time: b.time.to_owned(),
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
    if action != Action::Delete && op.cid.is_none() {
        return Err(FrameError::with_source(
            FrameErrorKind::BadOp,
            format!("{action} without cid"),
        ));
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

fn decode_sync(b: SyncBody<'_>, source: Source<'_>) -> Result<SyncMsg, FrameError> {
    if b.blocks.len() > MAX_SYNC_BLOCKS_BYTES {
        return Err(FrameError::with_source(
            FrameErrorKind::BlocksTooLarge,
            format!("{} bytes > {MAX_SYNC_BLOCKS_BYTES}", b.blocks.len()),
        ));
    }
    let did = parse_did(b.did)?;
    let blocks = Car::parse_bytes(source.blocks(b.blocks))
        .map_err(|e| FrameError::with_source(FrameErrorKind::BadCar, e))?;
    Ok(SyncMsg {
        seq: b.seq,
        did,
        rev: b.rev.to_owned(),
        blocks,
        time: b.time.to_owned(),
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

    /// The record of a create/update op as ATProto JSON, after checking its block hashes to
    /// `op.cid`. `Ok(None)` for a delete. Errors: missing block, CID mismatch, record too large,
    /// bad CBOR.
    pub fn record_json(&self, op: &RepoOp) -> Result<Option<serde_json::Value>, FrameError> {
        let Some(block) = self.record_block(op)? else {
            return Ok(None);
        };
        crate::data::cbor_to_json(block)
            .map(Some)
            .map_err(|e| FrameError::with_source(FrameErrorKind::BadRecord, e))
    }
}
