//! The ATProto data model: DAG-CBOR ⇄ JSON conversion and CIDs for DAG-CBOR blocks.
//!
//! JSON form: a CID link is `{"$link": "<base32 CID>"}`, bytes are `{"$bytes": "<base64, no
//! padding>"}`, blobs stay plain maps. Floats are not part of the data model and are rejected in
//! both directions (an integral JSON number like `123.0` is read as the integer `123`).
//! [`json_to_cbor`] also enforces the data model's object rules (`$type`, `$link`, `$bytes`, blob
//! shape); [`cbor_to_json`] applies the strict DAG-CBOR rules of [`crate::cbor_json`].

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cid::Cid;
use ipld_core::ipld::Ipld;
use multihash::Multihash;
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::cbor_json::{JsonLimits, RecordError, record_to_json_string};

/// Multicodec code for DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code for raw bytes (blob CIDs).
pub const RAW: u64 = 0x55;
/// Multihash code for sha2-256.
pub const SHA2_256: u64 = 0x12;

/// Deepest nesting accepted in either direction (see [`crate::cbor_json::MAX_RECORD_DEPTH`]).
pub use crate::cbor_json::MAX_RECORD_DEPTH as MAX_DEPTH;

const B64_DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a value is not valid in the ATProto data model.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The bytes are not an acceptable DAG-CBOR record (strict DAG-CBOR, data model, bounds).
    #[error("invalid record: {0}")]
    Record(#[source] RecordError),
    /// Encoding to DAG-CBOR failed.
    #[error("DAG-CBOR encoding failed: {0}")]
    Encode(String),
    /// A floating-point number (not allowed in the data model).
    #[error("floats are not allowed in the ATProto data model")]
    Float,
    /// An integer outside the 64-bit range.
    #[error("integer out of 64-bit range")]
    IntegerRange,
    /// The top level of a record must be an object.
    #[error("top-level value must be an object")]
    NotAnObject,
    /// A `$link` object that is not exactly `{"$link": "<valid CID>"}`.
    #[error("invalid $link object")]
    Link,
    /// A `$bytes` object that is not exactly `{"$bytes": "<base64>"}`.
    #[error("invalid $bytes object")]
    Bytes,
    /// A `$type` that is not a non-empty string.
    #[error("$type must be a non-empty string")]
    Type,
    /// A blob object missing `ref`, `mimeType` or an integer `size`.
    #[error("invalid blob object")]
    Blob,
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("value nested too deeply")]
    TooDeep,
}

/// The CID of a DAG-CBOR block: CIDv1, codec 0x71, sha2-256.
pub fn cid_for_cbor(cbor: &[u8]) -> Cid {
    cid_with_codec(DAG_CBOR, cbor)
}

/// A CIDv1 with sha2-256 over `bytes` and the given codec.
pub fn cid_with_codec(codec: u64, bytes: &[u8]) -> Cid {
    let digest = Sha256::digest(bytes);
    // A 32-byte digest always fits the 64-byte multihash; `wrap` cannot fail here.
    let hash = Multihash::<64>::wrap(SHA2_256, digest.as_slice()).unwrap_or_default();
    Cid::new_v1(codec, hash)
}

/// Decodes one DAG-CBOR record block into its ATProto JSON form, with the strict rules and bounds of
/// [`crate::cbor_json`] (top level must be a map; at most [`JsonLimits::default`] bytes of JSON).
///
/// # Errors
/// [`DataError::Record`] with the stable reason.
pub fn cbor_to_json(cbor: &[u8]) -> Result<Value, DataError> {
    let text = record_to_json_string(cbor, JsonLimits::default()).map_err(DataError::Record)?;
    // Our own output: valid JSON no deeper than MAX_RECORD_DEPTH (< serde_json's limit).
    serde_json::from_str(&text).map_err(|e| DataError::Encode(e.to_string()))
}

/// Encodes an ATProto JSON value as canonical DAG-CBOR, validating it against the data model
/// first (top level must be an object).
pub fn json_to_cbor(json: &Value) -> Result<Vec<u8>, DataError> {
    let ipld = json_to_ipld(json)?;
    serde_ipld_dagcbor::to_vec(&ipld).map_err(|e| DataError::Encode(e.to_string()))
}

/// Validates an ATProto JSON value (top level must be an object) without encoding it.
pub fn validate_json(json: &Value) -> Result<(), DataError> {
    json_to_ipld(json).map(|_| ())
}

/// Converts ATProto JSON to IPLD (top level must be an object).
pub fn json_to_ipld(json: &Value) -> Result<Ipld, DataError> {
    if !json.is_object() {
        return Err(DataError::NotAnObject);
    }
    to_ipld(json, 1)
}

fn number_to_ipld(n: &Number) -> Result<Ipld, DataError> {
    if let Some(i) = n.as_i64() {
        return Ok(Ipld::Integer(i128::from(i)));
    }
    if n.as_u64().is_some() {
        // Above i64::MAX: outside the data model's signed 64-bit integers.
        return Err(DataError::IntegerRange);
    }
    // An integral float within the exactly-representable range is accepted as an integer.
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    match n.as_f64() {
        #[allow(clippy::cast_possible_truncation)]
        Some(f) if f.fract() == 0.0 && f.abs() <= MAX_SAFE => Ok(Ipld::Integer(f as i128)),
        _ => Err(DataError::Float),
    }
}

fn to_ipld(json: &Value, depth: usize) -> Result<Ipld, DataError> {
    if depth > MAX_DEPTH {
        return Err(DataError::TooDeep);
    }
    Ok(match json {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Number(n) => number_to_ipld(n)?,
        Value::String(s) => Ipld::String(s.clone()),
        Value::Array(items) => Ipld::List(
            items
                .iter()
                .map(|v| to_ipld(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            if let Some(link) = map.get("$link") {
                let s = link
                    .as_str()
                    .filter(|_| map.len() == 1)
                    .ok_or(DataError::Link)?;
                return Cid::try_from(s)
                    .map(Ipld::Link)
                    .map_err(|_| DataError::Link);
            }
            if let Some(bytes) = map.get("$bytes") {
                let s = bytes
                    .as_str()
                    .filter(|_| map.len() == 1)
                    .ok_or(DataError::Bytes)?;
                return B64_DECODE
                    .decode(s)
                    .map(Ipld::Bytes)
                    .map_err(|_| DataError::Bytes);
            }
            if let Some(t) = map.get("$type") {
                match t.as_str() {
                    Some("blob") => check_blob(map)?,
                    Some(s) if !s.is_empty() => {}
                    _ => return Err(DataError::Type),
                }
            }
            let mut out = BTreeMap::new();
            for (k, v) in map {
                out.insert(k.clone(), to_ipld(v, depth + 1)?);
            }
            Ipld::Map(out)
        }
    })
}

fn check_blob(map: &Map<String, Value>) -> Result<(), DataError> {
    let has_ref = map
        .get("ref")
        .and_then(Value::as_object)
        .and_then(|r| r.get("$link"))
        .is_some_and(Value::is_string);
    let has_mime = map.get("mimeType").is_some_and(Value::is_string);
    let has_size = map.get("size").is_some_and(|s| s.is_i64() || s.is_u64());
    if has_ref && has_mime && has_size {
        Ok(())
    } else {
        Err(DataError::Blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_links_round_trip() {
        let json = serde_json::json!({
            "b": {"$bytes": "AQID"},
            "l": {"$link": "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2a"},
            "n": -5,
        });
        let cbor = json_to_cbor(&json).expect("encode");
        assert_eq!(cbor_to_json(&cbor).expect("decode"), json);
    }

    #[test]
    fn floats_rejected_in_cbor() {
        let cbor = serde_ipld_dagcbor::to_vec(&Ipld::Float(1.5)).expect("encode");
        assert!(matches!(
            cbor_to_json(&cbor),
            Err(DataError::Record(RecordError {
                kind: crate::cbor_json::RecordErrorKind::NotAnObject,
                ..
            }))
        ));
        let map = Ipld::Map(BTreeMap::from([("f".to_owned(), Ipld::Float(1.5))]));
        let cbor = serde_ipld_dagcbor::to_vec(&map).expect("encode");
        assert!(matches!(
            cbor_to_json(&cbor),
            Err(DataError::Record(RecordError {
                kind: crate::cbor_json::RecordErrorKind::Float,
                ..
            }))
        ));
    }

    #[test]
    fn deep_json_rejected() {
        let mut v = serde_json::json!(1);
        for _ in 0..200 {
            v = serde_json::json!({ "a": v });
        }
        assert!(matches!(json_to_cbor(&v), Err(DataError::TooDeep)));
    }
}
