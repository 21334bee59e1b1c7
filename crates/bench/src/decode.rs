//! `fpaas bench decode`: decode the corpus frames in a loop on one core. Reports frames/s and MB/s for decoding
//! alone and for the full path the shuffler runs per frame (decode, normalize, subject, dedup id, JSON); and the
//! worst peak memory per input byte over the hostile suite (`testdata/hostile/`), each file decoded by a child
//! `fpaas decode` whose peak RSS the kernel reports (`wait4`), less that of decoding an empty capture.

use crate::error::{Context, Result, ensure};
use crate::{Report, r2};
use std::time::{Duration, Instant};

// `fpaas bench decode`'s flags (doc comments here would become clap help).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Capture file to decode (default: the committed corpus).
    #[arg(long, default_value = "testdata/corpus/frames.bin.zst")]
    corpus: std::path::PathBuf,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Folder of the hostile suite (every `*.bin.zst` but `mixed.bin.zst`); empty to skip.
    #[arg(long, default_value = "testdata/hostile")]
    hostile: std::path::PathBuf,
}

/// Peak RSS in bytes of `fpaas decode FILE` run as a child (the kernel's `ru_maxrss`).
fn child_decode_peak_rss(file: &std::path::Path) -> Result<u64> {
    let exe = std::env::current_exe().context("own executable")?;
    let done = fpaas_testkit::run_measured(std::process::Command::new(exe).arg("decode").arg(file))
        .context("run fpaas decode")?;
    ensure!(
        done.code == Some(0),
        "fpaas decode {} failed",
        file.display()
    );
    Ok(done.peak_rss_bytes)
}

/// Smallest hostile input whose memory per byte is meaningful.
const MIN_INPUT_FOR_RATIO: u64 = 64 * 1024;

/// (worst extra peak bytes per input byte, its case, worst peak RSS in bytes, cases) over the hostile suite.
fn hostile_memory(dir: &std::path::Path) -> Result<(f64, String, u64, u64)> {
    let empty = std::env::temp_dir().join(format!("fpaas-bench-empty-{}.bin", std::process::id()));
    fpaas_sim::capture::CaptureWriter::create(&empty)?.finish()?;
    let baseline = child_decode_peak_rss(&empty);
    let _ = std::fs::remove_file(&empty);
    let baseline = baseline?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bin.zst") && !p.ends_with("mixed.bin.zst"))
        .collect();
    files.sort();
    let (mut worst, mut worst_case, mut worst_rss) = (0.0f64, String::new(), 0u64);
    for file in &files {
        let input: u64 = fpaas_sim::capture::read_capture(file)?
            .iter()
            .map(|f| f.len() as u64)
            .sum();
        let peak = child_decode_peak_rss(file)?;
        worst_rss = worst_rss.max(peak);
        // Below 64 KiB of input the allocator's noise (a few MB) dwarfs the input: those cases count for the
        // peak RSS only.
        if input < MIN_INPUT_FOR_RATIO {
            continue;
        }
        let per_byte = peak.saturating_sub(baseline) as f64 / input as f64;
        if per_byte >= worst {
            worst = per_byte;
            worst_case = file
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".bin.zst").to_owned())
                .unwrap_or_default();
        }
    }
    Ok((worst, worst_case, worst_rss, files.len() as u64))
}

fn phase(frames: &[Vec<u8>], dur: Duration, full: bool) -> (u64, u64, u64, f64) {
    let (mut n, mut bytes, mut events) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    'outer: loop {
        for f in frames {
            let frame = fpaas_proto::frame::decode_frame(f);
            if full && let Ok(frame) = &frame {
                let out = fpaas_event::normalize(frame);
                for e in &out.events {
                    let json = e.to_json_vec();
                    let id = fpaas_event::msg_id(e);
                    let subj = fpaas_event::subject(e);
                    std::hint::black_box((json, id, subj));
                    events += 1;
                }
            }
            std::hint::black_box(&frame);
            n += 1;
            bytes += f.len() as u64;
        }
        if start.elapsed() >= dur {
            break 'outer;
        }
    }
    (n, bytes, events, start.elapsed().as_secs_f64())
}

/// Runs the bench (blocking: one core, no runtime needed).
///
/// # Errors
/// An unreadable corpus or hostile suite, or a child `fpaas decode` that fails.
pub fn run(args: &Args) -> Result<Report> {
    let frames = fpaas_sim::capture::read_capture(&args.corpus)
        .with_context(|| format!("reading {}", args.corpus.display()))?;
    ensure!(!frames.is_empty(), "no frames in {}", args.corpus.display());
    let errors = frames
        .iter()
        .filter(|f| fpaas_proto::frame::decode_frame(f).is_err())
        .count();
    let dur = Duration::from_secs_f64(args.seconds.max(0.1));
    // Warm up caches and the allocator.
    phase(&frames, Duration::from_millis(200), true);
    let (dn, dbytes, _, dsecs) = phase(&frames, dur, false);
    let (fnum, fbytes, fevents, fsecs) = phase(&frames, dur, true);
    let mut r = Report::new("decode");
    r.add("corpus_frames", frames.len() as u64);
    r.add("corpus_decode_errors", errors as u64);
    r.add("decode_frames_per_s", r2(dn as f64 / dsecs));
    r.add("decode_mb_per_s", r2(dbytes as f64 / dsecs / 1e6));
    r.add("frames_per_s", r2(fnum as f64 / fsecs));
    r.add("mb_per_s", r2(fbytes as f64 / fsecs / 1e6));
    r.add("events_per_s", r2(fevents as f64 / fsecs));
    r.add("threads", 1u64);
    if !args.hostile.as_os_str().is_empty() {
        let (per_byte, case, rss, cases) = hostile_memory(&args.hostile)?;
        r.add("hostile_cases", cases);
        r.add("hostile_worst_peak_bytes_per_input_byte", r2(per_byte));
        r.add("hostile_worst_case", case);
        r.add("hostile_worst_peak_rss_mb", r2(rss as f64 / 1e6));
    }
    Ok(r)
}
