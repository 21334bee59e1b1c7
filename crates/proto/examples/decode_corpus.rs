//! Quick decode throughput check over the test corpus (the real benchmark is `fpaas bench
//! decode`): `cargo run --release -p fpaas-proto --example decode_corpus [seconds]`.

use std::time::{Duration, Instant};

use fpaas_proto::{Frame, decode_frame};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2.0);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/corpus/frames.bin.zst"
    );
    let raw = zstd::decode_all(std::fs::read(path)?.as_slice())?;
    let mut frames = Vec::new();
    let mut rest = raw.as_slice();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let frame = tail.get(..len).ok_or("truncated corpus")?;
        frames.push(frame.to_vec());
        rest = &tail[len..];
    }
    let bytes: usize = frames.iter().map(Vec::len).sum();

    for with_records in [false, true] {
        let start = Instant::now();
        let mut n = 0u64;
        let mut records = 0u64;
        while start.elapsed() < Duration::from_secs_f64(secs) {
            for f in &frames {
                let frame = decode_frame(f)?;
                if with_records && let Frame::Commit(c) = &frame {
                    for op in &c.ops {
                        records += u64::from(c.record_json(op)?.is_some());
                    }
                }
                n += 1;
            }
        }
        let el = start.elapsed().as_secs_f64();
        println!(
            "{}: {:.0} frames/s, {:.1} MB/s, {:.2} µs/frame ({} records decoded)",
            if with_records {
                "decode_frame + record_json"
            } else {
                "decode_frame"
            },
            n as f64 / el,
            (n as f64 * bytes as f64 / frames.len() as f64) / el / 1e6,
            el * 1e6 / n as f64,
            records
        );
    }
    Ok(())
}
