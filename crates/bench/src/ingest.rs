//! `fpaas bench ingest`: events/s from the relay simulator at full speed through the real shuffler (decode,
//! normalize, publish) into a local nats-server, beside two baselines measured in the same run:
//!
//! 1. **raw publish** — the same messages, decoded and normalized beforehand (outside the timed section),
//!    published with bare async-nats JetStream async publish + `Nats-Msg-Id`, the same acks in flight, into a
//!    fresh stream: the ceiling of what any ingester can reach here. `ratio_vs_baseline` = shuffler / raw.
//! 2. **python** — `scripts/py/ingest_baseline.py` (the `atproto` SDK's firehose client + `nats-py`, what
//!    seed-style deployments run today) on the same relay frames, fewer of them (it is slow).
//!
//! Shape: one nats-server child started through `fpaas-testkit` (free port, temp store, `max_payload` 4 MiB); the relay frames are generated once
//! (deterministic seed) into a temp capture that an in-process [`fpaas_sim::Sim`] replays as fast as each client
//! reads; the shuffler runs as a child process (`fpaas shuffler …`, this same binary) so its peak RSS
//! (`VmHWM`) is its own. Every rate is stream messages / (last − first stored message timestamp), taken from
//! the server, polled until the stream holds the expected count. The stream is deleted between phases.
//!
//! Both phases run twice: on realistic frames (a per-repository MST proof path in every commit, ~5.4 kB like
//! real relay frames — the headline figures) and on small frames (~1.3 kB, the `small_` figures), so the
//! per-frame cost of decoding real-sized CARs shows.
//!
//! Targets on the 2-core dev machine: ≥ 30,000 events/s, ≥ 50% of raw publish with realistic frames, shuffler
//! RSS < 100 MB.

use crate::error::{Context, Result, bail, ensure};
use crate::publish::{Prepared, publish_all};
use crate::server::{
    NatsServerFlag, StreamProgress, find_path, peak_rss_bytes, start_nats, tail, wait_for_messages,
};
use crate::{Report, r2};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fpaas_testkit::NatsServer;

/// Stream the shuffler (and the baselines) publish into: the shuffler's default.
const STREAM: &str = "FIREHOSE";

// `fpaas bench ingest`'s flags (doc comments here would become clap help).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Relay events (frames) the simulator serves to the shuffler and the raw baseline.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Acks in flight, for the shuffler (`--max-acks-in-flight`) and the raw baseline alike.
    #[arg(long, default_value_t = 1024)]
    acks_in_flight: usize,
    /// Generator seed of the relay frames.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    nats: NatsServerFlag,
    /// Do not run the Python baseline.
    #[arg(long)]
    skip_python: bool,
    /// Python interpreter with `atproto` and `nats-py`.
    #[arg(long, default_value = ".tools/venv/bin/python")]
    python: PathBuf,
    /// The Python baseline ingester.
    #[arg(long, default_value = "scripts/py/ingest_baseline.py")]
    python_script: PathBuf,
    /// Events the Python baseline publishes (it runs ~2k events/s).
    #[arg(long, default_value_t = 10_000)]
    python_events: u64,
    /// Time cap of the Python baseline, seconds.
    #[arg(long, default_value_t = 30.0)]
    python_seconds: f64,
    /// Longest wait for one phase to store its messages, seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

/// The relay frames, written to a capture for the simulator, and what they normalize to.
struct Workload {
    capture: PathBuf,
    msgs: Vec<Prepared>,
    /// Distinct `Nats-Msg-Id`s: the count a stream ends with.
    distinct: u64,
    /// Commit-op events (what the Python baseline publishes).
    commit_events: u64,
    payload_bytes: u64,
    frame_bytes: u64,
}

fn prepare(args: &Args, dir: &std::path::Path, small: bool) -> Result<Workload> {
    let capture = dir.join(if small { "small.bin" } else { "frames.bin" });
    let mut writer = fpaas_sim::CaptureWriter::create(&capture)?;
    let mut generator =
        fpaas_sim::Generator::new(args.seed, 10_000, 1, fpaas_sim::FaultConfig::default())
            .with_small_frames(small);
    let mut frame_bytes = 0u64;
    let mut msgs = Vec::new();
    let mut ids = HashSet::new();
    let (mut commit_events, mut payload_bytes) = (0u64, 0u64);
    for _ in 0..args.events {
        let generated = generator.next_event()?;
        for frame in &generated.frames {
            writer.write_frame(frame)?;
            frame_bytes += frame.len() as u64;
            let Ok(decoded) = fpaas_proto::decode_frame(frame) else {
                continue;
            };
            for ev in fpaas_event::normalize(&decoded).events {
                if ev.kind == fpaas_event::Kind::Commit {
                    commit_events += 1;
                }
                let msg = Prepared::event(&ev);
                payload_bytes += msg.payload.len() as u64;
                ids.insert(fpaas_event::msg_id(&ev));
                msgs.push(msg);
            }
        }
    }
    writer.finish()?;
    Ok(Workload {
        capture,
        distinct: ids.len() as u64,
        msgs,
        commit_events,
        payload_bytes,
        frame_bytes,
    })
}

async fn fresh_stream(js: &async_nats::jetstream::Context) -> Result<()> {
    let _ = js.delete_stream(STREAM).await;
    fpaas_bus::ensure_stream(js, &fpaas_bus::StreamSettings::default()).await?;
    Ok(())
}

/// The figures of phases 1 and 2 on one workload.
struct Measured {
    raw: StreamProgress,
    shuf: StreamProgress,
    rss: Option<u64>,
}

/// Phase 1 (raw publish of the prepared messages) and phase 2 (the shuffler child reading the simulator).
async fn raw_and_shuffler(
    args: &Args,
    nats: &NatsServer,
    js: &async_nats::jetstream::Context,
    work: Workload,
) -> Result<Measured> {
    let expected = work.distinct;
    let timeout = Duration::from_secs(args.timeout_secs);
    let settle = Duration::from_millis(500);
    fresh_stream(js).await?;
    // Baseline 1: bare JetStream async publish with the shuffler's acks in flight.
    publish_all(js, work.msgs, args.acks_in_flight).await?;
    let raw = wait_for_messages(js, STREAM, Some(expected), settle, timeout, || Ok(())).await?;
    tracing::info!(
        messages = raw.messages,
        rate = raw.rate(),
        "raw publish done"
    );

    fresh_stream(js).await?;
    let (sim, _) = fpaas_sim::Sim::start(fpaas_sim::SimConfig {
        replay: Some(work.capture.clone()),
        limit: Some(args.events),
        rate: None,
        record_truth: false,
        ..Default::default()
    })
    .await?;
    let log_path = nats.scratch_dir().join("shuffler.log");
    let log = std::fs::File::create(&log_path)?;
    let exe = std::env::current_exe().context("locating the fpaas binary")?;
    let mut shuffler = tokio::process::Command::new(exe)
        .arg("shuffler")
        .args(["--relay", &sim.url()])
        .args(["--nats-url", &nats.url()])
        .args(["--instance", "bench"])
        .args(["--metrics-listen", "none"])
        .args(["--start-cursor", "0"])
        .args(["--max-acks-in-flight", &args.acks_in_flight.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the shuffler child")?;
    let pid = shuffler.id().context("shuffler pid")?;
    let measured = wait_for_messages(
        js,
        STREAM,
        Some(expected),
        settle,
        timeout,
        || match shuffler.try_wait() {
            Ok(Some(status)) => bail!("shuffler exited early ({status}):\n{}", tail(&log_path, 20)),
            _ => Ok(()),
        },
    )
    .await;
    let rss = peak_rss_bytes(pid);
    let _ = shuffler.start_kill();
    let _ = shuffler.wait().await;
    let _ = sim.shutdown().await;
    let shuf = measured?;
    tracing::info!(
        messages = shuf.messages,
        rate = shuf.rate(),
        "shuffler done"
    );
    Ok(Measured { raw, shuf, rss })
}

/// Runs the bench: both frame sizes, then the Python baseline unless `--skip-python`.
///
/// # Errors
/// A missing tool, a nats-server or simulator failure, a shuffler child that exits, a stream that stalls.
pub async fn run(args: &Args) -> Result<Report> {
    let nats_bin = args.nats.binary();
    let nats = start_nats(&nats_bin).await?;
    let prepare_in = |small: bool| {
        let dir = nats.scratch_dir().to_path_buf();
        let a = args.clone();
        tokio::task::spawn_blocking(move || prepare(&a, &dir, small))
    };
    let work = prepare_in(false).await??;
    ensure!(work.distinct > 0, "the generated frames hold no events");
    let (capture, commit_events) = (work.capture.clone(), work.commit_events);
    let (payload_bytes, frame_bytes, distinct) =
        (work.payload_bytes, work.frame_bytes, work.distinct);
    let timeout = Duration::from_secs(args.timeout_secs);
    let settle = Duration::from_millis(500);
    let client = fpaas_bus::connect(&nats.url(), "fpaas-bench-ingest").await?;
    let js = fpaas_bus::jetstream(client.clone(), args.acks_in_flight);
    let mut report = Report::new("ingest");

    let Measured { raw, shuf, rss } = raw_and_shuffler(args, &nats, &js, work).await?;
    report.add("events", shuf.messages);
    report.add("frames", args.events);
    report.add("events_per_s", r2(shuf.rate()));
    report.add("raw_publish_events_per_s", r2(raw.rate()));
    report.add("ratio_vs_baseline", r2(shuf.rate() / raw.rate().max(1e-9)));
    if let Some(rss) = rss {
        report.add("rss_mb", r2(rss as f64 / 1e6));
    }
    report.add("shuffler_s", r2(shuf.span_s));
    report.add("raw_publish_s", r2(raw.span_s));
    report.add(
        "mean_frame_bytes",
        r2(frame_bytes as f64 / args.events.max(1) as f64),
    );
    report.add(
        "mean_payload_bytes",
        r2(payload_bytes as f64 / distinct.max(1) as f64),
    );
    report.add("acks_in_flight", args.acks_in_flight as u64);

    // The same phases on small frames.
    let small = prepare_in(true).await??;
    let small_frame_bytes = small.frame_bytes;
    let m = raw_and_shuffler(args, &nats, &js, small).await?;
    report.add("small_events_per_s", r2(m.shuf.rate()));
    report.add("small_raw_publish_events_per_s", r2(m.raw.rate()));
    report.add(
        "small_ratio_vs_baseline",
        r2(m.shuf.rate() / m.raw.rate().max(1e-9)),
    );
    if let Some(rss) = m.rss {
        report.add("small_rss_mb", r2(rss as f64 / 1e6));
    }
    report.add(
        "small_mean_frame_bytes",
        r2(small_frame_bytes as f64 / args.events.max(1) as f64),
    );

    // Phase 3: the Python baseline on the same frames.
    if !args.skip_python {
        fresh_stream(&js).await?;
        let (sim, _) = fpaas_sim::Sim::start(fpaas_sim::SimConfig {
            replay: Some(capture.clone()),
            rate: None,
            record_truth: false,
            ..Default::default()
        })
        .await?;
        let want = args.python_events.min(commit_events).max(1);
        let out = tokio::time::timeout(
            Duration::from_secs_f64(args.python_seconds + 30.0),
            tokio::process::Command::new(find_path(&args.python))
                .arg(find_path(&args.python_script))
                .args(["--relay", &sim.url()])
                .args(["--nats", &nats.url()])
                .args(["--events", &want.to_string()])
                .args(["--seconds", &args.python_seconds.to_string()])
                .args(["--in-flight", &args.acks_in_flight.to_string()])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("python baseline timed out")?
        .context("running the python baseline (bash scripts/setup-tools.sh installs it)")?;
        let _ = sim.shutdown().await;
        if !out.status.success() {
            bail!(
                "python baseline failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let py = wait_for_messages(&js, STREAM, None, settle, timeout, || Ok(())).await?;
        tracing::info!(stdout = %String::from_utf8_lossy(&out.stdout).trim(), "python baseline done");
        report.add("python_events", py.messages);
        report.add("python_events_per_s", r2(py.rate()));
        report.add("ratio_vs_python", r2(shuf.rate() / py.rate().max(1e-9)));
    }
    drop(js);
    let _ = client.drain().await;
    drop(nats);
    Ok(report)
}
