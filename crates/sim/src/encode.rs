//! The ENCODER side of the firehose wire format, written independently of our decoder (`fpaas-proto`):
//! DAG-CBOR blocks and their CIDs, CAR v1 files, and whole `subscribeRepos` frames (`{op, t}` header
//! followed by the body) for `#commit`, `#sync`, `#identity`, `#account`, `#info` and error frames.
//!
//! DAG-CBOR canonical key order (length first, then bytewise) is done by `serde_ipld_dagcbor`, which
//! sorts the fields of every struct and map it serializes.

use cid::Cid;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Multicodec code of DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code of raw bytes (used for blob CIDs).
pub const RAW: u64 = 0x55;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;

/// Errors building frames. Only our own values are encoded, so these indicate a bug.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// DAG-CBOR serialization failed.
    #[error("dag-cbor encoding failed: {0}")]
    Cbor(String),
    /// A multihash could not be built.
    #[error("multihash: {0}")]
    Multihash(#[from] multihash::Error),
}

/// Serializes `value` to canonical DAG-CBOR.
pub fn dag_cbor<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    serde_ipld_dagcbor::to_vec(value).map_err(|e| EncodeError::Cbor(e.to_string()))
}

/// CIDv1 (`codec`, sha2-256) of `bytes`.
pub fn cid_of(codec: u64, bytes: &[u8]) -> Result<Cid, EncodeError> {
    let digest = Sha256::digest(bytes);
    let mh = multihash::Multihash::<64>::wrap(SHA2_256, &digest)?;
    Ok(Cid::new_v1(codec, mh))
}

/// Serializes a value as a byte string (DAG-CBOR major type 2) rather than an array of integers.
#[derive(Debug, Clone, Copy)]
pub struct ByteStr<'a>(pub &'a [u8]);

impl Serialize for ByteStr<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// One IPLD block: DAG-CBOR bytes and their CID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// CIDv1 dag-cbor sha2-256 of `bytes`.
    pub cid: Cid,
    /// The canonical DAG-CBOR encoding.
    pub bytes: Vec<u8>,
}

impl Block {
    /// Encodes `value` and computes its CID.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, EncodeError> {
        let bytes = dag_cbor(value)?;
        let cid = cid_of(DAG_CBOR, &bytes)?;
        Ok(Self { cid, bytes })
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[derive(Serialize)]
struct CarHeader<'a> {
    version: u64,
    roots: &'a [Cid],
}

/// Builds a CAR v1 file: a varint-prefixed DAG-CBOR header `{version: 1, roots}`, then each block as
/// `varint(len(cid) + len(data)) || cid bytes || data`.
pub fn car<'a>(
    roots: &[Cid],
    blocks: impl IntoIterator<Item = &'a Block>,
) -> Result<Vec<u8>, EncodeError> {
    let header = dag_cbor(&CarHeader { version: 1, roots })?;
    let mut out = Vec::with_capacity(header.len() + 1024);
    push_varint(&mut out, header.len() as u64);
    out.extend_from_slice(&header);
    let mut cid_buf = Vec::with_capacity(40);
    for block in blocks {
        cid_buf.clear();
        block
            .cid
            .write_bytes(&mut cid_buf)
            .map_err(|e| EncodeError::Cbor(format!("cid bytes: {e}")))?;
        push_varint(&mut out, (cid_buf.len() + block.bytes.len()) as u64);
        out.extend_from_slice(&cid_buf);
        out.extend_from_slice(&block.bytes);
    }
    Ok(out)
}

#[derive(Serialize)]
struct MessageHeader<'a> {
    op: i64,
    t: &'a str,
}

#[derive(Serialize)]
struct ErrorHeader {
    op: i64,
}

/// A message frame: header `{op: 1, t}` followed by `body`.
pub fn message_frame<T: Serialize + ?Sized>(t: &str, body: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = dag_cbor(&MessageHeader { op: 1, t })?;
    let body = dag_cbor(body)?;
    out.extend_from_slice(&body);
    Ok(out)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// An error frame: header `{op: -1}`, body `{error, message}` (e.g. `FutureCursor`, `ConsumerTooSlow`).
pub fn error_frame(error: &str, message: &str) -> Result<Vec<u8>, EncodeError> {
    let mut out = dag_cbor(&ErrorHeader { op: -1 })?;
    out.extend_from_slice(&dag_cbor(&ErrorBody { error, message })?);
    Ok(out)
}

#[derive(Serialize)]
struct InfoBody<'a> {
    name: &'a str,
    message: &'a str,
}

/// An `#info` frame, e.g. `name = "OutdatedCursor"`.
pub fn info_frame(name: &str, message: &str) -> Result<Vec<u8>, EncodeError> {
    message_frame("#info", &InfoBody { name, message })
}

/// The signed repo commit object (repo spec v3). `sig` is 64 bytes.
#[derive(Serialize)]
pub struct CommitObject<'a> {
    /// Repo DID.
    pub did: &'a str,
    /// Always 3.
    pub version: u64,
    /// CID of the MST root.
    pub data: Cid,
    /// Revision TID.
    pub rev: &'a str,
    /// Always null in v3.
    pub prev: Option<Cid>,
    /// Signature bytes.
    pub sig: ByteStr<'a>,
}

#[derive(Serialize)]
struct UnsignedCommit<'a> {
    did: &'a str,
    version: u64,
    data: Cid,
    rev: &'a str,
    prev: Option<Cid>,
}

/// Builds the commit block for `did`/`rev`/`data`. The signature is NOT a real secp256k1/p256 signature:
/// it is `sha256(unsigned) || sha256(sha256(unsigned))`, deterministic and 64 bytes long like a real one.
pub fn commit_block(did: &str, rev: &str, data: Cid) -> Result<Block, EncodeError> {
    let unsigned = dag_cbor(&UnsignedCommit {
        did,
        version: 3,
        data,
        rev,
        prev: None,
    })?;
    let h1 = Sha256::digest(&unsigned);
    let h2 = Sha256::digest(h1);
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&h1);
    sig[32..].copy_from_slice(&h2);
    Block::encode(&CommitObject {
        did,
        version: 3,
        data,
        rev,
        prev: None,
        sig: ByteStr(&sig),
    })
}

/// One MST entry as stored in a node: `p` bytes shared with the previous key, `k` the rest.
#[derive(Serialize)]
struct MstEntry<'a> {
    p: u64,
    k: ByteStr<'a>,
    v: Cid,
    t: Option<Cid>,
}

#[derive(Serialize)]
struct MstNode<'a> {
    l: Option<Cid>,
    e: Vec<MstEntry<'a>>,
}

/// Builds an MST node with a left subtree link and entries `(key, value cid, right subtree)`, keys sorted and
/// prefix-compressed. Like [`mst_node`], a node of realistic shape and size, not part of a verifiable tree.
pub fn mst_inner_node(
    left: Option<Cid>,
    entries: &mut Vec<(String, Cid, Option<Cid>)>,
) -> Result<Block, EncodeError> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    let mut prev: &[u8] = &[];
    let mut e = Vec::with_capacity(entries.len());
    for (key, cid, subtree) in entries.iter() {
        let key = key.as_bytes();
        let p = prev.iter().zip(key).take_while(|(a, b)| a == b).count();
        e.push(MstEntry {
            p: p as u64,
            k: ByteStr(&key[p..]),
            v: *cid,
            t: *subtree,
        });
        prev = key;
    }
    Block::encode(&MstNode { l: left, e })
}

/// Builds a single MST node holding `entries` (`(key, value cid)`, key = `collection/rkey`) with correct
/// prefix compression. Keys are sorted and de-duplicated here. This is one leaf-like node, NOT a full,
/// height-correct repository MST: enough for a structurally valid diff, not for proof verification.
pub fn mst_node(entries: &mut Vec<(String, Cid)>) -> Result<Block, EncodeError> {
    let mut full: Vec<(String, Cid, Option<Cid>)> =
        entries.drain(..).map(|(k, v)| (k, v, None)).collect();
    let block = mst_inner_node(None, &mut full)?;
    entries.extend(full.into_iter().map(|(k, v, _)| (k, v)));
    Ok(block)
}

/// One `repoOp` of a `#commit`.
#[derive(Debug, Clone, Serialize)]
pub struct RepoOp {
    /// `create`, `update` or `delete`.
    pub action: &'static str,
    /// `collection/rkey`.
    pub path: String,
    /// New record CID; null for deletes.
    pub cid: Option<Cid>,
    /// Previous record CID (updates and deletes); omitted for creates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev: Option<Cid>,
}

/// Body of a `#commit` message.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitBody<'a> {
    /// Stream sequence number.
    pub seq: i64,
    /// Deprecated, always false.
    pub rebase: bool,
    /// Deprecated, always false.
    pub too_big: bool,
    /// Repo DID.
    pub repo: &'a str,
    /// CID of the commit block.
    pub commit: Cid,
    /// Revision of this commit.
    pub rev: &'a str,
    /// Previous revision, or null.
    pub since: Option<&'a str>,
    /// CAR v1 bytes.
    pub blocks: ByteStr<'a>,
    /// The operations.
    pub ops: &'a [RepoOp],
    /// Always empty.
    pub blobs: &'a [Cid],
    /// MST root of the previous commit, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_data: Option<Cid>,
    /// RFC 3339 timestamp with milliseconds.
    pub time: &'a str,
}

impl CommitBody<'_> {
    /// Encodes the whole `#commit` frame (header + body) in one buffer. Hand-written for speed (the
    /// generic serializer buffers and sorts every field, copying `blocks` several times); the test
    /// `hand_written_commit_matches_serde` pins it to the serde encoding byte for byte.
    pub fn encode_frame(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.blocks.0.len() + 256 + self.ops.len() * 96);
        // Header {"t": "#commit", "op": 1}.
        out.extend_from_slice(&[0xa2, 0x61, b't', 0x67]);
        out.extend_from_slice(b"#commit");
        out.extend_from_slice(&[0x62, b'o', b'p', 0x01]);
        // Body keys in canonical order (length first, then bytewise).
        let n = 11 + u64::from(self.prev_data.is_some());
        head(&mut out, 5, n);
        text(&mut out, "ops");
        head(&mut out, 4, self.ops.len() as u64);
        for op in self.ops {
            head(&mut out, 5, 3 + u64::from(op.prev.is_some()));
            text(&mut out, "cid");
            match &op.cid {
                Some(c) => link(&mut out, c)?,
                None => out.push(0xf6),
            }
            text(&mut out, "path");
            text(&mut out, &op.path);
            if let Some(p) = &op.prev {
                text(&mut out, "prev");
                link(&mut out, p)?;
            }
            text(&mut out, "action");
            text(&mut out, op.action);
        }
        text(&mut out, "rev");
        text(&mut out, self.rev);
        text(&mut out, "seq");
        int(&mut out, self.seq);
        text(&mut out, "repo");
        text(&mut out, self.repo);
        text(&mut out, "time");
        text(&mut out, self.time);
        text(&mut out, "blobs");
        head(&mut out, 4, self.blobs.len() as u64);
        for b in self.blobs {
            link(&mut out, b)?;
        }
        text(&mut out, "since");
        match self.since {
            Some(s) => text(&mut out, s),
            None => out.push(0xf6),
        }
        text(&mut out, "blocks");
        head(&mut out, 2, self.blocks.0.len() as u64);
        out.extend_from_slice(self.blocks.0);
        text(&mut out, "commit");
        link(&mut out, &self.commit)?;
        text(&mut out, "rebase");
        out.push(if self.rebase { 0xf5 } else { 0xf4 });
        text(&mut out, "tooBig");
        out.push(if self.too_big { 0xf5 } else { 0xf4 });
        if let Some(p) = &self.prev_data {
            text(&mut out, "prevData");
            link(&mut out, p)?;
        }
        Ok(out)
    }
}

/// A CBOR data item head (major type and argument) in its shortest form, e.g. `cbor_head(4, 3)` starts an
/// array of three items. For hand-built (also deliberately malformed) DAG-CBOR in tests and the hostile suite.
pub fn cbor_head(major: u8, v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    head(&mut out, major, v);
    out
}

/// Writes a CBOR head with the minimal-length argument.
fn head(out: &mut Vec<u8>, major: u8, v: u64) {
    let m = major << 5;
    if v < 24 {
        out.push(m | v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(out, 0, v as u64);
    } else {
        head(out, 1, (-1 - v) as u64);
    }
}

/// A CID link: tag 42 over the bytes `0x00 || cid`.
fn link(out: &mut Vec<u8>, cid: &Cid) -> Result<(), EncodeError> {
    out.extend_from_slice(&[0xd8, 0x2a]);
    head(out, 2, cid.encoded_len() as u64 + 1);
    out.push(0);
    cid.write_bytes(&mut *out)
        .map_err(|e| EncodeError::Cbor(format!("cid bytes: {e}")))?;
    Ok(())
}

/// Body of a `#sync` message.
#[derive(Serialize)]
pub struct SyncBody<'a> {
    /// Stream sequence number.
    pub seq: i64,
    /// Repo DID.
    pub did: &'a str,
    /// CAR holding just the commit block.
    pub blocks: ByteStr<'a>,
    /// Revision of the commit.
    pub rev: &'a str,
    /// RFC 3339 timestamp.
    pub time: &'a str,
}

/// Body of an `#identity` message.
#[derive(Serialize)]
pub struct IdentityBody<'a> {
    /// Stream sequence number.
    pub seq: i64,
    /// The account.
    pub did: &'a str,
    /// RFC 3339 timestamp.
    pub time: &'a str,
    /// Current handle, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<&'a str>,
}

/// Body of an `#account` message.
#[derive(Serialize)]
pub struct AccountBody<'a> {
    /// Stream sequence number.
    pub seq: i64,
    /// The account.
    pub did: &'a str,
    /// RFC 3339 timestamp.
    pub time: &'a str,
    /// Whether the account is active.
    pub active: bool,
    /// Why the account is inactive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipld_core::ipld::Ipld;

    #[test]
    fn header_keys_are_canonical() {
        let frame = message_frame(
            "#commit",
            &IdentityBody {
                seq: 1,
                did: "did:plc:x",
                time: "2026-01-01T00:00:00.000Z",
                handle: None,
            },
        )
        .expect("frame");
        // {"t": "#commit", "op": 1}: map(2), "t" (len 1) sorts before "op" (len 2).
        assert_eq!(&frame[..3], &[0xa2, 0x61, b't']);
    }

    #[test]
    fn car_roundtrips_through_a_generic_decoder() {
        let a = Block::encode(&Ipld::String("a".into())).expect("a");
        let b = Block::encode(&Ipld::Integer(7)).expect("b");
        let bytes = car(&[a.cid], [&a, &b]).expect("car");
        // Parse by hand: header, then two sections whose CIDs match their data.
        let (hlen, rest) = read_varint(&bytes);
        let header: Ipld = serde_ipld_dagcbor::from_slice(&rest[..hlen]).expect("header");
        let Ipld::Map(m) = header else {
            panic!("header not a map")
        };
        assert_eq!(m.get("version"), Some(&Ipld::Integer(1)));
        assert_eq!(m.get("roots"), Some(&Ipld::List(vec![Ipld::Link(a.cid)])));
        let mut rest = &rest[hlen..];
        let mut seen = vec![];
        while !rest.is_empty() {
            let (len, r) = read_varint(rest);
            let section = &r[..len];
            let cid = Cid::read_bytes(section).expect("cid");
            let data = &section[cid.encoded_len()..];
            assert_eq!(cid_of(DAG_CBOR, data).expect("cid"), cid);
            seen.push(cid);
            rest = &r[len..];
        }
        assert_eq!(seen, vec![a.cid, b.cid]);
    }

    #[test]
    fn hand_written_commit_matches_serde() {
        let c1 = cid_of(DAG_CBOR, b"1").expect("cid");
        let c2 = cid_of(DAG_CBOR, b"2").expect("cid");
        let ops = vec![
            RepoOp {
                action: "create",
                path: "app.bsky.feed.like/3abc".into(),
                cid: Some(c1),
                prev: None,
            },
            RepoOp {
                action: "delete",
                path: "app.bsky.feed.post/3abd".into(),
                cid: None,
                prev: Some(c2),
            },
        ];
        let blocks = vec![7u8; 300];
        for (seq, since, prev_data) in [
            (1i64, None, None),
            (31_527_015_322, Some("3abc"), Some(c2)),
            (-5, Some(""), None),
        ] {
            let body = CommitBody {
                seq,
                rebase: false,
                too_big: false,
                repo: "did:plc:abc",
                commit: c1,
                rev: "3mptbyplj5d2a",
                since,
                blocks: ByteStr(&blocks),
                ops: &ops,
                blobs: &[c2],
                prev_data,
                time: "2026-07-04T00:00:00.000Z",
            };
            let reference = message_frame("#commit", &body).expect("serde");
            assert_eq!(body.encode_frame().expect("hand"), reference, "seq {seq}");
        }
    }

    fn read_varint(b: &[u8]) -> (usize, &[u8]) {
        let mut v = 0usize;
        for (i, byte) in b.iter().enumerate() {
            v |= ((byte & 0x7f) as usize) << (7 * i);
            if byte & 0x80 == 0 {
                return (v, &b[i + 1..]);
            }
        }
        panic!("bad varint")
    }

    #[test]
    fn mst_node_prefix_compresses_sorted_keys() {
        let c = cid_of(DAG_CBOR, b"x").expect("cid");
        let mut entries = vec![
            ("app.bsky.feed.post/3b".to_string(), c),
            ("app.bsky.feed.like/3a".to_string(), c),
            ("app.bsky.feed.post/3a".to_string(), c),
            ("app.bsky.feed.like/3a".to_string(), c),
        ];
        let block = mst_node(&mut entries).expect("node");
        let node: Ipld = serde_ipld_dagcbor::from_slice(&block.bytes).expect("decode");
        let Ipld::Map(m) = node else { panic!() };
        let Some(Ipld::List(e)) = m.get("e") else {
            panic!()
        };
        assert_eq!(e.len(), 3);
        let get = |i: usize, k: &str| match &e[i] {
            Ipld::Map(m) => m.get(k).cloned(),
            _ => None,
        };
        assert_eq!(get(0, "p"), Some(Ipld::Integer(0)));
        assert_eq!(get(1, "p"), Some(Ipld::Integer(14)));
        assert_eq!(get(1, "k"), Some(Ipld::Bytes(b"post/3a".to_vec())));
        assert_eq!(get(2, "p"), Some(Ipld::Integer(20)));
        assert_eq!(get(2, "k"), Some(Ipld::Bytes(b"b".to_vec())));
    }
}
