//! Firehose wire format: frames, CAR v1, DAG-CBOR to ATProto JSON, identifier syntax. Pure, no I/O.
//!
//! - [`frame`]: decode a `subscribeRepos` frame into a typed [`Frame`].
//! - [`car`]: CAR v1 slices (`blocks`) and repository exports.
//! - [`cbor_json`]: strict, bounded DAG-CBOR record → ATProto JSON text (the hot path).
//! - [`data`]: DAG-CBOR ⇄ ATProto JSON values, CIDs.
//! - [`syntax`]: validated DID / NSID / record key / TID / handle / AT URI types.
//! - [`mst`]: the signed commit and Merkle Search Tree of a repository export.
//! - [`limits`]: size limits enforced on untrusted input.
//!
//! Everything here treats input as untrusted: decoding returns typed errors and never panics.

pub mod car;
pub mod cbor_json;
pub mod data;
pub mod frame;
pub mod limits;
pub mod mst;
pub mod syntax;

pub use cid::Cid;

pub use car::{Car, CarError};
pub use cbor_json::{JsonLimits, MAX_RECORD_DEPTH, RecordError, RecordErrorKind};
pub use data::{DataError, cbor_to_json, cid_for_cbor, json_to_cbor};
pub use frame::{
    AccountMsg, AccountStatus, Action, Commit, ErrorFrame, Frame, FrameError, FrameErrorKind,
    IdentityMsg, InfoMsg, RepoOp, SyncMsg, UnknownFrame, decode_frame, decode_frame_bytes,
};
pub use mst::{MstError, RepoCommit};
pub use syntax::{AtUri, Did, Handle, Nsid, RecordKey, SyntaxError, Tid};
