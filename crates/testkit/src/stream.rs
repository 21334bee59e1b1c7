//! Reading the firehose stream back in tests and soaks: every stored message with its dedup id, key and payload
//! ([`read_stream`]), stream length, the keys of the relay simulator's ground truth, the exactly-once assertion
//! ([`assert_exactly_once`]), a stored cursor, and the size of soak runs (`FPAAS_SOAK_EVENTS`). Shared by the
//! shuffler's tests (`crates/ingest/tests`) and the process-level tests of the binary (`crates/fpaas/tests`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Stream sequence.
    pub seq: u64,
    /// `Nats-Msg-Id` header.
    pub msg_id: String,
    /// Comparison key (see [`event_key`]).
    pub key: String,
    /// Subject.
    pub subject: String,
    /// The message payload (the event JSON).
    pub payload: Vec<u8>,
}

/// Size of a soak or measurement run: `FPAAS_SOAK_EVENTS` when set to a number, else `default`.
pub fn soak_events(default: u64) -> u64 {
    std::env::var("FPAAS_SOAK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seqs are compared modulo this, so that a second simulated relay started at `SEQ_MOD + 1` (same seed, same
/// events, different numbering) maps onto the first.
pub const SEQ_MOD: i64 = 1_000_000;

/// The key of a stream event for comparison with the truth: the dedup id for commits (it is relay-independent:
/// did, rev, collection, rkey), `kind:did:seq` for the rest (the truth has no event time to build their id).
pub fn event_key(ev: &fpaas_event::Event) -> String {
    match ev.kind {
        fpaas_event::Kind::Commit => fpaas_event::msg_id(ev),
        k => format!("{}:{}:{}", k.as_str(), ev.did, ev.seq % SEQ_MOD),
    }
}

/// The comparison key of a truth entry (see [`event_key`]); `None` for oversize ops (they must be dropped).
pub fn truth_key(t: &fpaas_sim::TruthEvent) -> Option<String> {
    use fpaas_sim::TruthEvent as T;
    Some(match t {
        T::Op { oversize: true, .. } => return None,
        T::Op {
            did,
            rev,
            collection,
            rkey,
            ..
        } => format!("c:{did}:{rev}:{collection}/{rkey}"),
        T::Identity { seq, did, .. } => format!("identity:{did}:{}", seq % SEQ_MOD),
        T::Account { seq, did, .. } => format!("account:{did}:{}", seq % SEQ_MOD),
        T::Sync { seq, did, .. } => format!("sync:{did}:{}", seq % SEQ_MOD),
    })
}

/// Truth keys (oversize ops excluded) with multiplicity.
pub fn truth_keys(truth: &[fpaas_sim::TruthEvent]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in truth {
        if let Some(k) = truth_key(t) {
            *out.entry(k).or_insert(0) += 1;
        }
    }
    out
}

/// Number of events (oversize excluded) the stream should hold for `truth`.
pub fn expected_len(truth: &[fpaas_sim::TruthEvent]) -> u64 {
    truth_keys(truth).values().sum::<usize>() as u64
}

/// Stream info of `stream`, `None` when NATS does not answer within 2 s.
pub async fn stream_info(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Option<async_nats::jetstream::stream::Info> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), js.get_stream(stream))
        .await
        .ok()?
        .ok()?;
    tokio::time::timeout(Duration::from_secs(2), s.info())
        .await
        .ok()?
        .ok()
        .cloned()
}

/// Number of messages in `stream` (stream info), `None` when NATS does not answer.
pub async fn stream_len(js: &async_nats::jetstream::Context, stream: &str) -> Option<u64> {
    Some(stream_info(js, stream).await?.state.messages)
}

/// Reads every message of `stream` with an ordered push consumer.
pub async fn read_stream(js: &async_nats::jetstream::Context, stream: &str) -> Vec<Stored> {
    let total = stream_len(js, stream).await.expect("stream info");
    let s = js.get_stream(stream).await.expect("get stream");
    let consumer = s
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(total as usize);
    while (out.len() as u64) < total {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stream read stalled")
            .expect("stream ended")
            .expect("message");
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .expect("Nats-Msg-Id header");
        let ev: fpaas_event::Event = serde_json::from_slice(&msg.payload).expect("event json");
        assert_eq!(
            msg_id,
            fpaas_event::msg_id(&ev),
            "msg id is the event's dedup id"
        );
        out.push(Stored {
            seq: msg.info().map(|i| i.stream_sequence).unwrap_or(0),
            msg_id,
            key: event_key(&ev),
            subject: msg.subject.to_string(),
            payload: msg.payload.to_vec(),
        });
    }
    out
}

/// Asserts the stream holds exactly the truth (oversize excluded): no missing, no extra, no duplicate.
pub fn assert_exactly_once(stored: &[Stored], truth: &[fpaas_sim::TruthEvent]) {
    let mut ids = BTreeSet::new();
    let dups: Vec<&str> = stored
        .iter()
        .filter(|s| !ids.insert(s.msg_id.as_str()))
        .map(|s| s.msg_id.as_str())
        .take(5)
        .collect();
    assert!(
        dups.is_empty(),
        "duplicate msg ids in the stream, e.g. {dups:?}"
    );
    let want = truth_keys(truth);
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for s in stored {
        *got.entry(s.key.clone()).or_insert(0) += 1;
    }
    let missing: Vec<&String> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<&String> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let want_total: usize = want.values().sum();
    assert!(
        missing.is_empty() && extra.is_empty() && want_total == stored.len(),
        "stream has {} messages, truth {} events; missing e.g. {missing:?}; extra e.g. {extra:?}",
        stored.len(),
        want_total
    );
}

/// Asserts nothing of the truth is missing and nothing foreign is stored, allowing repeats of the same event;
/// returns how many messages are repeats. For runs that are not exactly-once by design (a resume older than
/// the duplicate window republishes what was stored but not acknowledged before it).
pub fn assert_none_lost(stored: &[Stored], truth: &[fpaas_sim::TruthEvent]) -> usize {
    let want = truth_keys(truth);
    let mut got: BTreeMap<&str, usize> = BTreeMap::new();
    for s in stored {
        *got.entry(s.key.as_str()).or_insert(0) += 1;
    }
    let missing: Vec<&String> = want
        .keys()
        .filter(|k| !got.contains_key(k.as_str()))
        .take(5)
        .collect();
    let extra: Vec<&&str> = got
        .keys()
        .filter(|k| !want.contains_key(**k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing e.g. {missing:?}; extra e.g. {extra:?}"
    );
    let mut ids = BTreeSet::new();
    stored
        .iter()
        .filter(|s| !ids.insert(s.msg_id.as_str()))
        .count()
}

/// The JSON cursor record stored for `instance`, read with a plain client.
pub async fn stored_cursor(js: &async_nats::jetstream::Context, instance: &str) -> Option<i64> {
    let kv = js.get_key_value("fpaas_cursors").await.ok()?;
    let value = kv.get(instance).await.ok()??;
    let v: serde_json::Value = serde_json::from_slice(&value).ok()?;
    v.get("seq")?.as_i64()
}

/// `n` distinct events made from the real corpus (`testdata/corpus/events.ndjson`), cycling through it: the
/// i-th copy of a commit gets `-<i>` appended to its rkey, every copy a new `seq` and `time_us`, so every
/// event has its own dedup id and the mix of kinds, collections and records is the relay's.
pub fn corpus_events(n: usize) -> Vec<fpaas_event::Event> {
    let path = crate::workspace_root().join("testdata/corpus/events.ndjson");
    let text = std::fs::read_to_string(&path).expect("read the corpus events");
    let base: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("corpus event"))
        .collect();
    let t0 = 1_790_000_000_000_000i64;
    (0..n)
        .map(|i| {
            let mut v = base[i % base.len()].clone();
            let round = i / base.len();
            v["seq"] = serde_json::json!(1_000_000 + i as i64);
            v["time_us"] = serde_json::json!(t0 + i as i64 * 1_000);
            if round > 0
                && let Some(rkey) = v["commit"]["rkey"].as_str()
            {
                v["commit"]["rkey"] = serde_json::json!(format!("{rkey}-{round}"));
            }
            let bytes = serde_json::to_vec(&v).expect("json");
            fpaas_event::wire::decode_payload(&bytes).expect("corpus event decodes")
        })
        .collect()
}

/// Publishes `events` to the firehose stream exactly as the shuffler does (subject, `Nats-Msg-Id` and the
/// `Fpaas-*` headers of [`fpaas_event::WireMessage`]); returns the stream sequence of each.
pub async fn publish_events(
    client: &async_nats::Client,
    events: &[fpaas_event::Event],
) -> Vec<u64> {
    let js = async_nats::jetstream::new(client.clone());
    let mut seqs = Vec::with_capacity(events.len());
    for chunk in events.chunks(256) {
        let mut acks = Vec::with_capacity(chunk.len());
        for event in chunk {
            let wire = fpaas_event::WireMessage::from_event(event);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(fpaas_event::HEADER_MSG_ID, wire.msg_id.as_str());
            for (name, value) in &wire.headers {
                headers.insert(*name, value.as_str());
            }
            acks.push(
                js.publish_with_headers(wire.subject, headers, wire.payload.into())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            seqs.push(ack.await.expect("publish ack").sequence);
        }
    }
    seqs
}
