//! ATProto data-model interop vectors: JSON ⇄ DAG-CBOR ⇄ CID, and valid/invalid JSON.

use crate::common;

use base64::Engine as _;
use fpaas_proto::data::{cbor_to_json, cid_for_cbor, json_to_cbor, validate_json};
use serde_json::Value;

fn load(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(common::testdata(&format!("interop/data-model/{name}")))
        .expect("read vectors");
    let v: Vec<Value> = serde_json::from_str(&text).expect("parse vectors");
    assert!(!v.is_empty(), "{name} is empty");
    v
}

#[test]
fn fixtures_round_trip_both_ways() {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    for (i, fx) in load("data-model-fixtures.json").iter().enumerate() {
        let json = &fx["json"];
        let cbor = b64
            .decode(fx["cbor_base64"].as_str().expect("cbor_base64"))
            .expect("base64");
        let cid = fx["cid"].as_str().expect("cid");

        let encoded =
            json_to_cbor(json).unwrap_or_else(|e| panic!("fixture {i}: json_to_cbor: {e}"));
        assert_eq!(encoded, cbor, "fixture {i}: json → cbor bytes");
        assert_eq!(cid_for_cbor(&encoded).to_string(), cid, "fixture {i}: cid");

        let decoded =
            cbor_to_json(&cbor).unwrap_or_else(|e| panic!("fixture {i}: cbor_to_json: {e}"));
        assert_eq!(&decoded, json, "fixture {i}: cbor → json");
    }
}

#[test]
fn valid_vectors_are_accepted() {
    for fx in load("data-model-valid.json") {
        let note = fx["note"].as_str().unwrap_or("?");
        let cbor = json_to_cbor(&fx["json"]).unwrap_or_else(|e| panic!("{note}: {e}"));
        // And what we wrote reads back as valid data.
        cbor_to_json(&cbor).unwrap_or_else(|e| panic!("{note}: read back: {e}"));
    }
}

#[test]
fn invalid_vectors_are_rejected() {
    for fx in load("data-model-invalid.json") {
        let note = fx["note"].as_str().unwrap_or("?");
        assert!(validate_json(&fx["json"]).is_err(), "{note}: accepted");
        assert!(json_to_cbor(&fx["json"]).is_err(), "{note}: encoded");
    }
}
