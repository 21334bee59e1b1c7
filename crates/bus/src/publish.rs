//! Publishing to JetStream with a bounded number of acks in flight, and optionally a bounded number of
//! payload bytes in flight ([`Publisher::with_max_bytes_in_flight`]).
//!
//! Every [`OutMsg`] handed to [`Publisher::publish`] produces exactly one [`Completion`]:
//! `Ok(Acked)` with the stream sequence and the dedup flag, or `Err(Failed)` that gives the
//! message back so the caller can retry it (nothing is lost) or drop it when the error kind says
//! retrying cannot help ([`BusErrorKind::MaxPayload`], [`BusErrorKind::InvalidMessage`]).
//! `Nats-Msg-Id` is set from [`OutMsg::msg_id`], so a retry of a message whose ack was lost is
//! deduplicated by the stream (reported as [`Acked::duplicate`]).
//!
//! Metrics (handles resolved once in [`Publisher::new`], so install the recorder first):
//! `fpaas_bus_publish_latency_seconds` (histogram, publish → ack observed),
//! `fpaas_bus_published_total{result="stored|duplicate"}`, `fpaas_bus_publish_errors_total{error}`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::error::{BusError, BusErrorKind};

/// How long [`Publisher::publish`] waits for a disconnected client to reconnect before the publish fails
/// (instead of being queued by async-nats and sent whenever the connection comes back).
pub const DISCONNECTED_WAIT: Duration = Duration::from_secs(1);

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMsg {
    /// Subject (must be captured by a stream).
    pub subject: String,
    /// Deduplication id, sent as `Nats-Msg-Id`.
    pub msg_id: String,
    /// Extra headers, e.g. the DID (the event contract puts routing fields in headers).
    pub headers: Vec<(&'static str, String)>,
    /// The message body.
    pub payload: Bytes,
    /// The caller's tag, returned in the completion (e.g. the relay seq).
    pub token: u64,
}

impl OutMsg {
    /// The bus message of an event's wire form (`fpaas_event::wire`): its subject, `Nats-Msg-Id`,
    /// headers and payload, tagged with `token`.
    pub fn from_wire(wire: fpaas_event::WireMessage, token: u64) -> Self {
        Self {
            subject: wire.subject,
            msg_id: wire.msg_id,
            headers: wire.headers,
            payload: Bytes::from(wire.payload),
            token,
        }
    }
}

/// A publish JetStream stored (or recognised as a duplicate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The caller's tag from [`OutMsg::token`].
    pub token: u64,
    /// Stream sequence of the stored message (of the original, for a duplicate).
    pub sequence: u64,
    /// `true` when the stream already had this `Nats-Msg-Id` within its duplicate window.
    pub duplicate: bool,
    /// Time from `publish` to the ack being observed.
    pub latency: Duration,
}

/// A publish that failed; the message comes back for a retry.
#[derive(Debug)]
pub struct Failed {
    /// The message, unchanged.
    pub msg: OutMsg,
    /// Why it failed; `error.kind().is_retryable()` says whether a retry can help.
    pub error: BusError,
}

/// The result of one publish. The error is boxed to keep the success path small.
pub type Completion = Result<Acked, Box<Failed>>;

/// A JetStream publisher with at most `max_in_flight` acks outstanding.
///
/// Drive it from one task: call [`publish`](Self::publish) for each message and drain
/// [`next_completion`](Self::next_completion) (or [`try_next_completion`](Self::try_next_completion))
/// regularly — completions that `publish` observed while waiting for capacity are buffered until
/// drained.
///
/// Cancel safety: [`next_completion`](Self::next_completion) is cancel-safe (use it in
/// `tokio::select!`); [`publish`](Self::publish) is not — a cancelled `publish` drops its message,
/// so call it outside `select!`.
pub struct Publisher {
    js: jetstream::Context,
    client: async_nats::Client,
    max_in_flight: usize,
    max_bytes_in_flight: usize,
    bytes_in_flight: usize,
    in_flight: FuturesUnordered<InFlight>,
    ready: VecDeque<Completion>,
    metrics: PublishMetrics,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("max_in_flight", &self.max_in_flight)
            .field("in_flight", &self.in_flight.len())
            .field("bytes_in_flight", &self.bytes_in_flight)
            .field("ready", &self.ready.len())
            .finish()
    }
}

impl Publisher {
    /// A publisher on `js` allowing `max_in_flight` (at least 1) outstanding acks. The context's
    /// own `max_ack_inflight` (5,000 by default) must be at least as large to not become the limit.
    pub fn new(js: jetstream::Context, max_in_flight: usize) -> Self {
        Self {
            client: js.client(),
            js,
            max_in_flight: max_in_flight.max(1),
            max_bytes_in_flight: usize::MAX,
            bytes_in_flight: 0,
            in_flight: FuturesUnordered::new(),
            ready: VecDeque::new(),
            metrics: PublishMetrics::new(),
        }
    }

    /// Also bounds the payload bytes of the publishes awaiting an ack to `max_bytes` (at least 1): a
    /// publish waits while the payloads in flight plus its own would exceed it. A message larger than
    /// the bound is still sent, alone. So `bytes_in_flight() <= max(max_bytes, largest payload)`.
    pub fn with_max_bytes_in_flight(mut self, max_bytes: usize) -> Self {
        self.max_bytes_in_flight = max_bytes.max(1);
        self
    }

    /// Sends `msg`, first waiting while `max_in_flight` acks (or the byte bound) are outstanding
    /// (backpressure).
    ///
    /// Never fails and never panics: an immediate failure (invalid header, payload too large,
    /// connection buffer timeout while NATS is down) becomes a `Failed` completion with the
    /// message, like a failed ack does.
    pub async fn publish(&mut self, msg: OutMsg) {
        let size = msg.payload.len();
        while self.in_flight.len() >= self.max_in_flight
            || (!self.in_flight.is_empty()
                && self.bytes_in_flight.saturating_add(size) > self.max_bytes_in_flight)
        {
            match self.in_flight.next().await {
                Some(completion) => self.record_and_buffer(completion),
                None => break,
            }
        }
        // While disconnected, async-nats queues a publish and sends it whenever it reconnects — possibly long
        // after the stream's duplicate window, when a peer has stored the same event already (a duplicate).
        // So a publish waits up to DISCONNECTED_WAIT for the connection, then fails like an unanswered one.
        if !wait_connected(&self.client).await {
            let error = BusError::new(BusErrorKind::Timeout, "not connected to NATS");
            self.buffer(Err(Box::new(Failed { msg, error })));
            return;
        }
        let started = Instant::now();
        let headers = match build_headers(&msg) {
            Ok(headers) => headers,
            Err(error) => {
                self.buffer(Err(Box::new(Failed { msg, error })));
                return;
            }
        };
        match self
            .js
            .publish_with_headers(msg.subject.clone(), headers, msg.payload.clone())
            .await
        {
            Ok(ack) => {
                self.bytes_in_flight += size;
                self.in_flight
                    .push(InFlight::new(self.js.clone(), ack, msg, started));
            }
            Err(err) => {
                let error = map_publish_error(err);
                self.buffer(Err(Box::new(Failed { msg, error })));
            }
        }
    }

    /// The next completion: buffered ones first, else the next ack to arrive. `None` when
    /// nothing is in flight or buffered.
    pub async fn next_completion(&mut self) -> Option<Completion> {
        if let Some(done) = self.ready.pop_front() {
            return Some(done);
        }
        let (completion, size) = self.in_flight.next().await?;
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(size);
        self.metrics.record(&completion);
        Some(completion)
    }

    /// A completion that is available without waiting, if any.
    pub fn try_next_completion(&mut self) -> Option<Completion> {
        if let Some(done) = self.ready.pop_front() {
            return Some(done);
        }
        let waker = futures::task::noop_waker();
        let mut cx = TaskContext::from_waker(&waker);
        match self.in_flight.poll_next_unpin(&mut cx) {
            Poll::Ready(Some((completion, size))) => {
                self.bytes_in_flight = self.bytes_in_flight.saturating_sub(size);
                self.metrics.record(&completion);
                Some(completion)
            }
            _ => None,
        }
    }

    /// Acks outstanding (sent, not yet observed).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Payload bytes of the publishes awaiting an ack.
    pub fn bytes_in_flight(&self) -> usize {
        self.bytes_in_flight
    }

    /// Completions observed but not yet taken by the caller.
    pub fn buffered(&self) -> usize {
        self.ready.len()
    }

    /// Nothing in flight and nothing buffered: every publish has been handed back.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.ready.is_empty()
    }

    /// The configured bound on acks in flight.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    fn record_and_buffer(&mut self, (completion, size): (Completion, usize)) {
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(size);
        self.buffer(completion);
    }

    fn buffer(&mut self, completion: Completion) {
        self.metrics.record(&completion);
        self.ready.push_back(completion);
    }
}

/// Whether `client` is connected, waiting up to [`DISCONNECTED_WAIT`] for it.
async fn wait_connected(client: &async_nats::Client) -> bool {
    let connected = || client.connection_state() == async_nats::connection::State::Connected;
    let deadline = Instant::now() + DISCONNECTED_WAIT;
    while !connected() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// `Nats-Msg-Id` plus the message's extra headers, validated without panicking.
fn build_headers(msg: &OutMsg) -> Result<HeaderMap, BusError> {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, header_value("Nats-Msg-Id", &msg.msg_id)?);
    for (name, value) in &msg.headers {
        let header = HeaderName::from_str(name).map_err(|err| {
            BusError::with_source(
                BusErrorKind::InvalidMessage,
                format!("invalid header name {name:?}"),
                err,
            )
        })?;
        headers.insert(header, header_value(name, value)?);
    }
    Ok(headers)
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, BusError> {
    HeaderValue::from_str(value).map_err(|err| {
        BusError::with_source(
            BusErrorKind::InvalidMessage,
            format!("invalid value of header {name}"),
            err,
        )
    })
}

fn map_publish_error(err: PublishError) -> BusError {
    let kind = match err.kind() {
        PublishErrorKind::TimedOut => BusErrorKind::Timeout,
        PublishErrorKind::StreamNotFound => BusErrorKind::NoResponders,
        PublishErrorKind::MaxPayloadExceeded => BusErrorKind::MaxPayload,
        PublishErrorKind::Other => {
            match std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|e| e.error_code())
            {
                Some(
                    ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
                ) => BusErrorKind::MaxPayload,
                Some(_) | None => BusErrorKind::Publish,
            }
        }
        PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => BusErrorKind::Publish,
    };
    if is_in_process(&err) {
        return BusError::with_source(
            kind,
            "jetstream publish: message id still in process on the stream after resends",
            err,
        );
    }
    BusError::with_source(kind, "jetstream publish", err)
}

/// How often one message is sent again while the stream answers "duplicate message id is in process", and the
/// pause before each resend (doubling from the first, capped at the last).
const IN_PROCESS_RESENDS: u32 = 12;
const IN_PROCESS_PAUSE_MIN: Duration = Duration::from_millis(25);
const IN_PROCESS_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Whether the stream answered 10158, "duplicate message id is in process": on a clustered stream, another
/// publisher's copy of this message id (the HA peer's) has been proposed and not yet applied. It is neither
/// stored nor refused: the same message sent again gets the duplicate ack once that copy is stored (or is
/// stored itself if that proposal failed).
fn is_in_process(err: &PublishError) -> bool {
    std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| e.error_code() == ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
}

/// One outstanding publish: its ack, resent with the same id while the stream says the id is in process
/// (bounded: then it fails like any publish), resolving to the completion and the payload size it releases.
struct InFlight {
    fut: Pin<Box<dyn Future<Output = (Completion, usize)> + Send>>,
}

impl InFlight {
    fn new(js: jetstream::Context, ack: PublishAckFuture, msg: OutMsg, started: Instant) -> Self {
        let fut = async move {
            let mut result = ack.await;
            let mut pause = IN_PROCESS_PAUSE_MIN;
            for _ in 0..IN_PROCESS_RESENDS {
                match &result {
                    Err(err) if is_in_process(err) => {}
                    _ => break,
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(IN_PROCESS_PAUSE_MAX);
                // Never queued while disconnected (see `publish`): the failure then ends the session as usual.
                if js.client().connection_state() != async_nats::connection::State::Connected {
                    break;
                }
                let Ok(headers) = build_headers(&msg) else {
                    break;
                };
                tracing::debug!(msg_id = %msg.msg_id, "message id in process on the stream; sending it again");
                result = match js
                    .publish_with_headers(msg.subject.clone(), headers, msg.payload.clone())
                    .await
                {
                    Ok(ack) => ack.await,
                    Err(err) => Err(err),
                };
            }
            let latency = started.elapsed();
            let size = msg.payload.len();
            let completion = match result {
                Ok(ack) => Ok(Acked {
                    token: msg.token,
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                    latency,
                }),
                Err(err) => Err(Box::new(Failed {
                    msg,
                    error: map_publish_error(err),
                })),
            };
            (completion, size)
        };
        Self { fut: Box::pin(fut) }
    }
}

impl Future for InFlight {
    /// The completion and the payload size it releases.
    type Output = (Completion, usize);

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<(Completion, usize)> {
        self.fut.as_mut().poll(cx)
    }
}

/// Metric handles resolved once per publisher (no registry lookup per message).
struct PublishMetrics {
    latency: metrics::Histogram,
    stored: metrics::Counter,
    duplicate: metrics::Counter,
}

impl PublishMetrics {
    fn new() -> Self {
        Self {
            latency: metrics::histogram!("fpaas_bus_publish_latency_seconds"),
            stored: metrics::counter!("fpaas_bus_published_total", "result" => "stored"),
            duplicate: metrics::counter!("fpaas_bus_published_total", "result" => "duplicate"),
        }
    }

    fn record(&self, completion: &Completion) {
        match completion {
            Ok(acked) => {
                self.latency.record(acked.latency.as_secs_f64());
                if acked.duplicate {
                    self.duplicate.increment(1);
                } else {
                    self.stored.increment(1);
                }
            }
            Err(failed) => {
                metrics::counter!("fpaas_bus_publish_errors_total", "error" => failed.error.kind().as_str())
                    .increment(1);
                tracing::debug!(
                    token = failed.msg.token,
                    subject = %failed.msg.subject,
                    kind = %failed.error.kind(),
                    error = %failed.error,
                    "publish failed"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: Vec<(&'static str, String)>, id: &str) -> OutMsg {
        OutMsg {
            subject: "a.b".into(),
            msg_id: id.into(),
            headers,
            payload: Bytes::from_static(b"{}"),
            token: 7,
        }
    }

    #[test]
    fn headers_carry_msg_id_and_extras() {
        let h = build_headers(&msg(vec![("Fpaas-Did", "did:plc:abc".into())], "id-1"))
            .expect("valid headers");
        assert_eq!(
            h.get(NATS_MESSAGE_ID).map(HeaderValue::as_str),
            Some("id-1")
        );
        assert_eq!(
            h.get("Fpaas-Did").map(HeaderValue::as_str),
            Some("did:plc:abc")
        );
    }

    #[test]
    fn invalid_headers_are_errors_not_panics() {
        for bad in [
            msg(vec![("Fpaas-Did", "did:plc:a\r\nX: y".into())], "id"),
            msg(vec![("Bad:Name", "v".into())], "id"),
            msg(vec![], "id\n"),
        ] {
            let err = build_headers(&bad).expect_err("invalid");
            assert_eq!(err.kind(), BusErrorKind::InvalidMessage);
        }
    }
}
