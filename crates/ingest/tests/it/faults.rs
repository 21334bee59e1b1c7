//! Malformed, truncated, unknown-type and oversize frames injected by relay-sim: each is a counted drop (by
//! reason, in `/metrics`), never a crash or a stall, and every good event still lands exactly once. Its own
//! test binary, because it reads the process-wide metrics registry.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use fpaas_ingest::Shuffler;
use fpaas_ops::Health;
use fpaas_sim::{FaultConfig, Sim, SimConfig, TruthEvent};
use fpaas_testkit::{NatsServer, eventually, prom_value};
use tokio_util::sync::CancellationToken;

const EVENTS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_are_counted_drops_and_the_stream_carries_on() {
    let prom = fpaas_ops::install_metrics();
    let nats = NatsServer::new();
    let faults = FaultConfig {
        malformed_every: Some(50),
        truncated_every: Some(70),
        unknown_type_every: Some(90),
        oversize_every: Some(400),
        hostile_every: None,
    };
    let (sim, _) = Sim::start(SimConfig {
        seed: 3,
        limit: Some(EVENTS),
        faults,
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    let shuffler = Shuffler::new(test_config(&nats.url(), &sim.url(), "faults"));
    let stats = shuffler.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(Health::new(), shutdown.clone()));

    let client = async_nats::connect(nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    eventually(Duration::from_secs(20), || async {
        sim.produced() >= EVENTS
            && stats.watermark_seq.load(Ordering::Relaxed) == sim.head_seq().unwrap_or(-1)
    })
    .await
    .unwrap_or_else(|e| panic!("did not reach the head: {e}; {:?}", stats.snapshot()));
    let truth = sim.truth();
    assert_eq!(
        stream_len(&js, "FIREHOSE").await,
        Some(expected_len(&truth))
    );
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &truth);

    let oversize = truth
        .iter()
        .filter(|t| matches!(t, TruthEvent::Op { oversize: true, .. }))
        .count() as f64;
    assert!(oversize >= 1.0, "the sim injected oversize records");
    let page = prom.render();
    for line in page
        .lines()
        .filter(|l| l.starts_with("fpaas_shuffler_drops_total"))
    {
        eprintln!("{line}");
    }
    let undecodable = prom_value(&page, "fpaas_shuffler_frames_total", "type=\"undecodable\"");
    let unknown = prom_value(&page, "fpaas_shuffler_frames_total", "type=\"unknown\"");
    let drops = prom_value(&page, "fpaas_shuffler_drops_total", "");
    let unknown_drops = prom_value(
        &page,
        "fpaas_shuffler_drops_total",
        "reason=\"unknown_frame\"",
    );
    // Injected "before every Nth event": about EVENTS / N of each.
    let (malformed, truncated, unknown_n) = (
        (EVENTS / 50) as f64,
        (EVENTS / 70) as f64,
        (EVENTS / 90) as f64,
    );
    assert!(
        undecodable >= malformed + truncated - 2.0,
        "undecodable {undecodable}, injected ~{}\n{page}",
        malformed + truncated
    );
    assert!(unknown >= unknown_n - 1.0, "unknown {unknown}\n{page}");
    assert_eq!(unknown, unknown_drops);
    assert!(
        drops >= undecodable + unknown + oversize,
        "every fault is a counted drop: drops {drops}, undecodable {undecodable}, unknown {unknown}, oversize {oversize}\n{page}"
    );
    assert!(!task.is_finished(), "still running");
    shutdown.cancel();
    let done = task.await.expect("join").expect("run ok");
    assert_eq!(done.cursor_seq, sim.head_seq());
    assert_eq!(done.drops as f64, drops);
}
