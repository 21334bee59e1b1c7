//! Fuzz target: the shuffler's whole pure path on arbitrary bytes — `decode_frame`, `normalize`, and for every
//! event its subject, dedup id and JSON. Besides "never panics" it checks what the bus relies on: a subject is a
//! publishable NATS subject under `atproto.firehose.` (non-empty tokens, no whitespace, no wildcards), the
//! dedup id is non-empty, and the event JSON parses back.
#![no_main]

use fpaas_event::{msg_id, normalize, subject};
use fpaas_proto::decode_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode_frame(data) else {
        return;
    };
    for event in normalize(&frame).events {
        let s = subject(&event);
        assert!(s.starts_with("atproto.firehose."), "{s}");
        assert!(
            s.split('.').all(|t| !t.is_empty()
                && t != "*"
                && t != ">"
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())),
            "unpublishable subject {s:?}"
        );
        assert!(!msg_id(&event).is_empty());
        let json = event.to_json_vec();
        assert!(
            serde_json::from_slice::<serde_json::Value>(&json).is_ok(),
            "event JSON does not parse"
        );
    }
});
