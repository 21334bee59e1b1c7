//! The benchmarks behind `fpaas bench NAME`: their flags ([`Args`]), the measurements ([`run`]) and the
//! [`Report`] they produce — a readable table, or with `--json` one JSON object whose keys carry their unit
//! (`frames_per_s`, `events_per_s`, `p99_ms`, `rss_mb`, `ratio_vs_baseline`, …). A comparison runs its baseline
//! in the same run and reports the ratio. The `fpaas` binary only parses [`Args`], calls [`run`] and prints.
//!
//! - [`decode`]: decoder throughput on one core and the hostile suite's peak memory;
//! - [`ingest`]: relay-sim → shuffler → nats-server, beside raw-publish and Python baselines;
//! - [`storage`]: bytes per firehose message in a nats-server file store, uncompressed and S2;
//! - [`record_kv`]: record KV builder, like indexer, like-index queries, key order, server memory per record;
//! - [`fanout`]: one worker, N subscriptions with mixed filters, relay frame → webhook latency, memory per
//!   subscription; [`deliver`]: one subscription's delivery throughput beside reading the stream alone;
//! - [`collect`]: the collector stage with 100,000 keys beside parsing alone, checkpoint size, KV state writes/s;
//! - [`pull_idle`]: N idle `pull` subscriptions polled once a minute — server, worker and API CPU and memory;
//! - [`subscribe`]: N WebSocket clients with mixed filters and one stalled client on `GET /subscribe`;
//! - [`server`], [`publish`], [`subs`]: what they share — nats-server through `fpaas-testkit`, peak RSS, stream
//!   progress, paths; messages as the shuffler publishes them, bounded-in-flight publishing.
//!
//! `decode` and `ingest` run child processes of the running executable (`decode`, `shuffler`): they measure
//! the `fpaas` binary, so they are meant to run inside it.

pub mod collect;
pub mod decode;
pub mod deliver;
pub mod error;
pub mod fanout;
pub mod ingest;
pub mod publish;
pub mod pull_idle;
pub mod record_kv;
pub mod server;
pub mod storage;
pub mod subs;
pub mod subscribe;

pub use error::{Error, Result};

use serde_json::{Map, Value};

// `fpaas bench`'s flags (plain comments here: clap turns doc comments into help text, and the help is the
// `Bench` subcommand's in the binary).
#[derive(clap::Args, Debug)]
pub struct Args {
    // The benchmark to run.
    #[command(subcommand)]
    bench: Bench,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

// The benchmarks, one subcommand each.
#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Frames/s and MB/s decoding (and normalizing) the corpus in a loop on one core.
    Decode(decode::Args),
    /// Events/s from relay-sim through the shuffler into nats-server, beside raw-publish and Python baselines.
    Ingest(ingest::Args),
    /// Bytes per firehose message in a nats-server file store, uncompressed vs S2 (storage-estimate's defaults).
    Storage(storage::Args),
    /// Record KV: records/s written, likes/s indexed, like-index queries/s, watch cost by key order, memory per record.
    RecordKv(record_kv::Args),
    /// Subscriptions: one worker, N subscriptions with mixed filters, latency from relay frame to webhook receipt.
    Fanout(fanout::Args),
    /// Delivery throughput: one subscription taking every event in batches, beside reading the stream alone.
    Deliver(deliver::Args),
    /// Collector throughput with 100,000 distinct keys beside parsing alone, checkpoint size, KV state writes/s.
    Collect(collect::Args),
    /// Pull subscriptions: N idle ones polled once a minute, CPU and memory of nats-server, worker and API.
    PullIdle(pull_idle::Args),
    /// GET /subscribe: N WebSocket clients with mixed filters and one stalled client on one node, latency and memory.
    Subscribe(subscribe::Args),
}

/// A benchmark's result: named figures, each key ending in its unit.
#[derive(Debug, Default)]
pub struct Report {
    /// Benchmark name.
    pub name: &'static str,
    /// (key with unit suffix, value), in display order.
    pub figures: Vec<(String, Value)>,
}

impl Report {
    /// An empty report of bench `name`.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            figures: Vec::new(),
        }
    }

    /// Appends a figure; `key` ends in its unit.
    pub fn add(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.push((key.to_string(), value.into()));
    }

    /// The report as printed: one JSON object (`bench` plus the figures) with `json`, else a table.
    pub fn render(&self, json: bool) -> String {
        if json {
            let mut m = Map::new();
            m.insert("bench".into(), Value::String(self.name.into()));
            for (k, v) in &self.figures {
                m.insert(k.clone(), v.clone());
            }
            return Value::Object(m).to_string();
        }
        let width = self.figures.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("bench {}\n{:-<2$}", self.name, "", width + 20);
        for (k, v) in &self.figures {
            let shown = match v {
                Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            out.push_str(&format!("\n{k:<width$}  {shown:>16}"));
        }
        out
    }
}

/// Round to two decimals for readable JSON.
pub fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Runs the benchmark `args` names; the caller prints [`Report::render`] with [`Args::json`].
///
/// # Errors
/// Any failed step of the measurement (missing tool, nats-server, child process, stream stall).
pub async fn run(args: &Args) -> Result<Report> {
    match &args.bench {
        Bench::Decode(a) => {
            let a = a.clone();
            tokio::task::spawn_blocking(move || decode::run(&a)).await?
        }
        Bench::Ingest(a) => ingest::run(a).await,
        Bench::Storage(a) => storage::run(a).await,
        Bench::RecordKv(a) => record_kv::run(a).await,
        Bench::Fanout(a) => fanout::run(a).await,
        Bench::Deliver(a) => deliver::run(a).await,
        Bench::Collect(a) => collect::run(a).await,
        Bench::PullIdle(a) => pull_idle::run(a).await,
        Bench::Subscribe(a) => subscribe::run(a).await,
    }
}

impl Args {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report::new("demo");
        r.add("events_per_s", 1234.5678);
        r.add("events", 10u64);
        r
    }

    #[test]
    fn json_is_one_line_object_with_the_bench_name_and_unrounded_figures() {
        assert_eq!(
            report().render(true),
            r#"{"bench":"demo","events":10,"events_per_s":1234.5678}"#
        );
    }

    #[test]
    fn table_rounds_floats_and_aligns_keys() {
        let table = report().render(false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "bench demo");
        assert_eq!(lines[1], "-".repeat("events_per_s".len() + 20));
        assert_eq!(lines[2], format!("events_per_s  {:>16}", "1234.57"));
        assert_eq!(lines[3], format!("events        {:>16}", "10"));
        assert_eq!(r2(1.23456), 1.23);
    }
}
