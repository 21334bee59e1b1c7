//! Per-subscription counters ([`SubCounters`]): kept in memory by the runner, exported as Prometheus
//! metrics labelled by tenant and subscription, and written to the stats bucket (at most once a second,
//! only when they changed) for the API. Counts are cumulative across workers: a runner starts from the
//! figures its subscription already has in the bucket.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use fpaas_control::SubStats;

use crate::batch::Batch;

/// The subscription's Prometheus series, registered once (a lookup by name and labels per update would cost
/// a hash of the labels and two string copies, every second for every subscription).
struct Handles {
    matched: metrics::Counter,
    delivered_events: metrics::Counter,
    delivered_batches: metrics::Counter,
    delivered_bytes: metrics::Counter,
    failed_attempts: metrics::Counter,
    dead_lettered_events: metrics::Counter,
    lag_events: metrics::Gauge,
    lag_seconds: metrics::Gauge,
    retrying: metrics::Gauge,
}

impl Default for Handles {
    fn default() -> Self {
        Self {
            matched: metrics::Counter::noop(),
            delivered_events: metrics::Counter::noop(),
            delivered_batches: metrics::Counter::noop(),
            delivered_bytes: metrics::Counter::noop(),
            failed_attempts: metrics::Counter::noop(),
            dead_lettered_events: metrics::Counter::noop(),
            lag_events: metrics::Gauge::noop(),
            lag_seconds: metrics::Gauge::noop(),
            retrying: metrics::Gauge::noop(),
        }
    }
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handles")
    }
}

/// Counters of one subscription (see the module docs).
#[derive(Debug, Default)]
pub struct SubCounters {
    /// Tenant (metric label).
    pub tenant: String,
    /// Subscription (metric label).
    pub subscription: String,
    /// Events matched.
    pub matched: AtomicU64,
    /// Events accepted by the receiver.
    pub delivered_events: AtomicU64,
    /// Batches accepted.
    pub delivered_batches: AtomicU64,
    /// Body bytes accepted.
    pub delivered_bytes: AtomicU64,
    /// Failed attempts.
    pub failed_attempts: AtomicU64,
    /// Events dead-lettered.
    pub dead_lettered_events: AtomicU64,
    /// Events the transform failed on (skipped).
    pub transform_errors: AtomicU64,
    /// Batches finished after a restart or a move (same id as their first attempt).
    pub redelivered_batches: AtomicU64,
    /// Times the queue overflowed and the subscription caught up on its own.
    pub fell_behind: AtomicU64,
    /// Waiting for a retry.
    pub retrying: AtomicBool,
    /// Saved progress.
    pub acked_seq: AtomicU64,
    /// Event time (µs) of the oldest event of the batch being delivered, 0 when none.
    pub oldest_undelivered_us: AtomicI64,
    last_error: Mutex<Option<(String, DateTime<Utc>)>>,
    m: Handles,
}

impl SubCounters {
    /// Counters starting from `stats` (the figures already in the bucket).
    pub fn new(tenant: &str, subscription: &str, stats: &SubStats) -> Self {
        let c = Self {
            tenant: tenant.to_owned(),
            subscription: subscription.to_owned(),
            ..Self::default()
        };
        c.matched.store(stats.matched_events, Ordering::Relaxed);
        c.delivered_events
            .store(stats.delivered_events, Ordering::Relaxed);
        c.delivered_batches
            .store(stats.delivered_batches, Ordering::Relaxed);
        c.delivered_bytes
            .store(stats.delivered_bytes, Ordering::Relaxed);
        c.failed_attempts
            .store(stats.failed_attempts, Ordering::Relaxed);
        c.dead_lettered_events
            .store(stats.dead_lettered_events, Ordering::Relaxed);
        if let (Some(e), Some(at)) = (&stats.last_error, stats.last_error_at) {
            *c.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((e.clone(), at));
        }
        // Exported from where the subscription's counts are, so its series continue across workers.
        let labels = c.labels();
        let counter = |name: &'static str, value: u64| {
            let h = metrics::counter!(name, &labels);
            h.absolute(value);
            h
        };
        let m = Handles {
            matched: counter("fpaas_pipeline_matched_events_total", stats.matched_events),
            delivered_events: counter(
                "fpaas_pipeline_delivered_events_total",
                stats.delivered_events,
            ),
            delivered_batches: counter(
                "fpaas_pipeline_delivered_batches_total",
                stats.delivered_batches,
            ),
            delivered_bytes: counter(
                "fpaas_pipeline_delivered_bytes_total",
                stats.delivered_bytes,
            ),
            failed_attempts: counter(
                "fpaas_pipeline_failed_attempts_total",
                stats.failed_attempts,
            ),
            dead_lettered_events: counter(
                "fpaas_pipeline_dead_lettered_events_total",
                stats.dead_lettered_events,
            ),
            lag_events: metrics::gauge!("fpaas_pipeline_lag_events", &labels),
            lag_seconds: metrics::gauge!("fpaas_pipeline_lag_seconds", &labels),
            retrying: metrics::gauge!("fpaas_pipeline_retrying", &labels),
        };
        Self { m, ..c }
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [
            ("tenant", self.tenant.clone()),
            ("subscription", self.subscription.clone()),
        ]
    }

    /// A batch was accepted.
    pub fn delivered(&self, batch: &Batch) {
        self.delivered_events
            .fetch_add(batch.events as u64, Ordering::Relaxed);
        self.delivered_batches.fetch_add(1, Ordering::Relaxed);
        self.delivered_bytes
            .fetch_add(batch.body.len() as u64, Ordering::Relaxed);
        self.m.delivered_events.increment(batch.events as u64);
        self.m.delivered_batches.increment(1);
        self.m.delivered_bytes.increment(batch.body.len() as u64);
        if batch.first_time_us > 0 {
            let now_us = Utc::now().timestamp_micros();
            let age = (now_us - batch.first_time_us).max(0) as f64 / 1e6;
            metrics::histogram!("fpaas_pipeline_delivery_age_seconds").record(age);
        }
    }

    /// An attempt failed.
    pub fn failed(&self, error: String) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        self.m.failed_attempts.increment(1);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((error, Utc::now()));
    }

    /// A batch went to the dead letters.
    pub fn dead_lettered(&self, batch: &Batch) {
        self.dead_lettered_events
            .fetch_add(batch.events as u64, Ordering::Relaxed);
        self.m.dead_lettered_events.increment(batch.events as u64);
    }

    /// The figures for the stats bucket, with the lag against the stream's last sequence.
    pub fn snapshot(&self, stream_last_seq: u64) -> SubStats {
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let oldest = self.oldest_undelivered_us.load(Ordering::Relaxed);
        let lag_seconds = if oldest > 0 {
            (Utc::now().timestamp_micros() - oldest).max(0) as f64 / 1e6
        } else {
            0.0
        };
        SubStats {
            matched_events: self.matched.load(Ordering::Relaxed),
            delivered_events: self.delivered_events.load(Ordering::Relaxed),
            delivered_batches: self.delivered_batches.load(Ordering::Relaxed),
            delivered_bytes: self.delivered_bytes.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            dead_lettered_events: self.dead_lettered_events.load(Ordering::Relaxed),
            retrying: self.retrying.load(Ordering::Relaxed),
            last_error_at: last_error.as_ref().map(|(_, at)| *at),
            last_error: last_error.map(|(e, _)| e),
            lag_events: stream_last_seq.saturating_sub(self.acked_seq.load(Ordering::Relaxed)),
            lag_seconds,
            updated_at: None,
        }
    }

    /// Sets the gauges (and the matched-events counter) of this subscription from `stats`.
    pub fn export_gauges(&self, stats: &SubStats) {
        self.m.matched.absolute(stats.matched_events);
        self.m.lag_events.set(stats.lag_events as f64);
        self.m.lag_seconds.set(stats.lag_seconds);
        self.m.retrying.set(if stats.retrying { 1.0 } else { 0.0 });
    }
}
