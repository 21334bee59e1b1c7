//! Where the control plane lives in NATS: bucket and stream names, key and subject builders, DLQ header
//! names. Every id ([`crate::ids`]) is a valid KV key token and NATS subject token, so keys are built by
//! plain concatenation.
//!
//! | bucket / stream | key / subject | value | written by |
//! |---|---|---|---|
//! | [`TENANTS_BUCKET`] | `tenant.<tenant_id>` | [`crate::Tenant`] | API (admin) |
//! | [`TENANTS_BUCKET`] | `key.<sha256hex(token)>` | [`crate::ApiKeyRecord`] | API (admin) |
//! | [`SUBS_BUCKET`] | `<tenant_id>.<sub_id>` | [`crate::Subscription`] | API (compare-and-set), worker (disable on 410) |
//! | [`PROGRESS_BUCKET`] | `<sub_id>` | [`crate::Progress`] | worker |
//! | object store [`COLLECT_BUCKET`] | `<sub_id>` | a collector's open windows and the position they reflect (pipeline's format) | worker |
//! | [`STATS_BUCKET`] | `<sub_id>` | [`crate::SubStats`] | worker (≤ 1/s per subscription) |
//! | [`LEASES_BUCKET`] | pipeline's format | heartbeats, partition leases | worker |
//! | [`TENANTS_BUCKET`] | `topic.<tenant_id>.<name>` | [`crate::Topic`] | API |
//! | [`TENANTS_BUCKET`] | `state.<tenant_id>.<name>` | [`crate::StateBucketDoc`] | API |
//! | KV `fpaas_state_<tenant_id>_<name>` ([`state_kv_bucket`]) | the key from the delivery's JMESPath | a value (put) or a counter (incr) | worker (`kv` delivery) |
//! | stream [`DLQ_STREAM`] | `fpaas.dlq.<tenant_id>.<sub_id>` | the exact batch body that was POSTed, headers below | worker |
//! | stream [`PULL_STREAM`] | `fpaas.pull.<tenant_id>.<sub_id>` | a `pull` subscription's waiting batch (the webhook body), `Nats-Msg-Id` = batch id, headers below | worker (store), API (ack = delete) |
//! | [`PULL_BUCKET`] | `<sub_id>` | [`crate::pull::PullState`]: leases of fetched batches | API (compare-and-set) |

/// KV bucket of tenants and API keys.
pub const TENANTS_BUCKET: &str = "fpaas_tenants";
/// KV bucket of subscriptions.
pub const SUBS_BUCKET: &str = "fpaas_subs";
/// KV bucket of per-subscription progress.
pub const PROGRESS_BUCKET: &str = "fpaas_progress";
/// KV bucket of per-subscription stats.
pub const STATS_BUCKET: &str = "fpaas_stats";
/// Object store of collectors' open windows, one blob per subscription (`<sub_id>`), written by the worker.
pub const COLLECT_BUCKET: &str = "fpaas_collect";
/// KV bucket of worker heartbeats and partition leases (entries expire; the pipeline owns the format).
pub const LEASES_BUCKET: &str = "fpaas_leases";

/// KV bucket of the lease records of `pull` subscriptions.
pub const PULL_BUCKET: &str = "fpaas_pull";
/// Stream of the batches waiting for `pull` subscriptions.
pub const PULL_STREAM: &str = "FPAAS_PULL";
/// Subjects of [`PULL_STREAM`].
pub const PULL_SUBJECTS: &str = "fpaas.pull.>";
/// Retention of a waiting pull batch that nobody acknowledges: 7 days.
pub const PULL_DEFAULT_MAX_AGE_SECS: u64 = 7 * 24 * 60 * 60;

/// Stream of dead-lettered batches.
pub const DLQ_STREAM: &str = "FPAAS_DLQ";
/// Subjects of [`DLQ_STREAM`].
pub const DLQ_SUBJECTS: &str = "fpaas.dlq.>";
/// Default retention of dead letters: 7 days.
pub const DLQ_DEFAULT_MAX_AGE_SECS: u64 = 7 * 24 * 60 * 60;

/// Header: the batch id (= the `webhook-id` of its deliveries).
pub const HDR_BATCH_ID: &str = "Fpaas-Batch-Id";
/// Header: how many delivery attempts were made.
pub const HDR_ATTEMPTS: &str = "Fpaas-Attempts";
/// Header: the last error (status or transport error), one line.
pub const HDR_LAST_ERROR: &str = "Fpaas-Last-Error";
/// Header: the first stream sequence of the batch.
pub const HDR_FROM_SEQ: &str = "Fpaas-From-Seq";
/// Header: the last stream sequence of the batch.
pub const HDR_TO_SEQ: &str = "Fpaas-To-Seq";
/// Header: the number of events in the batch.
pub const HDR_EVENTS: &str = "Fpaas-Events";

/// Prefix of tenant keys in [`TENANTS_BUCKET`].
pub const TENANT_KEY_PREFIX: &str = "tenant.";
/// Prefix of API key records in [`TENANTS_BUCKET`].
pub const API_KEY_PREFIX: &str = "key.";

/// `tenant.<tenant_id>`
pub fn tenant_key(tenant_id: &str) -> String {
    format!("{TENANT_KEY_PREFIX}{tenant_id}")
}

/// `key.<sha256hex(token)>`
pub fn api_key_key(token_hash_hex: &str) -> String {
    format!("{API_KEY_PREFIX}{token_hash_hex}")
}

/// `<tenant_id>.<sub_id>`
pub fn sub_key(tenant_id: &str, sub_id: &str) -> String {
    format!("{tenant_id}.{sub_id}")
}

/// Pattern of every subscription of a tenant: `<tenant_id>.*`.
pub fn tenant_subs_pattern(tenant_id: &str) -> String {
    format!("{tenant_id}.*")
}

/// The `(tenant_id, sub_id)` of a [`SUBS_BUCKET`] key.
pub fn parse_sub_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('.')
}

/// Key of a subscription's progress and stats: `<sub_id>`.
pub fn progress_key(sub_id: &str) -> String {
    sub_id.to_owned()
}

/// Key of a subscription's stats: `<sub_id>`.
pub fn stats_key(sub_id: &str) -> String {
    sub_id.to_owned()
}

/// `fpaas.dlq.<tenant_id>.<sub_id>`
pub fn dlq_subject(tenant_id: &str, sub_id: &str) -> String {
    format!("fpaas.dlq.{tenant_id}.{sub_id}")
}

/// `fpaas.pull.<tenant_id>.<sub_id>`: a `pull` subscription's waiting batches.
pub fn pull_subject(tenant_id: &str, sub_id: &str) -> String {
    format!("fpaas.pull.{tenant_id}.{sub_id}")
}

/// Key of a `pull` subscription's lease record: `<sub_id>`.
pub fn pull_key(sub_id: &str) -> String {
    sub_id.to_owned()
}

/// Key prefix of topics in the tenants bucket.
pub const TOPIC_KEY_PREFIX: &str = "topic.";

/// Key of a topic in the tenants bucket.
pub fn topic_key(tenant_id: &str, name: &str) -> String {
    format!("{TOPIC_KEY_PREFIX}{tenant_id}.{name}")
}

/// Key pattern of a tenant's topics.
pub fn tenant_topics_pattern(tenant_id: &str) -> String {
    format!("{TOPIC_KEY_PREFIX}{tenant_id}.*")
}

/// The JetStream stream of a tenant's topic (names are `[a-z0-9_-]`, valid in stream names).
pub fn topic_stream(tenant_id: &str, name: &str) -> String {
    format!("FPAAS_TOPIC_{tenant_id}_{name}")
}

/// The subject a topic's messages are stored under.
pub fn topic_subject(tenant_id: &str, name: &str) -> String {
    format!("fpaas.topic.{tenant_id}.{name}")
}

/// Key prefix of state buckets in the tenants bucket.
pub const STATE_KEY_PREFIX: &str = "state.";

/// Key of a state bucket's document in the tenants bucket: `state.<tenant_id>.<name>`.
pub fn state_key(tenant_id: &str, name: &str) -> String {
    format!("{STATE_KEY_PREFIX}{tenant_id}.{name}")
}

/// Key pattern of a tenant's state buckets.
pub fn tenant_states_pattern(tenant_id: &str) -> String {
    format!("{STATE_KEY_PREFIX}{tenant_id}.*")
}

/// The NATS KV bucket of a tenant's state bucket: `fpaas_state_<tenant_id>_<name>` (tenant ids have a fixed
/// length, so the name is unambiguous; names are `[a-z0-9_-]`, valid in bucket names).
pub fn state_kv_bucket(tenant_id: &str, name: &str) -> String {
    format!("fpaas_state_{tenant_id}_{name}")
}

/// Longest key of a state bucket once encoded, in bytes.
pub const MAX_STATE_KEY_BYTES: usize = 1_024;

/// The KV key of a state key (any non-empty string): bytes outside `[-/_.a-zA-Z0-9]` are written `=XX` (two
/// uppercase hex digits; `=` itself too), and so is a `.` at the start or end or next to another `.` (KV keys
/// are subject tokens). `did:plc:abc` → `did=3Aplc=3Aabc`. Reversed by [`decode_state_key`]; `None` when empty or
/// longer than [`MAX_STATE_KEY_BYTES`] once encoded.
pub fn encode_state_key(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_');
        let dot_ok = b == b'.'
            && i > 0
            && i + 1 < bytes.len()
            && bytes[i - 1] != b'.'
            && bytes[i + 1] != b'.';
        if plain || dot_ok {
            out.push(char::from(b));
        } else {
            out.push('=');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    (!out.is_empty() && out.len() <= MAX_STATE_KEY_BYTES).then_some(out)
}

/// The state key of a KV key written by [`encode_state_key`]; `None` for anything else.
pub fn decode_state_key(kv_key: &str) -> Option<String> {
    let bytes = kv_key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if hex.bytes().any(|c| c.is_ascii_lowercase()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let key = String::from_utf8(out).ok()?;
    (encode_state_key(&key).as_deref() == Some(kv_key)).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_subjects() {
        assert_eq!(tenant_key("t_a"), "tenant.t_a");
        assert_eq!(api_key_key("ab12"), "key.ab12");
        assert_eq!(sub_key("t_a", "s_b"), "t_a.s_b");
        assert_eq!(parse_sub_key("t_a.s_b"), Some(("t_a", "s_b")));
        assert_eq!(dlq_subject("t_a", "s_b"), "fpaas.dlq.t_a.s_b");
        assert_eq!(pull_subject("t_a", "s_b"), "fpaas.pull.t_a.s_b");
        assert!(fpaas_bus::is_valid_kv_key(&sub_key("t_a", "s_b")));
    }

    #[test]
    fn state_keys_encode_reversibly_into_valid_kv_keys() {
        assert_eq!(
            encode_state_key("did:plc:abc").as_deref(),
            Some("did=3Aplc=3Aabc")
        );
        assert_eq!(encode_state_key("a.b/c-d_e").as_deref(), Some("a.b/c-d_e"));
        assert_eq!(encode_state_key("x=1").as_deref(), Some("x=3D1"));
        assert_eq!(
            encode_state_key(".a..b.").as_deref(),
            Some("=2Ea=2E=2Eb=2E")
        );
        assert_eq!(encode_state_key(""), None);
        assert_eq!(
            encode_state_key(&"é".repeat(200)),
            None,
            "1,200 bytes encoded"
        );
        for key in [
            "did:plc:abc",
            "at://did:plc:x/app.bsky.feed.post/3k",
            "ü ß*>",
            "a.b",
            "=",
            "..",
            "a\nb",
        ] {
            let kv = encode_state_key(key).unwrap();
            assert!(fpaas_bus::is_valid_kv_key(&kv), "{kv}");
            assert!(!kv.contains(".."), "{kv}");
            assert_eq!(decode_state_key(&kv).as_deref(), Some(key));
        }
        for junk in ["=", "=4", "=zz", "=3a", "a=3", "=FF", "=41"] {
            assert_eq!(decode_state_key(junk), None, "{junk}");
        }
    }
}
