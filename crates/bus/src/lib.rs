//! The one NATS boundary (async-nats 0.51): no crate above this one depends on async-nats (the
//! test kit and the raw-publish benchmark baseline aside; `crates/fpaas/tests/it/nats_boundary.rs`
//! checks it). Connecting with unlimited reconnects, provisioning the firehose stream and KV
//! buckets, publishing with a bounded number of acks in flight, KV compare-and-set, durable
//! readers and the generic consume loop live here; what keys, values and messages *mean* stays
//! with the callers (record KV, like index, shuffler cursor and lease). A second log (e.g. Kafka)
//! would be a second implementation of these pieces.
//!
//! | module | owns |
//! |---|---|
//! | [`connect`](connect()) | client options: background initial connect, reconnect backoff, connection events |
//! | `stream` | [`StreamSettings`], [`ensure_stream`], the `max_payload` policy, [`delete_streams`], [`stream_names`] |
//! | `publish` | [`Publisher`]: bounded acks in flight, `Nats-Msg-Id`, completions that return failed messages; [`OutMsg::from_wire`] |
//! | `kv` | [`KvSettings`], [`ensure_kv`], KV key validation |
//! | `msglog` | [`MsgLog`]: a stream as a log of single messages (the dead-letter queue): [`ensure_msglog`], publish with headers → sequence, list by subject, get / delete by sequence, purge and count by subject, [`SubjectWatch`] |
//! | `bucket` | [`KvBucket`]: get with revision, create / update-if-revision / delete-if-revision, tagged and expiring delete markers, keys, snapshots, watch |
//! | `state` | [`StateBucket`]: a tenant's state bucket of values (puts) or counters (`Nats-Incr`, increment-only), writes with `Nats-Msg-Id` so resent writes are dropped, reads with time, keys, watches |
//! | `reader` | [`DurableReader`]: durable pull consumer in batches; [`Delivery`], [`Settle`] (ack / term) |
//! | [`consume`](consume()) | the consume loop: fetch → [`BatchApply`] → settle after success, [`Backoff`] on failure, shutdown by `CancellationToken`, [`ApplyError`] retryable / fatal |
//! | [`tail`] | [`tail::StreamTail`]: an in-order, unacknowledged reader from a position (catch-up readers, the worker's shared reader); stream bounds; the first sequence at a time |
//! | `blob` | [`BlobStore`]: named blobs larger than one message (a JetStream object store), replaced whole |
//! | `backoff` | [`Backoff`]: the workspace's one exponential backoff with jitter |
//! | `error` | [`BusError`] with a `Copy` [`BusErrorKind`] (which kinds are retryable) |
//! | [`storage`] | the stream's storage model: disk for a retention, replicas, compression (pure arithmetic) |

mod backoff;
mod blob;
mod bucket;
mod connect;
mod consume;
mod error;
mod kv;
mod msglog;
mod publish;
mod reader;
mod state;
pub mod storage;
mod stream;
pub mod tail;

pub use async_nats::Client;
pub use async_nats::connection::State as ConnectionState;
pub use async_nats::jetstream::Context as JetStream;
pub use backoff::Backoff;
pub use blob::BlobStore;
pub use bucket::{KvBucket, KvEntry, KvState, KvWrite};
pub use connect::{connect, connection_state};
pub use consume::{ApplyError, BatchApply, ConsumeError, ConsumeOptions, Stopped, consume};
pub use error::{BusError, BusErrorKind};
pub use kv::{KvSettings, ensure_kv, ensure_kv_on, is_valid_kv_key};
pub use msglog::{LoggedMsg, MsgLog, MsgLogSettings, SubjectWatch, ensure_msglog};
pub use publish::{Acked, Completion, Failed, OutMsg, Publisher};
pub use reader::{Delivery, DurableReader, ReaderOptions, Settle, settle_batch};
pub use state::{
    COUNTER_DUPLICATE_WINDOW, StateBucket, StateEntry, StateKind, StateOp, StateWrite,
    VALUES_DUPLICATE_WINDOW, WatchFrom, WriteReport,
};
pub use stream::{
    Compression, DEFAULT_MAX_MSG_SIZE, DEFAULT_STREAM_MAX_BYTES, NATS_DEFAULT_MAX_PAYLOAD, Storage,
    StreamAction, StreamReport, StreamSettings, delete_streams, ensure_stream, stream_names,
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
