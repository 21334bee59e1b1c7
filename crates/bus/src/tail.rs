//! Unacknowledged readers: a [`StreamTail`] reads a stream in order from a chosen position through an
//! ordered (ephemeral, no-ack) consumer, with optional subject filters. It costs the server one small
//! consumer and no acks, so a process can open one per subscription that needs to catch up; the reader
//! remembers where it is and, after a connection loss or a consumer the server dropped, continues from
//! the next sequence. Also: the bounds of a stream ([`stream_bounds`]) and the first sequence at or after
//! a time ([`first_seq_at_or_after`]).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;

use crate::error::{BusError, BusErrorKind};

/// Expiry of a reader's pull requests; heartbeats come every half of it, and two missed ones make the client
/// recreate the consumer (a node loss is noticed within ~2× this).
pub const PULL_EXPIRES: Duration = Duration::from_secs(4);

/// A reader that returned nothing for this long checks whether the stream holds a message for it; if so, its
/// consumer is stuck (it lived on a node that was lost, and the client's own recreation is slow or silent:
/// measured 10+ s on a 3-node cluster) and it is opened again from where it stopped.
pub const STALL_AFTER: Duration = Duration::from_secs(3);

/// Where a [`StreamTail`] starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    /// The first message still in the stream.
    First,
    /// The message with this stream sequence, or the next one that exists.
    Seq(u64),
    /// Only messages published after the reader was opened.
    New,
}

/// One message read by a [`StreamTail`].
#[derive(Clone, Debug)]
pub struct TailMsg {
    /// Stream sequence.
    pub seq: u64,
    /// Subject.
    pub subject: String,
    /// Payload.
    pub payload: Bytes,
    /// Messages after this one that the server still holds for this reader (0 = this is the last one
    /// published so far, up to the filters).
    pub pending: u64,
    /// When the server stored the message, in µs since the epoch (the stream leader's clock; replicas keep it).
    pub stored_us: i64,
    headers: Option<HeaderMap>,
}

impl TailMsg {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }
}

/// An in-order, unacknowledged reader of one stream (see the module docs).
pub struct StreamTail {
    js: jetstream::Context,
    stream: String,
    filters: Vec<String>,
    /// The next sequence to read (after the last one returned).
    next_seq: u64,
    first: Option<From>,
    messages: Option<pull::Ordered>,
    /// The sequence the open consumer started at (`None`: only new messages, position unknown).
    opened_at: Option<u64>,
    /// When the reader last returned a message, was opened or checked for a stall.
    last_progress: tokio::time::Instant,
}

impl std::fmt::Debug for StreamTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTail")
            .field("stream", &self.stream)
            .field("filters", &self.filters)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl StreamTail {
    /// A reader of `stream` from `from`, restricted to `filters` (empty = every subject). Nothing is
    /// asked of the server until the first [`StreamTail::next`].
    pub fn new(
        client: &async_nats::Client,
        stream: &str,
        from: From,
        filters: Vec<String>,
    ) -> Self {
        Self {
            js: jetstream::new(client.clone()),
            stream: stream.to_owned(),
            filters,
            next_seq: 0,
            first: Some(from),
            messages: None,
            opened_at: None,
            last_progress: tokio::time::Instant::now(),
        }
    }

    /// The sequence the next message will have at least.
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    async fn open(&mut self) -> Result<(), BusError> {
        let (deliver_policy, opened_at) = match self.first.take() {
            Some(From::First) => (DeliverPolicy::All, Some(1)),
            Some(From::New) => (DeliverPolicy::New, None),
            Some(From::Seq(seq)) => (
                DeliverPolicy::ByStartSequence {
                    start_sequence: seq.max(1),
                },
                Some(seq.max(1)),
            ),
            None => (
                DeliverPolicy::ByStartSequence {
                    start_sequence: self.next_seq.max(1),
                },
                Some(self.next_seq.max(1)),
            ),
        };
        let (filter_subject, filter_subjects) = match self.filters.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let stream =
            self.js.get_stream(&self.stream).await.map_err(|e| {
                BusError::during(BusErrorKind::Consumer, "get stream", &self.stream, e)
            })?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy,
                filter_subject,
                filter_subjects,
                // Pull requests expire after 4 s, so the client expects a heartbeat every 2 s and recreates the
                // consumer after two missed ones. With the library's defaults (30 s, 15 s) a reader whose
                // consumer died with its node stayed silent for ~45 s (measured on a 3-node cluster).
                max_expires: PULL_EXPIRES,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                BusError::during(
                    BusErrorKind::Consumer,
                    "create ordered consumer",
                    &self.stream,
                    e,
                )
            })?;
        let messages = consumer.messages().await.map_err(|e| {
            BusError::during(BusErrorKind::Consumer, "ordered messages", &self.stream, e)
        })?;
        self.messages = Some(messages);
        self.opened_at = opened_at;
        self.last_progress = tokio::time::Instant::now();
        Ok(())
    }

    /// After [`STALL_AFTER`] without a message: if the stream holds one at or after our position (within our
    /// filters), the consumer is stuck and is dropped, so the next call opens a new one from the position.
    /// At most one check (a bounded direct get) per `STALL_AFTER`.
    async fn check_stalled(&mut self) {
        if self.last_progress.elapsed() < STALL_AFTER {
            return;
        }
        self.last_progress = tokio::time::Instant::now();
        let from = if self.next_seq > 0 {
            self.next_seq
        } else {
            match self.opened_at {
                Some(seq) => seq,
                None => return,
            }
        };
        let client = self.js.client();
        let check = next_seq_matching(&client, &self.stream, &self.filters, from);
        if let Ok(Ok(Some(seq))) = tokio::time::timeout(Duration::from_secs(1), check).await {
            tracing::debug!(stream = %self.stream, from, waiting = seq, "reader stalled; opening it again");
            self.messages = None;
            self.first = None;
            self.next_seq = self.next_seq.max(from);
        }
    }

    /// The next message, waiting at most `wait` for it (`Ok(None)` when none arrived in time).
    ///
    /// # Errors
    /// [`BusErrorKind::Consumer`] when the consumer cannot be created or reading fails; the next call
    /// starts over from the sequence after the last message returned.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<TailMsg>, BusError> {
        if self.messages.is_none() {
            let opened = tokio::time::timeout(wait.max(Duration::from_secs(2)), self.open()).await;
            match opened {
                Ok(r) => r?,
                Err(_) => {
                    return Err(BusError::new(
                        BusErrorKind::Consumer,
                        format!("opening a reader of {} timed out", self.stream),
                    ));
                }
            }
        }
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let item = match tokio::time::timeout(wait, messages.next()).await {
            Err(_) => {
                self.check_stalled().await;
                return Ok(None);
            }
            Ok(item) => item,
        };
        match item {
            Some(Ok(message)) => {
                let (seq, pending, stored_us) = match message.info() {
                    Ok(info) => (
                        info.stream_sequence,
                        info.pending,
                        nanos_to_us(info.published.unix_timestamp_nanos()),
                    ),
                    Err(e) => {
                        self.messages = None;
                        return Err(BusError::new(
                            BusErrorKind::Consumer,
                            format!("message without info on {}: {e}", self.stream),
                        ));
                    }
                };
                self.next_seq = seq + 1;
                self.last_progress = tokio::time::Instant::now();
                Ok(Some(TailMsg {
                    seq,
                    subject: message.subject.to_string(),
                    payload: message.payload.clone(),
                    pending,
                    stored_us,
                    headers: message.headers.clone(),
                }))
            }
            Some(Err(e)) => {
                self.messages = None;
                Err(BusError::during(
                    BusErrorKind::Consumer,
                    "read",
                    &self.stream,
                    e,
                ))
            }
            None => {
                self.messages = None;
                Err(BusError::new(
                    BusErrorKind::Consumer,
                    format!("the reader of {} ended", self.stream),
                ))
            }
        }
    }
}

fn nanos_to_us(ns: i128) -> i64 {
    i64::try_from(ns / 1000).unwrap_or(i64::MAX)
}

/// When the message at `seq` of `stream` was stored, in µs since the epoch; `None` when there is no such
/// message (deleted, expired or not yet written). One direct get.
///
/// # Errors
/// [`BusErrorKind::Consumer`] on a missing stream or a server failure.
pub async fn stored_time_us(
    client: &async_nats::Client,
    stream: &str,
    seq: u64,
) -> Result<Option<i64>, BusError> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let js = jetstream::new(client.clone());
    let s = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| BusError::during(BusErrorKind::Consumer, "get stream", stream, e))?;
    match s.raw_message_builder().sequence(seq.max(1)).send().await {
        Ok(m) => Ok(Some(nanos_to_us(m.time.unix_timestamp_nanos()))),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(BusError::during(
            BusErrorKind::Consumer,
            "get message",
            stream,
            e,
        )),
    }
}

/// First and last sequence of a stream and its message count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamBounds {
    /// Sequence of the oldest message (last + 1 when empty).
    pub first_seq: u64,
    /// Sequence of the newest message (0 when nothing was ever stored).
    pub last_seq: u64,
    /// Messages stored.
    pub messages: u64,
}

/// The bounds of `stream` now.
///
/// # Errors
/// [`BusErrorKind::Consumer`] when the stream does not exist or the server does not answer.
pub async fn stream_bounds(
    client: &async_nats::Client,
    stream: &str,
) -> Result<StreamBounds, BusError> {
    let js = jetstream::new(client.clone());
    let mut s = js
        .get_stream(stream)
        .await
        .map_err(|e| BusError::during(BusErrorKind::Consumer, "get stream", stream, e))?;
    let info = s
        .info()
        .await
        .map_err(|e| BusError::during(BusErrorKind::Consumer, "stream info", stream, e))?;
    Ok(StreamBounds {
        first_seq: info.state.first_sequence,
        last_seq: info.state.last_sequence,
        messages: info.state.messages,
    })
}

/// The sequence of the first message of `stream` stored at or after `rfc3339` (a time in RFC 3339), or the
/// sequence the next message will get when there is none.
///
/// # Errors
/// [`BusErrorKind::Consumer`] for a bad time, a missing stream or a server failure.
pub async fn first_seq_at_or_after(
    client: &async_nats::Client,
    stream: &str,
    rfc3339: &str,
) -> Result<u64, BusError> {
    // The policy is built through serde so this works with either datetime type async-nats is built with.
    let deliver_policy: DeliverPolicy = serde_json::from_value(serde_json::json!({
        "deliver_policy": "by_start_time",
        "opt_start_time": rfc3339,
    }))
    .map_err(|e| BusError::new(BusErrorKind::Consumer, format!("bad start time: {e}")))?;
    let js = jetstream::new(client.clone());
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| BusError::during(BusErrorKind::Consumer, "get stream", stream, e))?;
    let consumer = s
        .create_consumer(pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            BusError::during(BusErrorKind::Consumer, "create ordered consumer", stream, e)
        })?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::during(BusErrorKind::Consumer, "ordered messages", stream, e))?;
    match tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
        Ok(Some(Ok(m))) => m
            .info()
            .map(|i| i.stream_sequence)
            .map_err(|e| BusError::new(BusErrorKind::Consumer, format!("message info: {e}"))),
        _ => Ok(stream_bounds(client, stream).await?.last_seq + 1),
    }
}

/// The sequence of the first message of `stream` at or after `from_seq` whose subject matches one of
/// `filters` (every subject when empty); `None` when there is none yet. One server request per filter.
///
/// # Errors
/// [`BusErrorKind::Consumer`] on a missing stream or a server failure.
pub async fn next_seq_matching(
    client: &async_nats::Client,
    stream: &str,
    filters: &[String],
    from_seq: u64,
) -> Result<Option<u64>, BusError> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let js = jetstream::new(client.clone());
    let s = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| BusError::during(BusErrorKind::Consumer, "get stream", stream, e))?;
    let all = [">".to_owned()];
    let filters = if filters.is_empty() {
        &all[..]
    } else {
        filters
    };
    let mut first: Option<u64> = None;
    for filter in filters {
        match s
            .raw_message_builder()
            .sequence(from_seq.max(1))
            .next_by_subject(filter.clone())
            .send()
            .await
        {
            Ok(m) => first = Some(first.map_or(m.sequence, |f| f.min(m.sequence))),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(e) => {
                return Err(BusError::during(
                    BusErrorKind::Consumer,
                    "next message by subject",
                    stream,
                    e,
                ));
            }
        }
    }
    Ok(first)
}

/// What [`recent`] read: the messages (oldest first) of the stream's last `count` sequences within the
/// filters, and the window it covered.
#[derive(Clone, Debug, Default)]
pub struct Recent {
    /// The messages read, oldest first.
    pub messages: Vec<TailMsg>,
    /// First sequence of the window (the stream's first when it holds fewer than `count`).
    pub from_seq: u64,
    /// Last sequence of the window (the stream's last when the read started).
    pub to_seq: u64,
    /// The time budget ran out before the window was read to its end.
    pub truncated: bool,
}

/// Reads the messages among the last `count` sequences of `stream` (restricted to `filters`, every subject
/// when empty) through one ordered consumer, for at most `budget`; `None` when the stream does not exist.
/// The consumer goes with the reader (the server removes an ordered consumer that nobody pulls from).
///
/// # Errors
/// [`BusErrorKind::Consumer`] when the server fails or does not answer.
pub async fn recent(
    client: &async_nats::Client,
    stream: &str,
    filters: Vec<String>,
    count: u64,
    budget: Duration,
) -> Result<Option<Recent>, BusError> {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;
    let js = jetstream::new(client.clone());
    let mut s = match js.get_stream(stream).await {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(BusError::during(
                BusErrorKind::Consumer,
                "get stream",
                stream,
                e,
            ));
        }
    };
    let info = s
        .info()
        .await
        .map_err(|e| BusError::during(BusErrorKind::Consumer, "stream info", stream, e))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let from_seq = last
        .saturating_sub(count.saturating_sub(1))
        .max(first)
        .max(1);
    let mut out = Recent {
        messages: Vec::new(),
        from_seq,
        to_seq: last,
        truncated: false,
    };
    if info.state.messages == 0 || last < from_seq {
        return Ok(Some(out));
    }
    // Nothing within the filters in the window: answer now rather than wait out the budget.
    if next_seq_matching(client, stream, &filters, from_seq)
        .await?
        .is_none_or(|seq| seq > last)
    {
        return Ok(Some(out));
    }
    let deadline = tokio::time::Instant::now() + budget;
    let mut tail = StreamTail::new(client, stream, From::Seq(from_seq), filters);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            out.truncated = true;
            break;
        }
        match tail.next(left).await? {
            Some(m) if m.seq > last => break,
            Some(m) => {
                let done = m.pending == 0 || m.seq == last;
                out.messages.push(m);
                if done {
                    break;
                }
            }
            // Nothing within the filters in the window, or the budget ran out.
            None => {
                out.truncated = tokio::time::Instant::now() >= deadline;
                break;
            }
        }
    }
    Ok(Some(out))
}
