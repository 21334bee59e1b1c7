//! CAR v1 (content-addressable archive) reading: the `blocks` field of firehose messages and
//! whole-repository exports.
//!
//! A small synchronous slice reader instead of `iroh-car` (async-only): the framing is just a
//! varint-prefixed DAG-CBOR header and varint-prefixed `CID ‖ bytes` sections. Block bytes are kept
//! as ranges into one shared [`Bytes`] buffer, so parsing never copies or decodes block contents.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use cid::Cid;
use sha2::{Digest, Sha256};

/// Above this many blocks, [`Car`] builds a hash index instead of scanning linearly.
const INDEX_THRESHOLD: usize = 32;

/// Multihash code for sha2-256.
const SHA2_256: u64 = 0x12;

/// Why CAR bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    /// The input ended in the middle of a varint, header or block.
    #[error("truncated CAR: {0}")]
    Truncated(&'static str),
    /// A length prefix is not a valid varint.
    #[error("invalid varint in CAR {0}")]
    Varint(&'static str),
    /// The header is not DAG-CBOR `{version, roots}`.
    #[error("invalid CAR header")]
    Header(#[source] serde_ipld_dagcbor::DecodeError<std::convert::Infallible>),
    /// The header names a version other than 1.
    #[error("unsupported CAR version {0}")]
    Version(u64),
    /// A block section does not start with a valid CID.
    #[error("invalid CID in CAR block")]
    Cid(#[source] cid::Error),
    /// A section length is zero or smaller than its CID.
    #[error("invalid CAR block section length")]
    SectionLength,
    /// More blocks than the caller allows ([`Car::parse_bytes_limited`]).
    #[error("more than {0} blocks")]
    TooManyBlocks(usize),
}

/// A parsed CAR v1 file. Cheap to clone (block bytes are shared).
#[derive(Clone)]
pub struct Car {
    /// Root CIDs from the header (for firehose commits: the commit block).
    pub roots: Vec<Cid>,
    data: Bytes,
    blocks: Vec<(Cid, Range<usize>)>,
    index: Option<HashMap<Cid, usize>>,
}

impl fmt::Debug for Car {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Car")
            .field("roots", &self.roots)
            .field("blocks", &self.blocks.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl PartialEq for Car {
    fn eq(&self, other: &Self) -> bool {
        self.roots == other.roots
            && self.blocks.len() == other.blocks.len()
            && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

#[derive(serde::Deserialize)]
struct Header {
    version: u64,
    #[serde(default)]
    roots: Vec<Cid>,
}

fn read_varint<'a>(buf: &'a [u8], what: &'static str) -> Result<(usize, &'a [u8]), CarError> {
    match unsigned_varint::decode::u64(buf) {
        Ok((n, rest)) => Ok((
            usize::try_from(n).map_err(|_| CarError::Varint(what))?,
            rest,
        )),
        Err(unsigned_varint::decode::Error::Insufficient) => Err(CarError::Truncated(what)),
        Err(_) => Err(CarError::Varint(what)),
    }
}

impl Car {
    /// Parses CAR bytes, copying them once into a shared buffer.
    pub fn parse(bytes: &[u8]) -> Result<Car, CarError> {
        Car::parse_bytes(Bytes::copy_from_slice(bytes))
    }

    /// Parses CAR bytes without copying; blocks are slices of `data`. No bound on the block count (a whole
    /// repository export can hold millions); for untrusted frames use [`Car::parse_bytes_limited`].
    pub fn parse_bytes(data: Bytes) -> Result<Car, CarError> {
        Car::parse_bytes_limited(data, usize::MAX)
    }

    /// Like [`Car::parse_bytes`], but fails with [`CarError::TooManyBlocks`] as soon as the CAR holds more than
    /// `max_blocks` blocks: each block costs an index entry (~100 bytes) however small its section, so the
    /// count, not the byte size, is what bounds the memory of a parse.
    pub fn parse_bytes_limited(data: Bytes, max_blocks: usize) -> Result<Car, CarError> {
        let total = data.len();
        let (header_len, rest) = read_varint(&data, "header length")?;
        let header_bytes = rest
            .get(..header_len)
            .ok_or(CarError::Truncated("header"))?;
        let header: Header =
            serde_ipld_dagcbor::from_slice(header_bytes).map_err(CarError::Header)?;
        if header.version != 1 {
            return Err(CarError::Version(header.version));
        }
        let mut rest = rest
            .get(header_len..)
            .ok_or(CarError::Truncated("header"))?;
        // Each section is at least 2 bytes, so this bounds the allocation by the input size.
        let mut blocks = Vec::with_capacity((rest.len() / 64).min(4096));
        while !rest.is_empty() {
            let (section_len, after_len) = read_varint(rest, "section length")?;
            let section = after_len
                .get(..section_len)
                .ok_or(CarError::Truncated("block"))?;
            let mut cursor = section;
            let cid = Cid::read_bytes(&mut cursor).map_err(CarError::Cid)?;
            let start = total - after_len.len() + (section.len() - cursor.len());
            let end = total - after_len.len() + section.len();
            if section.is_empty() || start > end {
                return Err(CarError::SectionLength);
            }
            if blocks.len() >= max_blocks {
                return Err(CarError::TooManyBlocks(max_blocks));
            }
            blocks.push((cid, start..end));
            rest = after_len
                .get(section_len..)
                .ok_or(CarError::Truncated("block"))?;
        }
        let index = (blocks.len() > INDEX_THRESHOLD).then(|| {
            let mut map = HashMap::with_capacity(blocks.len());
            for (i, (cid, _)) in blocks.iter().enumerate() {
                map.entry(*cid).or_insert(i);
            }
            map
        });
        Ok(Car {
            roots: header.roots,
            data,
            blocks,
            index,
        })
    }

    fn block(&self, i: usize) -> Option<(&Cid, &[u8])> {
        let (cid, range) = self.blocks.get(i)?;
        Some((cid, self.data.get(range.clone())?))
    }

    /// The bytes of the block with this CID (first occurrence), unverified.
    pub fn get(&self, cid: &Cid) -> Option<&[u8]> {
        let i = match &self.index {
            Some(index) => *index.get(cid)?,
            None => self.blocks.iter().position(|(c, _)| c == cid)?,
        };
        self.block(i).map(|(_, b)| b)
    }

    /// The block with this CID as a zero-copy [`Bytes`] slice, unverified.
    pub fn get_bytes(&self, cid: &Cid) -> Option<Bytes> {
        let i = match &self.index {
            Some(index) => *index.get(cid)?,
            None => self.blocks.iter().position(|(c, _)| c == cid)?,
        };
        let (_, range) = self.blocks.get(i)?;
        (range.end <= self.data.len()).then(|| self.data.slice(range.clone()))
    }

    /// Number of blocks (duplicates included).
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the CAR holds no blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Blocks in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&Cid, &[u8])> {
        (0..self.blocks.len()).filter_map(|i| self.block(i))
    }

    /// Total size of the CAR bytes this was parsed from.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }
}

/// Whether `bytes` hash to `cid` (sha2-256 only, the hash ATProto uses; other hashes → false).
pub fn verify_block(cid: &Cid, bytes: &[u8]) -> bool {
    let hash = cid.hash();
    hash.code() == SHA2_256 && hash.digest() == Sha256::digest(bytes).as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_car(roots: &[Cid], blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct H<'a> {
            roots: &'a [Cid],
            version: u64,
        }
        let header = serde_ipld_dagcbor::to_vec(&H { roots, version: 1 }).expect("encode");
        let mut out = Vec::new();
        let mut buf = unsigned_varint::encode::usize_buffer();
        out.extend_from_slice(unsigned_varint::encode::usize(header.len(), &mut buf));
        out.extend_from_slice(&header);
        for (cid, data) in blocks {
            let c = cid.to_bytes();
            out.extend_from_slice(unsigned_varint::encode::usize(
                c.len() + data.len(),
                &mut buf,
            ));
            out.extend_from_slice(&c);
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn round_trip_and_index() {
        let blocks: Vec<(Cid, Vec<u8>)> = (0..100u32)
            .map(|i| {
                let data = serde_ipld_dagcbor::to_vec(&i).expect("encode");
                (crate::data::cid_for_cbor(&data), data)
            })
            .collect();
        let root = blocks.first().map(|b| b.0).expect("block");
        let car = Car::parse(&encode_car(&[root], &blocks)).expect("parse");
        assert_eq!(car.roots, vec![root]);
        assert_eq!(car.len(), 100);
        for (cid, data) in &blocks {
            assert_eq!(car.get(cid), Some(data.as_slice()));
            assert!(verify_block(cid, data));
        }
        let small = Car::parse(&encode_car(&[root], &blocks[..3])).expect("parse");
        assert_eq!(small.get(&blocks[1].0), Some(blocks[1].1.as_slice()));
        assert_eq!(small.get(&blocks[50].0), None);
    }

    #[test]
    fn truncations_are_errors() {
        let data = serde_ipld_dagcbor::to_vec(&"hello").expect("encode");
        let cid = crate::data::cid_for_cbor(&data);
        let bytes = encode_car(&[cid], &[(cid, data)]);
        for n in 0..bytes.len() {
            // Cutting exactly after the header is a valid (empty) CAR; every other cut must fail.
            if let Ok(car) = Car::parse(&bytes[..n]) {
                assert!(car.is_empty(), "cut at {n}");
            }
        }
        assert!(Car::parse(&bytes).is_ok());
    }
}
