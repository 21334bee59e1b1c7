//! The hostile suite: frames a stranger's PDS could make a relay pass on, each built to stop, bloat or fool a
//! firehose consumer (memory amplification, depth, free text in subjects, block floods, data-model leniency,
//! dedup-id collisions). Deterministic: the same call gives the same bytes, so the suite is committed under
//! `testdata/hostile/` (regenerate with `scripts/gen-hostile.sh`) and every case is a test.
//!
//! Each [`HostileCase`] says what a correct decoder must make of it ([`Expect`]): dropped with a stable label
//! (per op or per frame), or accepted as a given number of events (the cases that must be mapped, not
//! dropped, such as a free-text account status). [`mixed`] interleaves the cases with good frames, renumbering
//! the good frames' `seq` so each case sits in a gap of its own.

use cid::Cid;
use ipld_core::ipld::Ipld;
use serde::Serialize;

use crate::encode::{
    AccountBody, Block, ByteStr, CommitBody, DAG_CBOR, EncodeError, IdentityBody, RAW, RepoOp,
    SyncBody, car, cid_of, commit_block, message_frame,
};

/// What a correct decoder makes of a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "expect")]
pub enum Expect {
    /// `count` drops labelled `label` and no events.
    Dropped {
        /// The stable drop label.
        label: &'static str,
        /// How many drops (ops, or 1 for a whole frame).
        count: u32,
    },
    /// `count` events, no drops.
    Events {
        /// How many events.
        count: u32,
        /// The subject every one of them must have, when it matters to the case.
        #[serde(skip_serializing_if = "Option::is_none")]
        subject: Option<&'static str>,
    },
}

/// One hostile case: its frames (with consecutive `seq`s from the base it was built with) and the expectation.
#[derive(Clone, Debug)]
pub struct HostileCase {
    /// File-name-safe name.
    pub name: &'static str,
    /// What the case attacks.
    pub what: &'static str,
    /// What must come of it.
    pub expect: Expect,
    /// The frames, in order.
    pub frames: Vec<Vec<u8>>,
}

/// Largest record block the protocol allows.
const MAX_RECORD: usize = 1_000_000;

fn did(case: usize) -> String {
    // did:plc identifiers are 24 base32 characters.
    let letters = b"abcdefghijklmnopqrstuvwxyz234567";
    let tail: String = (0..24)
        .map(|i| char::from(letters[(case * 7 + i * 3) % 32]))
        .collect();
    format!("did:plc:{tail}")
}

fn rev(n: u64) -> String {
    crate::tid::tid(1_780_000_000_000_000 + n, 7)
}

const TIME: &str = "2026-12-01T00:00:00.000Z";

fn raw_block(bytes: Vec<u8>) -> Result<Block, EncodeError> {
    Ok(Block {
        cid: cid_of(DAG_CBOR, &bytes)?,
        bytes,
    })
}

fn head(major: u8, n: u64) -> Vec<u8> {
    crate::encode::cbor_head(major, n)
}

/// `{"a": <value bytes>}` — keys of one letter keep canonical order trivial.
fn record_a(value: &[u8]) -> Vec<u8> {
    let mut v = vec![0xa1, 0x61, b'a'];
    v.extend_from_slice(value);
    v
}

/// `{"a": [item × n]}` filling `total` bytes of record.
fn array_record(item: u8, total: usize) -> Vec<u8> {
    // map(1) + "a" (2) + array head (5 for n ≥ 65536)
    let n = total - 8;
    let mut arr = head(4, n as u64);
    arr.extend(std::iter::repeat_n(item, n));
    record_a(&arr)
}

fn nested(levels: usize) -> Vec<u8> {
    let mut v = vec![0x01];
    for _ in 0..levels {
        let mut m = vec![0xa1, 0x61, b'a'];
        m.extend(v);
        v = m;
    }
    v
}

/// A #commit frame of `ops` over `records` (each op names a record by index, or its own CID).
struct CommitSpec {
    seq: i64,
    did: String,
    rev: String,
    time: String,
    /// (action, path, cid)
    ops: Vec<(&'static str, String, Option<Cid>)>,
    blocks: Vec<Block>,
    /// Raw CAR bytes to use instead of building one from `blocks`.
    car_override: Option<Vec<u8>>,
}

impl CommitSpec {
    fn new(seq: i64, case: usize, n: u64) -> Self {
        Self {
            seq,
            did: did(case),
            rev: rev(n),
            time: TIME.to_owned(),
            ops: Vec::new(),
            blocks: Vec::new(),
            car_override: None,
        }
    }

    fn creates(mut self, record: Block, count: usize) -> Self {
        for i in 0..count {
            self.ops.push((
                "create",
                format!("app.bsky.feed.post/3k{:011}", i),
                Some(record.cid),
            ));
        }
        self.blocks.push(record);
        self
    }

    fn frame(&self) -> Result<Vec<u8>, EncodeError> {
        let data = cid_of(DAG_CBOR, b"hostile-mst-root")?;
        let commit = commit_block(&self.did, &self.rev, data)?;
        let blocks = match &self.car_override {
            Some(bytes) => bytes.clone(),
            None => car(&[commit.cid], std::iter::once(&commit).chain(&self.blocks))?,
        };
        let ops: Vec<RepoOp> = self
            .ops
            .iter()
            .map(|(action, path, cid)| RepoOp {
                action,
                path: path.clone(),
                cid: *cid,
                prev: None,
            })
            .collect();
        CommitBody {
            seq: self.seq,
            rebase: false,
            too_big: false,
            repo: &self.did,
            commit: commit.cid,
            rev: &self.rev,
            since: None,
            blocks: ByteStr(&blocks),
            ops: &ops,
            blobs: &[],
            prev_data: None,
            time: &self.time,
        }
        .encode_frame()
    }
}

fn dropped(label: &'static str, count: u32) -> Expect {
    Expect::Dropped { label, count }
}

/// Every case, the `i`-th built with `seq(i)` as its first sequence number.
///
/// # Errors
/// Only an encoding bug.
pub fn cases(seq: impl Fn(usize) -> i64) -> Result<Vec<HostileCase>, EncodeError> {
    let mut out = Vec::new();
    let mut add =
        |name, what, expect, build: &dyn Fn(i64, usize) -> Result<Vec<Vec<u8>>, EncodeError>| {
            let i = out.len();
            let frames = build(seq(i), i)?;
            out.push(HostileCase {
                name,
                what,
                expect,
                frames,
            });
            Ok::<(), EncodeError>(())
        };
    let one = |spec: CommitSpec| -> Result<Vec<Vec<u8>>, EncodeError> { Ok(vec![spec.frame()?]) };

    add(
        "empty_bytes_1mb",
        "a 1 MB record of empty byte strings: 13 bytes of JSON per byte (~13 MB), ~725 MB as a JSON tree",
        dropped("record_json_too_large", 1),
        &|s, c| one(CommitSpec::new(s, c, 1).creates(raw_block(array_record(0x40, MAX_RECORD))?, 1)),
    )?;
    add(
        "empty_bytes_1mb_200_ops",
        "200 create ops sharing the CID of that record: once aborted the shuffler (memory allocation failed) and \
         was re-read on every restart",
        dropped("record_json_too_large", 200),
        &|s, c| {
            one(CommitSpec::new(s, c, 2).creates(raw_block(array_record(0x40, MAX_RECORD))?, 200))
        },
    )?;
    add(
        "zeros_1mb",
        "a 1 MB record of integer zeros: 2 bytes of JSON per byte",
        dropped("record_json_too_large", 1),
        &|s, c| one(CommitSpec::new(s, c, 3).creates(raw_block(array_record(0x00, MAX_RECORD))?, 1)),
    )?;
    add(
        "control_chars_200_ops",
        "a 100 kB string of control characters (600 kB of JSON escapes, under the per-record budget) shared by \
         200 ops: 120 MB of event JSON for one frame",
        dropped("frame_over_budget", 1),
        &|s, c| {
            let mut text = head(3, 100_000);
            text.extend(std::iter::repeat_n(0x01u8, 100_000));
            one(CommitSpec::new(s, c, 4).creates(raw_block(record_a(&text))?, 200))
        },
    )?;
    add(
        "nested_127",
        "a record nested 127 maps deep: decodes, but the event is deeper than serde_json's default limit",
        dropped("record_too_deep", 1),
        &|s, c| one(CommitSpec::new(s, c, 5).creates(raw_block(nested(127))?, 1)),
    )?;
    add(
        "nested_100",
        "a record nested exactly MAX_RECORD_DEPTH (100) maps deep: accepted, and its event parses with serde_json",
        Expect::Events {
            count: 1,
            subject: Some("atproto.firehose.commit.create.app.bsky.feed.post"),
        },
        &|s, c| one(CommitSpec::new(s, c, 6).creates(raw_block(nested(100))?, 1)),
    )?;
    add(
        "account_status_dots",
        "#account with a status of 1,400 dots: once became subject tokens longer than the server's control line",
        Expect::Events {
            count: 1,
            subject: Some("atproto.firehose.account.other"),
        },
        &|s, c| {
            let status = ".".repeat(1_400);
            Ok(vec![message_frame(
                "#account",
                &AccountBody {
                    seq: s,
                    did: &did(c),
                    time: TIME,
                    active: false,
                    status: Some(&status),
                },
            )?])
        },
    )?;
    add(
        "car_block_flood",
        "2 MB of 5-byte CAR sections (identity-hash CIDs): ~400k blocks, 124 MB of index for one frame",
        dropped("too_many_blocks", 1),
        &|s, c| {
            let mut spec = CommitSpec::new(s, c, 8).creates(raw_block(record_a(&[0x01]))?, 1);
            let mut bytes = car(&[spec.blocks[0].cid], &spec.blocks)?;
            let section = [0x04u8, 0x01, 0x71, 0x00, 0x00]; // len 4: CIDv1, dag-cbor, identity, 0 bytes
            while bytes.len() + section.len() <= 1_999_000 {
                bytes.extend_from_slice(&section);
            }
            spec.car_override = Some(bytes);
            one(spec)
        },
    )?;
    add(
        "record_not_object",
        "a record whose top level is an array",
        dropped("record_not_object", 1),
        &|s, c| one(CommitSpec::new(s, c, 9).creates(raw_block(vec![0x82, 0x01, 0x02])?, 1)),
    )?;
    add(
        "integer_above_i64",
        "an integer of 2^63 (above i64::MAX)",
        dropped("record_integer_range", 1),
        &|s, c| one(CommitSpec::new(s, c, 10).creates(raw_block(record_a(&head(0, 1 << 63)))?, 1)),
    )?;
    add(
        "plain_map_with_link_key",
        "a plain map {\"$link\": \"bafy…\"}: in JSON indistinguishable from a real CID link",
        dropped("record_reserved_key", 1),
        &|s, c| {
            let mut inner = vec![0xa1, 0x65];
            inner.extend_from_slice(b"$link");
            let cid = cid_of(DAG_CBOR, b"x")?.to_string();
            inner.extend(head(3, cid.len() as u64));
            inner.extend_from_slice(cid.as_bytes());
            one(CommitSpec::new(s, c, 11).creates(raw_block(record_a(&inner))?, 1))
        },
    )?;
    add(
        "plain_map_with_bytes_key",
        "a plain map {\"$bytes\": \"AAAA\"}: in JSON indistinguishable from real bytes",
        dropped("record_reserved_key", 1),
        &|s, c| {
            let mut inner = vec![0xa1, 0x66];
            inner.extend_from_slice(b"$bytes");
            inner.extend_from_slice(&[0x64, b'A', b'A', b'A', b'A']);
            one(CommitSpec::new(s, c, 12).creates(raw_block(record_a(&inner))?, 1))
        },
    )?;
    add(
        "float",
        "a float (not in the ATProto data model)",
        dropped("record_float", 1),
        &|s, c| one(CommitSpec::new(s, c, 13).creates(raw_block(record_a(&[0xf9, 0x3c, 0x00]))?, 1)),
    )?;
    add(
        "keys_out_of_order",
        "map keys not in canonical (length-first) order",
        dropped("record_non_canonical", 1),
        &|s, c| {
            let rec = vec![0xa2, 0x62, b'b', b'b', 0x01, 0x61, b'a', 0x02];
            one(CommitSpec::new(s, c, 14).creates(raw_block(rec)?, 1))
        },
    )?;
    add(
        "duplicate_key",
        "the same key twice in one map",
        dropped("record_duplicate_key", 1),
        &|s, c| {
            let rec = vec![0xa2, 0x61, b'a', 0x01, 0x61, b'a', 0x02];
            one(CommitSpec::new(s, c, 15).creates(raw_block(rec)?, 1))
        },
    )?;
    add(
        "indefinite_length",
        "an indefinite-length map (not DAG-CBOR)",
        dropped("record_indefinite_length", 1),
        &|s, c| {
            let rec = vec![0xbf, 0x61, b'a', 0x01, 0xff];
            one(CommitSpec::new(s, c, 16).creates(raw_block(rec)?, 1))
        },
    )?;
    add(
        "undefined_value",
        "CBOR `undefined`",
        dropped("record_bad_simple_value", 1),
        &|s, c| one(CommitSpec::new(s, c, 17).creates(raw_block(record_a(&[0xf7]))?, 1)),
    )?;
    add(
        "unknown_tag",
        "a CBOR tag other than 42",
        dropped("record_unknown_tag", 1),
        &|s, c| one(CommitSpec::new(s, c, 18).creates(raw_block(record_a(&[0xc1, 0x01]))?, 1)),
    )?;
    add(
        "invalid_utf8",
        "a text string that is not UTF-8",
        dropped("record_invalid_utf8", 1),
        &|s, c| one(CommitSpec::new(s, c, 19).creates(raw_block(record_a(&[0x62, 0xc3, 0x28]))?, 1)),
    )?;
    add(
        "raw_codec_op_cid",
        "a create op whose CID has the raw codec (a record is always DAG-CBOR)",
        dropped("bad_op_cid", 1),
        &|s, c| {
            let rec = record_a(&[0x01]);
            let block = Block {
                cid: cid_of(RAW, &rec)?,
                bytes: rec,
            };
            one(CommitSpec::new(s, c, 20).creates(block, 1))
        },
    )?;
    add(
        "time_with_crlf",
        "a commit `time` with CR/LF (it reached the Nats-Msg-Id header)",
        dropped("bad_time", 1),
        &|s, c| {
            let mut spec = CommitSpec::new(s, c, 21).creates(raw_block(record_a(&[0x01]))?, 1);
            spec.time = format!("{TIME}\r\nNats-Expected-Stream: other");
            one(spec)
        },
    )?;
    add(
        "sync_rev_not_tid",
        "a #sync whose rev is not a TID",
        dropped("bad_rev", 1),
        &|s, c| {
            let d = did(c);
            let commit = commit_block(&d, "not-a-tid", cid_of(DAG_CBOR, b"root")?)?;
            let blocks = car(&[commit.cid], [&commit])?;
            Ok(vec![message_frame(
                "#sync",
                &SyncBody {
                    seq: s,
                    did: &d,
                    blocks: ByteStr(&blocks),
                    rev: "not-a-tid",
                    time: TIME,
                },
            )?])
        },
    )?;
    add(
        "negative_seq",
        "a commit with a negative seq",
        dropped("bad_seq", 1),
        &|_, c| one(CommitSpec::new(-5, c, 23).creates(raw_block(record_a(&[0x01]))?, 1)),
    )?;
    add(
        "duplicate_op_path",
        "two ops on one path (gave two events with one dedup id)",
        dropped("duplicate_op_path", 1),
        &|s, c| {
            let mut spec = CommitSpec::new(s, c, 24).creates(raw_block(record_a(&[0x01]))?, 1);
            let first = spec.ops[0].clone();
            spec.ops.push(first);
            one(spec)
        },
    )?;
    add(
        "identity_same_time",
        "two #identity events of one DID with the same time and different handles (their dedup ids collided)",
        Expect::Events {
            count: 2,
            subject: Some("atproto.firehose.identity"),
        },
        &|s, c| {
            let d = did(c);
            let frame = |seq, handle| {
                message_frame(
                    "#identity",
                    &IdentityBody {
                        seq,
                        did: &d,
                        time: TIME,
                        handle: Some(handle),
                    },
                )
            };
            Ok(vec![
                frame(s, "one.example.com")?,
                frame(s + 1, "two.example.com")?,
            ])
        },
    )?;
    add(
        "bad_link",
        "a tag-42 link to an identity-hash CID",
        dropped("record_bad_link", 1),
        &|s, c| {
            let ident = [0x01u8, 0x71, 0x00, 0x03, b'a', b'b', b'c'];
            let mut link = vec![0xd8, 0x2a];
            link.extend(head(2, ident.len() as u64 + 1));
            link.push(0);
            link.extend_from_slice(&ident);
            one(CommitSpec::new(s, c, 26).creates(raw_block(record_a(&link))?, 1))
        },
    )?;
    Ok(out)
}

/// Re-encodes a frame with a new `seq` (header and body decoded as IPLD; everything else unchanged).
///
/// # Errors
/// The frame is not two DAG-CBOR values with a `seq` in the body.
pub fn renumber(frame: &[u8], seq: i64) -> Result<Vec<u8>, EncodeError> {
    use serde::Deserialize as _;
    let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(frame);
    let header =
        Ipld::deserialize(&mut de).map_err(|e| EncodeError::Cbor(format!("header: {e}")))?;
    let mut body =
        Ipld::deserialize(&mut de).map_err(|e| EncodeError::Cbor(format!("body: {e}")))?;
    match &mut body {
        Ipld::Map(m) if m.contains_key("seq") => {
            m.insert("seq".to_owned(), Ipld::Integer(i128::from(seq)));
        }
        _ => return Err(EncodeError::Cbor("body has no seq".to_owned())),
    }
    let mut out = crate::encode::dag_cbor(&header)?;
    out.extend(crate::encode::dag_cbor(&body)?);
    Ok(out)
}

/// The `seq` good frame `i` gets in [`mixed`]: gaps of 100 leave room for the cases.
pub fn mixed_good_seq(i: usize) -> i64 {
    1_000_000 + 100 * i as i64
}

/// The first `seq` of hostile case `j` in [`mixed`]: right after good frame `j * spacing`.
pub fn mixed_case_seq(j: usize, spacing: usize) -> i64 {
    mixed_good_seq(j * spacing) + 1
}

/// Good frames renumbered with [`mixed_good_seq`], with hostile case `j` (built with [`mixed_case_seq`])
/// placed right after good frame `j * spacing`. Cases beyond the good frames go at the end.
///
/// # Errors
/// A good frame that cannot be renumbered.
pub fn mixed(
    good: &[Vec<u8>],
    cases: &[HostileCase],
    spacing: usize,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut out = Vec::with_capacity(good.len() + cases.len() * 2);
    let mut next_case = 0;
    for (i, frame) in good.iter().enumerate() {
        out.push(renumber(frame, mixed_good_seq(i))?);
        while next_case < cases.len() && next_case * spacing == i {
            out.extend(cases[next_case].frames.iter().cloned());
            next_case += 1;
        }
    }
    for case in &cases[next_case..] {
        out.extend(case.frames.iter().cloned());
    }
    Ok(out)
}
