//! What the subscription benches (`fanout`, `deliver`) share: a webhook receiver that records, per event, the
//! time from the event's `time_us` to its arrival, and fails on `/fail…` paths ([`Receiver`]); the worker as a child process of this binary
//! with its `/metrics` ([`WorkerChild`]); subscriptions written straight into the subscriptions bucket, as the
//! API stores them ([`put_subscriptions`]).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use fpaas_control::{Subscription, SubscriptionSpec, layout};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::{Context, Result, bail};
use crate::server::{peak_rss_bytes, rss_bytes, tail};

/// The tenant every bench subscription belongs to.
pub const TENANT: &str = "t_bench";

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// What the receiver counted.
#[derive(Debug, Default)]
pub struct Received {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Events in them.
    pub events: AtomicU64,
    /// Body bytes.
    pub bytes: AtomicU64,
    /// Requests to `/fail…` paths (answered 500 after [`FAIL_DELAY`], not counted above).
    pub failed: AtomicU64,
    /// Per event: arrival − `time_us`, in microseconds (only while recording).
    latencies_us: Mutex<Vec<i64>>,
    /// When the first and the last request arrived.
    span: Mutex<Option<(Instant, Instant)>>,
    recording: std::sync::atomic::AtomicBool,
}

impl Received {
    /// Starts or stops recording latencies.
    pub fn record(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    /// The latencies recorded so far in milliseconds, sorted; the record starts empty again.
    pub fn take_latencies_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .latencies_us
            .lock()
            .map(|mut l| l.drain(..).map(|us| us as f64 / 1000.0).collect())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Seconds from the first to the last request.
    pub fn span_s(&self) -> f64 {
        self.span
            .lock()
            .ok()
            .and_then(|s| *s)
            .map_or(0.0, |(a, b)| (b - a).as_secs_f64())
    }
}

/// The `q`-quantile (0..=1) of sorted values (0 when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A webhook receiver on 127.0.0.1 that answers 200 at once and counts what it got. It does not verify
/// signatures (the signature path is tested elsewhere; here it would only add the receiver's cost).
pub struct Receiver {
    /// Its address.
    pub addr: SocketAddr,
    /// What it counted.
    pub got: Arc<Received>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long a request to a `/fail…` path waits before its 500.
pub const FAIL_DELAY: Duration = Duration::from_millis(1500);

async fn receive(
    State(got): State<Arc<Received>>,
    uri: axum::http::Uri,
    body: Bytes,
) -> StatusCode {
    if uri.path().starts_with("/fail") {
        // A failing receiver: slow, then an error (the subscription times out and retries).
        got.failed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(FAIL_DELAY).await;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let at = Instant::now();
    let now = now_us();
    got.requests.fetch_add(1, Ordering::Relaxed);
    got.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    if let Ok(mut span) = got.span.lock() {
        *span = Some(span.map_or((at, at), |(first, _)| (first, at)));
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::OK;
    };
    let events = v["events"].as_array().map_or(&[][..], Vec::as_slice);
    got.events.fetch_add(events.len() as u64, Ordering::Relaxed);
    if got.recording.load(Ordering::Relaxed)
        && let Ok(mut l) = got.latencies_us.lock()
    {
        l.extend(
            events
                .iter()
                .filter_map(|e| e["time_us"].as_i64())
                .map(|t| now - t),
        );
    }
    StatusCode::OK
}

impl Receiver {
    /// Starts the receiver (every path is the same endpoint).
    ///
    /// # Errors
    /// When 127.0.0.1:0 cannot be bound.
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let got = Arc::new(Received::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(got.clone())
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        Ok(Self { addr, got, stop })
    }

    /// The URL of path `p` (e.g. `/s/12`).
    pub fn url(&self, p: &str) -> String {
        format!("http://{}{p}", self.addr)
    }
}

/// `fpaas worker` as a child of this binary, with its `/metrics` on a free port.
pub struct WorkerChild {
    child: tokio::process::Child,
    pid: u32,
    metrics: String,
    log: std::path::PathBuf,
    http: reqwest::Client,
}

impl WorkerChild {
    /// Starts a worker on `nats_url`, logging to `log`.
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub fn start(nats_url: &str, log: &std::path::Path) -> Result<Self> {
        let metrics = format!("127.0.0.1:{}", fpaas_testkit::free_port());
        Self::spawn(
            &[
                "worker",
                "--nats-url",
                nats_url,
                "--worker-id",
                "bench",
                "--metrics-listen",
                &metrics,
                "--allow-loopback",
            ],
            &[],
            metrics.clone(),
            log,
        )
    }

    /// Starts this binary with `args` (a subcommand and its flags, which put its ops server on `metrics`) and
    /// `env`, logging to `log`.
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub fn spawn(
        args: &[&str],
        env: &[(&str, String)],
        metrics: String,
        log: &std::path::Path,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the fpaas binary")?;
        let child = tokio::process::Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting a child process")?;
        let pid = child.id().context("child pid")?;
        Ok(Self {
            child,
            pid,
            metrics,
            log: log.to_path_buf(),
            http: reqwest::Client::new(),
        })
    }

    /// Its `/metrics` page (`None` until it answers).
    pub async fn page(&self) -> Option<String> {
        let r = self
            .http
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }

    /// The sum of metric `name` (0 when absent or unreachable).
    pub async fn metric(&self, name: &str) -> f64 {
        self.page()
            .await
            .map_or(0.0, |p| fpaas_testkit::prom_value(&p, name, ""))
    }

    /// Waits until `done(page)` holds, failing after `timeout` or when the worker exits.
    ///
    /// # Errors
    /// Timeout or an exited worker (with its log's tail).
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.page().await
                && done(&p)
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("worker exited ({status}):\n{}", tail(&self.log, 20));
            }
            if Instant::now() > deadline {
                bail!("worker: {what} not reached in {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory now, bytes.
    pub fn rss(&self) -> Option<u64> {
        rss_bytes(self.pid)
    }

    /// Peak resident memory, bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        peak_rss_bytes(self.pid)
    }
}

/// Writes subscriptions `(id, spec)` of [`TENANT`] into the subscriptions bucket, as the API stores them.
///
/// # Errors
/// A spec that does not parse, or NATS refusing.
pub async fn put_subscriptions(
    client: &fpaas_bus::Client,
    specs: impl IntoIterator<Item = (String, Value)>,
) -> Result<()> {
    let subs = fpaas_bus::ensure_kv_on(client, &fpaas_bus::KvSettings::bucket(layout::SUBS_BUCKET))
        .await?;
    for (id, spec) in specs {
        let spec: SubscriptionSpec =
            serde_json::from_value(spec).context("a bench subscription spec")?;
        let sub = Subscription::from_spec(id.clone(), TENANT.into(), spec);
        let bytes = serde_json::to_vec(&sub).context("encoding a subscription")?;
        subs.put(&layout::sub_key(TENANT, &id), bytes.into())
            .await?;
    }
    Ok(())
}
