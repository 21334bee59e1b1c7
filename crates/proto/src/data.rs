//! The ATProto data model: DAG-CBOR ⇄ JSON conversion and CIDs for DAG-CBOR blocks.
//!
//! JSON form: a CID link is `{"$link": "<base32 CID>"}`, bytes are `{"$bytes": "<base64, no
//! padding>"}`, blobs stay plain maps. Floats are not part of the data model and are rejected in
//! both directions (an integral JSON number like `123.0` is read as the integer `123`).
//! [`json_to_cbor`] also enforces the data model's object rules (`$type`, `$link`, `$bytes`, blob
//! shape); [`cbor_to_json`] is lenient about those so real-world records pass through unchanged.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cid::Cid;
use ipld_core::ipld::Ipld;
use multihash::Multihash;
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Multicodec code for DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code for raw bytes (blob CIDs).
pub const RAW: u64 = 0x55;
/// Multihash code for sha2-256.
pub const SHA2_256: u64 = 0x12;

/// Maximum nesting depth accepted when converting JSON (CBOR depth is bounded by the decoder).
pub const MAX_DEPTH: usize = 128;

const B64_ENCODE: GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;
const B64_DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a value is not valid in the ATProto data model.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The bytes are not valid (strict) DAG-CBOR.
    #[error("invalid DAG-CBOR")]
    Decode(#[source] serde_ipld_dagcbor::DecodeError<std::convert::Infallible>),
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

/// Decodes one DAG-CBOR value into its ATProto JSON form.
///
/// Decodes straight into [`serde_json::Value`] (no intermediate IPLD tree): records are decoded
/// on the hot path, once per create/update op.
pub fn cbor_to_json(cbor: &[u8]) -> Result<Value, DataError> {
    match serde_ipld_dagcbor::from_slice::<JsonValue>(cbor) {
        Ok(JsonValue(v)) => Ok(v),
        Err(serde_ipld_dagcbor::DecodeError::Msg(m)) if m == FLOAT_MSG => Err(DataError::Float),
        Err(serde_ipld_dagcbor::DecodeError::Msg(m)) if m == INT_RANGE_MSG => {
            Err(DataError::IntegerRange)
        }
        Err(e) => Err(DataError::Decode(e)),
    }
}

const FLOAT_MSG: &str = "floats are not allowed in the ATProto data model";
const INT_RANGE_MSG: &str = "integer out of 64-bit range";

/// A JSON value deserialized from DAG-CBOR with the ATProto `$link` / `$bytes` mapping.
struct JsonValue(Value);

impl<'de> serde::Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor).map(JsonValue)
    }
}

fn bytes_json(b: &[u8]) -> Value {
    let mut m = Map::new();
    m.insert("$bytes".to_owned(), Value::String(B64_ENCODE.encode(b)));
    Value::Object(m)
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an ATProto data model value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Value, E> {
        if let Ok(v) = i64::try_from(v) {
            Ok(Value::Number(v.into()))
        } else if let Ok(v) = u64::try_from(v) {
            Ok(Value::Number(v.into()))
        } else {
            Err(E::custom(INT_RANGE_MSG))
        }
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(|v| Value::Number(v.into()))
            .map_err(|_| E::custom(INT_RANGE_MSG))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Value, E> {
        Err(E::custom(FLOAT_MSG))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(bytes_json(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // Bounded pre-allocation: the length prefix is untrusted.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(JsonValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((k, JsonValue(v))) = map.next_entry::<String, JsonValue>()? {
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
    /// serde_ipld_dagcbor presents a CID (tag 42) as a newtype struct wrapping its bytes.
    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let cid = d.deserialize_bytes(CidBytesVisitor)?;
        let mut m = Map::new();
        m.insert("$link".to_owned(), Value::String(cid.to_string()));
        Ok(Value::Object(m))
    }
}

struct CidBytesVisitor;

impl<'de> serde::de::Visitor<'de> for CidBytesVisitor {
    type Value = Cid;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CID bytes")
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Cid, E> {
        Cid::try_from(v).map_err(|e| E::custom(format!("invalid CID: {e}")))
    }
}

/// Converts a decoded IPLD value to ATProto JSON (see the module docs for the rules).
pub fn ipld_to_json(ipld: Ipld) -> Result<Value, DataError> {
    Ok(match ipld {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => Value::Bool(b),
        Ipld::Integer(i) => {
            if let Ok(v) = i64::try_from(i) {
                Value::Number(Number::from(v))
            } else if let Ok(v) = u64::try_from(i) {
                Value::Number(Number::from(v))
            } else {
                return Err(DataError::IntegerRange);
            }
        }
        Ipld::Float(_) => return Err(DataError::Float),
        Ipld::String(s) => Value::String(s),
        Ipld::Bytes(b) => {
            let mut m = Map::with_capacity(1);
            m.insert("$bytes".to_owned(), Value::String(B64_ENCODE.encode(b)));
            Value::Object(m)
        }
        Ipld::List(items) => Value::Array(
            items
                .into_iter()
                .map(ipld_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Ipld::Map(map) => {
            let mut m = Map::with_capacity(map.len());
            for (k, v) in map {
                m.insert(k, ipld_to_json(v)?);
            }
            Value::Object(m)
        }
        Ipld::Link(cid) => {
            let mut m = Map::with_capacity(1);
            m.insert("$link".to_owned(), Value::String(cid.to_string()));
            Value::Object(m)
        }
    })
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
    to_ipld(json, 0)
}

fn number_to_ipld(n: &Number) -> Result<Ipld, DataError> {
    if let Some(i) = n.as_i64() {
        return Ok(Ipld::Integer(i128::from(i)));
    }
    if let Some(u) = n.as_u64() {
        return Ok(Ipld::Integer(i128::from(u)));
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
        assert!(matches!(cbor_to_json(&cbor), Err(DataError::Float)));
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
