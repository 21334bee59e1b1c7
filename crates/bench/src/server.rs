//! What the benches share: a JetStream nats-server started through `fpaas-testkit` ([`start_nats`],
//! [`restart_nats`]: free ports from testkit's allocator, a temp store removed on drop, `max_payload` 4 MiB,
//! an explicit `max_file_store`), the memory of a process ([`peak_rss_bytes`], [`rss_bytes`], [`cpu_s`]), the on-disk
//! size of a stream's file store ([`dir_size`]), stream state polling ([`wait_for_messages`]) and finding the
//! project-local tools from any working directory ([`find_path`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fpaas_testkit::{NatsServer, NatsServerOptions};

use crate::error::{Context, Result, bail};

/// Interval of every progress poll.
pub const POLL: Duration = Duration::from_millis(10);
/// A stream whose count does not move for this long while more messages are expected has stalled.
const STALL: Duration = Duration::from_secs(15);

// The `--nats-server` flag of every bench that starts servers, flattened into their flags (plain comments:
// clap would turn a doc comment here into help text).
#[derive(clap::Args, Debug, Clone)]
pub struct NatsServerFlag {
    /// nats-server binary.
    #[arg(
        long,
        env = "FPAAS_NATS_SERVER",
        default_value = ".tools/venv/bin/nats-server"
    )]
    pub nats_server: PathBuf,
}

impl NatsServerFlag {
    /// The binary, found from any working directory ([`find_path`]).
    pub fn binary(&self) -> PathBuf {
        find_path(&self.nats_server)
    }
}

/// Starts a JetStream nats-server `bin` on 127.0.0.1 with testkit's defaults (free ports, temp store,
/// `max_payload` 4 MiB, `max_file_store` 1 TB so that the shuffler's 32 GiB stream reservation never depends on
/// the machine's free disk) and waits until JetStream answers. Killed, its directory removed, on drop.
///
/// # Errors
/// When `bin` does not exist (with the install hint), or the server does not come up.
pub async fn start_nats(bin: &Path) -> Result<NatsServer> {
    if !bin.is_file() {
        bail!(
            "nats-server {} not found (install it with `bash scripts/setup-tools.sh`, or pass --nats-server / set \
             FPAAS_NATS_SERVER)",
            bin.display()
        );
    }
    let options = NatsServerOptions {
        binary: Some(bin.to_path_buf()),
        ..Default::default()
    };
    // testkit blocks while the server starts and panics when it does not: both off the async threads.
    Ok(tokio::task::spawn_blocking(move || NatsServer::with_options(options)).await?)
}

/// Stops `server` gracefully (SIGTERM, so JetStream flushes) and starts it again on the same port and store,
/// waiting until JetStream answers.
///
/// # Errors
/// When the server does not come back.
pub async fn restart_nats(mut server: NatsServer) -> Result<NatsServer> {
    Ok(tokio::task::spawn_blocking(move || {
        server.stop();
        server.start();
        server
    })
    .await?)
}

/// The last `n` lines of a text file (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Peak resident set size (`VmHWM`) of process `pid`, in bytes (Linux `/proc`); `None` elsewhere.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
}

/// Current resident set size (`VmRSS`) of process `pid`, in bytes (Linux `/proc`); `None` elsewhere.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
}

/// CPU seconds (user + system) process `pid` used so far (`/proc/<pid>/stat`, 100 ticks a second).
pub fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A kB figure (`field` such as `VmRSS:`) from `/proc/PID/status`.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sizes of the regular files under `dir`: (apparent bytes, allocated bytes as `du` counts them).
pub fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut apparent, mut allocated) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                apparent += md.len();
                allocated += md.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

/// `rel` itself when it exists (or is absolute); else the first `ancestor/rel` that exists, looking up from the
/// working directory and from the running binary (so `target/release/fpaas` finds `.tools/` from anywhere in the
/// checkout); else `rel` unchanged, for the caller's error message.
pub fn find_path(rel: &Path) -> PathBuf {
    if rel.is_absolute() || rel.exists() {
        return rel.to_path_buf();
    }
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    ];
    for start in starts.into_iter().flatten() {
        for ancestor in start.ancestors() {
            let candidate = ancestor.join(rel);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    rel.to_path_buf()
}

/// State of a stream after [`wait_for_messages`].
#[derive(Debug, Clone, Copy)]
pub struct StreamProgress {
    /// Messages stored.
    pub messages: u64,
    /// Logical bytes stored (as JetStream accounts them: record sizes, before compression).
    pub bytes: u64,
    /// Seconds between the first and the last stored message (server timestamps).
    pub span_s: f64,
}

impl StreamProgress {
    /// Messages per second between the first and the last stored message.
    pub fn rate(&self) -> f64 {
        if self.span_s > 0.0 {
            self.messages.saturating_sub(1) as f64 / self.span_s
        } else {
            0.0
        }
    }
}

/// Polls `stream` until it holds `expected` messages (or, with `settle`, until its count stops changing for
/// that long), failing after `timeout` or when `alive` says the producer died.
pub async fn wait_for_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    expected: Option<u64>,
    settle: Duration,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<StreamProgress> {
    let mut s = js
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream}"))?;
    let deadline = Instant::now() + timeout;
    let (mut last_count, mut last_change) = (u64::MAX, Instant::now());
    loop {
        let info = s.info().await.context("stream info")?;
        let st = &info.state;
        let n = st.messages;
        if n != last_count {
            last_count = n;
            last_change = Instant::now();
        }
        let done = match expected {
            Some(e) => n >= e,
            None => n > 0 && last_change.elapsed() >= settle,
        };
        if done {
            let span = st.last_timestamp - st.first_timestamp;
            return Ok(StreamProgress {
                messages: n,
                bytes: st.bytes,
                span_s: span.as_seconds_f64().max(0.0),
            });
        }
        alive()?;
        if expected.is_some() && last_change.elapsed() > STALL {
            bail!("stream {stream}: stuck at {n} messages for {STALL:?}, expected {expected:?}");
        }
        if Instant::now() > deadline {
            bail!("stream {stream}: {n} messages after {timeout:?}, expected {expected:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A live firehose into `nats_url`: relay-sim in process, generating `total` events at `rate` events/s over
/// `repos` accounts with event times on the wall clock, read by `fpaas shuffler` as a child process of this
/// binary (logging to `log`, killed on drop) from cursor 0.
///
/// # Errors
/// The simulator cannot listen, or the shuffler cannot be started.
pub async fn live_feed(
    nats_url: &str,
    log: &Path,
    seed: u64,
    rate: f64,
    total: u64,
    repos: usize,
) -> Result<(fpaas_sim::Sim, tokio::process::Child)> {
    let (sim, _) = fpaas_sim::Sim::start(fpaas_sim::SimConfig {
        seed,
        rate: Some(rate),
        limit: Some(total),
        repos,
        record_truth: false,
        wall_clock: true,
        ..Default::default()
    })
    .await?;
    let exe = std::env::current_exe().context("locating the fpaas binary")?;
    let shuffler = tokio::process::Command::new(exe)
        .arg("shuffler")
        .args(["--relay", &sim.url()])
        .args(["--nats-url", nats_url])
        .args(["--instance", "bench"])
        .args(["--metrics-listen", "none"])
        .args(["--start-cursor", "0"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true)
        .spawn()
        .context("starting the shuffler child")?;
    Ok((sim, shuffler))
}
