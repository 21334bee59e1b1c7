//! Shared test helpers: locating `testdata/` and loading the firehose corpus.
#![allow(dead_code)]

use std::path::PathBuf;

/// `<repo>/testdata/<rel>`.
pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

/// The 150 corpus frames: zstd of repeated `[u32 LE length][frame]`.
pub fn corpus_frames() -> Vec<Vec<u8>> {
    let path = testdata("corpus/frames.bin.zst");
    let compressed =
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let raw = zstd::decode_all(compressed.as_slice()).expect("zstd decode");
    let mut frames = Vec::new();
    let mut rest = raw.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let (frame, tail) = tail.split_at(len);
        frames.push(frame.to_vec());
        rest = tail;
    }
    frames
}

/// The corpus manifest.
pub fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(testdata("corpus/manifest.json")).expect("read manifest");
    serde_json::from_str(&text).expect("parse manifest")
}
