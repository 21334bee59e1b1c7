//! Per-subscription counters ([`SubCounters`]): kept in memory by the runner, rendered as Prometheus series
//! labelled by tenant and subscription at scrape time ([`Registry`], through `fpaas_ops::extra`: the
//! recorder would keep ~1.4 KB per series, 12.5 KB per subscription), and written to the stats bucket for
//! the API (when a count changed, at most once a second; lag-only changes every 30 s). Counts are cumulative
//! across workers: a runner starts from the figures its subscription already has in the bucket.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use chrono::{DateTime, Utc};
use fpaas_control::SubStats;

use crate::batch::Batch;

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
    /// For a subscription of a topic: the topic's last sequence at the last stats tick, which its lag is
    /// measured against; [`FIREHOSE_SOURCE`] for a firehose subscription (the registry's firehose position).
    pub source_last_seq: AtomicU64,
    last_error: Mutex<Option<(String, DateTime<Utc>)>>,
}

/// [`SubCounters::source_last_seq`] of a firehose subscription.
pub const FIREHOSE_SOURCE: u64 = u64::MAX;

impl SubCounters {
    /// Counters starting from `stats` (the figures already in the bucket).
    pub fn new(tenant: &str, subscription: &str, stats: &SubStats) -> Self {
        let c = Self {
            tenant: tenant.to_owned(),
            subscription: subscription.to_owned(),
            source_last_seq: AtomicU64::new(FIREHOSE_SOURCE),
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
        c
    }

    /// A batch was accepted.
    pub fn delivered(&self, batch: &Batch) {
        self.delivered_events
            .fetch_add(batch.events as u64, Ordering::Relaxed);
        self.delivered_batches.fetch_add(1, Ordering::Relaxed);
        self.delivered_bytes
            .fetch_add(batch.body.len() as u64, Ordering::Relaxed);
        if batch.first_time_us > 0 {
            let now_us = Utc::now().timestamp_micros();
            let age = (now_us - batch.first_time_us).max(0) as f64 / 1e6;
            metrics::histogram!("fpaas_pipeline_delivery_age_seconds").record(age);
        }
    }

    /// An attempt failed.
    pub fn failed(&self, error: String) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((error, Utc::now()));
    }

    /// A batch went to the dead letters.
    pub fn dead_lettered(&self, batch: &Batch) {
        self.dead_lettered_events
            .fetch_add(batch.events as u64, Ordering::Relaxed);
    }

    /// The last sequence of this subscription's source: its topic's, or `firehose_last_seq`.
    pub fn last_seq(&self, firehose_last_seq: u64) -> u64 {
        match self.source_last_seq.load(Ordering::Relaxed) {
            FIREHOSE_SOURCE => firehose_last_seq,
            topic => topic,
        }
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
            lag_events: self
                .last_seq(stream_last_seq)
                .saturating_sub(self.acked_seq.load(Ordering::Relaxed)),
            lag_seconds,
            updated_at: None,
        }
    }
}

/// The running subscriptions' counters of one worker, for the scrape.
#[derive(Debug, Default)]
pub struct Registry {
    subs: RwLock<BTreeMap<String, Arc<SubCounters>>>,
    /// The stream's last sequence at the last stats tick (the lag is measured against it).
    pub(crate) stream_last_seq: AtomicU64,
}

impl Registry {
    /// A registry whose subscriptions appear on this process's `/metrics` while it lives.
    pub fn new() -> Arc<Self> {
        static REGISTRIES: OnceLock<Mutex<Vec<Weak<Registry>>>> = OnceLock::new();
        let all = REGISTRIES.get_or_init(|| {
            fpaas_ops::extra::register(|out| {
                let live: Vec<Arc<Registry>> = REGISTRIES
                    .get()
                    .map(|m| {
                        let mut v = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        v.retain(|w| w.strong_count() > 0);
                        v.iter().filter_map(Weak::upgrade).collect()
                    })
                    .unwrap_or_default();
                render(&live, out);
            });
            Mutex::new(Vec::new())
        });
        let r = Arc::new(Self::default());
        all.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(&r));
        r
    }

    /// Adds (or replaces) a subscription's counters.
    pub fn insert(&self, id: &str, counters: Arc<SubCounters>) {
        self.subs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), counters);
    }

    /// Removes a subscription.
    pub fn remove(&self, id: &str) {
        self.subs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }

    /// Removes a subscription if `counters` are still the ones listed for it.
    pub fn remove_if_same(&self, id: &str, counters: &Arc<SubCounters>) {
        let mut subs = self
            .subs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if subs.get(id).is_some_and(|c| Arc::ptr_eq(c, counters)) {
            subs.remove(id);
        }
    }
}

type Value = fn(&SubCounters, u64, i64) -> f64;

/// The per-subscription families: name, type, help, value (counters, stream last seq, now in µs).
const FAMILIES: &[(&str, &str, &str, Value)] = &[
    (
        "fpaas_pipeline_matched_events_total",
        "counter",
        "Events that matched a subscription (per tenant, subscription).",
        |c, _, _| c.matched.load(Ordering::Relaxed) as f64,
    ),
    (
        "fpaas_pipeline_delivered_events_total",
        "counter",
        "Events in batches the receiver accepted (per tenant, subscription).",
        |c, _, _| c.delivered_events.load(Ordering::Relaxed) as f64,
    ),
    (
        "fpaas_pipeline_delivered_batches_total",
        "counter",
        "Batches the receiver accepted (per tenant, subscription).",
        |c, _, _| c.delivered_batches.load(Ordering::Relaxed) as f64,
    ),
    (
        "fpaas_pipeline_delivered_bytes_total",
        "counter",
        "Body bytes the receiver accepted (per tenant, subscription).",
        |c, _, _| c.delivered_bytes.load(Ordering::Relaxed) as f64,
    ),
    (
        "fpaas_pipeline_failed_attempts_total",
        "counter",
        "Delivery attempts that failed (per tenant, subscription).",
        |c, _, _| c.failed_attempts.load(Ordering::Relaxed) as f64,
    ),
    (
        "fpaas_pipeline_dead_lettered_events_total",
        "counter",
        "Events in dead-lettered batches (per tenant, subscription).",
        |c, _, _| c.dead_lettered_events.load(Ordering::Relaxed) as f64,
    ),
    (
        "fpaas_pipeline_lag_events",
        "gauge",
        "Stream positions between the stream's last sequence and the subscription's progress.",
        |c, last, _| {
            c.last_seq(last)
                .saturating_sub(c.acked_seq.load(Ordering::Relaxed)) as f64
        },
    ),
    (
        "fpaas_pipeline_lag_seconds",
        "gauge",
        "Age of the oldest matched event not yet accepted (0 when none waits).",
        |c, _, now| {
            let oldest = c.oldest_undelivered_us.load(Ordering::Relaxed);
            if oldest > 0 {
                (now - oldest).max(0) as f64 / 1e6
            } else {
                0.0
            }
        },
    ),
    (
        "fpaas_pipeline_retrying",
        "gauge",
        "1 while a batch waits for its next attempt.",
        |c, _, _| {
            if c.retrying.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            }
        },
    ),
];

/// Renders every family over the subscriptions of `registries` (families without a subscription are left
/// out, as the recorder does with unregistered series).
fn render(registries: &[Arc<Registry>], out: &mut String) {
    let now = Utc::now().timestamp_micros();
    let guards: Vec<_> = registries
        .iter()
        .map(|r| {
            (
                r.stream_last_seq.load(Ordering::Relaxed),
                r.subs
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        })
        .collect();
    if guards.iter().all(|(_, subs)| subs.is_empty()) {
        return;
    }
    for (name, kind, help, value) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (last, subs) in &guards {
            for (id, c) in subs.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{tenant=\"{}\",subscription=\"{}\"}} {}",
                    fpaas_ops::extra::escape_label(&c.tenant),
                    fpaas_ops::extra::escape_label(id),
                    value(c, *last, now)
                );
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_renders_one_series_per_subscription_and_family() {
        let r = Registry::new();
        let c = Arc::new(SubCounters::new("t_1", "s_1", &SubStats::default()));
        c.matched.store(7, Ordering::Relaxed);
        c.acked_seq.store(90, Ordering::Relaxed);
        r.stream_last_seq.store(100, Ordering::Relaxed);
        r.insert("s_1", c);
        let mut page = String::new();
        render(std::slice::from_ref(&r), &mut page);
        let samples: Vec<_> = fpaas_ops::prom::samples(&page).collect();
        assert_eq!(samples.len(), FAMILIES.len(), "{page}");
        let get = |n: &str| fpaas_ops::prom::sum(&page, n, &[("subscription", "s_1")]);
        assert_eq!(get("fpaas_pipeline_matched_events_total"), Some(7.0));
        assert_eq!(get("fpaas_pipeline_lag_events"), Some(10.0));
        r.remove("s_1");
        let mut page = String::new();
        render(&[r], &mut page);
        assert!(page.is_empty(), "{page}");
    }
}
