//! Relay-sim harness for tests: a real `subscribeRepos` WebSocket server on 127.0.0.1 with a fresh port, whose
//! ground truth (`Sim::truth()`) says exactly which events a consumer must end up with.

pub use fpaas_sim::{FaultConfig, Sim, SimConfig, TruthEvent};

/// Start a simulator with `cfg` on 127.0.0.1:0. Panics (test setup) if it cannot bind.
pub async fn start(cfg: SimConfig) -> Sim {
    let (sim, _addr) = Sim::start(cfg).await.expect("relay-sim failed to start");
    sim
}

/// A simulator emitting `limit` events at `rate` events/s (None = as fast as the client reads), seed 1.
pub async fn start_with(limit: u64, rate: Option<f64>) -> Sim {
    start(SimConfig {
        seed: 1,
        rate,
        limit: Some(limit),
        ..SimConfig::default()
    })
    .await
}

/// The truth events a consumer must end up with: everything except ops whose record is over the size limit
/// (those are dropped by design, counted as `record_too_large`).
pub fn deliverable(truth: &[TruthEvent]) -> Vec<&TruthEvent> {
    truth
        .iter()
        .filter(|t| !matches!(t, TruthEvent::Op { oversize: true, .. }))
        .collect()
}
