//! `fpaas bench record-kv`: starts a throwaway nats-server (JetStream in a temp dir, loopback only), publishes a
//! firehose-shaped mix, and reports records/s written by the record KV builder, likes/s indexed, like-index
//! queries/s, the initial-read time of the common watches under both key orders, and server memory per record
//! (while writing and at rest after a restart). The logic lives in `fpaas_recordkv::bench`.

use std::path::PathBuf;

use fpaas_recordkv::bench::{BenchOptions, fill_bucket, run as run_bench};

use super::natsd::{NatsChild, find_path};
use super::{Report, r2};

#[derive(clap::Args, Debug)]
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
    /// nats-server binary.
    #[arg(
        long,
        default_value = ".tools/venv/bin/nats-server",
        env = "FPAAS_NATS_SERVER"
    )]
    nats_server: PathBuf,
}

pub async fn run(a: Args) -> anyhow::Result<Report> {
    let mut report = Report::new("record-kv");
    let bin = find_path(&a.nats_server);
    {
        let server = NatsChild::start(&bin, "bench-record-kv").await?;
        let client = async_nats::connect(server.url()).await?;
        let options = BenchOptions {
            records: a.records,
            queries: a.queries,
            layout_keys: a.layout_keys,
            ..Default::default()
        };
        let figures = run_bench(&client, &options).await?;
        for (key, value) in figures.figures {
            report.add(&key, r2(value));
        }
    }
    if a.mem_records > 0 {
        // A fresh server: restart it empty, fill a bucket, read RSS, restart, read RSS again.
        let mut server = NatsChild::start(&bin, "bench-record-kv-mem").await?;
        let client = async_nats::connect(server.url()).await?;
        fill_bucket(&client, "empty", 1, 450).await?;
        drop(client);
        server.restart().await?;
        let empty = server.rss_bytes().unwrap_or(0);
        let client = async_nats::connect(server.url()).await?;
        fill_bucket(&client, "mem", a.mem_records, 450).await?;
        let writing = server.rss_bytes().unwrap_or(0);
        drop(client);
        server.restart().await?;
        let rest = server.rss_bytes().unwrap_or(0);
        let per = |rss: u64| r2(rss.saturating_sub(empty) as f64 / a.mem_records as f64);
        report.add("mem_records", a.mem_records as u64);
        report.add("server_rss_bytes_per_record_while_writing", per(writing));
        report.add("server_rss_bytes_per_record_at_rest", per(rest));
        report.add("server_rss_mb_per_million_records_at_rest", per(rest));
    }
    Ok(report)
}
