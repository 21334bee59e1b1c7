//! Structure-aware fuzz target: builds a `#commit` frame whose blocks all carry their correct CIDs — records
//! from an arbitrary data-model tree (or raw bytes), an MST node over the ops' paths, a commit block — so that
//! every input gets past CID verification and reaches record conversion and the MST reader. Checks: decoding,
//! normalizing and the MST walk never panic; every event's JSON parses (also inside a batch envelope), its
//! subject is publishable and its dedup id has no whitespace; each op is an event or a labelled drop.
#![no_main]

use fpaas_sim::encode::{
    Block, ByteStr, CommitBody, DAG_CBOR, RepoOp, car, cid_of, commit_block, mst_node,
};
use ipld_core::ipld::Ipld;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Map(Vec<(String, Value)>),
    Link(u8),
}

impl Value {
    fn ipld(&self, depth: usize) -> Ipld {
        match self {
            _ if depth > 140 => Ipld::Null,
            Value::Null => Ipld::Null,
            Value::Bool(b) => Ipld::Bool(*b),
            Value::Int(i) => Ipld::Integer(i128::from(*i)),
            Value::Str(s) => Ipld::String(s.clone()),
            Value::Bytes(b) => Ipld::Bytes(b.clone()),
            Value::List(l) => Ipld::List(l.iter().map(|v| v.ipld(depth + 1)).collect()),
            Value::Map(m) => Ipld::Map(m.iter().map(|(k, v)| (k.clone(), v.ipld(depth + 1))).collect()),
            Value::Link(n) => Ipld::Link(fpaas_proto::data::cid_with_codec(
                if n % 2 == 0 { 0x71 } else { 0x55 },
                &[*n],
            )),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Record {
    /// A data-model map, canonically encoded.
    Tree(Vec<(String, Value)>),
    /// Arbitrary bytes as the record block.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    records: Vec<Record>,
    /// (action, record index, rkey number)
    ops: Vec<(u8, u8, u16)>,
    collection: u8,
}

fuzz_target!(|input: Input| {
    let records: Vec<Block> = input
        .records
        .iter()
        .take(8)
        .filter_map(|r| {
            let bytes = match r {
                Record::Tree(m) => serde_ipld_dagcbor::to_vec(&Ipld::Map(
                    m.iter().map(|(k, v)| (k.clone(), v.ipld(1))).collect(),
                ))
                .ok()?,
                Record::Raw(b) => b.clone(),
            };
            Some(Block { cid: cid_of(DAG_CBOR, &bytes).ok()?, bytes })
        })
        .collect();
    if records.is_empty() {
        return;
    }
    let collection = ["app.bsky.feed.like", "app.bsky.feed.post", "com.example.x"][input.collection as usize % 3];
    let mut ops = Vec::new();
    let mut entries = Vec::new();
    for (action, idx, rkey) in input.ops.iter().take(200) {
        let record = &records[*idx as usize % records.len()];
        let path = format!("{collection}/3k{rkey:011}");
        let (action, cid) = match action % 3 {
            0 => ("create", Some(record.cid)),
            1 => ("update", Some(record.cid)),
            _ => ("delete", None),
        };
        if let Some(c) = cid {
            entries.push((path.clone(), c));
        }
        ops.push(RepoOp { action, path, cid, prev: None });
    }
    let Ok(mst) = mst_node(&mut entries) else { return };
    let did = "did:plc:fuzzfuzzfuzzfuzzfuzzfuzz";
    let rev = "3kabcdefghij2";
    let Ok(commit) = commit_block(did, rev, mst.cid) else { return };
    let Ok(blocks) = car(&[commit.cid], std::iter::once(&commit).chain([&mst]).chain(&records)) else {
        return;
    };
    // The MST reader on the CAR: the commit verifies, the walk sees every entry.
    if let Ok(parsed) = fpaas_proto::Car::parse(&blocks) {
        if let Ok(c) = fpaas_proto::mst::read_commit(&parsed, &commit.cid) {
            if let Ok(walked) = fpaas_proto::mst::walk(&parsed, &c.data) {
                assert_eq!(walked.len(), entries.len(), "the walk returns every MST entry");
            }
        }
    }
    let Ok(frame) = (CommitBody {
        seq: 1,
        rebase: false,
        too_big: false,
        repo: did,
        commit: commit.cid,
        rev,
        since: None,
        blocks: ByteStr(&blocks),
        ops: &ops,
        blobs: &[],
        prev_data: None,
        time: "2026-12-01T00:00:00.000Z",
    })
    .encode_frame() else {
        return;
    };
    let Ok(decoded) = fpaas_proto::decode_frame(&frame) else {
        // Only a frame-level rule may reject it (e.g. two ops on one path).
        return;
    };
    let n = fpaas_event::normalize(&decoded);
    let frame_dropped = n.dropped.iter().any(|d| d.reason.0 == "frame_over_budget");
    if !frame_dropped {
        assert_eq!(n.events.len() + n.dropped.len(), ops.len(), "each op is an event or a drop");
    }
    for e in &n.events {
        let json = e.to_json_vec();
        let text = std::str::from_utf8(&json).expect("utf-8");
        let batch = format!("{{\"events\":[{text}]}}");
        serde_json::from_str::<serde_json::Value>(&batch).expect("event parses inside a batch");
        let id = fpaas_event::msg_id(e);
        assert!(!id.chars().any(|c| c.is_whitespace() || c.is_control()), "{id:?}");
        let s = fpaas_event::subject(e);
        assert!(s.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"), "{s}");
    }
});
