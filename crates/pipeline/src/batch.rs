//! Batches: the pure part of delivery. [`Batcher`] collects a subscription's matched (and transformed)
//! events until `max_events`, `max_bytes` or `max_wait` says the batch is full, and builds the body a
//! receiver gets. A batch is identified by its subscription, the stream sequences of its first and last
//! event, and the subscription's generation ([`batch_id`]), so the same events form the same id when a
//! batch is delivered again after a restart.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Batch limits of one subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most events in a batch.
    pub max_events: usize,
    /// Most bytes in a batch body (an event larger than this goes alone).
    pub max_bytes: usize,
    /// Longest time the first event of a batch waits for more.
    pub max_wait: Duration,
}

/// One event in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Stream sequence.
    pub seq: u64,
    /// The event's dedup id.
    pub id: String,
    /// Event time, unix microseconds.
    pub time_us: i64,
    /// The JSON delivered as `data` (the event, or the transform's result).
    pub data: Vec<u8>,
}

/// The envelope bytes around the events, and per event (`{"id":…,"seq":…,"time_us":…,"data":…},`),
/// used for the byte limit; ids are short, so these are generous upper bounds.
const ENVELOPE_BYTES: usize = 256;
const ITEM_OVERHEAD_BYTES: usize = 160;

/// A full or timed-out batch, ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The deterministic batch id (the `webhook-id`).
    pub id: String,
    /// Stream sequence of the first event.
    pub from_seq: u64,
    /// Stream sequence of the last event.
    pub to_seq: u64,
    /// Every matched event up to this stream sequence is in this batch or an earlier one (the
    /// subscription's progress after this batch is accepted).
    pub covers_to: u64,
    /// Number of events.
    pub events: usize,
    /// Event time of the first event (for lag).
    pub first_time_us: i64,
    /// The body.
    pub body: Vec<u8>,
}

/// The id of the batch of `subscription` (at `generation`) spanning `from_seq..=to_seq`.
pub fn batch_id(subscription: &str, from_seq: u64, to_seq: u64, generation: u64) -> String {
    format!("{subscription}.{from_seq}-{to_seq}.g{generation}")
}

/// Collects events into batches (see the module docs).
#[derive(Debug)]
pub struct Batcher {
    subscription: String,
    generation: u64,
    limits: Limits,
    items: Vec<Item>,
    bytes: usize,
    started: Option<Instant>,
    /// Highest stream sequence whose matched events are all in `items` or delivered.
    scanned_to: u64,
}

impl Batcher {
    /// An empty batcher for `subscription`.
    pub fn new(subscription: &str, generation: u64, limits: Limits, scanned_to: u64) -> Self {
        Self {
            subscription: subscription.to_owned(),
            generation,
            limits,
            items: Vec::new(),
            bytes: ENVELOPE_BYTES,
            started: None,
            scanned_to,
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// No event waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Highest stream sequence fully accounted for.
    pub fn scanned_to(&self) -> u64 {
        self.scanned_to
    }

    /// Event time of the oldest waiting event.
    pub fn oldest_time_us(&self) -> Option<i64> {
        self.items.first().map(|i| i.time_us)
    }

    /// Records that every matched event up to `seq` has been pushed (a non-matching event was read, or the
    /// shared reader passed `seq`).
    pub fn scanned(&mut self, seq: u64) {
        self.scanned_to = self.scanned_to.max(seq);
    }

    /// Would `item` overflow the byte limit of the batch being built? (Then flush first.)
    pub fn would_overflow(&self, data_len: usize) -> bool {
        !self.items.is_empty()
            && self.bytes + data_len + ITEM_OVERHEAD_BYTES > self.limits.max_bytes
    }

    /// Adds an event; returns true when the batch is now full (by count or bytes).
    pub fn push(&mut self, item: Item) -> bool {
        if self.items.is_empty() {
            self.started = Some(Instant::now());
        }
        self.scanned_to = self.scanned_to.max(item.seq);
        self.bytes += item.data.len() + ITEM_OVERHEAD_BYTES;
        self.items.push(item);
        self.items.len() >= self.limits.max_events || self.bytes >= self.limits.max_bytes
    }

    /// Full by count or bytes.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.limits.max_events || self.bytes >= self.limits.max_bytes
    }

    /// When the waiting events must go even if the batch is not full.
    pub fn deadline(&self) -> Option<Instant> {
        self.started.map(|s| s + self.limits.max_wait)
    }

    /// Takes the waiting events as a batch (`None` when there are none).
    pub fn take(&mut self) -> Option<Batch> {
        if self.items.is_empty() {
            return None;
        }
        let items = std::mem::take(&mut self.items);
        self.bytes = ENVELOPE_BYTES;
        self.started = None;
        let from_seq = items[0].seq;
        let to_seq = items[items.len() - 1].seq;
        let id = batch_id(&self.subscription, from_seq, to_seq, self.generation);
        Some(Batch {
            body: body(&self.subscription, &id, &items),
            covers_to: self.scanned_to.max(to_seq),
            events: items.len(),
            first_time_us: items[0].time_us,
            id,
            from_seq,
            to_seq,
        })
    }
}

/// The body a receiver gets (see `docs/webhooks.md`).
pub fn body(subscription: &str, batch_id: &str, items: &[Item]) -> Vec<u8> {
    let size: usize = items
        .iter()
        .map(|i| i.data.len() + ITEM_OVERHEAD_BYTES)
        .sum();
    let mut out = Vec::with_capacity(ENVELOPE_BYTES + size);
    let from = items.first().map(|i| i.seq).unwrap_or(0);
    let to = items.last().map(|i| i.seq).unwrap_or(0);
    out.extend_from_slice(b"{\"type\":\"fpaas.batch\",\"subscription_id\":");
    push_json_str(&mut out, subscription);
    out.extend_from_slice(b",\"batch_id\":");
    push_json_str(&mut out, batch_id);
    out.extend_from_slice(format!(",\"from_seq\":{from},\"to_seq\":{to},\"events\":[").as_bytes());
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        push_json_str(&mut out, &item.id);
        out.extend_from_slice(
            format!(
                ",\"seq\":{},\"time_us\":{},\"data\":",
                item.seq, item.time_us
            )
            .as_bytes(),
        );
        out.extend_from_slice(&item.data);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly as JSON requires; a str always serializes.
    out.extend_from_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, data: &str) -> Item {
        Item {
            seq,
            id: format!("id-{seq}"),
            time_us: seq as i64 * 10,
            data: data.as_bytes().to_vec(),
        }
    }

    fn limits(max_events: usize, max_bytes: usize) -> Limits {
        Limits {
            max_events,
            max_bytes,
            max_wait: Duration::from_millis(50),
        }
    }

    #[test]
    fn full_by_count_and_body_is_valid_json_in_order() {
        let mut b = Batcher::new("s_x", 3, limits(3, 1 << 20), 0);
        assert!(!b.push(item(5, "{\"a\":1}")));
        assert!(!b.push(item(9, "[1,2]")));
        assert!(b.push(item(12, "\"x\\\"y\"")));
        b.scanned(20);
        let batch = b.take().unwrap();
        assert_eq!(batch.id, "s_x.5-12.g3");
        assert_eq!((batch.from_seq, batch.to_seq, batch.covers_to), (5, 12, 20));
        let v: serde_json::Value = serde_json::from_slice(&batch.body).unwrap();
        assert_eq!(v["batch_id"], "s_x.5-12.g3");
        let seqs: Vec<u64> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [5, 9, 12]);
        assert_eq!(v["events"][2]["data"], "x\"y");
        assert_eq!(v["events"][0]["id"], "id-5");
        assert!(b.take().is_none() && b.is_empty());
    }

    #[test]
    fn full_by_bytes_and_bodies_stay_within_the_limit() {
        let data = format!("\"{}\"", "x".repeat(1000));
        let mut b = Batcher::new("s_x", 0, limits(1000, 8 * 1024), 0);
        let mut bodies = Vec::new();
        for seq in 1..=40 {
            if b.would_overflow(data.len()) {
                bodies.push(b.take().unwrap());
            }
            if b.push(item(seq, &data)) {
                bodies.push(b.take().unwrap());
            }
        }
        bodies.extend(b.take());
        assert!(bodies.len() > 4);
        for batch in &bodies {
            assert!(batch.body.len() <= 8 * 1024, "{}", batch.body.len());
        }
        let total: usize = bodies.iter().map(|b| b.events).sum();
        assert_eq!(total, 40);
    }

    #[test]
    fn an_event_larger_than_max_bytes_goes_alone() {
        let mut b = Batcher::new("s_x", 0, limits(10, 1024), 0);
        assert!(
            !b.would_overflow(4096),
            "an empty batch always takes one event"
        );
        assert!(b.push(item(1, &format!("\"{}\"", "y".repeat(4096)))));
        assert_eq!(b.take().unwrap().events, 1);
    }

    #[test]
    fn deadline_starts_with_the_first_event() {
        let mut b = Batcher::new("s_x", 0, limits(10, 1 << 20), 7);
        assert!(b.deadline().is_none());
        b.push(item(8, "1"));
        assert!(b.deadline().unwrap() > Instant::now());
        assert_eq!(b.oldest_time_us(), Some(80));
    }
}
