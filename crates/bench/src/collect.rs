//! `fpaas bench collect`: the collector stage on one core — like events (`app.bsky.feed.like`) grouped by the
//! liked post (`--keys` distinct posts, 100,000 by default) in 60 s tumbling windows counting likes and distinct
//! likers, exactly as the worker runs it (each event's JSON parsed once, key and fields by JMESPath). Beside it
//! the baseline in the same run: parsing the same events alone (`ratio_vs_baseline` = collect ÷ parse). Then what
//! a checkpoint costs at that size (the saved windows' bytes and serialize time), and the state write rate: the
//! emitted windows written through the worker's `kv` delivery path (planned per batch of `--batch`, one put per
//! key with its dedup id) into a state bucket on a real nats-server (`state_writes_per_s`).

use std::time::{Duration, Instant};

use fpaas_pipeline::collect::{Collector, Output};

use crate::error::{Context, Result, ensure};
use crate::server::{NatsServerFlag, peak_rss_bytes, start_nats};
use crate::{Report, r2};

// `fpaas bench collect`'s flags (doc comments here would become clap help).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Events aggregated.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Distinct group keys (liked posts).
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Window outputs written to a state bucket for the state rate (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    state_writes: usize,
    /// Outputs per delivered batch (the subscription's `max_events`).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    #[command(flatten)]
    nats: NatsServerFlag,
}

/// Event time of the first event (µs), aligned to a minute.
const T0_US: i64 = 1_790_000_040_000_000;

/// The collector: per liked post per minute, likes and distinct likers.
fn spec() -> serde_json::Value {
    serde_json::json!({
        "key": "commit.record.subject.uri",
        "window": {"type": "tumbling", "size_s": 60, "lateness_s": 5},
        "aggregations": {"likes": {"op": "count"}, "likers": {"op": "distinct", "field": "did"}}
    })
}

/// `n` distinct like events as the firehose stream holds them (Jetstream JSON), posts and likers drawn by a
/// fixed-seed generator (skewed: a few posts get most likes; all `keys` appear in the first `keys` events).
fn events(n: usize, keys: usize) -> Vec<(Vec<u8>, i64)> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t0 = T0_US;
    (0..n)
        .map(|i| {
            // Every key once in the first `keys` events, then skewed toward low numbers.
            let post = if i < keys {
                i
            } else {
                let r = (next() % 1_000_000) as f64 / 1_000_000.0;
                ((r * r * r) * keys as f64) as usize % keys
            };
            let liker = next() % 200_000;
            let json = serde_json::json!({
                "did": format!("did:plc:liker{liker:07}"),
                "time_us": t0 + i as i64 * 2_000,
                "kind": "commit",
                "commit": {
                    "rev": "3lbyfwjywgk2c", "operation": "create", "collection": "app.bsky.feed.like",
                    "rkey": format!("3lby{i:09}"),
                    "record": {"$type": "app.bsky.feed.like", "createdAt": "2026-09-21T14:13:35.000Z",
                        "subject": {"cid": "bafyreigwlk3kbvkgdz4hfskbtrh7yc2bz4lrhuj7x3qqdpgbzxlf3k4j4e",
                                    "uri": format!("at://did:plc:author{:05}/app.bsky.feed.post/3lbpost{post:07}", post % 50_000)}},
                    "cid": "bafyreigwlk3kbvkgdz4hfskbtrh7yc2bz4lrhuj7x3qqdpgbzxlf3k4j4e"
                }
            });
            (serde_json::to_vec(&json).unwrap_or_default(), t0 + i as i64 * 100)
        })
        .collect()
}

/// Runs the bench.
///
/// # Errors
/// When nats-server cannot be started or a KV write fails.
pub async fn run(args: &Args) -> Result<Report> {
    ensure!(
        args.events > 0 && args.keys > 0,
        "--events and --keys must be > 0"
    );
    // A pool of distinct events (at least every key once), fed round and round with event times 0.1 ms apart:
    // 600,000 events per 60 s window, so every key is open in each window. The pool is generated before the
    // baseline RSS is read, so `collector_mb` is what the collector itself holds at its peak.
    let pool = args.events.min(args.keys.max(200_000));
    let evs = events(pool, args.keys);
    let feed = |i: usize| (&evs[i % pool].0, T0_US + i as i64 * 100);
    let rss_before = crate::server::rss_bytes(std::process::id()).unwrap_or(0);
    let spec: fpaas_control::collect::Collect =
        serde_json::from_value(spec()).context("collector spec")?;

    // Baseline: parsing alone (what every collecting event costs before the collector).
    let started = Instant::now();
    for i in 0..args.events {
        std::hint::black_box(fpaas_filter::Data::from_json_bytes(feed(i).0).ok());
    }
    let parse_s = started.elapsed().as_secs_f64();

    let mut collector = Collector::new(&spec).context("collector")?;
    let mut outputs: Vec<Output> = Vec::new();
    let mut peak_groups = 0usize;
    let started = Instant::now();
    for i in 0..args.events {
        let (bytes, time_us) = feed(i);
        if let Ok(data) = fpaas_filter::Data::from_json_bytes(bytes) {
            collector.add(&data, time_us, &mut outputs);
        }
        if i % 4_096 == 0 {
            peak_groups = peak_groups.max(collector.open_groups());
        }
    }
    let collect_s = started.elapsed().as_secs_f64();
    let rss_after = crate::server::rss_bytes(std::process::id()).unwrap_or(0);
    peak_groups = peak_groups.max(collector.open_groups());
    // A checkpoint of the open windows at their largest.
    let started = Instant::now();
    let snapshot = serde_json::to_vec(&collector.state).context("snapshot")?;
    let snapshot_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut closing = Vec::new();
    collector.idle(i64::MAX / 4, &mut closing);
    let windows_emitted = outputs.len() + closing.len();
    outputs.extend(closing);
    let rss = peak_rss_bytes(std::process::id()).unwrap_or(0);

    let mut r = Report::new("collect");
    r.add("events", args.events as u64);
    r.add("distinct_keys", args.keys as u64);
    r.add("events_per_s", r2(args.events as f64 / collect_s));
    r.add("parse_only_events_per_s", r2(args.events as f64 / parse_s));
    r.add("ratio_vs_baseline", r2(parse_s / collect_s));
    r.add("open_groups_peak", peak_groups as u64);
    r.add("windows_emitted", windows_emitted as u64);
    r.add("snapshot_mb", r2(snapshot.len() as f64 / 1e6));
    r.add("snapshot_serialize_ms", r2(snapshot_ms));
    r.add("rss_mb", r2(rss as f64 / 1e6));
    r.add(
        "collector_mb",
        r2(rss_after.saturating_sub(rss_before) as f64 / 1e6),
    );

    if args.state_writes > 0 {
        let server = start_nats(&args.nats.binary()).await?;
        let client = fpaas_bus::connect(&server.url(), "fpaas-bench-collect")
            .await
            .context("connect")?;
        // Exactly the worker's path: a `kv` delivery putting each window's count under `<window start>/<post>`,
        // planned per batch (one write per key) and written with ids `<batch id>:<key>`.
        let delivery: fpaas_control::KvDelivery = serde_json::from_value(serde_json::json!({
            "bucket": "bench", "op": "put", "key": "join('/', [window.start, key])", "value": "likes"
        }))
        .context("kv delivery")?;
        let target =
            fpaas_pipeline::state::KvTarget::new("t_bench", &delivery).context("kv target")?;
        let js = fpaas_bus::jetstream(client.clone(), 256);
        let bucket = fpaas_bus::StateBucket::ensure(
            &js,
            &target.kv_bucket,
            fpaas_bus::StateKind::Values,
            1,
            fpaas_bus::Storage::File,
        )
        .await
        .context("state bucket")?;
        let data: Vec<&[u8]> = outputs
            .iter()
            .take(args.state_writes)
            .map(|o| o.data.as_slice())
            .collect();
        let started = Instant::now();
        let mut written = 0u64;
        for (n, batch) in data.chunks(args.batch.max(1)).enumerate() {
            let plan =
                fpaas_pipeline::state::plan(&target, &format!("bench.o{n}"), batch.iter().copied());
            let report = fpaas_pipeline::state::write(&bucket, delivery.op, &plan)
                .await
                .context("state write")?;
            written += report.written;
        }
        let write_s = started.elapsed().as_secs_f64().max(1e-9);
        ensure!(written > 0, "no state writes");
        r.add("state_writes", written);
        r.add("state_writes_per_s", r2(written as f64 / write_s));
        r.add(
            "nats_rss_mb",
            r2(server.pid().and_then(crate::server::rss_bytes).unwrap_or(0) as f64 / 1e6),
        );
        drop(server);
    }
    std::hint::black_box(Duration::ZERO);
    Ok(r)
}
