//! The process-wide Prometheus recorder. Installed once (a global `OnceLock`), so every caller —
//! the binary, each test in one test process — gets the same handle and a second call never
//! panics. Metrics ending in `_seconds` and `_bytes` get explicit buckets so they are exported as
//! Prometheus histograms (aggregatable across pods), not client-side summaries.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of every `*_seconds` histogram: 0.5 ms … 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets of every `*_bytes` histogram: 256 B … 16 MiB (covers firehose frames ≤ 5 MB).
pub const BYTES_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];

/// How often histogram samples are folded into buckets when nobody scrapes (bounds memory).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (first call) and returns its handle (every call).
///
/// Also starts one background thread that runs the recorder's upkeep every 5 s, so histogram
/// samples do not pile up between scrapes. If another recorder was installed globally before
/// (outside this function), a warning is logged and the returned handle renders an empty registry;
/// nothing panics.
pub fn install_metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            if let Err(err) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %err, "a metrics recorder was already installed; /metrics will be empty");
            }
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("fpaas-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "could not start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}

fn builder() -> PrometheusBuilder {
    // Both bucket lists are non-empty constants, the only error case of `set_buckets_for_metric`.
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
        .unwrap_or_else(|err| {
            tracing::error!(error = %err, "invalid histogram buckets; exporting summaries");
            PrometheusBuilder::new()
        })
}
