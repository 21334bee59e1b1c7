//! `fpaas bench record-kv`: starts a throwaway nats-server (through `fpaas-testkit`), publishes a
//! firehose-shaped mix, and reports records/s written by the record KV builder, likes/s indexed, like-index
//! queries/s, the initial-read time of the common watches under both key orders ([`workload`]), and server
//! memory per record (while writing and at rest after a restart).

pub mod workload;

use workload::{BenchOptions, fill_bucket, run as run_workload};

use crate::error::{Context, Result};
use crate::server::{NatsServerFlag, restart_nats, rss_bytes, start_nats};
use crate::{Report, r2};

// `fpaas bench record-kv`'s flags (doc comments here would become clap help).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Events published and applied by the builder (firehose mix: 69% likes).
    #[arg(long, default_value_t = 50_000)]
    records: usize,
    /// Like-index queries per query kind.
    #[arg(long, default_value_t = 1_000)]
    queries: usize,
    /// Keys per key-order layout.
    #[arg(long, default_value_t = 100_000)]
    layout_keys: usize,
    /// Records written for the memory-per-record measurement (0 skips it).
    #[arg(long, default_value_t = 200_000)]
    mem_records: usize,
    #[command(flatten)]
    nats: NatsServerFlag,
}

/// Runs the bench: the workload on one server, then the memory measurement on a fresh one.
///
/// # Errors
/// A missing tool, a nats-server failure, or a failure of the builder, indexer or queries measured.
pub async fn run(a: &Args) -> Result<Report> {
    let mut report = Report::new("record-kv");
    let bin = a.nats.binary();
    {
        let server = start_nats(&bin).await?;
        let client = async_nats::connect(server.url()).await.context("connect")?;
        let options = BenchOptions {
            records: a.records,
            queries: a.queries,
            layout_keys: a.layout_keys,
            ..Default::default()
        };
        let figures = run_workload(&client, &options).await?;
        for (key, value) in figures.figures {
            report.add(&key, r2(value));
        }
    }
    if a.mem_records > 0 {
        // A fresh server: restart it empty, fill a bucket, read RSS, restart, read RSS again.
        let server = start_nats(&bin).await?;
        let server_rss =
            |server: &fpaas_testkit::NatsServer| server.pid().and_then(rss_bytes).unwrap_or(0);
        let client = async_nats::connect(server.url()).await.context("connect")?;
        fill_bucket(&client, "empty", 1, 450).await?;
        drop(client);
        let server = restart_nats(server).await?;
        let empty = server_rss(&server);
        let client = async_nats::connect(server.url()).await.context("connect")?;
        fill_bucket(&client, "mem", a.mem_records, 450).await?;
        let writing = server_rss(&server);
        drop(client);
        let server = restart_nats(server).await?;
        let rest = server_rss(&server);
        let per = |rss: u64| r2(rss.saturating_sub(empty) as f64 / a.mem_records as f64);
        report.add("mem_records", a.mem_records as u64);
        report.add("server_rss_bytes_per_record_while_writing", per(writing));
        report.add("server_rss_bytes_per_record_at_rest", per(rest));
        report.add("server_rss_mb_per_million_records_at_rest", per(rest));
    }
    Ok(report)
}
