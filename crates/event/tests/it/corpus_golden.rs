//! Golden test: the 150 real relay frames in testdata/corpus normalize to exactly the committed NDJSON, and the
//! per-kind / per-operation counts equal the corpus manifest. Regenerate the golden file with
//! `FPAAS_UPDATE_GOLDEN=1 cargo test -p fpaas-event --test it corpus_golden::`.

use fpaas_event::{Kind, Operation, msg_id, normalize, subject};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/corpus")
}

fn frames() -> Vec<Vec<u8>> {
    let raw = std::fs::read(corpus_dir().join("frames.bin.zst")).expect("corpus present");
    let mut data = Vec::new();
    zstd::stream::read::Decoder::new(&raw[..])
        .expect("zstd")
        .read_to_end(&mut data)
        .expect("zstd body");
    let mut out = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        out.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes in corpus");
    out
}

#[test]
fn corpus_normalizes_to_golden_ndjson_and_manifest_counts() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus_dir().join("manifest.json")).unwrap())
            .unwrap();
    let frames = frames();
    assert_eq!(frames.len() as u64, manifest["frames"].as_u64().unwrap());

    let mut ndjson = String::new();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut commit_frames = 0u64;
    let mut ids = HashSet::new();
    let mut subjects = HashSet::new();
    let (mut first_seq, mut last_seq) = (i64::MAX, i64::MIN);
    for (i, bytes) in frames.iter().enumerate() {
        let frame = fpaas_proto::frame::decode_frame(bytes)
            .unwrap_or_else(|e| panic!("frame {i} failed to decode: {e}"));
        if let Some(seq) = frame.seq() {
            first_seq = first_seq.min(seq);
            last_seq = last_seq.max(seq);
        }
        if matches!(frame, fpaas_proto::frame::Frame::Commit(_)) {
            commit_frames += 1;
        }
        let n = normalize(&frame);
        assert!(
            n.dropped.is_empty(),
            "frame {i} dropped ops: {:?}",
            n.dropped
        );
        for e in n.events {
            let key = match (e.kind, e.operation()) {
                (Kind::Commit, Some(Operation::Create)) => "creates",
                (Kind::Commit, Some(Operation::Update)) => "updates",
                (Kind::Commit, Some(Operation::Delete)) => "deletes",
                (Kind::Identity, _) => "identity",
                (Kind::Account, _) => "account",
                (Kind::Sync, _) => "sync",
                (Kind::Commit, None) => panic!("commit event without commit body"),
            };
            *counts.entry(key).or_default() += 1;
            assert!(ids.insert(msg_id(&e)), "duplicate msg id {}", msg_id(&e));
            subjects.insert(subject(&e));
            // Round trip: the JSON we publish parses back to the same event.
            let line = String::from_utf8(e.to_json_vec()).unwrap();
            let back: fpaas_event::Event = serde_json::from_str(&line).unwrap();
            assert_eq!(back, e);
            ndjson.push_str(&line);
            ndjson.push('\n');
        }
    }
    for key in ["creates", "updates", "deletes", "identity", "account"] {
        assert_eq!(
            counts.get(key).copied().unwrap_or(0),
            manifest[key].as_u64().unwrap(),
            "count of {key}"
        );
    }
    assert_eq!(commit_frames, manifest["commit_frames"].as_u64().unwrap());
    assert_eq!(first_seq, manifest["seq_first"].as_i64().unwrap());
    assert_eq!(last_seq, manifest["seq_last"].as_i64().unwrap());
    let total: u64 = counts.values().sum();
    assert_eq!(total, manifest["v1_events"].as_u64().unwrap());
    // Low cardinality: far fewer subjects than events, and no DID in any subject.
    assert!(subjects.len() < 40, "{} subjects", subjects.len());
    assert!(subjects.iter().all(|s| !s.contains("did")));

    let golden = corpus_dir().join("events.ndjson");
    if std::env::var_os("FPAAS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &ndjson).unwrap();
    }
    let expected = std::fs::read_to_string(&golden)
        .expect("golden file missing: run with FPAAS_UPDATE_GOLDEN=1 to create it");
    assert!(
        expected == ndjson,
        "normalized corpus differs from {} (FPAAS_UPDATE_GOLDEN=1 regenerates it after a deliberate change)",
        golden.display()
    );
}

/// The wire messages of the corpus (subject, `Nats-Msg-Id`, headers, stored size) equal the committed
/// `wire.ndjson`, so a change of what goes on the bus is always deliberate; and each payload reads back as its
/// event. Regenerate with `FPAAS_UPDATE_GOLDEN=1`.
#[test]
fn corpus_wire_messages_match_golden() {
    let mut lines = String::new();
    for bytes in frames() {
        let frame = fpaas_proto::frame::decode_frame(&bytes).expect("decode");
        for e in normalize(&frame).events {
            let m = fpaas_event::WireMessage::from_event(&e);
            assert_eq!(fpaas_event::decode_payload(&m.payload).expect("payload"), e);
            let headers: serde_json::Map<String, serde_json::Value> = m
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
                .collect();
            let line = serde_json::json!({
                "subject": m.subject,
                "msg_id": m.msg_id,
                "headers": headers,
                "stored_size": m.stored_size(),
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
    }
    let golden = corpus_dir().join("wire.ndjson");
    if std::env::var_os("FPAAS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &lines).unwrap();
    }
    let expected = std::fs::read_to_string(&golden)
        .expect("golden file missing: run with FPAAS_UPDATE_GOLDEN=1 to create it");
    assert!(
        expected == lines,
        "wire messages differ from {} (FPAAS_UPDATE_GOLDEN=1 regenerates it after a deliberate change)",
        golden.display()
    );
}
