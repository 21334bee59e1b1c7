//! Hostile and damaged input: truncations, bit flips, limits and tampered blocks give typed
//! errors, never panics.

use crate::common;

use std::collections::BTreeMap;

use cid::Cid;
use fpaas_proto::data::cid_for_cbor;
use fpaas_proto::limits::{
    MAX_BLOCKS_BYTES, MAX_FRAME_BYTES, MAX_OPS_PER_COMMIT, MAX_SYNC_BLOCKS_BYTES,
};
use fpaas_proto::{Car, Frame, FrameErrorKind, decode_frame};
use ipld_core::ipld::Ipld;

fn exercise(bytes: &[u8]) -> bool {
    match decode_frame(bytes) {
        Ok(Frame::Commit(c)) => {
            for op in &c.ops {
                let _ = c.record_json(op);
            }
            true
        }
        Ok(_) => true,
        Err(e) => {
            assert!(!e.kind().as_str().is_empty());
            false
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    for (i, frame) in common::corpus_frames().iter().enumerate() {
        let step = (frame.len() / 97).max(1);
        for n in (0..frame.len()).step_by(step).chain([frame.len() - 1]) {
            assert!(
                !exercise(&frame[..n]),
                "frame {i} truncated to {n} decoded Ok"
            );
        }
    }
}

#[test]
fn bit_flips_never_panic() {
    // Deterministic positions and bits (an LCG), bounded in number.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut ok = 0usize;
    let mut err = 0usize;
    for frame in common::corpus_frames() {
        for _ in 0..80 {
            let mut damaged = frame.clone();
            let pos = (next() as usize) % damaged.len();
            damaged[pos] ^= 1 << (next() % 8);
            if exercise(&damaged) {
                ok += 1
            } else {
                err += 1
            }
        }
    }
    // Most flips land in block bytes that frame decoding does not inspect; some must fail.
    assert!(ok > 0 && err > 0, "ok={ok} err={err}");
}

#[test]
fn oversize_frame_is_rejected_before_parsing() {
    let big = vec![0u8; MAX_FRAME_BYTES + 1];
    let err = decode_frame(&big).expect_err("too large");
    assert_eq!(err.kind(), FrameErrorKind::FrameTooLarge);
    assert_eq!(err.kind().as_str(), "frame_too_large");
}

fn first_commit_with_create() -> (Vec<u8>, Box<fpaas_proto::Commit>) {
    for frame in common::corpus_frames() {
        if let Ok(Frame::Commit(c)) = decode_frame(&frame)
            && c.ops.iter().any(|o| o.cid.is_some())
        {
            return (frame, c);
        }
    }
    panic!("corpus has no commit with a create");
}

#[test]
fn altered_record_block_is_cid_mismatch() {
    let (frame, commit) = first_commit_with_create();
    let op = commit
        .ops
        .iter()
        .find(|o| o.cid.is_some())
        .expect("op with cid");
    let record = commit
        .blocks
        .get(&op.cid.expect("cid"))
        .expect("record block")
        .to_vec();
    let at = frame
        .windows(record.len())
        .position(|w| w == record.as_slice())
        .expect("record bytes inside the frame");
    let mut damaged = frame.clone();
    damaged[at + record.len() / 2] ^= 0x01;
    let Frame::Commit(c) = decode_frame(&damaged).expect("frame still decodes") else {
        panic!("not a commit");
    };
    let op = c.ops.iter().find(|o| o.cid == op.cid).expect("same op");
    let err = c.record_json(op).expect_err("must detect tampering");
    assert_eq!(err.kind(), FrameErrorKind::CidMismatch);
}

#[test]
fn missing_record_block_is_reported() {
    let (_, mut commit) = first_commit_with_create();
    let i = commit
        .ops
        .iter()
        .position(|o| o.cid.is_some())
        .expect("op with cid");
    commit.ops[i].cid = Some(cid_for_cbor(b"\xa0"));
    let err = commit.record_json(&commit.ops[i]).expect_err("missing");
    assert_eq!(err.kind(), FrameErrorKind::MissingBlock);
}

// ---- hand-built frames ---------------------------------------------------------------------

fn map(entries: &[(&str, Ipld)]) -> Ipld {
    Ipld::Map(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn s(v: &str) -> Ipld {
    Ipld::String(v.to_owned())
}

fn frame(header: Ipld, body: Ipld) -> Vec<u8> {
    let mut out = serde_ipld_dagcbor::to_vec(&header).expect("header");
    out.extend(serde_ipld_dagcbor::to_vec(&body).expect("body"));
    out
}

fn car(roots: &[Cid], blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let header = serde_ipld_dagcbor::to_vec(&map(&[
        (
            "roots",
            Ipld::List(roots.iter().map(|c| Ipld::Link(*c)).collect()),
        ),
        ("version", Ipld::Integer(1)),
    ]))
    .expect("car header");
    let mut out = Vec::new();
    let mut buf = unsigned_varint::encode::usize_buffer();
    out.extend_from_slice(unsigned_varint::encode::usize(header.len(), &mut buf));
    out.extend(header);
    for (cid, data) in blocks {
        let c = cid.to_bytes();
        out.extend_from_slice(unsigned_varint::encode::usize(
            c.len() + data.len(),
            &mut buf,
        ));
        out.extend(c);
        out.extend_from_slice(data);
    }
    out
}

struct Built {
    record_cid: Cid,
    ops: Vec<Ipld>,
    blocks: Vec<u8>,
    repo: String,
    rev: String,
}

fn built() -> Built {
    let record = serde_ipld_dagcbor::to_vec(&map(&[
        ("$type", s("app.bsky.feed.like")),
        ("n", Ipld::Integer(1)),
    ]))
    .expect("record");
    let record_cid = cid_for_cbor(&record);
    let commit_block =
        serde_ipld_dagcbor::to_vec(&map(&[("x", Ipld::Integer(0))])).expect("commit");
    let commit_cid = cid_for_cbor(&commit_block);
    let op = map(&[
        ("action", s("create")),
        ("path", s("app.bsky.feed.like/3jzfcijpj2z2a")),
        ("cid", Ipld::Link(record_cid)),
    ]);
    Built {
        record_cid,
        ops: vec![op],
        blocks: car(
            &[commit_cid],
            &[(commit_cid, commit_block), (record_cid, record)],
        ),
        repo: "did:plc:abc".into(),
        rev: "3jzfcijpj2z2a".into(),
    }
}

fn commit_frame(b: &Built) -> Vec<u8> {
    frame(
        map(&[("op", Ipld::Integer(1)), ("t", s("#commit"))]),
        map(&[
            ("seq", Ipld::Integer(42)),
            ("repo", s(&b.repo)),
            ("rev", s(&b.rev)),
            ("since", Ipld::Null),
            ("commit", Ipld::Link(b.record_cid)),
            ("ops", Ipld::List(b.ops.clone())),
            ("blocks", Ipld::Bytes(b.blocks.clone())),
            ("blobs", Ipld::List(vec![])),
            ("time", s("2026-01-01T00:00:00Z")),
            ("tooBig", Ipld::Bool(false)),
            ("rebase", Ipld::Bool(false)),
        ]),
    )
}

fn kind(bytes: &[u8]) -> FrameErrorKind {
    decode_frame(bytes).expect_err("should fail").kind()
}

#[test]
fn hand_built_commit_decodes() {
    let b = built();
    let Frame::Commit(c) = decode_frame(&commit_frame(&b)).expect("decode") else {
        panic!("not a commit")
    };
    assert_eq!(c.seq, 42);
    assert_eq!(c.ops.len(), 1);
    assert_eq!(c.ops[0].path(), "app.bsky.feed.like/3jzfcijpj2z2a");
    let rec = c.record_json(&c.ops[0]).expect("record").expect("some");
    assert_eq!(
        rec,
        serde_json::json!({"$type": "app.bsky.feed.like", "n": 1})
    );
}

#[test]
fn commit_field_errors_have_kinds() {
    let mut b = built();
    b.repo = "not-a-did".into();
    assert_eq!(kind(&commit_frame(&b)), FrameErrorKind::BadDid);

    let mut b = built();
    b.rev = "0000000000000".into();
    assert_eq!(kind(&commit_frame(&b)), FrameErrorKind::BadRev);

    let mut b = built();
    b.ops = vec![map(&[
        ("action", s("delete")),
        ("path", s("no-slash")),
        ("cid", Ipld::Null),
    ])];
    assert_eq!(kind(&commit_frame(&b)), FrameErrorKind::BadPath);

    let mut b = built();
    b.ops = vec![map(&[
        ("action", s("frob")),
        ("path", s("a.b.c/x")),
        ("cid", Ipld::Null),
    ])];
    assert_eq!(kind(&commit_frame(&b)), FrameErrorKind::BadOp);

    let mut b = built();
    b.ops = vec![map(&[
        ("action", s("create")),
        ("path", s("a.b.c/x")),
        ("cid", Ipld::Null),
    ])];
    assert_eq!(kind(&commit_frame(&b)), FrameErrorKind::BadOp);

    let mut b = built();
    b.blocks = vec![0xff, 0xff];
    assert_eq!(kind(&commit_frame(&b)), FrameErrorKind::BadCar);
}

#[test]
fn limits_are_enforced() {
    let mut b = built();
    let op = b.ops[0].clone();
    b.ops = vec![op; MAX_OPS_PER_COMMIT + 1];
    let err = decode_frame(&commit_frame(&b)).expect_err("too many ops");
    assert_eq!(err.kind(), FrameErrorKind::TooManyOps);
    assert_eq!(err.kind().as_str(), "too_many_ops");

    let mut b = built();
    b.ops.truncate(1);
    b.blocks = vec![0; MAX_BLOCKS_BYTES + 1];
    assert_eq!(kind(&commit_frame(&b)), FrameErrorKind::BlocksTooLarge);

    let sync = frame(
        map(&[("op", Ipld::Integer(1)), ("t", s("#sync"))]),
        map(&[
            ("seq", Ipld::Integer(1)),
            ("did", s("did:plc:abc")),
            ("rev", s("3jzfcijpj2z2a")),
            ("blocks", Ipld::Bytes(vec![0; MAX_SYNC_BLOCKS_BYTES + 1])),
            ("time", s("2026-01-01T00:00:00Z")),
        ]),
    );
    assert_eq!(kind(&sync), FrameErrorKind::BlocksTooLarge);
}

#[test]
fn record_too_large_is_reported() {
    let record = serde_ipld_dagcbor::to_vec(&map(&[("big", Ipld::Bytes(vec![7; 1_000_001]))]))
        .expect("record");
    let cid = cid_for_cbor(&record);
    let mut b = built();
    b.blocks = car(&[cid], &[(cid, record)]);
    b.ops = vec![map(&[
        ("action", s("create")),
        ("path", s("a.b.c/x")),
        ("cid", Ipld::Link(cid)),
    ])];
    let Frame::Commit(c) = decode_frame(&commit_frame(&b)).expect("decode") else {
        panic!("not a commit")
    };
    assert_eq!(
        c.record_json(&c.ops[0]).expect_err("too big").kind(),
        FrameErrorKind::RecordTooLarge
    );
}

#[test]
fn other_frame_kinds() {
    let info = frame(
        map(&[("op", Ipld::Integer(1)), ("t", s("#info"))]),
        map(&[("name", s("OutdatedCursor")), ("message", s("old"))]),
    );
    match decode_frame(&info).expect("info") {
        Frame::Info(i) => assert_eq!(
            (i.name.as_str(), i.message.as_deref()),
            ("OutdatedCursor", Some("old"))
        ),
        other => panic!("{other:?}"),
    }

    let error = frame(
        map(&[("op", Ipld::Integer(-1))]),
        map(&[("error", s("FutureCursor"))]),
    );
    let f = decode_frame(&error).expect("error frame");
    assert_eq!(f.kind_label(), "error");
    assert!(matches!(f, Frame::Error(ref e) if e.error == "FutureCursor" && e.message.is_none()));

    for (op, t) in [
        (1, Some("#handle")),
        (1, Some("#tombstone")),
        (1, None),
        (7, Some("#commit")),
    ] {
        let mut h = vec![("op", Ipld::Integer(op))];
        if let Some(t) = t {
            h.push(("t", s(t)));
        }
        let f =
            decode_frame(&frame(map(&h), map(&[("anything", Ipld::Null)]))).expect("unknown is Ok");
        assert_eq!(f.kind_label(), "unknown");
        assert_eq!(f.seq(), None);
        match f {
            Frame::Unknown(u) => assert_eq!((u.op, u.t.as_deref()), (i64::from(op as i32), t)),
            other => panic!("{other:?}"),
        }
    }

    let account = frame(
        map(&[("op", Ipld::Integer(1)), ("t", s("#account"))]),
        map(&[
            ("seq", Ipld::Integer(9)),
            ("did", s("did:plc:abc")),
            ("time", s("2026-01-01T00:00:00.000Z")),
            ("active", Ipld::Bool(false)),
            ("status", s("takendown")),
        ]),
    );
    match decode_frame(&account).expect("account") {
        Frame::Account(a) => assert_eq!(
            (a.seq, a.active, a.status.map(|s| s.as_str())),
            (9, false, Some("takendown"))
        ),
        other => panic!("{other:?}"),
    }

    // Garbage header and trailing bytes after the body.
    assert_eq!(kind(&[0xff, 0x00]), FrameErrorKind::BadHeader);
    let mut trailing = info.clone();
    trailing.push(0x00);
    assert_eq!(kind(&trailing), FrameErrorKind::BadBody);
}

#[test]
fn car_parse_never_panics_on_damage() {
    let b = built();
    for n in 0..b.blocks.len() {
        let _ = Car::parse(&b.blocks[..n]);
        let mut d = b.blocks.clone();
        d[n] ^= 0x80;
        let _ = Car::parse(&d);
    }
    assert!(Car::parse(&b.blocks).is_ok());
}
