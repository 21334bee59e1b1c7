//! `fpaas bench decode`: decode the corpus frames in a loop on one core. Reports frames/s and MB/s for decoding
//! alone and for the full path the shuffler runs per frame (decode, normalize, subject, dedup id, JSON).

use super::{Report, r2};
use anyhow::Context;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Capture file to decode (default: the committed corpus).
    #[arg(long, default_value = "testdata/corpus/frames.bin.zst")]
    corpus: std::path::PathBuf,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
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

pub fn run(args: Args) -> anyhow::Result<Report> {
    let frames = fpaas_sim::capture::read_capture(&args.corpus)
        .with_context(|| format!("reading {}", args.corpus.display()))?;
    anyhow::ensure!(!frames.is_empty(), "no frames in {}", args.corpus.display());
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
    Ok(r)
}
