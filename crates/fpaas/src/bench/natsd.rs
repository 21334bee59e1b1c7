//! Throwaway processes for benchmarks: a JetStream `nats-server` child ([`NatsChild`]) on a free loopback port
//! with its own store directory and `max_payload: 4MB` (killed and cleaned on drop), the peak RSS of a child
//! ([`peak_rss_bytes`]), the on-disk size of a stream's file store ([`dir_size`]), stream state polling
//! ([`wait_for_messages`]) and finding the project-local tools from any working directory ([`find_path`]).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started nats-server may take to accept connections and answer JetStream requests.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval of every readiness / progress poll.
pub const POLL: Duration = Duration::from_millis(10);
/// A stream whose count does not move for this long while more messages are expected has stalled.
const STALL: Duration = Duration::from_secs(15);

/// JetStream `max_file_store` of bench servers: explicit, so that stream reservations (the shuffler's default
/// `max_bytes` is 32 GiB) do not depend on the machine's free disk (unset, the server takes 75% of it and
/// refuses a larger stream with error 10047). The benches write far less.
pub const MAX_FILE_STORE: &str = "1TB";

/// A nats-server child process with JetStream, bound to 127.0.0.1 only.
pub struct NatsChild {
    child: Child,
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

/// Spawns `bin -c dir/server.conf`, appending its output to `dir/server.log`.
fn spawn(bin: &Path, dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))?;
    Command::new(bin)
        .arg("-c")
        .arg(dir.join("server.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "starting nats-server {} (install it with `bash scripts/setup-tools.sh`, or pass \
                 --nats-server / set FPAAS_NATS_SERVER)",
                bin.display()
            )
        })
}

impl NatsChild {
    /// Starts `bin` with a generated config in a fresh temp directory and waits until JetStream answers.
    pub async fn start(bin: &Path, name: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("fpaas-bench-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("jetstream"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let port = free_port()?;
        let conf = format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 4MB\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_file_store: {MAX_FILE_STORE}\n}}\n",
            dir.join("jetstream").display()
        );
        std::fs::write(dir.join("server.conf"), conf)?;
        let child = match spawn(bin, &dir) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut me = Self {
            child,
            dir,
            port,
            bin: bin.to_path_buf(),
        };
        me.wait_ready().await?;
        Ok(me)
    }

    /// Stops the server gracefully (SIGTERM, so JetStream flushes) and starts it again on the same port and
    /// store, waiting until JetStream answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        self.child = spawn(&self.bin, &self.dir)?;
        self.wait_ready().await
    }

    /// Current resident set size of the server process, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        proc_status_kb(self.child.id(), "VmRSS:").map(|kb| kb * 1024)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut js = None;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "nats-server exited during start ({status}):\n{}",
                    self.log_tail()
                );
            }
            // Connect the probe client only once the port accepts, so it logs no connection errors.
            if js.is_none() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let client = fpaas_bus::connect(&self.url(), "fpaas-bench-probe").await?;
                js = Some(async_nats::jetstream::new(client));
            }
            if let Some(js) = &js
                && tokio::time::timeout(Duration::from_millis(500), js.query_account())
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                let _ = js.client().drain().await;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server not ready after {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("jetstream")
    }

    /// A scratch directory that is removed with the server.
    pub fn scratch_dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.join("server.log"), 20)
    }
}

impl Drop for NatsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `n` lines of a text file (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Peak resident set size (`VmHWM`) of process `pid`, in bytes (Linux `/proc`); `None` elsewhere.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
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
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<StreamProgress> {
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
