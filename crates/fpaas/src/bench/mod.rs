//! `fpaas bench NAME`: benchmarks that print a readable table, or with `--json` one JSON object whose keys carry
//! their unit (`frames_per_s`, `events_per_s`, `p99_ms`, `rss_mb`, `ratio_vs_baseline`, …). A comparison runs
//! its baseline in the same run and reports the ratio.

mod decode;
mod ingest;
mod natsd;
mod record_kv;
mod storage;

use serde_json::{Map, Value};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    bench: Bench,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Bench {
    /// Frames/s and MB/s decoding (and normalizing) the corpus in a loop on one core.
    Decode(decode::Args),
    /// Events/s from relay-sim through the shuffler into nats-server, beside raw-publish and Python baselines.
    Ingest(ingest::Args),
    /// Bytes per firehose message in a nats-server file store, uncompressed vs S2 (storage-estimate's defaults).
    Storage(storage::Args),
    /// Record KV: records/s written, likes/s indexed, like-index queries/s, watch cost by key order, memory per record.
    RecordKv(record_kv::Args),
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
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            figures: Vec::new(),
        }
    }

    pub fn add(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.push((key.to_string(), value.into()));
    }

    fn print(&self, json: bool) {
        if json {
            let mut m = Map::new();
            m.insert("bench".into(), Value::String(self.name.into()));
            for (k, v) in &self.figures {
                m.insert(k.clone(), v.clone());
            }
            println!("{}", Value::Object(m));
            return;
        }
        let width = self.figures.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!("bench {}", self.name);
        println!("{:-<1$}", "", width + 20);
        for (k, v) in &self.figures {
            let shown = match v {
                Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            println!("{k:<width$}  {shown:>16}");
        }
    }
}

/// Round to two decimals for readable JSON.
pub fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = match args.bench {
        Bench::Decode(a) => tokio::task::spawn_blocking(move || decode::run(a)).await??,
        Bench::Ingest(a) => ingest::run(a).await?,
        Bench::Storage(a) => storage::run(a).await?,
        Bench::RecordKv(a) => record_kv::run(a).await?,
    };
    report.print(args.json);
    Ok(())
}
