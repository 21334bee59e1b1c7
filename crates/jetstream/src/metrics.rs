//! The `/subscribe` metrics (`fpaas_subscribe_*`), exported at zero from the start so dashboards and alerts
//! see them before the first client.

/// Labels of `fpaas_subscribe_closed_total{reason}`.
pub const CLOSE_REASONS: [&str; 7] = [
    "client",
    "write_timeout",
    "ping_timeout",
    "retention",
    "bad_message",
    "shutdown",
    "error",
];

/// Labels of `fpaas_subscribe_rejected_total{reason}`.
pub const REJECT_REASONS: [&str; 3] = ["bad_request", "too_many_connections", "unavailable"];

/// Registers every series at zero.
pub fn register() {
    metrics::gauge!("fpaas_subscribe_connections").set(0.0);
    for reason in CLOSE_REASONS {
        metrics::counter!("fpaas_subscribe_closed_total", "reason" => reason).increment(0);
    }
    for reason in REJECT_REASONS {
        metrics::counter!("fpaas_subscribe_rejected_total", "reason" => reason).increment(0);
    }
    for name in [
        "fpaas_subscribe_events_sent_total",
        "fpaas_subscribe_sent_bytes_total",
        "fpaas_subscribe_catchups_total",
        "fpaas_subscribe_retention_closes_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::counter!("fpaas_subscribe_drops_total", "reason" => "not_an_event").increment(0);
}
