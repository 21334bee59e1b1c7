//! The real relay corpus decodes without errors and matches its manifest's counts.

use crate::common;

use std::collections::BTreeSet;

use fpaas_proto::{Action, Frame, decode_frame, decode_frame_bytes};

#[test]
fn corpus_matches_manifest() {
    let frames = common::corpus_frames();
    let manifest = common::manifest();
    let want = |k: &str| {
        manifest[k]
            .as_i64()
            .unwrap_or_else(|| panic!("manifest.{k}"))
    };
    assert_eq!(frames.len() as i64, want("frames"));

    let (mut commits, mut creates, mut updates, mut deletes, mut identity, mut account) =
        (0, 0, 0, 0, 0, 0);
    let mut seqs = Vec::new();
    let mut dids = BTreeSet::new();
    for (i, bytes) in frames.iter().enumerate() {
        let frame = decode_frame(bytes).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        seqs.push(frame.seq().expect("corpus frames all carry a seq"));
        match &frame {
            Frame::Commit(c) => {
                commits += 1;
                dids.insert(c.repo.to_string());
                assert!(!c.blocks.is_empty(), "frame {i}: no blocks");
                assert!(
                    c.blocks.get(&c.commit).is_some(),
                    "frame {i}: commit block missing"
                );
                for op in &c.ops {
                    let record = c
                        .record_json(op)
                        .unwrap_or_else(|e| panic!("frame {i} {}: {e}", op.path()));
                    match op.action {
                        Action::Create | Action::Update => {
                            if op.action == Action::Create {
                                creates += 1;
                            } else {
                                updates += 1;
                            }
                            let record = record.expect("create/update has a record");
                            let ty = record["$type"].as_str().expect("record has $type");
                            assert_eq!(
                                ty,
                                op.collection.as_str(),
                                "frame {i}: $type vs collection"
                            );
                        }
                        Action::Delete => {
                            deletes += 1;
                            assert!(record.is_none());
                        }
                    }
                }
            }
            Frame::Identity(_) => identity += 1,
            Frame::Account(_) => account += 1,
            other => panic!("frame {i}: unexpected kind {}", other.kind_label()),
        }
        // The zero-copy path decodes to the same value.
        let shared =
            decode_frame_bytes(&bytes::Bytes::copy_from_slice(bytes)).expect("decode_frame_bytes");
        assert_eq!(shared, frame);
    }
    assert_eq!(commits, want("commit_frames"));
    assert_eq!(creates, want("creates"));
    assert_eq!(updates, want("updates"));
    assert_eq!(deletes, want("deletes"));
    assert_eq!(identity, want("identity"));
    assert_eq!(account, want("account"));
    assert_eq!(seqs.first().copied(), Some(want("seq_first")));
    assert_eq!(seqs.last().copied(), Some(want("seq_last")));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs ascending");
    let want_dids: BTreeSet<String> = manifest["commit_dids"]
        .as_array()
        .expect("commit_dids")
        .iter()
        .map(|d| d.as_str().expect("did string").to_owned())
        .collect();
    assert_eq!(dids, want_dids);
}

/// Every op of the corpus as `{seq, path, action, record}` JSON lines equals the golden file
/// (cross-checked once against the Python `atproto` SDK). Regenerate with `FPAAS_UPDATE_GOLDEN=1`.
#[test]
fn corpus_records_match_golden() {
    let mut lines = String::new();
    for bytes in common::corpus_frames() {
        if let Frame::Commit(c) = decode_frame(&bytes).expect("decode") {
            for op in &c.ops {
                let line = serde_json::json!({
                    "seq": c.seq,
                    "path": op.path(),
                    "action": op.action.as_str(),
                    "record": c.record_json(op).expect("record"),
                });
                lines.push_str(&line.to_string());
                lines.push('\n');
            }
        }
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/corpus_ops.jsonl");
    if std::env::var_os("FPAAS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &lines).expect("write golden");
    }
    let golden =
        std::fs::read_to_string(&path).expect("read golden (FPAAS_UPDATE_GOLDEN=1 to create)");
    for (i, (got, want)) in lines.lines().zip(golden.lines()).enumerate() {
        assert_eq!(got, want, "golden line {}", i + 1);
    }
    assert_eq!(
        lines.lines().count(),
        golden.lines().count(),
        "golden line count"
    );
}
