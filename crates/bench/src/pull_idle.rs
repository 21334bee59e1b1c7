//! `fpaas bench pull-idle [--subscriptions N]`: what N idle `pull` subscriptions cost the server while their
//! clients poll them, each once per `--poll-interval-secs` (issue 10: thousands of pull subscriptions polling
//! once a minute must cost almost nothing while idle).
//!
//! Shape: nats-server (testkit, one node); `fpaas serve` and `fpaas worker` as child processes of this binary;
//! a quiet firehose stream (nothing to deliver: "idle"). Three windows of `--window-secs` each, in the same
//! run, measuring the CPU (user + system, from `/proc/<pid>/stat`) and resident memory of the nats-server, the
//! worker and the API:
//!
//! 1. **baseline**: no subscription;
//! 2. **idle**: N pull subscriptions written into the subscriptions bucket as the API stores them (creating
//!    them through HTTP would measure the API) and running in the worker, nobody polling;
//! 3. **polling**: the same, with a poller issuing `POST /v1/subscriptions/{id}/pull` (`max_wait_ms` 0) for
//!    every subscription once per `--poll-interval-secs`, evenly spread (N / interval pulls a second), through
//!    HTTP with the tenant's key; pull latency is recorded.
//!
//! Keys carry their unit: `*_cpu_percent` (of one core, over the window), `*_rss_mb`, `*_kb_per_subscription`
//! (RSS after the idle window minus baseline, over N).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fpaas_control::{Subscription, SubscriptionSpec, layout};
use serde_json::{Value, json};

use crate::error::{Context, Result, bail};
use crate::server::{NatsServerFlag, cpu_s, rss_bytes, start_nats, tail};
use crate::subs::{WorkerChild, quantile};
use crate::{Report, r2};

// `fpaas bench pull-idle`'s flags (doc comments here would become clap help).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Pull subscriptions.
    #[arg(long, default_value_t = 5_000)]
    subscriptions: usize,
    /// Every subscription is pulled once per this many seconds.
    #[arg(long, default_value_t = 60)]
    poll_interval_secs: u64,
    /// Seconds of each measured window (baseline, idle, polling).
    #[arg(long, default_value_t = 60)]
    window_secs: u64,
    /// Seconds to settle before each window.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    #[command(flatten)]
    nats: NatsServerFlag,
}

const ADMIN: &str = "bench-pull-idle-admin-token";

/// One window's figures per process: (cpu percent of a core, rss at the end in bytes).
struct Window {
    cpu_percent: [f64; 3],
    rss: [u64; 3],
}

/// Measures the processes `pids` (nats, worker, api) over `secs` seconds while `during` runs.
async fn window<F: Future<Output = ()>>(pids: [u32; 3], secs: u64, during: F) -> Window {
    let before = pids.map(|p| cpu_s(p).unwrap_or(0.0));
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(secs), during).await;
    let rest = Duration::from_secs(secs).saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    let span = started.elapsed().as_secs_f64();
    let mut cpu_percent = [0.0; 3];
    for (i, p) in pids.iter().enumerate() {
        cpu_percent[i] = 100.0 * (cpu_s(*p).unwrap_or(0.0) - before[i]) / span.max(1e-9);
    }
    Window {
        cpu_percent,
        rss: pids.map(|p| rss_bytes(p).unwrap_or(0)),
    }
}

/// `fpaas serve` as a child of this binary.
struct ApiChild {
    child: tokio::process::Child,
    pid: u32,
    base: String,
    log: std::path::PathBuf,
}

impl ApiChild {
    fn start(nats_url: &str, log: &std::path::Path) -> Result<Self> {
        let listen = format!("127.0.0.1:{}", fpaas_testkit::free_port());
        let exe = std::env::current_exe().context("locating the fpaas binary")?;
        let child = tokio::process::Command::new(exe)
            .arg("serve")
            .args(["--listen", &listen])
            .args(["--nats-url", nats_url])
            .args(["--metrics-listen", "none"])
            .env("FPAAS_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting the API child")?;
        let pid = child.id().context("api pid")?;
        Ok(Self {
            child,
            pid,
            base: format!("http://{listen}"),
            log: log.to_path_buf(),
        })
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/openapi.json", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("api exited ({status}):\n{}", tail(&self.log, 20));
            }
            if Instant::now() > deadline {
                bail!("api not ready in 60 s:\n{}", tail(&self.log, 20));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the poller counted.
#[derive(Default)]
struct Polled {
    ok: AtomicU64,
    errors: AtomicU64,
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

/// Pulls every subscription once per `interval`, evenly spread, until dropped (at most 256 pulls in flight).
async fn poll_all(
    http: reqwest::Client,
    base: String,
    token: String,
    ids: Arc<Vec<String>>,
    interval: Duration,
    polled: Arc<Polled>,
) {
    let gap = interval.div_f64(ids.len().max(1) as f64);
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0.. {
        tick.tick().await;
        let id = &ids[i % ids.len()];
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (http, url, token, polled) = (
            http.clone(),
            format!("{base}/v1/subscriptions/{id}/pull"),
            token.clone(),
            polled.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"max_wait_ms": 0}))
                .send()
                .await;
            let ok = match r {
                Ok(r) if r.status().is_success() => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["batches"].as_array().is_some_and(Vec::is_empty)),
                _ => false,
            };
            if ok {
                polled.ok.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = polled.latencies_us.lock() {
                    l.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
            } else {
                polled.errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}

/// Runs the bench.
///
/// # Errors
/// A missing tool, a server or child failure, a worker that does not take its subscriptions.
pub async fn run(args: &Args) -> Result<Report> {
    let n = args.subscriptions.max(1);
    let nats = start_nats(&args.nats.binary()).await?;
    let nats_pid = nats.pid().context("nats-server pid")?;
    let client = fpaas_bus::connect(&nats.url(), "fpaas-bench-pull-idle").await?;
    let js = fpaas_bus::jetstream(client.clone(), 256);
    fpaas_bus::ensure_stream(&js, &fpaas_bus::StreamSettings::default()).await?;
    let http = reqwest::Client::new();
    let mut api = ApiChild::start(&nats.url(), &nats.scratch_dir().join("api.log"))?;
    api.wait_ready(&http).await?;
    let created: Value = http
        .post(format!("{}/v1/tenants", api.base))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "bench", "quotas": {"max_subscriptions": 1_000_000}}))
        .send()
        .await
        .context("creating the bench tenant")?
        .json()
        .await
        .context("the created tenant's answer")?;
    let tenant = created["tenant"]["id"]
        .as_str()
        .context("the created tenant")?
        .to_owned();
    let token = created["token"]
        .as_str()
        .context("the tenant's token")?
        .to_owned();
    let mut worker = WorkerChild::start(&nats.url(), &nats.scratch_dir().join("worker.log"))?;
    worker
        .wait("all partitions", Duration::from_secs(60), |p| {
            fpaas_testkit::prom_value(p, "fpaas_pipeline_partitions_owned", "") >= 32.0
        })
        .await?;
    let pids = [nats_pid, worker.pid(), api.pid];

    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let base = window(pids, args.window_secs, std::future::pending()).await;

    // N pull subscriptions, as the API stores them.
    let subs =
        fpaas_bus::ensure_kv_on(&client, &fpaas_bus::KvSettings::bucket(layout::SUBS_BUCKET))
            .await?;
    let spec: SubscriptionSpec = serde_json::from_value(json!({
        "batching": {"max_events": 100, "max_wait_ms": 1000},
        "start": {"at": "live"},
        "delivery": {"type": "pull"}
    }))
    .context("the bench's pull spec")?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let sub = Subscription::from_spec(
            fpaas_control::ids::new_sub_id(),
            tenant.clone(),
            spec.clone(),
        );
        let bytes = serde_json::to_vec(&sub).context("encoding a subscription")?;
        subs.put(&layout::sub_key(&tenant, &sub.id), bytes.into())
            .await?;
        ids.push(sub.id);
    }
    worker
        .wait(
            "every subscription live",
            Duration::from_secs(60 + n as u64 / 50),
            |p| fpaas_testkit::prom_value(p, "fpaas_pipeline_subscriptions_live", "") >= n as f64,
        )
        .await?;
    let startup_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let idle = window(pids, args.window_secs, std::future::pending()).await;

    let polled = Arc::new(Polled::default());
    let ids = Arc::new(ids);
    let polling = window(
        pids,
        args.window_secs,
        poll_all(
            http.clone(),
            api.base.clone(),
            token.clone(),
            ids.clone(),
            Duration::from_secs(args.poll_interval_secs.max(1)),
            polled.clone(),
        ),
    )
    .await;
    // Pulls still in flight finish within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut lat: Vec<f64> = polled
        .latencies_us
        .lock()
        .map(|l| l.iter().map(|us| *us as f64 / 1000.0).collect())
        .unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let live = worker.metric("fpaas_pipeline_subscriptions_live").await;

    let mut report = Report::new("pull-idle");
    report.add("subscriptions", n as u64);
    report.add("window_s", args.window_secs);
    report.add("poll_interval_s", args.poll_interval_secs);
    for (phase, w) in [("baseline", &base), ("idle", &idle), ("polling", &polling)] {
        for (i, who) in ["nats", "worker", "api"].iter().enumerate() {
            report.add(&format!("{phase}_{who}_cpu_percent"), r2(w.cpu_percent[i]));
            report.add(&format!("{phase}_{who}_rss_mb"), r2(w.rss[i] as f64 / 1e6));
        }
    }
    let per_sub = |i: usize| r2(idle.rss[i].saturating_sub(base.rss[i]) as f64 / 1024.0 / n as f64);
    report.add("nats_kb_per_subscription", per_sub(0));
    report.add("worker_kb_per_subscription", per_sub(1));
    let ok = polled.ok.load(Ordering::Relaxed);
    report.add("polls", ok);
    report.add(
        "polls_per_s",
        r2(ok as f64 / args.window_secs.max(1) as f64),
    );
    report.add("poll_errors", polled.errors.load(Ordering::Relaxed));
    report.add("poll_p50_ms", r2(quantile(&lat, 0.5)));
    report.add("poll_p99_ms", r2(quantile(&lat, 0.99)));
    report.add("subscriptions_live_end", live as u64);
    report.add("startup_s", r2(startup_s));
    drop(worker);
    drop(api);
    let _ = client.drain().await;
    Ok(report)
}
