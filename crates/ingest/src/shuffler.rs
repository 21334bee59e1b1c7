//! The shuffler run loop: relay frames → decode → normalize → one JetStream message per event, with the cursor
//! advanced only behind acknowledged publishes.
//!
//! **The relay is the retry buffer.** Nothing is queued for retry in memory. Frames are tracked in read order by
//! the [`Watermark`]; publishes run asynchronously with at most `max_acks_in_flight` acks outstanding (reading
//! pauses at that bound and at `max_pending_frames`, which is what keeps memory bounded). On any retryable
//! publish failure (NATS down, slow, stream missing) the loop stops reading, closes the relay connection, lets
//! the in-flight completions finish (acks still count, failures poison their frame), waits until NATS answers
//! again (probing by re-provisioning the stream, with exponential backoff and jitter), then reconnects to the
//! relay with `?cursor=<watermark>` and publishes from there again. Messages that had in fact landed are
//! removed by JetStream dedup (the `Nats-Msg-Id` is a pure function of the event).
//!
//! Relay trouble — a closed connection, a read error, no frame for `idle_timeout`, an error frame — ends the
//! session the same way minus the NATS wait: drain, reconnect from the watermark with backoff.
//! `FutureCursor` is special: the relay's seqs restarted below ours, so the watermark is forgotten and the
//! shuffler reconnects live (logged as an error: events between may be missing).
//!
//! Shutdown (the token) stops reading, drains in-flight publishes for up to `drain_timeout`, then saves the
//! final watermark and returns the run's [`ShufflerStats`].
//!
//! Health components (all required for `/ready`): `nats` (connection state), `stream` (provisioned and
//! answering), `relay` (a connection is open).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fpaas_bus::{Backoff, BusErrorKind, Completion, JetStream, OutMsg, Publisher, StreamAction};
use fpaas_event::WireMessage;
use fpaas_ops::Health;
use fpaas_proto::frame::Frame;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ShufflerConfig;
use crate::cursor::{Candidate, CursorKv, CursorRecord, resume_candidate};
use crate::error::IngestError;
use crate::lease;
use crate::metrics::{self, LiveStats, Metrics, ShufflerStats};
use crate::relay::{RelayConnection, subscribe_url};
use crate::watermark::Watermark;

/// Health component: the NATS connection.
pub const COMPONENT_NATS: &str = "nats";
/// Health component: the stream is provisioned and answering.
pub const COMPONENT_STREAM: &str = "stream";
/// Health component: a relay connection is open.
pub const COMPONENT_RELAY: &str = "relay";

/// Runs one shuffler until `shutdown` is cancelled; see [`Shuffler`].
///
/// # Errors
/// Only what retrying cannot fix: an invalid config or a stream/KV configuration the server refuses.
pub async fn run(
    cfg: ShufflerConfig,
    health: Health,
    shutdown: CancellationToken,
) -> Result<ShufflerStats, IngestError> {
    Shuffler::new(cfg).run(health, shutdown).await
}

/// One shuffler instance. Create it, keep [`stats`](Self::stats) to watch it, then [`run`](Self::run) it.
#[derive(Debug)]
pub struct Shuffler {
    cfg: ShufflerConfig,
    stats: Arc<LiveStats>,
}

/// Why a relay session ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    PublishFailed,
    RelayClosed,
    RelayReadError(String),
    Idle,
    FutureCursor,
    ConsumerTooSlow,
    RelayErrorFrame(String),
}

impl SessionEnd {
    fn reason(&self) -> &'static str {
        match self {
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::PublishFailed => "publish_failed",
            SessionEnd::RelayClosed => "relay_closed",
            SessionEnd::RelayReadError(_) => "relay_read_error",
            SessionEnd::Idle => "idle",
            SessionEnd::FutureCursor => "future_cursor",
            SessionEnd::ConsumerTooSlow => "consumer_too_slow",
            SessionEnd::RelayErrorFrame(_) => "relay_error_frame",
        }
    }
}

impl Shuffler {
    /// A shuffler with `cfg` (validated by [`run`](Self::run)).
    pub fn new(cfg: ShufflerConfig) -> Self {
        Self {
            cfg,
            stats: Arc::new(LiveStats::new()),
        }
    }

    /// Live counters of this shuffler, updated while it runs.
    pub fn stats(&self) -> Arc<LiveStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` is cancelled: provisions the stream and cursor bucket (retrying until NATS
    /// answers), resumes from the cursor, and shuffles. Returns the run's counters after draining and saving
    /// the cursor.
    ///
    /// # Errors
    /// [`IngestError::Config`] for an invalid config; [`IngestError::Bus`] when the server refuses the stream or
    /// bucket configuration at start. Outages and publish failures are never errors: they are retried.
    #[tracing::instrument(name = "shuffler", skip_all, fields(instance = %self.cfg.instance, relay = %self.cfg.relay))]
    pub async fn run(
        self,
        health: Health,
        shutdown: CancellationToken,
    ) -> Result<ShufflerStats, IngestError> {
        let Shuffler { cfg, stats } = self;
        cfg.validate()?;
        let relay_key =
            subscribe_url(&cfg.relay, None).map_err(|e| IngestError::Config(e.to_string()))?;
        for c in [COMPONENT_NATS, COMPONENT_STREAM, COMPONENT_RELAY] {
            health.require(c);
        }
        let client = fpaas_bus::connect(&cfg.nats_url, &format!("fpaas-shuffler-{}", cfg.instance))
            .await
            .map_err(|source| IngestError::Bus {
                what: "connect",
                source,
            })?;
        let js = fpaas_bus::jetstream_with_timeout(
            client.clone(),
            cfg.max_acks_in_flight,
            cfg.ack_timeout(),
        );
        let monitor_stop = CancellationToken::new();
        let monitor = tokio::spawn(nats_monitor(
            client.clone(),
            health.clone(),
            monitor_stop.clone(),
        ));
        let result = start_and_loop(cfg, relay_key, js, health.clone(), stats, shutdown).await;
        monitor_stop.cancel();
        let _ = monitor.await;
        health.down(COMPONENT_RELAY, "stopped");
        result
    }
}

async fn start_and_loop(
    cfg: ShufflerConfig,
    relay_key: String,
    js: JetStream,
    health: Health,
    stats: Arc<LiveStats>,
    shutdown: CancellationToken,
) -> Result<ShufflerStats, IngestError> {
    let mut backoff = cfg.backoff();
    let timeout = cfg.publish_timeout();
    // 1. The stream: create or update, report drift. Retried until NATS answers.
    let provisioned = retry(
        "provision stream",
        &shutdown,
        &mut backoff,
        timeout,
        true,
        || provision_stream(&js, &cfg, &health),
    )
    .await?;
    if provisioned.is_none() {
        return Ok(stats.snapshot());
    }
    // 2. The cursor bucket and the instance-name lease (one running process per cursor key).
    backoff.reset();
    let Some(kv) = retry(
        "open cursor bucket",
        &shutdown,
        &mut backoff,
        timeout,
        true,
        || CursorKv::open(&js, &cfg.cursor_kv),
    )
    .await?
    else {
        return Ok(stats.snapshot());
    };
    let lease_settings = fpaas_bus::KvSettings {
        bucket: lease::lease_bucket(&cfg.cursor_kv.bucket),
        description: "fpaas shuffler instance-name leases".to_owned(),
        ..cfg.cursor_kv.clone()
    };
    backoff.reset();
    let Some(lease_kv) = retry(
        "open lease bucket",
        &shutdown,
        &mut backoff,
        timeout,
        true,
        || async {
            fpaas_bus::ensure_kv(&js, &lease_settings)
                .await
                .map_err(|source| IngestError::Bus {
                    what: "open lease bucket",
                    source,
                })
        },
    )
    .await?
    else {
        return Ok(stats.snapshot());
    };
    backoff.reset();
    let Some(held) = retry(
        "acquire instance lease",
        &shutdown,
        &mut backoff,
        timeout + cfg.lease_ttl(),
        true,
        || lease::acquire(&lease_kv, &cfg.instance, cfg.lease_ttl(), &shutdown),
    )
    .await?
    .flatten() else {
        return Ok(stats.snapshot());
    };
    tracing::info!(instance = %cfg.instance, "instance name lease acquired");
    // The loop runs under `run`: cancelled by the caller's shutdown, or when the lease is lost.
    let run = shutdown.child_token();
    let lease_stop = CancellationToken::new();
    // Aborted if this future is dropped (the caller aborted the run): a dead run must stop renewing.
    let mut lease_task = AbortOnDrop(tokio::spawn(held.keep(
        cfg.lease_ttl(),
        lease_stop.clone(),
        run.clone(),
    )));

    // 3. Where to resume.
    backoff.reset();
    let Some(stored) = retry(
        "load cursors",
        &shutdown,
        &mut backoff,
        timeout,
        true,
        || kv.load_all(),
    )
    .await?
    else {
        lease_stop.cancel();
        let _ = (&mut lease_task.0).await;
        return Ok(stats.snapshot());
    };
    let own = stored
        .iter()
        .find(|(k, _)| *k == cfg.instance)
        .map(|(_, v)| v.clone());
    let candidate = resume_candidate(&cfg.instance, &relay_key, &cfg.stream.name, &stored);
    let resume = candidate.as_ref().map(|c| c.seq).or(cfg.start_cursor);
    tracing::info!(own = ?own, resume = ?resume, from = ?candidate.as_ref().map(|c| &c.key), cursors = stored.len(), "resuming");
    if let Some(seq) = resume {
        stats.cursor_seq.store(seq, Ordering::Relaxed);
        ::metrics::gauge!("fpaas_shuffler_cursor_seq").set(seq as f64);
    }

    // 4. The cursor saver: persists watermark values handed over by the loop, in order, off the hot path.
    let (cursor_tx, cursor_rx) = watch::channel(resume);
    let saver = tokio::spawn(cursor_saver(
        kv.clone(),
        relay_key.clone(),
        cfg.stream.name.clone(),
        cfg.instance.clone(),
        cursor_rx,
        Arc::clone(&stats),
        cfg.backoff(),
    ));

    let max_msg_size = usize::try_from(cfg.stream.max_msg_size).unwrap_or(usize::MAX);
    let mut runner = Runner {
        publisher: new_publisher(&js, &cfg),
        wm: Watermark::new(resume),
        wm_moved_at: Instant::now()
            .checked_sub(
                candidate
                    .as_ref()
                    .and_then(Candidate::age)
                    .unwrap_or_default(),
            )
            .unwrap_or_else(Instant::now),
        js,
        kv,
        relay_key,
        m: Metrics::new(),
        health,
        stats,
        cursor_tx,
        last_sent_cursor: resume,
        events_since_save: 0,
        max_msg_size,
        limits: fpaas_event::Limits {
            max_record_json_bytes: max_msg_size,
            ..fpaas_event::Limits::default()
        },
        first_seq: None,
        publish_error: None,
        cfg,
    };
    runner.main_loop(&run).await;

    // 5. Shutdown: in-flight publishes are drained by the loop; hand over the final watermark and let the
    // saver write it, then release the lease.
    runner.send_cursor();
    let drain = runner.cfg.drain_timeout();
    let stats = Arc::clone(&runner.stats);
    drop(runner);
    let mut saver = saver;
    if tokio::time::timeout(drain, &mut saver).await.is_err() {
        tracing::error!("final cursor save did not finish in time");
        saver.abort();
    }
    lease_stop.cancel();
    let lease_result = match (&mut lease_task.0).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "lease task failed");
            Ok(())
        }
    };
    let out = stats.snapshot();
    tracing::info!(stats = ?out, "shuffler stopped");
    lease_result?;
    Ok(out)
}

/// Frames at least this large are decoded, normalized and serialized on tokio's blocking pool instead of
/// inline. Measured (`decode_offload` test, docs/shuffler.md): a `spawn_blocking` round trip costs ~10-30 µs,
/// more than the whole path of a typical ~5 KB frame (~6 µs in release: `fpaas bench decode`, 161k frames/s),
/// so small frames stay inline; from 64 KiB (≈ 80 µs of work in release, far more for expensive shapes) the
/// hop is cheap relative to the work, and the runtime is never blocked for long.
const OFFLOAD_FRAME_BYTES: usize = 64 * 1024;

/// Reads of the cursor bucket before a reconnect gives up and resumes from its own watermark.
const RESUME_READ_TRIES: u32 = 3;

/// A decoded frame, its events, and each event's bus message (in event order).
type Decoded = (Frame, fpaas_event::Normalized, Vec<WireMessage>);

/// Decodes a relay frame, normalizes it into events within `limits` and builds each event's bus message — all
/// the CPU work of a frame (pure; run inline or on the blocking pool).
fn decode_and_normalize(
    bytes: &Bytes,
    limits: fpaas_event::Limits,
) -> Result<Decoded, fpaas_proto::frame::FrameError> {
    let frame = fpaas_proto::frame::decode_frame_bytes(bytes)?;
    let normalized = match &frame {
        Frame::Commit(_) | Frame::Identity(_) | Frame::Account(_) | Frame::Sync(_) => {
            fpaas_event::normalize_with(&frame, limits)
        }
        _ => fpaas_event::Normalized::default(),
    };
    let wires = normalized
        .events
        .iter()
        .map(WireMessage::from_event)
        .collect();
    Ok((frame, normalized, wires))
}

/// What decoding a frame came to.
enum Decode {
    /// A decoded frame with its events and messages (boxed: the other variants are empty).
    Frame(Box<Decoded>),
    /// Undecodable: counted and passed.
    Dropped,
    /// Shutdown came first.
    Shutdown,
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A publisher with the configured bounds (acks and payload bytes in flight).
fn new_publisher(js: &JetStream, cfg: &ShufflerConfig) -> Publisher {
    Publisher::new(js.clone(), cfg.max_acks_in_flight)
        .with_max_bytes_in_flight(cfg.max_bytes_in_flight)
}

/// Warns (and counts) when resuming from a cursor written longer ago than the stream's duplicate window:
/// events after it that a peer stored more than a window ago will be stored again.
fn warn_if_stale(
    cfg: &ShufflerConfig,
    stats: &LiveStats,
    seq: i64,
    age: Option<Duration>,
    from: &str,
) {
    let window = Duration::from_secs(cfg.stream.duplicate_window_secs);
    if let Some(age) = age
        && age > window
    {
        stats.stale_resumes.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!("fpaas_shuffler_stale_resumes_total").increment(1);
        tracing::warn!(
            seq,
            from,
            age_s = age.as_secs(),
            duplicate_window_s = window.as_secs(),
            "resuming from a cursor older than the stream's duplicate window: events after it that another \
             instance stored more than a window ago will be stored again (duplicates)"
        );
    }
}

/// Everything the loop mutates.
struct Runner {
    cfg: ShufflerConfig,
    js: JetStream,
    kv: CursorKv,
    relay_key: String,
    publisher: Publisher,
    wm: Watermark,
    /// When the watermark last moved or was last known to cover everything read (or the age of the cursor it
    /// started from): the age compared with the duplicate window on a resume.
    wm_moved_at: Instant,
    m: Metrics,
    health: Health,
    stats: Arc<LiveStats>,
    cursor_tx: watch::Sender<Option<i64>>,
    last_sent_cursor: Option<i64>,
    events_since_save: u64,
    max_msg_size: usize,
    /// Budgets of record conversion and of one frame's event JSON (the per-record one is `max_msg_size`: no
    /// larger record could be published).
    limits: fpaas_event::Limits,
    /// Seq of the first frame read while there was no cursor at all: a reconnect before any frame completed
    /// resumes just before it instead of live (which would skip what that session had read).
    first_seq: Option<i64>,
    /// The last publish failure, while publishes fail (cleared by the next ack).
    publish_error: Option<String>,
}

impl Runner {
    async fn main_loop(&mut self, shutdown: &CancellationToken) {
        let mut relay_backoff = self.cfg.backoff();
        let mut publish_backoff = self.cfg.backoff();
        let mut live = false;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let cursor = if live {
                None
            } else {
                self.resume_cursor(shutdown).await
            };
            let connect =
                RelayConnection::connect(&self.cfg.relay, cursor, self.cfg.connect_timeout());
            let conn = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = connect => r,
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    let delay = relay_backoff.next_delay();
                    tracing::warn!(error = %e, cursor = ?cursor, attempt = relay_backoff.attempts(), delay_ms = delay.as_millis() as u64, "relay connect failed; retrying");
                    self.health.down(COMPONENT_RELAY, e.to_string());
                    self.count_reconnect("connect_failed");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            live = false;
            tracing::info!(url = conn.url(), cursor = ?cursor, "relay connected");
            if let Some(w) = self.wm.watermark().filter(|w| cursor == Some(*w)) {
                warn_if_stale(
                    &self.cfg,
                    &self.stats,
                    w,
                    Some(self.wm_moved_at.elapsed()),
                    "resume",
                );
            }
            self.stats.relay_connects.fetch_add(1, Ordering::Relaxed);
            self.health.up(COMPONENT_RELAY, conn.url().to_owned());
            self.m.relay_connected.set(1.0);
            let started = Instant::now();
            let wm_before = self.wm.watermark();
            let end = self.session(&mut conn, shutdown).await;
            self.m.relay_connected.set(0.0);
            self.health.down(COMPONENT_RELAY, end.reason());
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
            // Only a connection that stayed open long enough resets the relay backoff: frames alone do not (a
            // relay that sends an error frame on every connect, or closes after one frame, must not be redialled
            // at the minimum delay forever).
            if started.elapsed() >= self.cfg.relay_stable() {
                relay_backoff.reset();
            }
            if matches!(end, SessionEnd::Shutdown) {
                break;
            }
            self.count_reconnect(end.reason());
            // Let what is in flight finish; acks still count, a failure means NATS needs a wait.
            let failed = self.settle().await || matches!(end, SessionEnd::PublishFailed);
            if !failed {
                // Everything read is stored: the watermark is current as of now (an idle relay does not age it).
                self.wm_moved_at = Instant::now();
            }
            match &end {
                SessionEnd::PublishFailed => {
                    tracing::warn!(
                        watermark = ?self.wm.watermark(),
                        error = ?self.publish_error,
                        "publish failed; stopped reading the relay until NATS answers"
                    );
                }
                SessionEnd::FutureCursor => tracing::error!(
                    cursor = ?cursor,
                    "relay says our cursor is in its future (its seqs restarted?); reconnecting live — \
                     events between the old cursor and now may be missing"
                ),
                SessionEnd::RelayReadError(e) | SessionEnd::RelayErrorFrame(e) => {
                    tracing::warn!(error = %e, reason = end.reason(), "relay session ended; reconnecting")
                }
                _ => tracing::warn!(reason = end.reason(), "relay session ended; reconnecting"),
            }
            if failed {
                self.stats.nats_outages.fetch_add(1, Ordering::Relaxed);
                ::metrics::counter!("fpaas_shuffler_nats_outages_total").increment(1);
                if !self.wait_for_nats(shutdown).await {
                    break;
                }
            }
            let progressed = self.wm.watermark() != wm_before;
            if matches!(end, SessionEnd::FutureCursor) {
                self.wm.forget();
                self.first_seq = None;
                live = true;
            } else {
                self.wm.reset();
            }
            self.update_gauges();
            self.send_cursor();
            let delay = if failed {
                // NATS answers probes again, but publishes may still be refused (account limits, a sealed stream):
                // a session that stored nothing makes the next attempt wait longer.
                if progressed {
                    publish_backoff.reset();
                }
                let delay = publish_backoff.next_delay();
                if let Some(e) = self.publish_error.as_deref().filter(|_| !progressed) {
                    self.health.down(
                        COMPONENT_STREAM,
                        format!(
                            "publishes failing ({} attempts in a row, next in {} ms): {e}",
                            publish_backoff.attempts(),
                            delay.as_millis()
                        ),
                    );
                }
                delay
            } else {
                relay_backoff.next_delay()
            };
            if !sleep_or_shutdown(delay, shutdown).await {
                break;
            }
        }
        // Shutdown: drain what is in flight so the final cursor covers it.
        self.settle().await;
        self.update_gauges();
    }

    /// The cursor to reconnect from: the highest of our watermark and the cursors that peers on the same relay
    /// and stream saved since we last looked (the bucket is re-read before every reconnect, so an instance cut off
    /// from NATS or its relay does not replay what a peer stored meanwhile). Without any cursor, just before the
    /// first frame this run read (so a failed first session is read again, not skipped).
    async fn resume_cursor(&mut self, shutdown: &CancellationToken) -> Option<i64> {
        let own = self.wm.watermark();
        // A failed read would resume from our own watermark, which after a long cut is older than the
        // duplicate window: everything a peer stored meanwhile would be stored again. So a few tries first.
        let mut backoff = self.cfg.probe_backoff();
        let mut tries = 0;
        let stored = loop {
            tries += 1;
            let load = tokio::time::timeout(self.cfg.probe_timeout(), self.kv.load_all());
            let r = tokio::select! {
                _ = shutdown.cancelled() => return own,
                r = load => r,
            };
            if matches!(r, Ok(Ok(_))) || tries >= RESUME_READ_TRIES {
                break r;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return own,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        };
        match stored {
            Ok(Ok(stored)) => {
                if let Some(c) = resume_candidate(
                    &self.cfg.instance,
                    &self.relay_key,
                    &self.cfg.stream.name,
                    &stored,
                ) && own.is_none_or(|w| c.seq > w)
                    && self.wm.advance_to(c.seq)
                {
                    tracing::info!(own = ?own, seq = c.seq, from = %c.key, "a peer's cursor is ahead of our watermark; resuming from it");
                    self.wm_moved_at = Instant::now()
                        .checked_sub(c.age().unwrap_or_default())
                        .unwrap_or_else(Instant::now);
                    self.update_gauges();
                    self.send_cursor();
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "re-reading the cursor bucket failed; resuming from our own watermark")
            }
            Err(_) => {
                tracing::warn!(
                    "re-reading the cursor bucket timed out; resuming from our own watermark"
                )
            }
        }
        self.wm
            .watermark()
            .or_else(|| self.first_seq.map(|s| s - 1))
    }

    /// Reads and publishes until the session ends.
    async fn session(
        &mut self,
        conn: &mut RelayConnection,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let idle = self.cfg.idle_timeout();
        let mut idle_deadline = Instant::now() + idle;
        let mut tick = tokio::time::interval(self.cfg.save_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_in_flight = self.cfg.max_acks_in_flight;
        let max_frames = self.cfg.max_pending_frames;
        loop {
            while let Some(c) = self.publisher.try_next_completion() {
                if self.on_completion(c) {
                    return SessionEnd::PublishFailed;
                }
            }
            self.update_gauges();
            self.maybe_save(false);
            let can_read =
                self.publisher.in_flight() < max_in_flight && self.wm.pending_frames() < max_frames;
            let busy = !self.publisher.is_idle();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                Some(c) = self.publisher.next_completion(), if busy => {
                    if self.on_completion(c) {
                        return SessionEnd::PublishFailed;
                    }
                }
                _ = tick.tick() => self.maybe_save(true),
                _ = tokio::time::sleep_until(idle_deadline), if can_read => return SessionEnd::Idle,
                frame = conn.next_frame(), if can_read => match frame {
                    Ok(Some(bytes)) => {
                        idle_deadline = Instant::now() + idle;
                        if let Some(end) = self.on_frame(bytes, shutdown).await {
                            return end;
                        }
                    }
                    Ok(None) => return SessionEnd::RelayClosed,
                    Err(e) => return SessionEnd::RelayReadError(format!("{e:#}")),
                },
            }
        }
    }

    /// Decodes, normalizes and publishes one frame. `Some` ends the session.
    async fn on_frame(&mut self, bytes: Bytes, shutdown: &CancellationToken) -> Option<SessionEnd> {
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        self.m.frame_size.record(bytes.len() as f64);
        let (frame, normalized, wires) = match self.decode(bytes, shutdown).await {
            Decode::Frame(d) => *d,
            Decode::Dropped => return None,
            Decode::Shutdown => return Some(SessionEnd::Shutdown),
        };
        let seq = match self.control_frame(&frame) {
            Ok(seq) => seq,
            Err(end) => return end,
        };
        metrics::frame(frame.kind_label());
        if self.first_seq.is_none() && self.wm.watermark().is_none() {
            self.first_seq = seq;
        }
        drop(frame);
        let msgs = self.messages(&normalized, wires);
        if let Some(s) = seq {
            self.m.relay_seq.set(s as f64);
        }
        self.publish_frame(seq, msgs, shutdown).await
    }

    /// Decodes and normalizes a frame: inline, or off the runtime when it is large. An undecodable frame is
    /// counted and passed (the watermark moves over it).
    async fn decode(&mut self, bytes: Bytes, shutdown: &CancellationToken) -> Decode {
        let size = bytes.len();
        let decoded = if size >= OFFLOAD_FRAME_BYTES {
            // A large frame takes milliseconds to decode and convert: off the runtime, so that acks keep
            // being processed (and other tasks keep running) meanwhile.
            let limits = self.limits;
            let job = tokio::task::spawn_blocking(move || decode_and_normalize(&bytes, limits));
            tokio::select! {
                _ = shutdown.cancelled() => return Decode::Shutdown,
                r = job => match r {
                    Ok(d) => d,
                    Err(e) => {
                        // Only a panic in the decoder gets here (it never panics on input, by its tests).
                        tracing::error!(error = %e, size, "decoding a frame failed on the blocking pool; dropped");
                        self.count_drop("decode_panic");
                        self.wm.push(None, 0);
                        return Decode::Dropped;
                    }
                },
            }
        } else {
            decode_and_normalize(&bytes, self.limits)
        };
        match decoded {
            Ok(d) => Decode::Frame(Box::new(d)),
            Err(e) => {
                metrics::frame("undecodable");
                self.count_drop(e.kind().as_str());
                tracing::debug!(reason = e.kind().as_str(), error = %e, size, "undecodable frame dropped");
                self.wm.push(None, 0);
                Decode::Dropped
            }
        }
    }

    /// The seq of a message frame; for the relay's control frames (error, info, unknown) what to do instead:
    /// `Err(Some(end))` ends the session, `Err(None)` passes the frame.
    fn control_frame(&mut self, frame: &Frame) -> Result<Option<i64>, Option<SessionEnd>> {
        match frame {
            Frame::Commit(c) => Ok(Some(c.seq)),
            Frame::Identity(m) => Ok(Some(m.seq)),
            Frame::Account(m) => Ok(Some(m.seq)),
            Frame::Sync(m) => Ok(Some(m.seq)),
            Frame::Error(e) => {
                metrics::frame("error");
                Err(Some(match e.error.as_str() {
                    "FutureCursor" => SessionEnd::FutureCursor,
                    "ConsumerTooSlow" => SessionEnd::ConsumerTooSlow,
                    other => SessionEnd::RelayErrorFrame(format!(
                        "{other}: {}",
                        e.message.as_deref().unwrap_or("")
                    )),
                }))
            }
            Frame::Info(i) => {
                metrics::frame("info");
                if i.name == "OutdatedCursor" {
                    ::metrics::counter!("fpaas_shuffler_outdated_cursor_total").increment(1);
                    tracing::warn!(message = ?i.message, watermark = ?self.wm.watermark(), "relay: OutdatedCursor — our cursor is older than its window; events in between are lost upstream");
                } else {
                    tracing::info!(name = %i.name, message = ?i.message, "relay info frame");
                }
                self.wm.push(None, 0);
                Err(None)
            }
            Frame::Unknown(_) => {
                metrics::frame("unknown");
                self.count_drop("unknown_frame");
                self.wm.push(None, 0);
                Err(None)
            }
        }
    }

    /// The frame's bus messages: drops counted, events over the stream's `max_msg_size` dropped.
    fn messages(
        &mut self,
        normalized: &fpaas_event::Normalized,
        wires: Vec<WireMessage>,
    ) -> Vec<OutMsg> {
        for d in &normalized.dropped {
            self.count_drop(d.reason.0);
            tracing::debug!(reason = d.reason.0, what = %d.what, detail = %d.detail, "op dropped");
        }
        let mut msgs = Vec::with_capacity(normalized.events.len());
        for (ev, wire) in normalized.events.iter().zip(wires) {
            self.m.event(ev.kind);
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            let size = wire.stored_size();
            if size > self.max_msg_size {
                self.count_drop("payload_too_large");
                tracing::warn!(msg_id = %wire.msg_id, size, max = self.max_msg_size, "event larger than the stream's max_msg_size dropped");
                continue;
            }
            self.m.message_size.record(wire.payload.len() as f64);
            msgs.push(OutMsg::from_wire(wire, 0));
        }
        if let Some(ev) = normalized.events.last()
            && ev.time_us > 0
        {
            let now_us = chrono::Utc::now().timestamp_micros();
            self.m.behind.set((now_us - ev.time_us) as f64 / 1e6);
        }
        msgs
    }

    /// Registers the frame with the watermark and publishes its messages (waiting for capacity). `Some` ends
    /// the session: shutdown, or no capacity within the publish timeout (the frame then fails the watermark).
    async fn publish_frame(
        &mut self,
        seq: Option<i64>,
        msgs: Vec<OutMsg>,
        shutdown: &CancellationToken,
    ) -> Option<SessionEnd> {
        let count = u32::try_from(msgs.len()).unwrap_or(u32::MAX);
        let ordinal = self.wm.push(seq, count);
        let timeout = self.cfg.publish_timeout();
        for mut msg in msgs {
            msg.token = ordinal;
            tokio::select! {
                biased;
                // The rest of this frame is not sent: it stays incomplete, the watermark stops before it.
                _ = shutdown.cancelled() => return Some(SessionEnd::Shutdown),
                r = tokio::time::timeout(timeout, self.publisher.publish(msg)) => {
                    if r.is_err() {
                        tracing::warn!(timeout_ms = timeout.as_millis() as u64, "no publish capacity within the timeout; NATS slow or down");
                        self.note_publish_error(format!("no publish capacity within {timeout:?}"));
                        ::metrics::counter!("fpaas_shuffler_publish_failures_total", "error" => "capacity_timeout").increment(1);
                        self.wm.fail(ordinal);
                        return Some(SessionEnd::PublishFailed);
                    }
                }
            }
            self.events_since_save += 1;
        }
        None
    }

    /// Applies one publish result. Returns `true` when a retryable failure means NATS needs recovery.
    fn on_completion(&mut self, c: Completion) -> bool {
        match c {
            Ok(acked) => {
                self.m.latency.record(acked.latency.as_secs_f64());
                if acked.duplicate {
                    self.m.dedup_hits.increment(1);
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.m.published.increment(1);
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                if self.wm.ack(acked.token) {
                    self.wm_moved_at = Instant::now();
                }
                if self.publish_error.take().is_some() {
                    self.health.up(COMPONENT_STREAM, "publishes acked again");
                }
                false
            }
            Err(failed) => {
                let kind = failed.error.kind();
                match kind {
                    BusErrorKind::MaxPayload | BusErrorKind::InvalidMessage => {
                        let reason = if kind == BusErrorKind::MaxPayload {
                            "payload_too_large"
                        } else {
                            "invalid_message"
                        };
                        self.count_drop(reason);
                        tracing::warn!(msg_id = %failed.msg.msg_id, error = %failed.error, reason, "message rejected; dropped");
                        self.wm.ack(failed.msg.token);
                        false
                    }
                    _ => {
                        ::metrics::counter!("fpaas_shuffler_publish_failures_total", "error" => kind.as_str()).increment(1);
                        self.note_publish_error(format!(
                            "{}: {}",
                            failed.error,
                            source_chain(&failed.error)
                        ));
                        tracing::debug!(msg_id = %failed.msg.msg_id, error = %failed.error, "publish failed");
                        self.wm.fail(failed.msg.token);
                        true
                    }
                }
            }
        }
    }

    /// Waits for every in-flight publish to complete (bounded by `drain_timeout`). Returns `true` if any of
    /// them failed (or did not complete in time).
    async fn settle(&mut self) -> bool {
        let deadline = Instant::now() + self.cfg.drain_timeout();
        let mut failed = false;
        while !self.publisher.is_idle() {
            match tokio::time::timeout_at(deadline, self.publisher.next_completion()).await {
                Ok(Some(c)) => failed |= self.on_completion(c),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.publisher.in_flight(),
                        "in-flight publishes did not complete in time; abandoning them"
                    );
                    self.publisher = new_publisher(&self.js, &self.cfg);
                    failed = true;
                    break;
                }
            }
        }
        self.update_gauges();
        failed
    }

    /// Probes NATS (re-provisioning the stream) until it answers: each probe waits at most `probe_timeout`, and
    /// probes are at most `probe_timeout` apart, so publishing resumes about a second after the stream answers
    /// again (e.g. once a new stream leader is elected). `false` on shutdown.
    async fn wait_for_nats(&mut self, shutdown: &CancellationToken) -> bool {
        let mut backoff = self.cfg.probe_backoff();
        let timeout = self.cfg.probe_timeout();
        let js = self.js.clone();
        let cfg = self.cfg.clone();
        let health = self.health.clone();
        let started = Instant::now();
        let res = retry(
            "wait for nats",
            shutdown,
            &mut backoff,
            timeout,
            false,
            || provision_stream(&js, &cfg, &health),
        )
        .await;
        match res {
            Ok(Some(())) => {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    watermark = ?self.wm.watermark(),
                    "nats answers again; resuming from the watermark"
                );
                true
            }
            _ => false,
        }
    }

    /// Remembers why publishes fail and reports the stream component down with it (until the next ack).
    fn note_publish_error(&mut self, error: String) {
        self.health
            .down(COMPONENT_STREAM, format!("publishes failing: {error}"));
        self.publish_error = Some(error);
    }

    fn count_drop(&self, reason: &'static str) {
        metrics::drop(reason);
        self.stats.drops.fetch_add(1, Ordering::Relaxed);
    }

    fn count_reconnect(&self, reason: &'static str) {
        metrics::reconnect(reason);
        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn update_gauges(&self) {
        let in_flight = self.publisher.in_flight() as u64;
        let pending = self.wm.pending_frames() as u64;
        self.m.acks_in_flight.set(in_flight as f64);
        self.m.pending_frames.set(pending as f64);
        self.stats
            .acks_in_flight
            .store(in_flight, Ordering::Relaxed);
        self.stats
            .max_acks_in_flight_seen
            .fetch_max(in_flight, Ordering::Relaxed);
        self.stats
            .max_pending_frames_seen
            .fetch_max(pending, Ordering::Relaxed);
        if let Some(w) = self.wm.watermark() {
            self.m.watermark_seq.set(w as f64);
            self.stats.watermark_seq.store(w, Ordering::Relaxed);
        }
    }

    /// Hands the watermark to the saver when it moved and N events passed (or on the tick).
    fn maybe_save(&mut self, tick: bool) {
        if self.wm.watermark() != self.last_sent_cursor
            && (tick || self.events_since_save >= self.cfg.cursor_save_every_events)
        {
            self.send_cursor();
        }
    }

    fn send_cursor(&mut self) {
        let wm = self.wm.watermark();
        if wm != self.last_sent_cursor {
            self.cursor_tx.send_replace(wm);
            self.last_sent_cursor = wm;
        }
        self.events_since_save = 0;
    }
}

/// Creates or updates the stream and logs drift; marks the stream component up.
async fn provision_stream(
    js: &JetStream,
    cfg: &ShufflerConfig,
    health: &Health,
) -> Result<(), IngestError> {
    let report = fpaas_bus::ensure_stream(js, &cfg.stream)
        .await
        .map_err(|source| {
            health.down(COMPONENT_STREAM, source.to_string());
            IngestError::Bus {
                what: "provision stream",
                source,
            }
        })?;
    for w in &report.warnings {
        tracing::warn!(stream = %cfg.stream.name, warning = %w, "stream warning");
    }
    match report.action {
        StreamAction::Created => tracing::info!(stream = %cfg.stream.name, "stream created"),
        StreamAction::Unchanged => {
            tracing::debug!(stream = %cfg.stream.name, "stream present, settings unchanged")
        }
        StreamAction::Updated => {
            tracing::warn!(stream = %cfg.stream.name, drift = ?report.drift, "stream settings drifted; updated to the configured ones")
        }
    }
    health.up(
        COMPONENT_STREAM,
        format!("{} ({:?})", cfg.stream.name, report.action),
    );
    Ok(())
}

/// Whether retrying `e` cannot help (only consulted at start).
fn is_fatal(e: &IngestError) -> bool {
    match e {
        IngestError::Config(_) => true,
        IngestError::Bus { source, .. } => {
            matches!(
                source.kind(),
                BusErrorKind::StreamConfig
                    | BusErrorKind::InsufficientStorage
                    | BusErrorKind::Connect
            )
        }
        IngestError::Lease { .. } => true,
        IngestError::Cursor { .. } => false,
    }
}

/// Runs `op` (each attempt bounded by `timeout`) until it succeeds, with backoff. `Ok(None)` on shutdown;
/// `Err` only for a fatal error when `fatal_ok` is set.
async fn retry<T, F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    timeout: Duration,
    fatal_ok: bool,
    mut op: F,
) -> Result<Option<T>, IngestError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, IngestError>>,
{
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = tokio::time::timeout(timeout, op()) => r,
        };
        let error = match attempt {
            Ok(Ok(v)) => return Ok(Some(v)),
            Ok(Err(e)) if fatal_ok && is_fatal(&e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e).map(|s| s.to_string()), "{what} failed; not retrying");
                return Err(e);
            }
            Ok(Err(e)) => format!("{e}: {}", source_chain(&e)),
            Err(_) => format!("timed out after {timeout:?}"),
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %error, attempt = backoff.attempts(), delay_ms = delay.as_millis() as u64, "{what} failed; retrying");
        if !sleep_or_shutdown(delay, shutdown).await {
            return Ok(None);
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Sleeps `d`; `false` when shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Persists watermark values in order; a failed save is retried until it succeeds or a newer value arrives.
/// Ends when the loop drops its sender (after the final value is saved).
async fn cursor_saver(
    kv: CursorKv,
    relay: String,
    stream: String,
    instance: String,
    mut rx: watch::Receiver<Option<i64>>,
    stats: Arc<LiveStats>,
    mut backoff: Backoff,
) {
    let gauge = ::metrics::gauge!("fpaas_shuffler_cursor_seq");
    let ok = ::metrics::counter!("fpaas_shuffler_cursor_saves_total", "result" => "ok");
    let err = ::metrics::counter!("fpaas_shuffler_cursor_saves_total", "result" => "error");
    while rx.changed().await.is_ok() {
        let Some(seq) = *rx.borrow_and_update() else {
            continue;
        };
        backoff.reset();
        loop {
            let record = CursorRecord::now(seq, &relay, &stream, &instance);
            match tokio::time::timeout(Duration::from_secs(5), kv.save(&record)).await {
                Ok(Ok(_)) => {
                    gauge.set(seq as f64);
                    ok.increment(1);
                    stats.cursor_seq.store(seq, Ordering::Relaxed);
                    stats.cursor_saves.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(seq, "cursor saved");
                    break;
                }
                result => {
                    err.increment(1);
                    let error = match result {
                        Ok(Err(e)) => format!("{e}: {}", source_chain(&e)),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(seq, error = %error, "cursor save failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    if matches!(rx.has_changed(), Ok(true)) {
                        break; // a newer value supersedes this one
                    }
                }
            }
        }
    }
}

/// Mirrors the NATS connection state into the health registry.
async fn nats_monitor(client: fpaas_bus::Client, health: Health, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => match client.connection_state() {
                fpaas_bus::ConnectionState::Connected => health.up(COMPONENT_NATS, "connected"),
                state => health.down(COMPONENT_NATS, state.to_string()),
            },
        }
    }
}
