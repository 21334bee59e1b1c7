//! The event contract every later part of FPaaS builds on.
//!
//! - [`model`]: the normalized event — one per record operation, plus identity / account / sync events — as JSON
//!   whose shape is a superset of Bluesky Jetstream's (`did`, `time_us`, `kind`, `commit{…}`, `identity{…}`,
//!   `account{…}`), adding the relay `seq` and the event `time`.
//! - [`normalize()`]: the pure mapping from a decoded firehose frame to events, with per-op drops counted by
//!   reason instead of failing the whole frame.
//! - [`subject`]: the NATS subject scheme under `atproto.firehose.` (kind / operation / collection only — never a
//!   DID or rkey, see `docs/event-model.md`) and filter builders for consumers.
//! - [`dedup`]: the deterministic message id (`Nats-Msg-Id`) that is the same whichever relay an event came
//!   through.
//! - [`wire`]: the bus message of an event — subject, dedup id, headers (the DID readable without parsing
//!   JSON), payload — and reading a payload back.
//!
//! This crate does no I/O.

pub mod dedup;
pub mod model;
pub mod normalize;
pub mod subject;
pub mod wire;

pub use dedup::msg_id;
pub use model::{
    AccountEvent, CommitEvent, Event, IdentityEvent, Kind, Operation, RecordJson, SyncEvent,
};
pub use normalize::{DropReason, Dropped, Limits, Normalized, normalize, normalize_with};
pub use subject::{SUBJECT_PREFIX, SubjectFilter, subject};
pub use wire::{
    HEADER_DID, HEADER_MSG_ID, HEADER_SEQ, HEADER_TIME_US, WireError, WireMessage, decode_payload,
};
