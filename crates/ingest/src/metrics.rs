//! The shuffler's metrics (names `fpaas_shuffler_<name>_<unit>`) and the in-process [`LiveStats`] counters that
//! tests, benchmarks and `fpaas dev` read without scraping. Hot-path handles are resolved once per run
//! ([`Metrics::new`]), after the recorder is installed.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fpaas_shuffler_frames_total` | counter | `type` (commit, identity, account, sync, info, error, unknown, undecodable) |
//! | `fpaas_shuffler_events_total` | counter | `kind` (commit, identity, account, sync) — events normalized |
//! | `fpaas_shuffler_published_total` | counter | — events JetStream acked as newly stored |
//! | `fpaas_shuffler_dedup_hits_total` | counter | — acks that said "duplicate" |
//! | `fpaas_shuffler_publish_latency_seconds` | histogram | — publish → ack |
//! | `fpaas_shuffler_publish_failures_total` | counter | `error` (bus error kind) |
//! | `fpaas_shuffler_acks_in_flight` | gauge | — |
//! | `fpaas_shuffler_pending_frames` | gauge | — frames read, not yet behind the watermark |
//! | `fpaas_shuffler_watermark_seq` | gauge | — highest seq with everything acked |
//! | `fpaas_shuffler_cursor_seq` | gauge | — last seq saved to the cursor bucket |
//! | `fpaas_shuffler_relay_seq` | gauge | — last seq read |
//! | `fpaas_shuffler_behind_seconds` | gauge | — now minus the event time of the last frame read |
//! | `fpaas_shuffler_reconnects_total` | counter | `reason` |
//! | `fpaas_shuffler_nats_outages_total` | counter | — recoveries after a publish failure |
//! | `fpaas_shuffler_drops_total` | counter | `reason` |
//! | `fpaas_shuffler_outdated_cursor_total` | counter | — `#info OutdatedCursor` (events skipped by the relay) |
//! | `fpaas_shuffler_cursor_saves_total` | counter | `result` (ok, error) |
//! | `fpaas_shuffler_stale_resumes_total` | counter | — resumes from a cursor older than the duplicate window |
//! | `fpaas_shuffler_frame_size_bytes` | histogram | — relay frame size |
//! | `fpaas_shuffler_message_size_bytes` | histogram | — published payload size |
//! | `fpaas_shuffler_relay_connected` | gauge | — 1 while a relay connection is open |

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Counters of one shuffler run, readable while it runs (`Arc` shared with the caller).
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Frames read from the relay.
    pub frames: AtomicU64,
    /// Events normalized (before publishing).
    pub events: AtomicU64,
    /// Events JetStream acked as newly stored.
    pub published: AtomicU64,
    /// Acks that were dedup hits.
    pub duplicates: AtomicU64,
    /// Frames or ops dropped (any reason).
    pub drops: AtomicU64,
    /// Relay reconnects (any reason).
    pub reconnects: AtomicU64,
    /// Recoveries from a publish failure (NATS unreachable or slow).
    pub nats_outages: AtomicU64,
    /// Cursor saves that succeeded.
    pub cursor_saves: AtomicU64,
    /// Relay connections opened.
    pub relay_connects: AtomicU64,
    /// Resumes from a cursor older than the stream's duplicate window.
    pub stale_resumes: AtomicU64,
    /// Last saved cursor (`i64::MIN` = none yet).
    pub cursor_seq: AtomicI64,
    /// Current watermark (`i64::MIN` = none yet).
    pub watermark_seq: AtomicI64,
    /// Acks in flight now.
    pub acks_in_flight: AtomicU64,
    /// Most acks in flight seen at once.
    pub max_acks_in_flight_seen: AtomicU64,
    /// Most frames pending behind the watermark seen at once.
    pub max_pending_frames_seen: AtomicU64,
}

impl LiveStats {
    /// Fresh counters.
    pub fn new() -> Self {
        Self {
            cursor_seq: AtomicI64::new(i64::MIN),
            watermark_seq: AtomicI64::new(i64::MIN),
            ..Self::default()
        }
    }

    /// A plain copy of the counters.
    pub fn snapshot(&self) -> ShufflerStats {
        let opt = |v: i64| (v != i64::MIN).then_some(v);
        ShufflerStats {
            frames: self.frames.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            nats_outages: self.nats_outages.load(Ordering::Relaxed),
            cursor_saves: self.cursor_saves.load(Ordering::Relaxed),
            relay_connects: self.relay_connects.load(Ordering::Relaxed),
            stale_resumes: self.stale_resumes.load(Ordering::Relaxed),
            cursor_seq: opt(self.cursor_seq.load(Ordering::Relaxed)),
            watermark_seq: opt(self.watermark_seq.load(Ordering::Relaxed)),
            acks_in_flight: self.acks_in_flight.load(Ordering::Relaxed),
            max_acks_in_flight_seen: self.max_acks_in_flight_seen.load(Ordering::Relaxed),
            max_pending_frames_seen: self.max_pending_frames_seen.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`LiveStats`]; also what a finished run returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShufflerStats {
    /// Frames read from the relay.
    pub frames: u64,
    /// Events normalized.
    pub events: u64,
    /// Events JetStream acked as newly stored.
    pub published: u64,
    /// Acks that were dedup hits.
    pub duplicates: u64,
    /// Frames or ops dropped.
    pub drops: u64,
    /// Relay reconnects.
    pub reconnects: u64,
    /// Recoveries from publish failures.
    pub nats_outages: u64,
    /// Successful cursor saves.
    pub cursor_saves: u64,
    /// Relay connections opened.
    pub relay_connects: u64,
    /// Resumes from a cursor older than the stream's duplicate window.
    pub stale_resumes: u64,
    /// Last saved cursor.
    pub cursor_seq: Option<i64>,
    /// Current watermark.
    pub watermark_seq: Option<i64>,
    /// Acks in flight now.
    pub acks_in_flight: u64,
    /// Most acks in flight seen at once.
    pub max_acks_in_flight_seen: u64,
    /// Most pending frames seen at once.
    pub max_pending_frames_seen: u64,
}

/// Metric handles of the hot path.
pub(crate) struct Metrics {
    pub published: Counter,
    pub dedup_hits: Counter,
    pub latency: Histogram,
    pub acks_in_flight: Gauge,
    pub pending_frames: Gauge,
    pub watermark_seq: Gauge,
    pub relay_seq: Gauge,
    pub behind: Gauge,
    pub frame_size: Histogram,
    pub message_size: Histogram,
    pub relay_connected: Gauge,
    events_commit: Counter,
    events_identity: Counter,
    events_account: Counter,
    events_sync: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        // Rare events are counted from zero, so that their series exist (alerts and dashboards see a 0, not a
        // missing metric) before the first one happens.
        for name in [
            "fpaas_shuffler_nats_outages_total",
            "fpaas_shuffler_outdated_cursor_total",
            "fpaas_shuffler_stale_resumes_total",
        ] {
            counter!(name).increment(0);
        }
        Self {
            published: counter!("fpaas_shuffler_published_total"),
            dedup_hits: counter!("fpaas_shuffler_dedup_hits_total"),
            latency: histogram!("fpaas_shuffler_publish_latency_seconds"),
            acks_in_flight: gauge!("fpaas_shuffler_acks_in_flight"),
            pending_frames: gauge!("fpaas_shuffler_pending_frames"),
            watermark_seq: gauge!("fpaas_shuffler_watermark_seq"),
            relay_seq: gauge!("fpaas_shuffler_relay_seq"),
            behind: gauge!("fpaas_shuffler_behind_seconds"),
            frame_size: histogram!("fpaas_shuffler_frame_size_bytes"),
            message_size: histogram!("fpaas_shuffler_message_size_bytes"),
            relay_connected: gauge!("fpaas_shuffler_relay_connected"),
            events_commit: counter!("fpaas_shuffler_events_total", "kind" => "commit"),
            events_identity: counter!("fpaas_shuffler_events_total", "kind" => "identity"),
            events_account: counter!("fpaas_shuffler_events_total", "kind" => "account"),
            events_sync: counter!("fpaas_shuffler_events_total", "kind" => "sync"),
        }
    }

    pub fn event(&self, kind: fpaas_event::Kind) {
        match kind {
            fpaas_event::Kind::Commit => self.events_commit.increment(1),
            fpaas_event::Kind::Identity => self.events_identity.increment(1),
            fpaas_event::Kind::Account => self.events_account.increment(1),
            fpaas_event::Kind::Sync => self.events_sync.increment(1),
        }
    }
}

/// Counts a frame by type.
pub(crate) fn frame(kind: &'static str) {
    counter!("fpaas_shuffler_frames_total", "type" => kind).increment(1);
}

/// Counts a drop by reason.
pub(crate) fn drop(reason: &'static str) {
    counter!("fpaas_shuffler_drops_total", "reason" => reason).increment(1);
}

/// Counts a relay reconnect by reason.
pub(crate) fn reconnect(reason: &'static str) {
    counter!("fpaas_shuffler_reconnects_total", "reason" => reason).increment(1);
}
