//! One `/subscribe` connection: where it starts (a cursor resolved against NATS store times), then a loop that
//! reads events either from the node's shared ring (live) or from its own catch-up [`StreamTail`] (behind),
//! filters them, and writes them at the client's pace, while a second task reads the client's messages
//! (`options_update`, close, pongs).
//!
//! `covered` is the invariant: every event with a sequence up to it has been sent or skipped by the filter.
//! It only grows, and every source reads from `covered + 1`, so switching sources never loses or repeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use fpaas_bus::BusError;
use fpaas_bus::tail::{
    From, StreamTail, first_seq_at_or_after, next_seq_matching, stored_time_us, stream_bounds,
};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};

use crate::hub::Hub;
use crate::options::{Filter, Query, Start, Update, parse_message};
use crate::wire::{self, WireEvent};

/// Largest message a client may send (Jetstream documents 10 MB).
pub const MAX_CLIENT_MESSAGE: usize = 10_000_000;

/// Events written to a client per flush (a live client takes what the ring holds, up to this many; a
/// catching-up one flushes at least this often).
const WRITE_BATCH: usize = 64;

/// How often a catching-up client checks that the stream still holds its position.
const RETENTION_CHECK: Duration = Duration::from_secs(10);

/// The sequence below the first event the client should get (`covered`), for where it asked to start.
///
/// A cursor `c` resumes after the events stored in microsecond `c`: a client that passes back the last
/// `time_us` it saw gets everything after that event and not that event again. If two events were stored in
/// the same microsecond as the cursor, both are sent again (the client cannot say which it saw), so a tie
/// repeats rather than loses.
///
/// # Errors
/// [`BusError`] when NATS does not answer.
pub(crate) async fn resolve(hub: &Hub, start: Start) -> Result<u64, BusError> {
    let (client, stream) = (&hub.client, hub.config.stream.as_str());
    let bounds = stream_bounds(client, stream).await?;
    let now_us = chrono::Utc::now().timestamp_micros();
    match start {
        Start::Live => Ok(bounds.last_seq),
        Start::After(c) if c <= 0 => Ok(bounds.first_seq.saturating_sub(1)),
        Start::After(c) if c > now_us => Ok(bounds.last_seq),
        Start::After(c) => {
            let Some(at) = chrono::DateTime::from_timestamp_micros(c) else {
                return Ok(bounds.first_seq.saturating_sub(1));
            };
            let rfc = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let s = first_seq_at_or_after(client, stream, &rfc).await?;
            if s > bounds.last_seq.max(1) {
                return Ok(s.saturating_sub(1));
            }
            if stored_time_us(client, stream, s).await? == Some(c)
                && stored_time_us(client, stream, s + 1).await? != Some(c)
            {
                // Exactly one event in the cursor's microsecond: the one the client saw last.
                return Ok(s);
            }
            Ok(s.saturating_sub(1))
        }
    }
}

/// Why a connection ends (a label of `fpaas_subscribe_closed_total`).
#[derive(Debug)]
struct Close {
    reason: &'static str,
    /// Close frame to send, if the socket is still writable.
    frame: Option<(u16, String)>,
}

impl Close {
    fn quiet(reason: &'static str) -> Self {
        Close {
            reason,
            frame: None,
        }
    }
    fn with(reason: &'static str, code: u16, text: impl Into<String>) -> Self {
        Close {
            reason,
            frame: Some((code, text.into())),
        }
    }
}

/// What the client's reader task reports.
enum Ctl {
    Update(Update),
    Refuse(u16, String),
    Gone,
}

enum Source {
    /// Reading the shared ring.
    Live(broadcast::Receiver<Arc<WireEvent>>),
    /// Reading its own tail.
    CatchUp { tail: StreamTail, checked: Instant },
    /// Subscribed to the ring (which buffers from `r` on) while the tail covers up to `r`.
    Joining {
        tail: StreamTail,
        rx: broadcast::Receiver<Arc<WireEvent>>,
        r: u64,
    },
}

struct Session {
    hub: Arc<Hub>,
    filter: Filter,
    max_size: u64,
    compress: bool,
    covered: u64,
    write_timeout: Duration,
    /// Events and bytes fed to the socket but not flushed yet.
    unflushed: (u64, u64),
}

/// Serves one upgraded connection until it ends.
pub(crate) async fn run(socket: WebSocket, hub: Arc<Hub>, query: Query, covered: u64) {
    let (mut sink, stream) = socket.split();
    let last_heard = Arc::new(AtomicI64::new(now_ms()));
    let (ctl_tx, ctl_rx) = mpsc::channel(4);
    let reader = tokio::spawn(read_client(stream, ctl_tx, Arc::clone(&last_heard)));
    let mut s = Session {
        write_timeout: Duration::from_secs(hub.config.write_timeout_secs.max(1)),
        hub,
        filter: query.filter,
        max_size: query.max_message_size,
        compress: query.compress,
        covered,
        unflushed: (0, 0),
    };
    let close = s
        .serve(&mut sink, ctl_rx, query.require_hello, &last_heard)
        .await;
    reader.abort();
    metrics::counter!("fpaas_subscribe_closed_total", "reason" => close.reason).increment(1);
    tracing::debug!(
        reason = close.reason,
        covered = s.covered,
        "subscribe: connection closed"
    );
    if let Some((code, text)) = close.frame {
        let frame = CloseFrame {
            code,
            reason: truncate(&text, 123).into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// At most `max` bytes of `s`, cut on a character boundary (close reasons are limited to 123 bytes).
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

async fn read_client(
    mut stream: futures::stream::SplitStream<WebSocket>,
    ctl: mpsc::Sender<Ctl>,
    last_heard: Arc<AtomicI64>,
) {
    while let Some(msg) = stream.next().await {
        last_heard.store(now_ms(), Ordering::Relaxed);
        match msg {
            Ok(Message::Text(text)) => match parse_message(&text) {
                Ok(Some(update)) => {
                    if ctl.send(Ctl::Update(update)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => tracing::debug!("subscribe: ignoring a message of another type"),
                Err(e) => {
                    let _ = ctl.send(Ctl::Refuse(e.close_code(), e.to_string())).await;
                    return;
                }
            },
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => {
                let text = e.to_string();
                if text.contains("too long") || text.contains("Space limit") {
                    let _ = ctl
                        .send(Ctl::Refuse(1009, "message too big".to_owned()))
                        .await;
                    return;
                }
                break;
            }
        }
    }
    let _ = ctl.send(Ctl::Gone).await;
}

type Sink = SplitSink<WebSocket, Message>;

/// What a source yielded.
enum Step {
    /// An event after `covered` (or a live one that may be at or below it: skipped). `caught_up`: a catch-up
    /// reader had nothing more behind it.
    Event(Arc<WireEvent>, bool),
    /// A message that is not sent (a `sync` event, or not an event at all), with the same `caught_up`.
    Skip(u64, bool),
    /// The live ring overran this client.
    Lagged,
    /// A catch-up reader had nothing for a while.
    Timeout,
}
impl Session {
    async fn serve(
        &mut self,
        sink: &mut Sink,
        mut ctl: mpsc::Receiver<Ctl>,
        mut hello_pending: bool,
        last_heard: &AtomicI64,
    ) -> Close {
        let ping_every = Duration::from_secs(self.hub.config.ping_interval_secs.max(1));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut source = if hello_pending {
            None
        } else {
            Some(self.start())
        };
        let cancel = self.hub.cancel.clone();
        loop {
            let step = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Close::with("shutdown", 1001, "server shutting down"),
                c = ctl.recv() => match c {
                    Some(Ctl::Update(u)) => {
                        self.filter = u.filter;
                        if let Some(m) = u.max_message_size {
                            self.max_size = m;
                        }
                        if hello_pending {
                            hello_pending = false;
                            source = Some(self.start());
                        } else if matches!(source, Some(Source::CatchUp { .. } | Source::Joining { .. })) {
                            // The catch-up reader's subjects come from the filter: open it again from `covered`.
                            source = Some(self.catch_up());
                        }
                        continue;
                    }
                    Some(Ctl::Refuse(code, text)) => return Close::with("bad_message", code, text),
                    Some(Ctl::Gone) | None => return Close::quiet("client"),
                },
                _ = ping.tick() => {
                    let silent_ms = now_ms() - last_heard.load(Ordering::Relaxed);
                    if silent_ms > 3 * i64::try_from(ping_every.as_millis()).unwrap_or(i64::MAX) {
                        return Close::with("ping_timeout", 1008, "no answer to pings");
                    }
                    if let Err(c) = self.write(sink, Message::Ping(bytes::Bytes::new())).await {
                        return c;
                    }
                    continue;
                }
                step = next_step(source.as_mut()), if source.is_some() => step,
            };
            let step = match step {
                Ok(step) => step,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribe: reading failed; reading on");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let caught_up = match step {
                Step::Event(ev, caught_up) => {
                    if let Err(c) = self.deliver(sink, &ev).await {
                        return c;
                    }
                    // Take what else the ring holds right now, then write it in one go.
                    let mut lagged = false;
                    if let Some(Source::Live(rx)) = source.as_mut() {
                        for _ in 0..WRITE_BATCH {
                            match rx.try_recv() {
                                Ok(ev) => {
                                    if let Err(c) = self.deliver(sink, &ev).await {
                                        return c;
                                    }
                                }
                                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                    lagged = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    let live = matches!(source, Some(Source::Live(_)));
                    if (live || caught_up || self.unflushed.0 >= WRITE_BATCH as u64)
                        && let Err(c) = self.flush(sink).await
                    {
                        return c;
                    }
                    if lagged {
                        metrics::counter!("fpaas_subscribe_catchups_total").increment(1);
                        if let Err(c) = self.check_retention().await {
                            return c;
                        }
                        source = Some(self.catch_up());
                    }
                    caught_up
                }
                Step::Skip(seq, caught_up) => {
                    self.covered = self.covered.max(seq);
                    if caught_up && let Err(c) = self.flush(sink).await {
                        return c;
                    }
                    caught_up
                }
                Step::Lagged => {
                    metrics::counter!("fpaas_subscribe_catchups_total").increment(1);
                    if let Err(c) = self.check_retention().await {
                        return c;
                    }
                    source = Some(self.catch_up());
                    false
                }
                Step::Timeout => {
                    if let Err(c) = self.flush(sink).await {
                        return c;
                    }
                    if let Some(Source::CatchUp { checked, .. }) = source.as_mut()
                        && checked.elapsed() > RETENTION_CHECK
                    {
                        *checked = Instant::now();
                        if let Err(c) = self.check_retention().await {
                            return c;
                        }
                    }
                    true
                }
            };
            if let Some(next) = source.take() {
                source = Some(match self.advance(next, caught_up).await {
                    Ok(s) => s,
                    Err((s, e)) => {
                        tracing::warn!(error = %e, "subscribe: join check failed");
                        s
                    }
                });
            }
        }
    }

    /// Moves a catch-up reader towards the ring: a reader with nothing behind it subscribes to the ring; a
    /// joining reader switches to it once it has covered the ring's start.
    async fn advance(
        &mut self,
        source: Source,
        caught_up: bool,
    ) -> Result<Source, (Source, BusError)> {
        match source {
            Source::CatchUp { tail, .. } if caught_up && self.hub.is_started() => {
                let rx = self.hub.subscribe();
                let r = self.hub.position();
                if r <= self.covered {
                    Ok(Source::Live(rx))
                } else {
                    Ok(Source::Joining { tail, rx, r })
                }
            }
            Source::Joining { tail, rx, r } => {
                if self.covered >= r {
                    return Ok(Source::Live(rx));
                }
                if !caught_up {
                    return Ok(Source::Joining { tail, rx, r });
                }
                // The tail is idle below `r`: join if nothing this client wants lies in (covered, r].
                let next = next_seq_matching(
                    &self.hub.client,
                    &self.hub.config.stream,
                    &self.filter.subjects(),
                    self.covered + 1,
                )
                .await;
                match next {
                    Ok(n) if n.is_none_or(|q| q > r) => {
                        self.covered = r;
                        Ok(Source::Live(rx))
                    }
                    Ok(_) => Ok(Source::Joining { tail, rx, r }),
                    Err(e) => Err((Source::Joining { tail, rx, r }, e)),
                }
            }
            other => Ok(other),
        }
    }

    /// The first source: the shared ring at once when the reader has not passed `covered` (a live client),
    /// else an own reader from `covered`.
    fn start(&self) -> Source {
        if self.hub.is_started() {
            let rx = self.hub.subscribe();
            if self.hub.position() <= self.covered {
                return Source::Live(rx);
            }
        }
        self.catch_up()
    }

    fn catch_up(&self) -> Source {
        Source::CatchUp {
            tail: StreamTail::new(
                &self.hub.client,
                &self.hub.config.stream,
                From::Seq(self.covered + 1),
                self.filter.subjects(),
            ),
            checked: Instant::now(),
        }
    }

    /// Closes the connection when the stream no longer holds the next event this client needs.
    async fn check_retention(&self) -> Result<(), Close> {
        match stream_bounds(&self.hub.client, &self.hub.config.stream).await {
            Ok(b) if b.first_seq > self.covered + 1 && b.messages > 0 => {
                metrics::counter!("fpaas_subscribe_retention_closes_total").increment(1);
                Err(Close::with(
                    "retention",
                    1008,
                    "fell behind stream retention: reconnect with a cursor",
                ))
            }
            _ => Ok(()),
        }
    }

    async fn deliver(&mut self, sink: &mut Sink, ev: &WireEvent) -> Result<(), Close> {
        if ev.seq <= self.covered {
            return Ok(());
        }
        self.covered = ev.seq;
        if !self.filter.wants(ev.kind, &ev.did, &ev.collection)
            || (self.max_size > 0 && ev.json.len() as u64 > self.max_size)
        {
            return Ok(());
        }
        let msg = if self.compress {
            match ev.zstd() {
                Ok(z) => Message::Binary(z),
                Err(e) => {
                    tracing::error!(error = %e, "subscribe: compression failed");
                    return Err(Close::with("error", 1011, "internal error"));
                }
            }
        } else {
            Message::Text(ev.text.clone())
        };
        let len = match &msg {
            Message::Binary(b) => b.len(),
            _ => ev.json.len(),
        };
        // Queued in the connection's write buffer; `flush` writes (and counts) what is queued.
        match tokio::time::timeout(self.write_timeout, sink.feed(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Close::quiet("client")),
            Err(_) => return Err(Close::quiet("write_timeout")),
        }
        self.unflushed.0 += 1;
        self.unflushed.1 += len as u64;
        Ok(())
    }

    /// Writes what is queued to the socket, waiting at most the write timeout.
    async fn flush(&mut self, sink: &mut Sink) -> Result<(), Close> {
        if self.unflushed.0 == 0 {
            return Ok(());
        }
        match tokio::time::timeout(self.write_timeout, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Close::quiet("client")),
            Err(_) => return Err(Close::quiet("write_timeout")),
        }
        let (events, bytes) = std::mem::take(&mut self.unflushed);
        metrics::counter!("fpaas_subscribe_events_sent_total").increment(events);
        metrics::counter!("fpaas_subscribe_sent_bytes_total").increment(bytes);
        Ok(())
    }

    async fn write(&self, sink: &mut Sink, msg: Message) -> Result<(), Close> {
        match tokio::time::timeout(self.write_timeout, sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close::quiet("client")),
            Err(_) => Err(Close::quiet("write_timeout")),
        }
    }
}

/// The next thing a source has.
async fn next_step(source: Option<&mut Source>) -> Result<Step, BusError> {
    let tail = match source {
        None => return std::future::pending().await,
        Some(Source::Live(rx)) => {
            return match rx.recv().await {
                Ok(ev) => Ok(Step::Event(ev, false)),
                Err(broadcast::error::RecvError::Lagged(_)) => Ok(Step::Lagged),
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            };
        }
        Some(Source::CatchUp { tail, .. } | Source::Joining { tail, .. }) => tail,
    };
    let Some(m) = tail.next(Duration::from_millis(500)).await? else {
        return Ok(Step::Timeout);
    };
    let caught_up = m.pending == 0;
    match wire::to_v1(m.seq, m.stored_us, &m.payload) {
        Ok(Some(ev)) => Ok(Step::Event(Arc::new(ev), caught_up)),
        Ok(None) => Ok(Step::Skip(m.seq, caught_up)),
        Err(e) => {
            metrics::counter!("fpaas_subscribe_drops_total", "reason" => "not_an_event")
                .increment(1);
            tracing::warn!(seq = m.seq, error = %e, "subscribe: skipping a message that is not an event");
            Ok(Step::Skip(m.seq, caught_up))
        }
    }
}
