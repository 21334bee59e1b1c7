//! `fpaas bench subscribe [--clients N]`: N concurrent WebSocket clients with mixed filters on one node's
//! `GET /subscribe` while the firehose flows, plus one deliberately stalled client: the others' latency, the
//! server's memory, and what happens to the stalled one.
//!
//! Shape: nats-server (testkit); relay-sim in process at `--rate` events/s; `fpaas shuffler` and `fpaas serve`
//! as child processes of this binary (so `rss_mb` is the serving process alone); the clients are tasks of this
//! process (tokio-tungstenite). Latency = receipt − `time_us` (on `/subscribe`, `time_us` is the NATS store
//! time, so this is stream → client). Filters by client index:
//!
//! | share | filter |
//! |---|---|
//! | 70 % | one collection (like, post, follow, repost) |
//! | 20 % | an NSID prefix (`app.bsky.feed.*`, `app.bsky.graph.*`) |
//! | 10 % | 1–10 DIDs of the simulator's population |
//!
//! and every 50th client takes everything, every 100th (+1) asks for `compress=true` (decoded here with the
//! dictionary). The stalled client connects a third of the way in with a 4 KiB receive buffer, asks for a
//! replay from the start (`cursor=0`, so the server's socket buffer toward it fills at once) and never reads. Latencies before it connected (`p99_ms_before_stall`) and after (`p99_ms_with_stall`) are reported
//! with their ratio; `stalled_closed` says whether the server closed it for not taking a write within
//! `--stall-timeout-secs` (the server's `subscribe.write_timeout_secs`), `stalled_close_s` when.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message;

use crate::error::{Context, Result, bail};
use crate::server::{NatsServerFlag, live_feed, start_nats};
use crate::subs::WorkerChild;
use crate::{Report, r2};

// `fpaas bench subscribe`'s flags (doc comments here would become clap help).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Concurrent clients (besides the stalled one).
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Relay events per second.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// Seconds of firehose.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds at the start whose latencies are not recorded.
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// The server's write timeout: a client that takes no write for this long is closed.
    #[arg(long, default_value_t = 10)]
    stall_timeout_secs: u64,
    /// Simulated accounts (the DID population).
    #[arg(long, default_value_t = 50_000)]
    repos: usize,
    /// Seed of the simulator and of the filters.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[command(flatten)]
    nats: NatsServerFlag,
}

/// Latency histogram: 0.1 ms buckets to 100 ms, then 1 ms buckets to 10 s.
#[derive(Debug)]
struct Hist {
    buckets: Vec<AtomicU64>,
}

const FINE: usize = 1000;
const COARSE: usize = 9_900;

impl Hist {
    fn new() -> Self {
        Self {
            buckets: (0..FINE + COARSE + 1).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn record(&self, ms: f64) {
        let ms = ms.max(0.0);
        let i = if ms < 100.0 {
            (ms * 10.0) as usize
        } else {
            (FINE + (ms - 100.0) as usize).min(FINE + COARSE)
        };
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }
    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
    fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let want = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= want {
                return if i < FINE {
                    (i as f64 + 1.0) / 10.0
                } else {
                    100.0 + (i - FINE) as f64 + 1.0
                };
            }
        }
        100.0 + COARSE as f64
    }
}

struct Shared {
    before: Hist,
    with_stall: Hist,
    stalled: AtomicBool,
    recording: AtomicBool,
    received: AtomicU64,
    connected: AtomicU64,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// `time_us` of an event without parsing the whole JSON.
fn time_us(json: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"time_us\":";
    let at = json.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn query(i: usize, rng: &mut StdRng, dids: &[String]) -> String {
    let mut q = if i.is_multiple_of(50) {
        String::new()
    } else {
        match i % 10 {
            0..=6 => format!(
                "wantedCollections={}",
                [
                    "app.bsky.feed.like",
                    "app.bsky.feed.post",
                    "app.bsky.graph.follow",
                    "app.bsky.feed.repost",
                ][i % 4]
            ),
            7 | 8 => format!(
                "wantedCollections={}",
                ["app.bsky.feed.*", "app.bsky.graph.*"][i % 2]
            ),
            _ => (0..rng.random_range(1..=10))
                .map(|_| format!("wantedDids={}", dids[rng.random_range(0..dids.len())]))
                .collect::<Vec<_>>()
                .join("&"),
        }
    };
    if i % 100 == 1 {
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str("compress=true");
    }
    q
}

async fn client(url: String, zstd: bool, shared: Arc<Shared>) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connecting {url}"))?;
    shared.connected.fetch_add(1, Ordering::SeqCst);
    let (_tx, mut rx) = ws.split();
    while let Some(msg) = rx.next().await {
        let Ok(msg) = msg else { break };
        let t = match &msg {
            Message::Text(t) => time_us(t.as_bytes()),
            Message::Binary(b) if zstd => fpaas_jetstream::wire::decompress(b)
                .ok()
                .and_then(|j| time_us(&j)),
            Message::Close(_) => break,
            _ => continue,
        };
        let Some(t) = t else { continue };
        shared.received.fetch_add(1, Ordering::Relaxed);
        if shared.recording.load(Ordering::Relaxed) {
            let ms = (now_us() - t) as f64 / 1000.0;
            if shared.stalled.load(Ordering::Relaxed) {
                shared.with_stall.record(ms);
            } else {
                shared.before.record(ms);
            }
        }
    }
    Ok(())
}

/// A client that connects with a 4 KiB receive buffer and never reads; returned so it stays open.
async fn stalled_client(
    addr: std::net::SocketAddr,
    url: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .context("stalled client handshake")?;
    Ok(ws)
}

/// Runs the bench.
///
/// # Errors
/// A missing tool, a server or child failure, clients that cannot connect.
pub async fn run(args: &Args) -> Result<Report> {
    let n = args.clients.max(1);
    let nats = start_nats(&args.nats.binary()).await?;
    let client_nats = fpaas_bus::connect(&nats.url(), "fpaas-bench-subscribe").await?;
    let js = fpaas_bus::jetstream(client_nats.clone(), 256);
    fpaas_bus::ensure_stream(&js, &fpaas_bus::StreamSettings::default()).await?;

    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", fpaas_testkit::free_port())
        .parse()
        .context("listen address")?;
    let metrics = format!("127.0.0.1:{}", fpaas_testkit::free_port());
    let mut serve = WorkerChild::spawn(
        &[
            "serve",
            "--listen",
            &listen.to_string(),
            "--nats-url",
            &nats.url(),
            "--metrics-listen",
            &metrics,
        ],
        &[
            (
                "FPAAS_SUBSCRIBE_WRITE_TIMEOUT_SECS",
                args.stall_timeout_secs.to_string(),
            ),
            ("FPAAS_SUBSCRIBE_MAX_CONNECTIONS", (n + 16).to_string()),
        ],
        metrics.clone(),
        &nats.scratch_dir().join("serve.log"),
    )?;
    serve
        .wait("/subscribe up", Duration::from_secs(60), |p| {
            p.contains("fpaas_subscribe_connections")
        })
        .await?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_empty = serve.rss().unwrap_or(0);

    // The clients, live from the start.
    let dids = fpaas_sim::Generator::new(args.seed, args.repos, 1, Default::default()).dids();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let shared = Arc::new(Shared {
        before: Hist::new(),
        with_stall: Hist::new(),
        stalled: AtomicBool::new(false),
        recording: AtomicBool::new(false),
        received: AtomicU64::new(0),
        connected: AtomicU64::new(0),
    });
    let connect_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let q = query(i, &mut rng, &dids);
        let url = format!("ws://{listen}/subscribe?{q}");
        tasks.spawn(client(url, i % 100 == 1, Arc::clone(&shared)));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(dids);
    serve
        .wait(
            "every client connected",
            Duration::from_secs(60 + n as u64 / 20),
            |p| fpaas_testkit::prom_value(p, "fpaas_subscribe_connections", "") >= n as f64,
        )
        .await?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = serve.rss().unwrap_or(0);

    // The firehose: relay-sim → shuffler.
    let total = (args.rate * args.seconds as f64) as u64;
    let (_sim, mut shuffler) = live_feed(
        &nats.url(),
        &nats.scratch_dir().join("shuffler.log"),
        args.seed,
        args.rate,
        total,
        args.repos,
    )
    .await?;
    let feed_started = Instant::now();
    let bounds_before = fpaas_bus::tail::stream_bounds(&client_nats, "FIREHOSE").await?;
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    shared.recording.store(true, Ordering::SeqCst);
    let stall_at =
        Duration::from_secs_f64((args.seconds as f64 / 3.0).max(args.warmup_secs as f64 + 1.0));
    tokio::time::sleep(stall_at.saturating_sub(feed_started.elapsed())).await;
    // A replay from the start: it fills the socket buffers at once, then takes nothing.
    let stalled_url = format!("ws://{listen}/subscribe?cursor=0");
    let stalled = stalled_client(listen, &stalled_url).await?;
    let stalled_at = Instant::now();
    shared.stalled.store(true, Ordering::SeqCst);
    let closes_before = closed_write_timeout(&serve).await;

    // Until the stream stops growing (the feed is over and everything is stored), then a drain.
    let mut last = 0;
    let mut still = 0;
    while still < 3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = fpaas_bus::tail::stream_bounds(&client_nats, "FIREHOSE").await?;
        if b.last_seq == last && feed_started.elapsed() > Duration::from_secs(args.seconds) {
            still += 1;
        } else {
            still = 0;
        }
        last = b.last_seq;
        if feed_started.elapsed() > Duration::from_secs(args.seconds * 3 + 60) {
            bail!("the feed did not finish");
        }
    }
    let feed_s = feed_started.elapsed().as_secs_f64() - 3.0;
    let stored = last.saturating_sub(bounds_before.last_seq);
    shared.recording.store(false, Ordering::SeqCst);
    let received = shared.received.load(Ordering::SeqCst);
    let rss_peak = serve.peak_rss().unwrap_or(0);

    // The stalled client's fate: closed by the write timeout, or still open.
    let wait_close = Duration::from_secs(args.stall_timeout_secs * 2 + 10);
    let mut stalled_close_s = None;
    while stalled_at.elapsed() < wait_close {
        if closed_write_timeout(&serve).await > closes_before {
            stalled_close_s = Some(stalled_at.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let page = serve.page().await.unwrap_or_default();
    let catchups = fpaas_testkit::prom_value(&page, "fpaas_subscribe_catchups_total", "");
    drop(stalled);
    let _ = shuffler.kill().await;
    tasks.abort_all();

    let p99_before = shared.before.quantile(0.99);
    let p99_with = shared.with_stall.quantile(0.99);
    let all = Hist::new();
    for (i, b) in all.buckets.iter().enumerate() {
        b.store(
            shared.before.buckets[i].load(Ordering::SeqCst)
                + shared.with_stall.buckets[i].load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }
    let mut report = Report::new("subscribe");
    report.add("clients", n as u64);
    report.add("connected_clients", shared.connected.load(Ordering::SeqCst));
    report.add("connect_s", r2(connect_s));
    report.add("events_per_s", r2(stored as f64 / feed_s.max(0.001)));
    report.add("deliveries_per_s", r2(received as f64 / feed_s.max(0.001)));
    report.add("latency_samples", all.count());
    report.add("p50_ms", r2(all.quantile(0.5)));
    report.add("p99_ms", r2(all.quantile(0.99)));
    report.add("max_ms", r2(all.quantile(1.0)));
    report.add("p99_ms_before_stall", r2(p99_before));
    report.add("p99_ms_with_stall", r2(p99_with));
    report.add(
        "ratio_vs_baseline",
        r2(if p99_before > 0.0 {
            p99_with / p99_before
        } else {
            0.0
        }),
    );
    report.add("rss_mb", r2(rss_peak as f64 / 1e6));
    report.add("rss_idle_mb", r2(rss_idle as f64 / 1e6));
    report.add(
        "rss_per_client_kb",
        r2(rss_idle.saturating_sub(rss_empty) as f64 / 1e3 / n as f64),
    );
    report.add("catchups", catchups as u64);
    report.add("stalled_closed", u64::from(stalled_close_s.is_some()));
    report.add("stalled_close_s", r2(stalled_close_s.unwrap_or(0.0)));
    Ok(report)
}

async fn closed_write_timeout(serve: &WorkerChild) -> f64 {
    let page = serve.page().await.unwrap_or_default();
    fpaas_testkit::prom_value(
        &page,
        "fpaas_subscribe_closed_total",
        "reason=\"write_timeout\"",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_us_is_read_without_parsing_and_quantiles_follow_buckets() {
        assert_eq!(
            time_us(br#"{"did":"d","time_us":1700000000000001,"kind":"commit"}"#),
            Some(1_700_000_000_000_001)
        );
        assert_eq!(time_us(b"{}"), None);
        let h = Hist::new();
        for ms in [0.05, 1.0, 2.0, 150.0] {
            h.record(ms);
        }
        assert_eq!(h.count(), 4);
        assert_eq!(h.quantile(0.25), 0.1);
        assert_eq!(h.quantile(0.5), 1.1);
        assert_eq!(h.quantile(1.0), 151.0);
    }
}
