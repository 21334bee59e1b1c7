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
use fpaas_bus::{BusErrorKind, Completion, JetStream, OutMsg, Publisher, StreamAction};
use fpaas_event::{HEADER_DID, HEADER_SEQ, HEADER_TIME_US};
use fpaas_ops::Health;
use fpaas_proto::frame::Frame;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::ShufflerConfig;
use crate::cursor::{CursorKv, CursorRecord, resume_point};
use crate::error::IngestError;
use crate::metrics::{self, LiveStats, Metrics, ShufflerStats};
use crate::relay::{RelayConnection, subscribe_url};
use crate::watermark::Watermark;

/// Health component: the NATS connection.
pub const COMPONENT_NATS: &str = "nats";
/// Health component: the stream is provisioned and answering.
pub const COMPONENT_STREAM: &str = "stream";
/// Health component: a relay connection is open.
pub const COMPONENT_RELAY: &str = "relay";

/// Bytes a message's headers add beyond their text (`NATS/1.0\r\n`, `: `, `\r\n`, final `\r\n`): used to
/// estimate the stored size against the stream's `max_msg_size` before publishing.
const HEADER_OVERHEAD: usize = 16;

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
        let js = fpaas_bus::jetstream(client.clone(), cfg.max_acks_in_flight);
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
    // 2. The cursor bucket, and where to resume.
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
        return Ok(stats.snapshot());
    };
    let own = stored
        .iter()
        .find(|(k, _)| *k == cfg.instance)
        .map(|(_, v)| v.clone());
    let resume = resume_point(&cfg.instance, &relay_key, &stored).or(cfg.start_cursor);
    tracing::info!(own = ?own, resume = ?resume, cursors = stored.len(), "resuming");
    if let Some(seq) = resume {
        stats.cursor_seq.store(seq, Ordering::Relaxed);
        ::metrics::gauge!("fpaas_shuffler_cursor_seq").set(seq as f64);
    }

    // 3. The cursor saver: persists watermark values handed over by the loop, in order, off the hot path.
    let (cursor_tx, cursor_rx) = watch::channel(resume);
    let saver = tokio::spawn(cursor_saver(
        kv,
        relay_key.clone(),
        cfg.instance.clone(),
        cursor_rx,
        Arc::clone(&stats),
        cfg.backoff(),
    ));

    let max_msg_size = usize::try_from(cfg.stream.max_msg_size).unwrap_or(usize::MAX);
    let mut runner = Runner {
        publisher: Publisher::new(js.clone(), cfg.max_acks_in_flight),
        wm: Watermark::new(resume),
        js,
        m: Metrics::new(),
        health,
        stats,
        cursor_tx,
        last_sent_cursor: resume,
        events_since_save: 0,
        max_msg_size,
        cfg,
    };
    runner.main_loop(resume, &shutdown).await;

    // 4. Shutdown: in-flight publishes are drained by the loop; hand over the final watermark and let the
    // saver write it.
    runner.send_cursor();
    let drain = runner.cfg.drain_timeout();
    let stats = Arc::clone(&runner.stats);
    drop(runner);
    let mut saver = saver;
    if tokio::time::timeout(drain, &mut saver).await.is_err() {
        tracing::error!("final cursor save did not finish in time");
        saver.abort();
    }
    let out = stats.snapshot();
    tracing::info!(stats = ?out, "shuffler stopped");
    Ok(out)
}

/// Everything the loop mutates.
struct Runner {
    cfg: ShufflerConfig,
    js: JetStream,
    publisher: Publisher,
    wm: Watermark,
    m: Metrics,
    health: Health,
    stats: Arc<LiveStats>,
    cursor_tx: watch::Sender<Option<i64>>,
    last_sent_cursor: Option<i64>,
    events_since_save: u64,
    max_msg_size: usize,
}

impl Runner {
    async fn main_loop(&mut self, resume: Option<i64>, shutdown: &CancellationToken) {
        let mut cursor = resume;
        let mut relay_backoff = self.cfg.backoff();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
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
            tracing::info!(url = conn.url(), cursor = ?cursor, "relay connected");
            self.health.up(COMPONENT_RELAY, conn.url().to_owned());
            self.m.relay_connected.set(1.0);
            let frames_before = self.stats.frames.load(Ordering::Relaxed);
            let end = self.session(&mut conn, shutdown).await;
            self.m.relay_connected.set(0.0);
            self.health.down(COMPONENT_RELAY, end.reason());
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
            if self.stats.frames.load(Ordering::Relaxed) > frames_before {
                relay_backoff.reset();
            }
            if matches!(end, SessionEnd::Shutdown) {
                break;
            }
            self.count_reconnect(end.reason());
            // Let what is in flight finish; acks still count, a failure means NATS needs a wait.
            let failed = self.settle().await || matches!(end, SessionEnd::PublishFailed);
            match &end {
                SessionEnd::PublishFailed => {
                    tracing::warn!(
                        watermark = ?self.wm.watermark(),
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
            if matches!(end, SessionEnd::FutureCursor) {
                self.wm.forget();
            } else {
                self.wm.reset();
            }
            self.update_gauges();
            self.send_cursor();
            cursor = self.wm.watermark();
            if !failed && !sleep_or_shutdown(relay_backoff.next_delay(), shutdown).await {
                break;
            }
        }
        // Shutdown: drain what is in flight so the final cursor covers it.
        self.settle().await;
        self.update_gauges();
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
        let frame = match fpaas_proto::frame::decode_frame_bytes(&bytes) {
            Ok(f) => f,
            Err(e) => {
                metrics::frame("undecodable");
                self.count_drop(e.kind().as_str());
                tracing::debug!(reason = e.kind().as_str(), error = %e, size = bytes.len(), "undecodable frame dropped");
                self.wm.push(None, 0);
                return None;
            }
        };
        let seq = match &frame {
            Frame::Commit(c) => Some(c.seq),
            Frame::Identity(m) => Some(m.seq),
            Frame::Account(m) => Some(m.seq),
            Frame::Sync(m) => Some(m.seq),
            Frame::Error(e) => {
                metrics::frame("error");
                return Some(match e.error.as_str() {
                    "FutureCursor" => SessionEnd::FutureCursor,
                    "ConsumerTooSlow" => SessionEnd::ConsumerTooSlow,
                    other => SessionEnd::RelayErrorFrame(format!(
                        "{other}: {}",
                        e.message.as_deref().unwrap_or("")
                    )),
                });
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
                return None;
            }
            Frame::Unknown(_) => {
                metrics::frame("unknown");
                self.count_drop("unknown_frame");
                self.wm.push(None, 0);
                return None;
            }
        };
        metrics::frame(frame.kind_label());
        let normalized = fpaas_event::normalize(&frame);
        drop(frame);
        for d in &normalized.dropped {
            self.count_drop(d.reason.0);
            tracing::debug!(reason = d.reason.0, what = %d.what, detail = %d.detail, "op dropped");
        }
        let mut msgs = Vec::with_capacity(normalized.events.len());
        for ev in &normalized.events {
            self.m.event(ev.kind);
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            let payload = Bytes::from(ev.to_json_vec());
            let msg_id = fpaas_event::msg_id(ev);
            let headers = vec![
                (HEADER_DID, ev.did.clone()),
                (HEADER_SEQ, ev.seq.to_string()),
                (HEADER_TIME_US, ev.time_us.to_string()),
            ];
            let size = payload.len()
                + "Nats-Msg-Id".len()
                + msg_id.len()
                + headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 4)
                    .sum::<usize>()
                + HEADER_OVERHEAD;
            if size > self.max_msg_size {
                self.count_drop("payload_too_large");
                tracing::warn!(msg_id = %msg_id, size, max = self.max_msg_size, "event larger than the stream's max_msg_size dropped");
                continue;
            }
            self.m.message_size.record(payload.len() as f64);
            msgs.push(OutMsg {
                subject: fpaas_event::subject(ev),
                msg_id,
                headers,
                payload,
                token: 0,
            });
        }
        if let Some(ev) = normalized.events.last()
            && ev.time_us > 0
        {
            let now_us = chrono::Utc::now().timestamp_micros();
            self.m.behind.set((now_us - ev.time_us) as f64 / 1e6);
        }
        if let Some(s) = seq {
            self.m.relay_seq.set(s as f64);
        }
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
                        ::metrics::counter!("fpaas_shuffler_publish_failures_total", "kind" => "capacity_timeout").increment(1);
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
                self.wm.ack(acked.token);
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
                        ::metrics::counter!("fpaas_shuffler_publish_failures_total", "kind" => kind.as_str()).increment(1);
                        if kind == BusErrorKind::NoResponders {
                            self.health.down(COMPONENT_STREAM, failed.error.to_string());
                        }
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
                    self.publisher = Publisher::new(self.js.clone(), self.cfg.max_acks_in_flight);
                    failed = true;
                    break;
                }
            }
        }
        self.update_gauges();
        failed
    }

    /// Probes NATS (re-provisioning the stream) with backoff until it answers. `false` on shutdown.
    async fn wait_for_nats(&mut self, shutdown: &CancellationToken) -> bool {
        let mut backoff = self.cfg.backoff();
        let timeout = self.cfg.publish_timeout();
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
    Fut: std::future::Future<Output = Result<T, IngestError>>,
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
            let record = CursorRecord::now(seq, &relay, &instance);
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
                async_nats::connection::State::Connected => health.up(COMPONENT_NATS, "connected"),
                state => health.down(COMPONENT_NATS, state.to_string()),
            },
        }
    }
}
