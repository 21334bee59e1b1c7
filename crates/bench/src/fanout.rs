//! `fpaas bench fanout [--subscriptions N]`: one worker serving N subscriptions with mixed filters while the
//! firehose flows at a steady rate, latency from the relay frame to the webhook's receipt.
//!
//! Shape: nats-server (testkit); relay-sim in process, generating live at `--rate` events/s with event times on
//! the wall clock (so an event's `time_us` is when its frame was made); `fpaas shuffler` and `fpaas worker` as
//! child processes of this binary; one in-process receiver that answers 200 at once and, for every event in
//! every batch, records arrival − `time_us`. The subscriptions are written into the subscriptions bucket as the
//! API stores them (creating 10,000 through HTTP would measure the API). Their filters, by index:
//!
//! | share | filter |
//! |---|---|
//! | 50 % | 5 DIDs (a user's own feed of events) |
//! | 25 % | one collection or NSID prefix and 20 DIDs |
//! | 20 % | `app.bsky.graph.*`, 10 DIDs and the predicate `commit.operation == 'create'` |
//! | 5 % | `app.bsky.feed.post` and the predicate `starts_with(did, 'did:plc:<2 characters>')` (~1/1,024 of posters) |
//!
//! The DIDs come from the simulator's population (`--repos`); batching is `max_events` 100, `max_wait_ms`
//! `--max-wait-ms`. Memory per idle subscription is the worker's RSS with every subscription running and the
//! stream quiet, minus its RSS before they were created, over N. Latencies are recorded after a warm-up of
//! `--warmup-secs`, until every matched event was delivered.
//!
//! With `--failing K`, K more subscriptions are added halfway through the feed: everything matched, delivered to
//! a receiver that answers 500 after 1.5 s (past their 1 s timeout), retried and dead-lettered. The healthy
//! subscriptions' latency before them (the baseline, `p99_ms`) and with them (`with_failing_p99_ms`) are
//! reported with their ratio.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::error::{Result, bail};
use crate::server::{NatsServerFlag, cpu_s, live_feed, start_nats, tail, wait_for_messages};
use crate::subs::{Receiver, WorkerChild, put_subscriptions, quantile};
use crate::{Report, r2};

// `fpaas bench fanout`'s flags (doc comments here would become clap help).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Subscriptions the worker serves.
    #[arg(long, default_value_t = 1_000)]
    subscriptions: usize,
    /// Relay events per second.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Seconds of firehose.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds at the start whose latencies are not recorded.
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Simulated accounts (the DID population).
    #[arg(long, default_value_t = 50_000)]
    repos: usize,
    /// `batching.max_wait_ms` of every subscription.
    #[arg(long, default_value_t = 20)]
    max_wait_ms: u64,
    /// Subscriptions to a failing receiver (everything matched; answers 500 after 1.5 s, past their 1 s
    /// timeout), added halfway: the others' latency before and after is compared.
    #[arg(long, default_value_t = 0)]
    failing: usize,
    /// Seconds the worker idles with every subscription running before its memory is read.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    /// Seed of the simulator and of the filters.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[command(flatten)]
    nats: NatsServerFlag,
}

/// The spec of subscription `i`.
fn spec(i: usize, rng: &mut StdRng, dids: &[String], url: &str, max_wait_ms: u64) -> Value {
    let mut pick = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| dids[rng.random_range(0..dids.len())].clone())
            .collect()
    };
    let filter = match i % 20 {
        0..=9 => json!({"dids": pick(5)}),
        10..=14 => {
            let c = [
                "app.bsky.feed.like",
                "app.bsky.feed.post",
                "app.bsky.graph.follow",
                "app.bsky.feed.*",
            ][i % 4];
            json!({"collections": [c], "dids": pick(20)})
        }
        15..=18 => json!({"collections": ["app.bsky.graph.*"], "dids": pick(10),
                          "predicate": "commit.operation == 'create'"}),
        _ => {
            const B32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
            let a = B32[i % 32] as char;
            let b = B32[(i / 32) % 32] as char;
            json!({"collections": ["app.bsky.feed.post"],
                   "predicate": format!("starts_with(did, 'did:plc:{a}{b}')")})
        }
    };
    json!({
        "filter": filter,
        "batching": {"max_events": 100, "max_wait_ms": max_wait_ms},
        "start": {"at": "live"},
        "delivery": {"type": "webhook", "url": url, "timeout_ms": 5000,
                     "retry": {"schedule_ms": [100, 500, 1000]}}
    })
}

/// Runs the bench.
///
/// # Errors
/// A missing tool, a server or child failure, a worker that does not take its subscriptions.
pub async fn run(args: &Args) -> Result<Report> {
    let n = args.subscriptions.max(1);
    let nats = start_nats(&args.nats.binary()).await?;
    let client = fpaas_bus::connect(&nats.url(), "fpaas-bench-fanout").await?;
    let js = fpaas_bus::jetstream(client.clone(), 256);
    fpaas_bus::ensure_stream(&js, &fpaas_bus::StreamSettings::default()).await?;
    let receiver = Receiver::start().await?;
    let mut worker = WorkerChild::start(&nats.url(), &nats.scratch_dir().join("worker.log"))?;
    worker
        .wait("all partitions", Duration::from_secs(60), |p| {
            fpaas_testkit::prom_value(p, "fpaas_pipeline_partitions_owned", "") >= 32.0
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = worker.rss().unwrap_or(0);

    // The subscriptions, over the simulator's DIDs.
    let dids = fpaas_sim::Generator::new(args.seed, args.repos, 1, Default::default()).dids();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let url = receiver.url("/hook");
    let specs: Vec<(String, Value)> = (0..n)
        .map(|i| {
            (
                format!("s_bench{i:06}"),
                spec(i, &mut rng, &dids, &url, args.max_wait_ms),
            )
        })
        .collect();
    drop(dids);
    let created = Instant::now();
    put_subscriptions(&client, specs).await?;
    worker
        .wait(
            "every subscription live",
            Duration::from_secs(60 + n as u64 / 50),
            |p| fpaas_testkit::prom_value(p, "fpaas_pipeline_subscriptions_live", "") >= n as f64,
        )
        .await?;
    let startup_s = created.elapsed().as_secs_f64();
    // Memory once the start-up garbage is returned (sampled every second, the lowest of the last five).
    let mut samples = Vec::new();
    for _ in 0..args.settle_secs.max(1) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(worker.rss().unwrap_or(0));
    }
    let rss_idle = samples.iter().rev().take(5).copied().min().unwrap_or(0);
    let cpu_before = cpu_s(worker_pid(&worker)).unwrap_or(0.0);

    // The firehose: relay-sim → shuffler.
    let total = (args.rate * args.seconds as f64) as u64;
    let log_path = nats.scratch_dir().join("shuffler.log");
    let (sim, mut shuffler) = live_feed(
        &nats.url(),
        &log_path,
        args.seed,
        args.rate,
        total,
        args.repos,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    receiver.got.record(true);
    let mut baseline: Option<Vec<f64>> = None;
    if args.failing > 0 {
        let half =
            Duration::from_secs_f64((args.seconds as f64 / 2.0 - args.warmup_secs as f64).max(1.0));
        tokio::time::sleep(half).await;
        baseline = Some(receiver.got.take_latencies_ms());
        let failing = (0..args.failing).map(|i| {
            (
                format!("s_failing{i:04}"),
                json!({
                    "batching": {"max_events": 100, "max_wait_ms": args.max_wait_ms},
                    "start": {"at": "live"},
                    "delivery": {"type": "webhook", "url": receiver.url(&format!("/fail/{i}")),
                                 "timeout_ms": 1000, "retry": {"schedule_ms": [200, 400, 800]}}
                }),
            )
        });
        put_subscriptions(&client, failing).await?;
    }
    let fed = wait_for_messages(
        &js,
        "FIREHOSE",
        None,
        Duration::from_secs(2),
        Duration::from_secs(args.seconds * 3 + 60),
        || match shuffler.try_wait() {
            Ok(Some(status)) => bail!("shuffler exited early ({status}):\n{}", tail(&log_path, 20)),
            _ => Ok(()),
        },
    )
    .await?;
    // Until every matched event was delivered (the failing subscriptions aside).
    let failing_n = args.failing;
    let mut last = (0.0, Instant::now());
    worker
        .wait("every match delivered", Duration::from_secs(120), |p| {
            let healthy = |name: &str| {
                fpaas_testkit::prom_value(p, name, "")
                    - (0..failing_n)
                        .map(|i| {
                            fpaas_testkit::prom_value(
                                p,
                                name,
                                &format!("subscription=\"s_failing{i:04}\""),
                            )
                        })
                        .sum::<f64>()
            };
            let matched = healthy("fpaas_pipeline_matched_events_total");
            let delivered = healthy("fpaas_pipeline_delivered_events_total");
            if delivered != last.0 {
                last = (delivered, Instant::now());
            }
            delivered >= matched && last.1.elapsed() > Duration::from_millis(500)
        })
        .await?;
    receiver.got.record(false);
    let cpu = cpu_s(worker_pid(&worker)).unwrap_or(0.0) - cpu_before;
    let page = worker.page().await.unwrap_or_default();
    let metric = |name: &str| fpaas_testkit::prom_value(&page, name, "");
    let lat = receiver.got.take_latencies_ms();
    let _ = shuffler.start_kill();
    let _ = shuffler.wait().await;
    let _ = sim.shutdown().await;

    let mut report = Report::new("fanout");
    report.add("subscriptions", n as u64);
    report.add("events", fed.messages);
    report.add("events_per_s", r2(fed.rate()));
    report.add(
        "matched_events",
        metric("fpaas_pipeline_matched_events_total") as u64,
    );
    report.add(
        "delivered_events",
        metric("fpaas_pipeline_delivered_events_total") as u64,
    );
    report.add(
        "delivered_batches",
        metric("fpaas_pipeline_delivered_batches_total") as u64,
    );
    report.add(
        "deliveries_per_s",
        r2(metric("fpaas_pipeline_delivered_batches_total") / fed.span_s.max(1e-9)),
    );
    match &baseline {
        None => {
            report.add("latency_samples", lat.len() as u64);
            report.add("p50_ms", r2(quantile(&lat, 0.5)));
            report.add("p90_ms", r2(quantile(&lat, 0.9)));
            report.add("p99_ms", r2(quantile(&lat, 0.99)));
            report.add("max_ms", r2(quantile(&lat, 1.0)));
        }
        Some(base) => {
            // Before the failing subscriptions (the baseline) and with them, in the same run.
            report.add("latency_samples", base.len() as u64);
            report.add("p50_ms", r2(quantile(base, 0.5)));
            report.add("p99_ms", r2(quantile(base, 0.99)));
            report.add("max_ms", r2(quantile(base, 1.0)));
            report.add("failing_subscriptions", args.failing as u64);
            report.add("with_failing_latency_samples", lat.len() as u64);
            report.add("with_failing_p50_ms", r2(quantile(&lat, 0.5)));
            report.add("with_failing_p99_ms", r2(quantile(&lat, 0.99)));
            report.add("with_failing_max_ms", r2(quantile(&lat, 1.0)));
            report.add(
                "ratio_vs_baseline",
                r2(quantile(&lat, 0.99) / quantile(base, 0.99).max(1e-9)),
            );
            report.add(
                "failing_requests",
                receiver
                    .got
                    .failed
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            report.add(
                "failed_attempts",
                metric("fpaas_pipeline_failed_attempts_total") as u64,
            );
        }
    }
    report.add(
        "fell_behind",
        metric("fpaas_pipeline_fell_behind_total") as u64,
    );
    report.add(
        "subscriptions_live_end",
        metric("fpaas_pipeline_subscriptions_live") as u64,
    );
    report.add("rss_mb", r2(worker.peak_rss().unwrap_or(0) as f64 / 1e6));
    report.add("idle_rss_mb", r2(rss_idle as f64 / 1e6));
    report.add(
        "kb_per_subscription",
        r2(rss_idle.saturating_sub(rss_before) as f64 / 1024.0 / n as f64),
    );
    report.add("worker_cpu_percent", r2(100.0 * cpu / fed.span_s.max(1e-9)));
    report.add("startup_s", r2(startup_s));
    report.add("batch_max_wait_ms", args.max_wait_ms);
    drop(worker);
    let _ = client.drain().await;
    Ok(report)
}

fn worker_pid(w: &WorkerChild) -> u32 {
    w.pid()
}
