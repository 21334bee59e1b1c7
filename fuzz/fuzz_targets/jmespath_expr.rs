//! A tenant's JMESPath (predicate or transform): arbitrary text is compiled and, when it compiles, evaluated
//! on a real event. Nothing may panic or overflow the stack; refusals are `ExprError`s.
#![no_main]

use libfuzzer_sys::fuzz_target;

const EVENT: &str = r#"{"did":"did:plc:abc","time_us":1,"kind":"commit","commit":{"rev":"3l","operation":"create","collection":"app.bsky.feed.post","rkey":"3k","record":{"$type":"app.bsky.feed.post","text":"hello #tag @x.bsky.social","langs":["en"],"facets":[{"index":{"byteStart":6,"byteEnd":10},"features":[{"$type":"app.bsky.richtext.facet#tag","tag":"tag"}]}],"createdAt":"2026-01-01T00:00:00Z"},"cid":"bafy"}}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(expr) = fpaas_filter::Expr::compile(text) {
        let event: serde_json::Value = serde_json::from_str(EVENT).expect("event");
        let _ = expr.search(&event);
        let _ = expr.matches(&event);
    }
});
