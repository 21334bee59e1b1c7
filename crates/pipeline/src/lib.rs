//! The subscription worker (see `docs/subscriptions.md`): one shared reader of the firehose stream per
//! worker, the filter index of the subscriptions it runs, bounded per-subscription queues, batching, signed
//! webhook delivery with retries and dead letters, progress saved in NATS KV only after the receiver
//! accepted a batch, and partition leases in NATS KV that spread subscriptions over workers.
//!
//! | module | owns |
//! |---|---|
//! | [`worker`] | the worker: subscription directory (KV watch), partition leases, runner lifecycle, stats writer |
//! | [`reader`] | the shared reader: one per worker, at the live edge, index → bounded per-subscription queues |
//! | `runner` | one subscription: pending batch first, catch-up on its own reader, join, live, deliver, progress |
//! | [`sub`] | a subscription compiled for the worker: filter, subject filters for catching up, transform, limits, target |
//! | [`event`] | a firehose message as the worker sees it: sequence, id, time, index key, JSON parsed at most once |
//! | [`collect`] | the collector stage: group key, time (tumbling, sliding) and count windows, aggregations, a state that saves |
//! | [`sketch`] | distinct count (exact, then HyperLogLog) and top-k (space-saving) accumulators |
//! | [`batch`] | batching by count, bytes and wait; the batch body and its deterministic id |
//! | [`deliver`] | stored subscription → worker config; one signed POST and its meaning; the dead-letter stream |
//! | [`state`] | the `kv` delivery: a batch → puts or increments of a state bucket (ids `<batch id>:<key>`, so a resent batch counts once) |
//! | [`stats`] | per-subscription counters → Prometheus and the stats bucket |
//! | [`rate`] | the tenant delivery-rate quota (token bucket per tenant and worker) |

pub mod batch;
pub mod collect;
pub mod deliver;
pub mod event;
pub mod rate;
pub mod reader;
mod runner;
pub mod sketch;
pub mod state;
pub mod stats;
pub mod sub;
pub mod worker;

pub use worker::{WorkerConfig, WorkerError, run};
