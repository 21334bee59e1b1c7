//! Fuzz target: `decode_frame` on arbitrary bytes, then `record_json` on every op of a commit.
//! Seed the corpus with the real frames: see `fuzz/README.md`.
#![no_main]

use fpaas_proto::{Frame, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(data) {
        let _ = frame.seq();
        let _ = frame.kind_label();
        if let Frame::Commit(commit) = frame {
            for op in &commit.ops {
                let _ = commit.record_json(op);
            }
        }
    }
});
