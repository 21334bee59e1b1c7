//! Test kit: real `nats-server` processes (single node and 3-node clusters), polling helpers
//! (`eventually`), free loopback ports, the paths of the project-local tools, a relay-sim harness
//! ([`relay`]), a cuttable TCP proxy for taking one connection path down ([`TcpProxy`]) and reading
//! `/metrics` pages ([`prom_value`]), and reading the firehose stream back with ground-truth assertions
//! ([`stream`]), running a child with its peak memory ([`run_measured`]), and a recording, scriptable webhook
//! receiver ([`WebhookReceiver`]).
//!
//! Crates use it as a `[dev-dependencies]` entry, with one exception: the benchmarks (`fpaas-bench`, behind
//! `fpaas bench`) start their nats-servers through it, so that every server of the project's tests and
//! benches gets its ports from one allocator ([`free_port`]). A missing tool is a loud panic with the install
//! hint, never a silent skip.

mod metrics;
mod nats;
mod paths;
mod process;
mod proxy;
pub mod relay;
pub mod stream;
mod wait;
pub mod webhook;

pub use metrics::prom_value;
pub use nats::{NatsCluster, NatsServer, NatsServerOptions, TEST_MAX_PAYLOAD};
pub use paths::{nats_server_bin, python, workspace_root};
pub use process::{Finished, Proc, run_measured};
pub use proxy::TcpProxy;
pub use wait::{Elapsed, eventually, eventually_some, free_port, free_port_block};
pub use webhook::{Received, Reply, WebhookReceiver};
