//! Writes the hostile suite (`fpaas_sim::hostile`) to a folder: one capture per case (`<name>.bin.zst`),
//! `mixed.bin.zst` (the real corpus frames renumbered, every case in a gap between them) and `manifest.json`
//! (each case's file, what it attacks and what must come of it). Deterministic; run by
//! `scripts/gen-hostile.sh`, which writes `testdata/hostile/`.
//!
//! Usage: `gen_hostile CORPUS.bin.zst OUT_DIR`

use fpaas_sim::capture::{CaptureWriter, read_capture};
use fpaas_sim::hostile::{self, HostileCase, mixed_case_seq, mixed_good_seq};

/// Good frames between two consecutive cases in `mixed.bin.zst`.
const SPACING: usize = 5;

fn write(path: &std::path::Path, frames: &[Vec<u8>]) -> Result<(), Box<dyn std::error::Error>> {
    let mut w = CaptureWriter::create(path)?;
    for f in frames {
        w.write_frame(f)?;
    }
    w.finish()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, corpus, out] = args.as_slice() else {
        return Err("usage: gen_hostile CORPUS.bin.zst OUT_DIR".into());
    };
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    let cases: Vec<HostileCase> = hostile::cases(|j| mixed_case_seq(j, SPACING))?;
    let mut manifest = Vec::new();
    for case in &cases {
        let file = format!("{}.bin.zst", case.name);
        write(&out.join(&file), &case.frames)?;
        manifest.push(serde_json::json!({
            "name": case.name,
            "what": case.what,
            "file": file,
            "frames": case.frames.len(),
            "bytes": case.frames.iter().map(Vec::len).sum::<usize>(),
            "expect": case.expect,
        }));
    }
    let good = read_capture(corpus)?;
    let mixed = hostile::mixed(&good, &cases, SPACING)?;
    write(&out.join("mixed.bin.zst"), &mixed)?;
    let doc = serde_json::json!({
        "generator": "scripts/gen-hostile.sh (crates/sim/src/hostile.rs)",
        "mixed": {
            "file": "mixed.bin.zst",
            "good_frames": good.len(),
            "good_seq_first": mixed_good_seq(0),
            "good_seq_step": mixed_good_seq(1) - mixed_good_seq(0),
            "spacing": SPACING,
            "frames": mixed.len(),
        },
        "cases": manifest,
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    println!(
        "wrote {} cases and mixed.bin.zst ({} frames) to {}",
        cases.len(),
        mixed.len(),
        out.display()
    );
    Ok(())
}
