//! The only crate that talks to NATS (async-nats 0.51): connecting with unlimited reconnects,
//! provisioning the firehose stream and KV buckets, publishing with a bounded number of acks in
//! flight, and the per-shuffler cursor store.
//!
//! | module | owns |
//! |---|---|
//! | [`connect`](connect()) | client options: background initial connect, reconnect backoff, connection events |
//! | `stream` | [`StreamSettings`], [`ensure_stream`], the `max_payload` policy |
//! | `publish` | [`Publisher`]: bounded acks in flight, `Nats-Msg-Id`, completions that return failed messages |
//! | `kv` | [`KvSettings`], [`ensure_kv`], [`CursorStore`], KV key validation |
//! | `error` | [`BusError`] with a `Copy` [`BusErrorKind`] |
//! | [`storage`] | the stream's storage model: disk for a retention, replicas, compression (pure arithmetic) |

mod connect;
mod error;
mod kv;
mod publish;
pub mod storage;
mod stream;

pub use async_nats::Client;
pub use async_nats::jetstream::Context as JetStream;
pub use connect::{connect, connection_state};
pub use error::{BusError, BusErrorKind};
pub use kv::{CursorStore, KvSettings, ensure_kv, is_valid_kv_key};
pub use publish::{Acked, Completion, Failed, OutMsg, Publisher};
pub use stream::{
    Compression, DEFAULT_MAX_MSG_SIZE, DEFAULT_STREAM_MAX_BYTES, NATS_DEFAULT_MAX_PAYLOAD, Storage,
    StreamAction, StreamReport, StreamSettings, ensure_stream,
};

/// A JetStream context on `client` whose ack-in-flight limit is at least `max_ack_inflight`
/// (pass the largest [`Publisher`] bound used on it).
pub fn jetstream(client: Client, max_ack_inflight: usize) -> JetStream {
    async_nats::jetstream::context::ContextBuilder::new()
        .max_ack_inflight(max_ack_inflight.max(5_000))
        .build(client)
}

/// Like [`jetstream`], with `timeout` as the longest wait for a publish ack or a JetStream API answer
/// (async-nats' default is 5 s).
pub fn jetstream_with_timeout(
    client: Client,
    max_ack_inflight: usize,
    timeout: std::time::Duration,
) -> JetStream {
    async_nats::jetstream::context::ContextBuilder::new()
        .max_ack_inflight(max_ack_inflight.max(5_000))
        .timeout(timeout)
        .build(client)
}
