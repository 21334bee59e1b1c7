//! Prints every corpus op as a JSON line `{seq, path, action, record}` — for diffing against
//! another implementation: `cargo run -p fpaas-proto --example dump_records`.

use fpaas_proto::{Frame, decode_frame};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/corpus/frames.bin.zst"
    );
    let raw = zstd::decode_all(std::fs::read(path)?.as_slice())?;
    let mut rest = raw.as_slice();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let frame = tail.get(..len).ok_or("truncated corpus")?;
        rest = tail.get(len..).ok_or("truncated corpus")?;
        if let Frame::Commit(c) = decode_frame(frame)? {
            for op in &c.ops {
                let line = serde_json::json!({
                    "seq": c.seq,
                    "path": op.path(),
                    "action": op.action.as_str(),
                    "record": c.record_json(op)?,
                });
                println!("{line}");
            }
        }
    }
    Ok(())
}
