//! Strict DAG-CBOR → ATProto JSON, written straight into a byte buffer.
//!
//! This is the hot path of the shuffler (one call per distinct record block of a commit) and the first thing
//! a hostile repository reaches, so it is written for bounded cost rather than generality:
//!
//! - **No intermediate tree.** Values are written to the output as they are read; the only extra memory is
//!   one scratch buffer used to put a map's entries into JSON key order.
//! - **An output budget.** Conversion stops with [`RecordErrorKind::JsonTooLarge`] as soon as the JSON would
//!   exceed [`JsonLimits::max_json_bytes`]. A record of a million empty byte strings (13 bytes of JSON per
//!   byte of CBOR) costs at most the budget, not 13 MB.
//! - **One depth limit**, [`MAX_RECORD_DEPTH`], counted in JSON nesting (a `$bytes` or `$link` object is a
//!   level), so that every event that carries a record stays parseable by `serde_json`'s default recursion
//!   limit of 128 with room for the event and a batch envelope around it.
//! - **Strict DAG-CBOR** ([spec](https://ipld.io/specs/codecs/dag-cbor/spec/)): definite lengths only,
//!   shortest-form integers and lengths, text-string map keys in canonical order (length first, then
//!   bytewise) without duplicates, tag 42 (CID links) only, no floats, no `undefined` or other simple values,
//!   integers within i64, valid UTF-8, no trailing bytes, and a map at the top. Each rejection has its own
//!   stable label ([`RecordErrorKind::as_str`]).
//! - **No ambiguity in the JSON.** A plain map with a `$link` or `$bytes` key would read back as a link or
//!   bytes; such records are rejected ([`RecordErrorKind::ReservedKey`]).
//!
//! Object keys are written in bytewise order (what `serde_json`'s map and Go's `encoding/json` produce, and
//! so what Jetstream emits), not in CBOR's length-first order. Strings are escaped exactly as `serde_json`
//! escapes them, so the output is byte-identical to serializing the equivalent `serde_json::Value`.

use std::fmt;

use base64::Engine as _;
use cid::Cid;

/// Deepest JSON nesting of a record (the record object itself is level 1; a `$bytes` or `$link` object counts
/// as a level). An event adds two levels around its record (`{"commit": {"record": …}}`) and a delivery batch
/// at most two more, which keeps every message under `serde_json`'s default limit of 128.
pub const MAX_RECORD_DEPTH: usize = 100;

/// Multicodec code for DAG-CBOR.
const DAG_CBOR: u64 = 0x71;
/// Multicodec code for raw bytes (blob CIDs).
const RAW: u64 = 0x55;
/// Multihash code for sha2-256.
const SHA2_256: u64 = 0x12;

/// Why a record block is not acceptable ATProto data. `as_str` gives the stable metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordErrorKind {
    /// The top-level value is not a map.
    NotAnObject,
    /// A floating-point number (not part of the data model).
    Float,
    /// An integer outside the signed 64-bit range.
    IntegerRange,
    /// Nesting deeper than [`MAX_RECORD_DEPTH`].
    TooDeep,
    /// A plain map with a `$link` or `$bytes` key (would be indistinguishable from a link or bytes).
    ReservedKey,
    /// A tag-42 link that is not a valid CIDv1 (dag-cbor or raw codec, sha2-256) with the `0x00` prefix.
    BadLink,
    /// A CBOR tag other than 42.
    UnknownTag,
    /// Not the canonical encoding: an integer or length not in its shortest form, or map keys out of order.
    NonCanonical,
    /// The same key twice in one map.
    DuplicateKey,
    /// A map key that is not a text string.
    NonStringKey,
    /// An indefinite-length string, array or map (or a stray break).
    IndefiniteLength,
    /// A text string that is not UTF-8.
    InvalidUtf8,
    /// `undefined` or a simple value other than `false`, `true`, `null`; or a reserved additional info.
    BadSimpleValue,
    /// The input ends inside a value.
    Truncated,
    /// Bytes after the top-level value.
    TrailingBytes,
    /// The JSON would exceed the output budget.
    JsonTooLarge,
}

impl RecordErrorKind {
    /// Every kind, for pre-registering metric labels.
    pub const ALL: [RecordErrorKind; 16] = [
        Self::NotAnObject,
        Self::Float,
        Self::IntegerRange,
        Self::TooDeep,
        Self::ReservedKey,
        Self::BadLink,
        Self::UnknownTag,
        Self::NonCanonical,
        Self::DuplicateKey,
        Self::NonStringKey,
        Self::IndefiniteLength,
        Self::InvalidUtf8,
        Self::BadSimpleValue,
        Self::Truncated,
        Self::TrailingBytes,
        Self::JsonTooLarge,
    ];

    /// Stable snake_case label, e.g. `"record_float"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotAnObject => "record_not_object",
            Self::Float => "record_float",
            Self::IntegerRange => "record_integer_range",
            Self::TooDeep => "record_too_deep",
            Self::ReservedKey => "record_reserved_key",
            Self::BadLink => "record_bad_link",
            Self::UnknownTag => "record_unknown_tag",
            Self::NonCanonical => "record_non_canonical",
            Self::DuplicateKey => "record_duplicate_key",
            Self::NonStringKey => "record_non_string_key",
            Self::IndefiniteLength => "record_indefinite_length",
            Self::InvalidUtf8 => "record_invalid_utf8",
            Self::BadSimpleValue => "record_bad_simple_value",
            Self::Truncated => "record_truncated",
            Self::TrailingBytes => "record_trailing_bytes",
            Self::JsonTooLarge => "record_json_too_large",
        }
    }
}

impl fmt::Display for RecordErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record: what and where (byte offset into the block).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}")]
pub struct RecordError {
    /// What is wrong.
    pub kind: RecordErrorKind,
    /// Byte offset in the CBOR input where it was detected.
    pub offset: usize,
}

/// Bounds of one conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonLimits {
    /// Largest JSON output in bytes; conversion stops as soon as it would be exceeded.
    pub max_json_bytes: usize,
}

impl Default for JsonLimits {
    /// 1 MiB: a default nats-server's `max_payload`, so no larger record JSON could be published anyway.
    fn default() -> Self {
        Self {
            max_json_bytes: 1 << 20,
        }
    }
}

/// Converts one DAG-CBOR record block to ATProto JSON, appended to `out`. On error `out` is left at its
/// original length.
///
/// # Errors
/// A [`RecordError`] whose kind is the stable reason.
pub fn record_to_json(
    cbor: &[u8],
    limits: JsonLimits,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let start = out.len();
    let mut c = Converter {
        input: cbor,
        pos: 0,
        out,
        limit: start.saturating_add(limits.max_json_bytes),
        scratch: Vec::new(),
    };
    let result = c.top();
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Converts a DAG-CBOR record block to a JSON string (see [`record_to_json`]).
///
/// # Errors
/// A [`RecordError`] whose kind is the stable reason.
pub fn record_to_json_string(cbor: &[u8], limits: JsonLimits) -> Result<String, RecordError> {
    let mut out = Vec::with_capacity(cbor.len().saturating_mul(2).min(limits.max_json_bytes));
    record_to_json(cbor, limits, &mut out)?;
    // Only valid UTF-8 is ever written: validated text, ASCII syntax, base64 and CID strings.
    String::from_utf8(out).map_err(|_| RecordError {
        kind: RecordErrorKind::InvalidUtf8,
        offset: 0,
    })
}

/// A CBOR data item head.
#[derive(Clone, Copy)]
struct Head {
    major: u8,
    /// The argument (value, length or tag); `None` for indefinite length (additional info 31).
    arg: Option<u64>,
    /// Additional info, for major type 7.
    info: u8,
}

struct Converter<'a, 'o> {
    input: &'a [u8],
    pos: usize,
    out: &'o mut Vec<u8>,
    /// Absolute length of `out` that must not be exceeded.
    limit: usize,
    scratch: Vec<u8>,
}

impl<'a> Converter<'a, '_> {
    fn err(&self, kind: RecordErrorKind) -> RecordError {
        RecordError {
            kind,
            offset: self.pos,
        }
    }

    fn top(&mut self) -> Result<(), RecordError> {
        let head = self.peek_head()?;
        if head.major != 5 {
            return Err(self.err(RecordErrorKind::NotAnObject));
        }
        self.value(1)?;
        if self.pos != self.input.len() {
            return Err(self.err(RecordErrorKind::TrailingBytes));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or_else(|| self.err(RecordErrorKind::Truncated))?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn peek_head(&mut self) -> Result<Head, RecordError> {
        let saved = self.pos;
        let head = self.head();
        self.pos = saved;
        head
    }

    /// Reads a head, enforcing the shortest-form argument encoding.
    fn head(&mut self) -> Result<Head, RecordError> {
        let start = self.pos;
        let b = self.take(1)?[0];
        let major = b >> 5;
        let info = b & 0x1f;
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 if major == 7 => {
                // Floats (25–27) and one-byte simple values (24): consumed by the caller's error.
                None
            }
            24 => {
                let v = u64::from(self.take(1)?[0]);
                if v < 24 {
                    return Err(self.canonical_at(start));
                }
                Some(v)
            }
            25 => {
                let s = self.take(2)?;
                let v = u64::from(u16::from_be_bytes([s[0], s[1]]));
                if v <= 0xff {
                    return Err(self.canonical_at(start));
                }
                Some(v)
            }
            26 => {
                let s = self.take(4)?;
                let v = u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
                if v <= 0xffff {
                    return Err(self.canonical_at(start));
                }
                Some(v)
            }
            27 => {
                let s = self.take(8)?;
                let v = u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
                if v <= 0xffff_ffff {
                    return Err(self.canonical_at(start));
                }
                Some(v)
            }
            28..=30 => {
                self.pos = start;
                return Err(self.err(RecordErrorKind::BadSimpleValue));
            }
            _ => {
                self.pos = start;
                return Err(self.err(RecordErrorKind::IndefiniteLength));
            }
        };
        Ok(Head { major, arg, info })
    }

    fn canonical_at(&mut self, start: usize) -> RecordError {
        self.pos = start;
        self.err(RecordErrorKind::NonCanonical)
    }

    fn len_arg(&self, head: Head) -> Result<usize, RecordError> {
        let n = head
            .arg
            .ok_or_else(|| self.err(RecordErrorKind::IndefiniteLength))?;
        usize::try_from(n).map_err(|_| self.err(RecordErrorKind::Truncated))
    }

    fn ensure_room(&self, extra: usize) -> Result<(), RecordError> {
        if self.out.len().saturating_add(extra) > self.limit {
            Err(self.err(RecordErrorKind::JsonTooLarge))
        } else {
            Ok(())
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), RecordError> {
        let start = self.pos;
        let head = self.head()?;
        match head.major {
            0 => {
                let v = head.arg.unwrap_or(0);
                if v > i64::MAX as u64 {
                    self.pos = start;
                    return Err(self.err(RecordErrorKind::IntegerRange));
                }
                self.write_int(v.to_string().as_bytes())
            }
            1 => {
                let n = head.arg.unwrap_or(0);
                if n > i64::MAX as u64 {
                    self.pos = start;
                    return Err(self.err(RecordErrorKind::IntegerRange));
                }
                // -1 - n, with n <= i64::MAX, always fits.
                let v = -1i64 - n as i64;
                self.write_int(v.to_string().as_bytes())
            }
            2 => {
                if depth > MAX_RECORD_DEPTH {
                    self.pos = start;
                    return Err(self.err(RecordErrorKind::TooDeep));
                }
                let n = self.len_arg(head)?;
                let bytes = self.take(n)?;
                self.write_bytes(bytes)
            }
            3 => {
                let n = self.len_arg(head)?;
                let s = self.take(n)?;
                let s = std::str::from_utf8(s).map_err(|_| RecordError {
                    kind: RecordErrorKind::InvalidUtf8,
                    offset: start,
                })?;
                self.write_str(s)
            }
            4 => {
                if depth > MAX_RECORD_DEPTH {
                    self.pos = start;
                    return Err(self.err(RecordErrorKind::TooDeep));
                }
                let n = self.len_arg(head)?;
                self.array(n, depth)
            }
            5 => {
                if depth > MAX_RECORD_DEPTH {
                    self.pos = start;
                    return Err(self.err(RecordErrorKind::TooDeep));
                }
                let n = self.len_arg(head)?;
                self.map(n, depth)
            }
            6 => {
                if head.arg != Some(42) {
                    self.pos = start;
                    return Err(self.err(RecordErrorKind::UnknownTag));
                }
                if depth > MAX_RECORD_DEPTH {
                    self.pos = start;
                    return Err(self.err(RecordErrorKind::TooDeep));
                }
                self.link()
            }
            _ => self.simple(head, start),
        }
    }

    fn simple(&mut self, head: Head, start: usize) -> Result<(), RecordError> {
        let text: &[u8] = match head.info {
            20 => b"false",
            21 => b"true",
            22 => b"null",
            25..=27 => {
                self.pos = start;
                return Err(self.err(RecordErrorKind::Float));
            }
            _ => {
                self.pos = start;
                return Err(self.err(RecordErrorKind::BadSimpleValue));
            }
        };
        self.ensure_room(text.len())?;
        self.out.extend_from_slice(text);
        Ok(())
    }

    fn write_int(&mut self, digits: &[u8]) -> Result<(), RecordError> {
        self.ensure_room(digits.len())?;
        self.out.extend_from_slice(digits);
        Ok(())
    }

    fn write_str(&mut self, s: &str) -> Result<(), RecordError> {
        // The escaped form is at least as long as the text plus its quotes; check before writing, and again
        // after (escapes can make it up to six times longer).
        self.ensure_room(s.len().saturating_add(2))?;
        // Writing a &str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, s);
        self.ensure_room(0)
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        let b64_len = bytes.len().div_ceil(3).saturating_mul(4);
        self.ensure_room(b64_len.saturating_add(13))?;
        self.out.extend_from_slice(b"{\"$bytes\":\"");
        let at = self.out.len();
        self.out.resize(at + b64_len, 0);
        // The buffer was sized for the padded length, which bounds the unpadded one.
        let written = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode_slice(bytes, &mut self.out[at..])
            .unwrap_or(0);
        self.out.truncate(at + written);
        self.out.extend_from_slice(b"\"}");
        Ok(())
    }

    fn link(&mut self) -> Result<(), RecordError> {
        let start = self.pos;
        let bad = |pos| RecordError {
            kind: RecordErrorKind::BadLink,
            offset: pos,
        };
        let head = self.head()?;
        if head.major != 2 {
            return Err(bad(start));
        }
        let n = self.len_arg(head)?;
        let bytes = self.take(n)?;
        let Some((&0, mut cid_bytes)) = bytes.split_first() else {
            return Err(bad(start));
        };
        let cid = Cid::read_bytes(&mut cid_bytes).map_err(|_| bad(start))?;
        if !cid_bytes.is_empty()
            || cid.version() != cid::Version::V1
            || !matches!(cid.codec(), DAG_CBOR | RAW)
            || cid.hash().code() != SHA2_256
            || cid.hash().size() != 32
        {
            return Err(bad(start));
        }
        let text = cid.to_string();
        self.ensure_room(text.len().saturating_add(12))?;
        self.out.extend_from_slice(b"{\"$link\":\"");
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\"}");
        Ok(())
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<(), RecordError> {
        // Every element takes at least one input byte: a count beyond the input is truncated, not a loop.
        if n > self.input.len() - self.pos {
            return Err(self.err(RecordErrorKind::Truncated));
        }
        self.ensure_room(2)?;
        self.out.push(b'[');
        for i in 0..n {
            if i > 0 {
                self.ensure_room(1)?;
                self.out.push(b',');
            }
            self.value(depth + 1)?;
        }
        self.ensure_room(1)?;
        self.out.push(b']');
        Ok(())
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<(), RecordError> {
        if n > (self.input.len() - self.pos) / 2 {
            return Err(self.err(RecordErrorKind::Truncated));
        }
        self.ensure_room(2)?;
        self.out.push(b'{');
        // Each entry is written as `,"key":value` (no comma for the first) in CBOR order; its key and output
        // span are remembered so the entries can be put into bytewise key order afterwards.
        let mut entries: Vec<(&'a [u8], usize, usize)> = Vec::with_capacity(n.min(32));
        let mut sorted = true;
        for i in 0..n {
            let key_start = self.pos;
            let head = self.head()?;
            if head.major != 3 {
                self.pos = key_start;
                return Err(self.err(RecordErrorKind::NonStringKey));
            }
            let len = self.len_arg(head)?;
            let key = self.take(len)?;
            let key_str = std::str::from_utf8(key).map_err(|_| RecordError {
                kind: RecordErrorKind::InvalidUtf8,
                offset: key_start,
            })?;
            if let Some(&(prev, _, _)) = entries.last() {
                match prev.len().cmp(&key.len()).then_with(|| prev.cmp(key)) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        self.pos = key_start;
                        return Err(self.err(RecordErrorKind::DuplicateKey));
                    }
                    std::cmp::Ordering::Greater => {
                        self.pos = key_start;
                        return Err(self.err(RecordErrorKind::NonCanonical));
                    }
                }
                if prev > key {
                    sorted = false;
                }
            }
            if key == b"$link" || key == b"$bytes" {
                self.pos = key_start;
                return Err(self.err(RecordErrorKind::ReservedKey));
            }
            let span_start = self.out.len();
            if i > 0 {
                self.ensure_room(1)?;
                self.out.push(b',');
            }
            self.write_str(key_str)?;
            self.ensure_room(1)?;
            self.out.push(b':');
            self.value(depth + 1)?;
            entries.push((key, span_start, self.out.len()));
        }
        if !sorted {
            self.reorder(&mut entries);
        }
        self.ensure_room(1)?;
        self.out.push(b'}');
        Ok(())
    }

    /// Rewrites a map's entries (already in `out`, in CBOR order) in bytewise key order. Costs one copy of the
    /// map's JSON; nested maps are copied once per enclosing out-of-order map, so the total is bounded by the
    /// output budget times [`MAX_RECORD_DEPTH`].
    fn reorder(&mut self, entries: &mut [(&'a [u8], usize, usize)]) {
        let Some(&(_, region_start, _)) = entries.first() else {
            return;
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.out[region_start..]);
        let first = region_start;
        let mut order: Vec<(&[u8], usize, usize, bool)> = entries
            .iter()
            .map(|&(k, s, e)| (k, s - first, e - first, s != first))
            .collect();
        order.sort_by(|a, b| a.0.cmp(b.0));
        self.out.truncate(region_start);
        for (i, &(_, s, e, has_comma)) in order.iter().enumerate() {
            let body = if has_comma { s + 1 } else { s };
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(&self.scratch[body..e]);
        }
    }
}
