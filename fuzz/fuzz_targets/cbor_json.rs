//! Fuzz target: the strict, budgeted record converter (`fpaas_proto::cbor_json`) on arbitrary bytes. Besides
//! "never panics": an accepted record is a JSON object within the budget, and — because only the canonical
//! encoding is accepted — encoding that JSON back to DAG-CBOR gives exactly the input bytes. A rejection points
//! inside the input.
#![no_main]

use fpaas_proto::cbor_json::{JsonLimits, record_to_json_string};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = JsonLimits {
        max_json_bytes: 1 << 16,
    };
    match record_to_json_string(data, limits) {
        Ok(json) => {
            assert!(json.len() <= limits.max_json_bytes, "over budget");
            let value: serde_json::Value = serde_json::from_str(&json).expect("accepted output is JSON");
            assert!(value.is_object(), "a record is an object");
            // `json_to_cbor` also enforces `$type`/blob shapes, which the converter passes through; where it
            // accepts, the round trip must be exact.
            if let Ok(back) = fpaas_proto::data::json_to_cbor(&value) {
                assert_eq!(back, data, "accepted input is the canonical encoding of its JSON");
            }
        }
        Err(e) => assert!(e.offset <= data.len(), "error offset inside the input"),
    }
});
