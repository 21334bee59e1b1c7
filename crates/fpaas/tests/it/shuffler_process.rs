//! The `fpaas shuffler` process against a real nats-server and relay-sim: kill -9 mid-stream several times,
//! and two shufflers on different relays with one killed and restarted. In every case the stream must hold
//! every simulated event exactly once (compared with the simulator's ground truth).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fpaas_sim::{Sim, SimConfig};
use fpaas_testkit::stream::*;
use fpaas_testkit::{
    NatsServer, eventually, eventually_some, free_port, prom_value, workspace_root,
};

/// A running `fpaas shuffler` child process and its ops address.
struct ShufflerProc {
    child: Child,
    ops: String,
}

impl ShufflerProc {
    fn spawn(nats_url: &str, relay: &str, instance: &str) -> Self {
        Self::spawn_with(nats_url, relay, instance, &[])
    }

    /// Like [`ShufflerProc::spawn`], with extra flags.
    fn spawn_with(nats_url: &str, relay: &str, instance: &str, extra: &[&str]) -> Self {
        let ops = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_fpaas"))
            .args(["shuffler", "--relay", relay, "--instance", instance])
            .args(["--nats-url", nats_url, "--metrics-listen", &ops])
            .args([
                "--cursor-save-every",
                "100",
                "--cursor-save-interval-ms",
                "100",
            ])
            .args(["--backoff-min-ms", "20", "--backoff-max-ms", "500"])
            .args(["--start-cursor", "0"])
            .args(if extra.iter().any(|a| a.starts_with("--max-bytes")) {
                &[][..]
            } else {
                &["--max-bytes", "268435456"][..]
            })
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fpaas shuffler");
        Self { child, ops }
    }

    /// SIGKILL: no drain, no final cursor save.
    fn kill_9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status (graceful: drain + cursor save).
    async fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        eventually_some(Duration::from_secs(20), || {
            let r = self.child.try_wait().expect("try_wait");
            async move { r }
        })
        .await
        .expect("exited after SIGTERM")
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = reqwest::get(format!("http://{}{path}", self.ops))
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    async fn metric(&self, name: &str, filter: &str) -> f64 {
        match self.get("/metrics").await {
            Some((200, page)) => prom_value(&page, name, filter),
            _ => 0.0,
        }
    }
}

impl Drop for ShufflerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(url).await.expect("nats"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_several_times_keeps_every_event_exactly_once() {
    const EVENTS: u64 = 4_000;
    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 21,
        rate: Some(300.0),
        limit: Some(EVENTS),
        rare_boost: 50,
        ..Default::default()
    })
    .await
    .expect("sim");
    let js = jetstream(&nats.url()).await;
    let mut proc = ShufflerProc::spawn(&nats.url(), &sim.url(), "k");
    for round in 0..3 {
        let before = stream_len(&js, "FIREHOSE").await.unwrap_or(0);
        eventually(Duration::from_secs(15), || async {
            stream_len(&js, "FIREHOSE").await.unwrap_or(0) > before + 250
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: no progress: {e}"));
        assert!(
            sim.produced() < EVENTS,
            "round {round}: the kill must land mid-stream"
        );
        proc.kill_9();
        proc = ShufflerProc::spawn(&nats.url(), &sim.url(), "k");
    }
    eventually(Duration::from_secs(30), || async {
        sim.produced() >= EVENTS
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .expect("every event in the stream after the kills");
    let truth = sim.truth();
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &truth);

    // The surviving process serves the ops endpoints, and SIGTERM saves the cursor at the head.
    let ready = eventually_some(Duration::from_secs(5), || async {
        proc.get("/ready").await.filter(|(s, _)| *s == 200)
    })
    .await;
    assert!(ready.is_ok(), "ready");
    let (status, page) = proc.get("/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(page.contains("fpaas_shuffler_events_total"), "{page}");
    let (status, detailed) = proc.get("/health/detailed").await.expect("detailed");
    assert_eq!(status, 200);
    assert!(
        detailed.contains("\"relay\"") && detailed.contains("\"stream\""),
        "{detailed}"
    );
    let head = sim.head_seq();
    eventually(Duration::from_secs(10), || async {
        stored_cursor(&js, "k").await == head
    })
    .await
    .expect("cursor reaches the head while running");
    let exit = proc.terminate().await;
    assert!(exit.success(), "graceful exit: {exit:?}");
    assert_eq!(stored_cursor(&js, "k").await, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shufflers_on_different_relays_no_duplicates_through_kill_and_restart() {
    const EVENTS: u64 = 4_000;
    let nats = NatsServer::new();
    let sim_cfg = |start_seq| SimConfig {
        seed: 5,
        rate: Some(300.0),
        limit: Some(EVENTS),
        rare_boost: 50,
        start_seq,
        ..Default::default()
    };
    // Two relays serving the same events under different seqs.
    let (sim_a, _) = Sim::start(sim_cfg(1)).await.expect("sim a");
    let (sim_b, _) = Sim::start(sim_cfg(SEQ_MOD + 1)).await.expect("sim b");
    let js = jetstream(&nats.url()).await;
    let mut a = ShufflerProc::spawn(&nats.url(), &sim_a.url(), "ha-a");
    let mut b = ShufflerProc::spawn(&nats.url(), &sim_b.url(), "ha-b");

    eventually(Duration::from_secs(15), || async {
        a.metric("fpaas_shuffler_events_total", "").await > 200.0
            && b.metric("fpaas_shuffler_events_total", "").await > 200.0
    })
    .await
    .expect("both shufflers publishing");

    b.kill_9();
    let before = stream_len(&js, "FIREHOSE").await.unwrap_or(0);
    eventually(Duration::from_secs(10), || async {
        stream_len(&js, "FIREHOSE").await.unwrap_or(0) > before + 300
    })
    .await
    .expect("a carries on alone");
    assert!(a.is_running());
    assert!(sim_a.produced() < EVENTS, "the kill landed mid-stream");

    let b = ShufflerProc::spawn(&nats.url(), &sim_b.url(), "ha-b");
    eventually(Duration::from_secs(30), || async {
        sim_a.produced() >= EVENTS
            && sim_b.produced() >= EVENTS
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim_a.truth()))
            && b.metric("fpaas_shuffler_dedup_hits_total", "").await > 0.0
    })
    .await
    .expect("every event stored; the restarted b re-publishes only duplicates");
    assert_eq!(
        truth_keys(&sim_a.truth()),
        truth_keys(&sim_b.truth()),
        "both relays serve the same events"
    );
    let dups = a.metric("fpaas_shuffler_dedup_hits_total", "").await
        + b.metric("fpaas_shuffler_dedup_hits_total", "").await;
    assert!(dups > 0.0, "the two shufflers overlapped");
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim_a.truth());
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    assert_eq!(stored_cursor(&js, "ha-a").await, sim_a.head_seq());
    assert_eq!(stored_cursor(&js, "ha-b").await, sim_b.head_seq());
}

/// Resident memory of a process in KiB (Linux `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// nats-server stopped for 10 s while the relay could serve as fast as the shuffler reads: the process keeps
/// running, stops reading (its RSS stays flat — no unbounded queue), and afterwards the stream is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_process_memory_stays_flat_and_nothing_is_lost() {
    const EVENTS: u64 = 30_000;
    let mut nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 17,
        rate: None, // as fast as the shuffler reads: an unbounded reader would swallow the rest during the outage
        limit: Some(EVENTS),
        ..Default::default()
    })
    .await
    .expect("sim");
    let js = jetstream(&nats.url()).await;
    let mut proc = ShufflerProc::spawn(&nats.url(), &sim.url(), "mem");
    let pid = proc.child.id();
    eventually(Duration::from_secs(20), || async {
        stream_len(&js, "FIREHOSE").await.unwrap_or(0) > 3_000
    })
    .await
    .expect("publishing");
    let before = rss_kib(pid).expect("rss");
    tokio::task::block_in_place(|| nats.stop());
    let produced_at_stop = sim.produced();
    let stopped = std::time::Instant::now();
    let mut peak = before;
    while stopped.elapsed() < Duration::from_secs(10) {
        assert!(proc.is_running(), "the shuffler exited during the outage");
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let read_during = sim.produced() - produced_at_stop;
    tokio::task::block_in_place(|| nats.start());
    eprintln!(
        "outage: rss before {before} KiB, peak {peak} KiB; events the relay produced during the outage: {read_during}"
    );
    assert!(
        read_during < 5_000,
        "the shuffler stopped reading the relay (read {read_during} events during the outage)"
    );
    assert!(
        peak < before + 32 * 1024,
        "memory bounded during the outage: {before} KiB → peak {peak} KiB"
    );
    let js = jetstream(&nats.url()).await;
    eventually(Duration::from_secs(40), || async {
        sim.produced() >= EVENTS
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .expect("complete after the outage");
    assert!(proc.metric("fpaas_shuffler_nats_outages_total", "").await >= 1.0);
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim.truth());
    assert!(proc.terminate().await.success());
}

/// Soak (opt-in: `FPAAS_SOAK=1 bash scripts/test.sh`, size with `FPAAS_SOAK_EVENTS`): an HA pair of shuffler
/// processes on two relays serving the same events, through a seeded schedule of faults — kill -9 of either
/// shuffler (restarted at once) and nats-server stopped for 2–4 s — every 2–4 s until the relays have served
/// everything. Afterwards the stream holds every event exactly once, both processes exit gracefully and both
/// cursors stand at their relay's head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with FPAAS_SOAK=1 bash scripts/test.sh (FPAAS_SOAK_EVENTS sets the size)"]
async fn soak_ha_pair_through_kills_and_nats_outages() {
    let events = soak_events(60_000);
    let mut nats = NatsServer::new();
    let sim_cfg = |start_seq| SimConfig {
        seed: 99,
        rate: Some(1_500.0),
        limit: Some(events),
        rare_boost: 10,
        start_seq,
        ..Default::default()
    };
    let (sim_a, _) = Sim::start(sim_cfg(1)).await.expect("sim a");
    let (sim_b, _) = Sim::start(sim_cfg(SEQ_MOD + 1)).await.expect("sim b");
    let mut a = ShufflerProc::spawn(&nats.url(), &sim_a.url(), "soak-a");
    let mut b = ShufflerProc::spawn(&nats.url(), &sim_b.url(), "soak-b");

    // A small LCG: the fault schedule is the same on every run.
    let mut state: u64 = 0x5eed;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let (mut kills, mut outages) = (0u32, 0u32);
    while sim_a.produced() < events || sim_b.produced() < events {
        tokio::time::sleep(Duration::from_millis(2_000 + next(2_000))).await;
        match next(3) {
            0 => {
                a.kill_9();
                a = ShufflerProc::spawn(&nats.url(), &sim_a.url(), "soak-a");
                kills += 1;
            }
            1 => {
                b.kill_9();
                b = ShufflerProc::spawn(&nats.url(), &sim_b.url(), "soak-b");
                kills += 1;
            }
            _ => {
                tokio::task::block_in_place(|| nats.stop());
                tokio::time::sleep(Duration::from_millis(2_000 + next(2_000))).await;
                assert!(
                    a.is_running() && b.is_running(),
                    "a shuffler exited during an outage"
                );
                tokio::task::block_in_place(|| nats.start());
                outages += 1;
            }
        }
    }
    eprintln!("soak: {events} events per relay, {kills} kills, {outages} nats outages");
    let js = jetstream(&nats.url()).await;
    let expected = expected_len(&sim_a.truth());
    eventually(Duration::from_secs(120), || async {
        stream_len(&js, "FIREHOSE").await == Some(expected)
    })
    .await
    .unwrap_or_else(|e| panic!("stream complete after the soak: {e}"));
    assert_eq!(truth_keys(&sim_a.truth()), truth_keys(&sim_b.truth()));
    assert_exactly_once(&read_stream(&js, "FIREHOSE").await, &sim_a.truth());
    let (head_a, head_b) = (sim_a.head_seq(), sim_b.head_seq());
    eventually(Duration::from_secs(30), || async {
        stored_cursor(&js, "soak-a").await == head_a && stored_cursor(&js, "soak-b").await == head_b
    })
    .await
    .expect("both cursors reach their relay's head");
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
}

/// Peak resident memory of a live process in MB (`VmHWM` from `/proc/<pid>/status`).
fn peak_rss_mb(pid: u32) -> f64 {
    proc_status_mb(pid, "VmHWM:").expect("VmHWM")
}

/// A memory figure of `/proc/<pid>/status` in MB (`VmRSS:`, `VmHWM:`), `None` when the process is gone.
fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kb / 1024.0)
}

/// Soak at firehose volume (opt-in, like the HA soak; one day's volume is
/// `FPAAS_SOAK_EVENTS=35000000`, run in release: see `docs/soak.md`): relay-sim at full speed with realistic frames,
/// a hostile frame every 10,007 events, malformed, truncated and oversize frames, through one `fpaas shuffler`
/// process and a seeded schedule of faults every 20–40 s — kill -9 of the shuffler, nats-server stopped (SIGTERM)
/// or killed (SIGKILL) for 2–4 s, every relay connection dropped — on a stream with a 60 s retention so the disk
/// holds. Exactly once is counted: the stream's last sequence (every message ever stored; dedup hits take none)
/// equals relay-sim's count of deliverable events. The shuffler's resident memory is sampled every second and
/// stays flat: the highest sample of the second half is within 25% (+ 20 MB) of the first half's, and under
/// 200 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with FPAAS_SOAK=1 bash scripts/test.sh (FPAAS_SOAK_EVENTS sets the size)"]
async fn soak_firehose_volume_with_hostile_frames_and_faults_keeps_rss_flat_and_loses_nothing() {
    let events = soak_events(300_000);
    let mut nats = NatsServer::new();
    let mut faults = fpaas_sim::FaultConfig {
        hostile_every: Some(10_007),
        malformed_every: Some(50_021),
        truncated_every: Some(70_001),
        oversize_every: Some(200_003),
        ..Default::default()
    };
    faults.unknown_type_every = Some(90_001);
    let (sim, _) = Sim::start(SimConfig {
        seed: 2026,
        rate: None,
        limit: Some(events),
        window: 200_000,
        record_truth: false,
        faults,
        ..Default::default()
    })
    .await
    .expect("sim");
    let extra = [
        "--max-age-secs",
        "90",
        "--duplicate-window-secs",
        "60",
        "--max-bytes=4294967296",
    ];
    let mut proc = ShufflerProc::spawn_with(&nats.url(), &sim.url(), "day", &extra);
    let started = std::time::Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut state: u64 = 0x0da7;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let (mut kills, mut nats_stops, mut nats_kills, mut relay_drops) = (0u32, 0u32, 0u32, 0u32);
    let mut next_fault = Duration::from_secs(20 + next(20));
    let mut last_progress = (0u64, std::time::Instant::now());
    while sim.produced() < events {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(rss) = proc_status_mb(proc.child.id(), "VmRSS:") {
            samples.push((started.elapsed().as_secs_f64(), rss));
        }
        let produced = sim.produced();
        if produced > last_progress.0 {
            last_progress = (produced, std::time::Instant::now());
        }
        assert!(
            last_progress.1.elapsed() < Duration::from_secs(120),
            "no progress for 2 minutes at {produced} events"
        );
        if started.elapsed() < next_fault {
            continue;
        }
        next_fault = started.elapsed() + Duration::from_secs(20 + next(20));
        match next(4) {
            0 => {
                proc.kill_9();
                proc = ShufflerProc::spawn_with(&nats.url(), &sim.url(), "day", &extra);
                kills += 1;
            }
            1 => {
                tokio::task::block_in_place(|| nats.stop());
                tokio::time::sleep(Duration::from_millis(2_000 + next(2_000))).await;
                tokio::task::block_in_place(|| nats.start());
                nats_stops += 1;
            }
            2 => {
                tokio::task::block_in_place(|| nats.kill());
                tokio::time::sleep(Duration::from_millis(2_000 + next(2_000))).await;
                tokio::task::block_in_place(|| nats.start());
                nats_kills += 1;
            }
            _ => {
                sim.disconnect_all();
                relay_drops += 1;
            }
        }
        assert!(proc.is_running(), "the shuffler exited by itself");
    }
    let js = jetstream(&nats.url()).await;
    let expected = sim.deliverable_events();
    let last_seq = || async {
        js.get_stream("FIREHOSE")
            .await
            .ok()?
            .info()
            .await
            .ok()
            .map(|i| i.state.last_sequence)
    };
    if let Err(e) = eventually(Duration::from_secs(300), || async {
        last_seq().await >= Some(expected)
    })
    .await
    {
        panic!("{e}: stored {:?} of {expected}", last_seq().await);
    }
    // Nothing more arrives: no duplicate was stored beyond the dedup window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stored = last_seq().await.expect("stream info");
    let secs = started.elapsed().as_secs_f64();
    let half = samples.len() / 2;
    let max_of = |s: &[(f64, f64)]| s.iter().map(|x| x.1).fold(0.0, f64::max);
    let (first, second) = (max_of(&samples[..half]), max_of(&samples[half..]));
    let page = proc.get("/metrics").await.map(|p| p.1).unwrap_or_default();
    eprintln!(
        "day soak: {events} relay events, {expected} deliverable, {stored} stored in {secs:.0} s \
         ({:.0} events/s); faults: {kills} shuffler kill -9, {nats_stops} nats stops, {nats_kills} nats kill -9, \
         {relay_drops} relay drops; shuffler RSS max {first:.1} MB (first half) / {second:.1} MB (second half); \
         hostile drops {}",
        stored as f64 / secs,
        prom_value(&page, "fpaas_shuffler_drops_total", "")
    );
    assert_eq!(
        stored, expected,
        "exactly once: stored messages equal the relay's deliverable events"
    );
    assert!(
        second <= first * 1.25 + 20.0 && second < 200.0,
        "RSS flat: {first:.1} → {second:.1} MB"
    );
    assert!(proc.terminate().await.success());
}

/// The hostile suite (`testdata/hostile/`, see `crates/sim/src/hostile.rs`) served by relay-sim between the real
/// corpus frames, through the real shuffler process: it stays up and small, drops every hostile frame or op with
/// its label, maps what must be mapped, passes them with its cursor, and stores every good event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_between_good_ones_are_dropped_with_their_labels_and_nothing_else_is_lost() {
    let dir = workspace_root().join("testdata/hostile");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let mixed_path = dir.join("mixed.bin.zst");
    let last_seq = fpaas_sim::read_capture(&mixed_path)
        .expect("mixed capture")
        .iter()
        .filter_map(|f| fpaas_sim::frame_seq(f))
        .max()
        .expect("seqs");

    // Expected: the golden corpus events with their seqs renumbered as in the mixed capture, plus the events of
    // the cases that must be accepted; drops per label.
    let corpus: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("testdata/corpus/manifest.json"))
            .expect("corpus manifest"),
    )
    .expect("corpus manifest json");
    let seq_first = corpus["seq_first"].as_i64().expect("seq_first");
    let mut want_good: Vec<serde_json::Value> =
        std::fs::read_to_string(workspace_root().join("testdata/corpus/events.ndjson"))
            .expect("golden")
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).expect("golden line");
                let seq = fpaas_sim::hostile::mixed_good_seq(
                    (v["seq"].as_i64().expect("seq") - seq_first) as usize,
                );
                v["seq"] = seq.into();
                for k in ["identity", "account"] {
                    if v.get(k).is_some() {
                        v[k]["seq"] = seq.into();
                    }
                }
                v
            })
            .collect();
    let mut want_drops: std::collections::BTreeMap<String, f64> = Default::default();
    let mut accepted = 0u64;
    let mut accepted_subjects = Vec::new();
    for case in manifest["cases"].as_array().expect("cases") {
        let expect = &case["expect"];
        match expect["expect"].as_str() {
            Some("dropped") => {
                *want_drops
                    .entry(expect["label"].as_str().expect("label").to_owned())
                    .or_default() += expect["count"].as_f64().expect("count");
            }
            Some("events") => {
                let n = expect["count"].as_u64().expect("count");
                accepted += n;
                if let Some(s) = expect["subject"].as_str() {
                    accepted_subjects.extend(std::iter::repeat_n(s.to_owned(), n as usize));
                }
            }
            other => panic!("unknown expectation {other:?}"),
        }
    }
    assert!(
        want_drops.len() >= 15,
        "the suite covers many labels: {want_drops:?}"
    );

    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        replay: Some(mixed_path),
        ..Default::default()
    })
    .await
    .expect("sim");
    let js = jetstream(&nats.url()).await;
    let mut proc = ShufflerProc::spawn(&nats.url(), &sim.url(), "hostile");
    let want_len = want_good.len() as u64 + accepted;
    eventually(Duration::from_secs(60), || async {
        proc.metric("fpaas_shuffler_watermark_seq", "").await >= last_seq as f64
            && stream_len(&js, "FIREHOSE").await == Some(want_len)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the cursor passes every hostile frame and the stream holds {want_len} events: {e}; stream has {:?}",
            futures::executor::block_on(stream_len(&js, "FIREHOSE"))
        )
    });
    assert!(proc.is_running(), "the shuffler is still up");
    let rss = peak_rss_mb(proc.child.id());
    assert!(rss < 200.0, "peak RSS {rss:.0} MB");
    eprintln!("hostile suite: shuffler peak RSS {rss:.1} MB");

    // Every drop counted under its own label.
    let page = proc.get("/metrics").await.expect("metrics").1;
    for (label, count) in &want_drops {
        let got = prom_value(
            &page,
            "fpaas_shuffler_drops_total",
            &format!("reason=\"{label}\""),
        );
        assert_eq!(got, *count, "drops labelled {label}");
    }

    // Every good event exactly once, byte for byte the golden JSON (seq renumbered); the accepted hostile events
    // with their subjects; every event parseable by serde_json with its default depth limit.
    let stored = read_stream(&js, "FIREHOSE").await;
    let mut ids = std::collections::BTreeSet::new();
    assert!(
        stored.iter().all(|s| ids.insert(s.msg_id.clone())),
        "unique msg ids"
    );
    let mut got_good = Vec::new();
    let mut got_subjects = Vec::new();
    for s in &stored {
        let v: serde_json::Value = serde_json::from_slice(&s.payload).expect("event parses");
        if let Some(i) = want_good.iter().position(|w| *w == v) {
            got_good.push(want_good.swap_remove(i));
        } else {
            got_subjects.push(s.subject.clone());
        }
    }
    assert!(
        want_good.is_empty(),
        "good events missing: {:?}",
        &want_good[..want_good.len().min(2)]
    );
    got_subjects.sort();
    accepted_subjects.sort();
    assert_eq!(
        got_subjects, accepted_subjects,
        "the accepted hostile events"
    );
}
