//! Merkle Search Tree reading for repository exports (`getRepo` CARs): the signed commit block
//! and an in-order walk of the tree to `(collection/rkey, record CID)` pairs.
//!
//! Every node is hash-checked against its CID and structurally validated (key order, prefix
//! lengths, per-layer key heights); recursion depth is bounded, so hostile CARs yield errors.

use cid::Cid;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::car::{Car, verify_block};
use crate::syntax::{Did, SyntaxError};

/// Deepest tree accepted (a key height is at most 128 for a 256-bit hash).
const MAX_DEPTH: usize = 130;
/// Longest MST key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a commit or tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MstError {
    /// A referenced block is not in the CAR.
    #[error("block {0} missing from CAR")]
    MissingBlock(Cid),
    /// A block does not hash to its CID.
    #[error("block {0} does not match its CID")]
    CidMismatch(Cid),
    /// A block is not the expected DAG-CBOR shape.
    #[error("block {cid} is not a valid {what}")]
    Decode {
        /// The offending block.
        cid: Cid,
        /// What it should have been ("commit" or "MST node").
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: Box<serde_ipld_dagcbor::DecodeError<std::convert::Infallible>>,
    },
    /// The commit's DID is invalid.
    #[error("commit DID is invalid")]
    Did(#[source] SyntaxError),
    /// The commit version is not 2 or 3.
    #[error("unsupported repo version {0}")]
    Version(i64),
    /// Keys are not strictly ascending, a prefix length is out of range, a key is not UTF-8 or
    /// too long.
    #[error("invalid MST key in node {0}: {1}")]
    Key(Cid, &'static str),
    /// An entry's key height does not match its layer.
    #[error("MST node {0} has a key at the wrong layer")]
    Layer(Cid),
    /// The tree is deeper than any valid tree can be.
    #[error("MST deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// The signed commit object at the top of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoCommit {
    /// The account DID.
    pub did: Did,
    /// Repo format version (3 today).
    pub version: i64,
    /// Root of the MST.
    pub data: Cid,
    /// Revision (a TID for current repos).
    pub rev: String,
    /// Previous commit (usually `None` in v3).
    pub prev: Option<Cid>,
}

#[derive(Deserialize)]
struct CommitBlock<'a> {
    did: &'a str,
    version: i64,
    data: Cid,
    rev: &'a str,
    #[serde(default)]
    prev: Option<Cid>,
}

#[derive(Deserialize)]
struct Node<'a> {
    #[serde(default)]
    l: Option<Cid>,
    #[serde(borrow)]
    e: Vec<Entry<'a>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    p: usize,
    #[serde(borrow)]
    k: &'a [u8],
    v: Cid,
    #[serde(default)]
    t: Option<Cid>,
}

fn verified<'c>(car: &'c Car, cid: &Cid) -> Result<&'c [u8], MstError> {
    let block = car.get(cid).ok_or(MstError::MissingBlock(*cid))?;
    if verify_block(cid, block) {
        Ok(block)
    } else {
        Err(MstError::CidMismatch(*cid))
    }
}

/// Reads and hash-checks the signed commit block `commit_cid` (signature not verified).
pub fn read_commit(car: &Car, commit_cid: &Cid) -> Result<RepoCommit, MstError> {
    let block = verified(car, commit_cid)?;
    let c: CommitBlock<'_> =
        serde_ipld_dagcbor::from_slice(block).map_err(|source| MstError::Decode {
            cid: *commit_cid,
            what: "commit",
            source: Box::new(source),
        })?;
    if !(2..=3).contains(&c.version) {
        return Err(MstError::Version(c.version));
    }
    Ok(RepoCommit {
        did: Did::parse(c.did).map_err(MstError::Did)?,
        version: c.version,
        data: c.data,
        rev: c.rev.to_owned(),
        prev: c.prev,
    })
}

/// The MST layer of a key: leading zero bits of sha256(key), divided by 2 (fanout 4).
pub fn key_height(key: &[u8]) -> u32 {
    let hash = Sha256::digest(key);
    let mut zeros = 0u32;
    for byte in hash {
        zeros += byte.leading_zeros();
        if byte != 0 {
            break;
        }
    }
    zeros / 2
}

/// All (key `"collection/rkey"`, record CID) pairs in key order; validates structure, no panics.
pub fn walk(car: &Car, root: &Cid) -> Result<Vec<(String, Cid)>, MstError> {
    let mut out = Vec::new();
    let mut last_key = Vec::new();
    walk_node(car, root, None, 0, &mut last_key, &mut out)?;
    Ok(out)
}

fn walk_node(
    car: &Car,
    cid: &Cid,
    expected_layer: Option<u32>,
    depth: usize,
    last_key: &mut Vec<u8>,
    out: &mut Vec<(String, Cid)>,
) -> Result<(), MstError> {
    if depth > MAX_DEPTH {
        return Err(MstError::TooDeep);
    }
    let block = verified(car, cid)?;
    let node: Node<'_> =
        serde_ipld_dagcbor::from_slice(block).map_err(|source| MstError::Decode {
            cid: *cid,
            what: "MST node",
            source: Box::new(source),
        })?;

    // Keys in a node are prefix-compressed against the previous key in the same node.
    let mut keys = Vec::with_capacity(node.e.len());
    let mut prev: Vec<u8> = Vec::new();
    for e in &node.e {
        let prefix = prev
            .get(..e.p)
            .ok_or(MstError::Key(*cid, "prefix longer than previous key"))?;
        let mut key = Vec::with_capacity(prefix.len().saturating_add(e.k.len()));
        key.extend_from_slice(prefix);
        key.extend_from_slice(e.k);
        if key.len() > MAX_KEY_BYTES {
            return Err(MstError::Key(*cid, "key too long"));
        }
        prev.clone_from(&key);
        keys.push(key);
    }

    let layer = match keys.first() {
        Some(first) => {
            let layer = key_height(first);
            if expected_layer.is_some_and(|e| e != layer)
                || keys.iter().any(|k| key_height(k) != layer)
            {
                return Err(MstError::Layer(*cid));
            }
            Some(layer)
        }
        None => expected_layer,
    };
    let child_layer = match layer {
        Some(0) => None, // children below layer 0 are invalid; detected below
        Some(l) => Some(l - 1),
        None => None,
    };
    let check_child = |_: &Cid| -> Result<(), MstError> {
        if layer == Some(0) {
            Err(MstError::Layer(*cid))
        } else {
            Ok(())
        }
    };

    if let Some(l) = &node.l {
        check_child(l)?;
        walk_node(car, l, child_layer, depth + 1, last_key, out)?;
    }
    for (e, key) in node.e.iter().zip(keys) {
        if !out.is_empty() && key.as_slice() <= last_key.as_slice() {
            return Err(MstError::Key(*cid, "keys not strictly ascending"));
        }
        let key_str =
            String::from_utf8(key).map_err(|_| MstError::Key(*cid, "key is not UTF-8"))?;
        last_key.clear();
        last_key.extend_from_slice(key_str.as_bytes());
        out.push((key_str, e.v));
        if let Some(t) = &e.t {
            check_child(t)?;
            walk_node(car, t, child_layer, depth + 1, last_key, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_heights_match_interop_vectors() {
        #[derive(Deserialize)]
        struct V {
            key: String,
            height: u32,
        }
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/interop/mst/key_heights.json"
        );
        let text = std::fs::read_to_string(path).expect("read key_heights.json");
        let vectors: Vec<V> = serde_json::from_str(&text).expect("parse");
        assert!(vectors.len() >= 5);
        for v in vectors {
            assert_eq!(key_height(v.key.as_bytes()), v.height, "key {:?}", v.key);
        }
    }
}
