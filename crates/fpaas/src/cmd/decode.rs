//! `fpaas decode FILE`: a capture's normalized events as NDJSON on stdout, in order; decode errors and dropped
//! ops on stderr, counted in a final summary line.

use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Capture file ([u32 LE length][frame]…, zstd when the name ends in .zst).
    file: std::path::PathBuf,
    /// Exit with status 1 when any frame failed to decode or any op was dropped.
    #[arg(long)]
    strict: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reader = fpaas_sim::capture::CaptureReader::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut frames, mut events) = (0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (i, item) in reader.enumerate() {
        let bytes = match item {
            Ok(b) => b,
            Err(e) => {
                eprintln!("capture error after frame {i}: {e}");
                *errors.entry("capture".into()).or_default() += 1;
                break;
            }
        };
        frames += 1;
        let frame = match fpaas_proto::frame::decode_frame(&bytes) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("frame {i}: {} error: {e}", e.kind().as_str());
                *errors.entry(e.kind().as_str().to_string()).or_default() += 1;
                continue;
            }
        };
        let n = fpaas_event::normalize(&frame);
        for d in &n.dropped {
            eprintln!(
                "frame {i}: dropped {}: {} ({})",
                d.what, d.reason.0, d.detail
            );
            *errors.entry(d.reason.0.to_string()).or_default() += 1;
        }
        for e in &n.events {
            out.write_all(&e.to_json_vec())?;
            out.write_all(b"\n")?;
            events += 1;
        }
    }
    out.flush()?;
    let error_total: u64 = errors.values().sum();
    eprintln!(
        "decoded {frames} frames, {events} events, {error_total} errors {}",
        serde_json::to_string(&errors)?
    );
    if args.strict && error_total > 0 {
        anyhow::bail!("{error_total} errors");
    }
    Ok(())
}
