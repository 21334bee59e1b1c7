//! Relay simulator: deterministic, protocol-correct `com.atproto.sync.subscribeRepos` frames over a real
//! WebSocket, replay of captures, and fault injection.
//!
//! Where to look:
//! - [`capture`]: the corpus file format (`[u32 LE length][frame]...`, zstd when `.zst`).
//! - [`generate`]: the deterministic generator and the ground truth ([`TruthEvent`]).
//! - [`encode`]: DAG-CBOR / CAR / frame encoding, independent of our decoder.
//! - [`records`]: the lexicon records the generator emits.
//! - [`hostile`]: the hostile suite (`testdata/hostile/`): frames built to stop, bloat or fool a consumer.
//! - [`server`]: the WebSocket server ([`serve`], [`Sim`]) with cursor replay, backpressure and faults.

pub mod capture;
pub mod encode;
pub mod generate;
pub mod hostile;
pub mod records;
pub mod server;
pub mod tid;

pub use capture::{CaptureError, CaptureReader, CaptureWriter, read_capture};
pub use generate::{FaultConfig, Generated, Generator, OpAction, TruthEvent};
pub use server::{SUBSCRIBE_PATH, Sim, SimConfig, SimError, frame_seq, serve};
