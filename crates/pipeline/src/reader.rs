//! The shared reader: one in-order reader of the firehose stream per worker, at the live edge, matching
//! every event against the index of the subscriptions that are *live* (caught up) and handing each match to
//! that subscription's bounded queue. It never waits for a subscription: a full queue drops the
//! subscription out of the live set (it catches up on its own reader and joins again), so a slow receiver
//! never slows another. Subscriptions join with [`Ctrl::Join`]; the reply is the reader's position, and
//! from then on every matching event after it is queued (the subscription covers the gap up to that
//! position itself).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fpaas_bus::tail::{From, StreamTail, stream_bounds};
use fpaas_filter::Index;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::event::StreamEvent;
use crate::sub::SubConfig;

/// What a live subscription's queue carries, in stream order.
#[derive(Debug)]
pub enum Feed {
    /// A matching event.
    Event(Arc<StreamEvent>),
    /// The reader has processed every event up to this sequence: all matches up to it were queued before.
    Tick(u64),
}

/// Requests to the reader.
#[derive(Debug)]
pub enum Ctrl {
    /// Add a caught-up subscription; the reply is the reader's position (the last sequence it processed):
    /// matches after it are queued on `tx`.
    Join {
        /// The subscription.
        sub: Arc<SubConfig>,
        /// Its queue.
        tx: mpsc::Sender<Feed>,
        /// Where the position goes.
        reply: oneshot::Sender<u64>,
    },
    /// Remove a subscription (stopped, paused, edited, moved to another worker).
    Leave {
        /// Subscription id.
        id: String,
    },
}

struct Slot {
    sub: Arc<SubConfig>,
    tx: mpsc::Sender<Feed>,
}

/// How often live subscriptions are told the reader's position when nothing matches them.
const TICK_EVERY: Duration = Duration::from_millis(500);

/// The reader's state, readable by the rest of the worker.
#[derive(Debug, Default)]
pub struct ReaderState {
    /// Last stream sequence processed.
    pub position: AtomicU64,
    /// Subscriptions in the live set.
    pub live: AtomicU64,
}

/// Runs the shared reader of `stream` until `cancel`.
pub async fn run(
    client: fpaas_bus::Client,
    stream: String,
    mut ctrl: mpsc::Receiver<Ctrl>,
    state: Arc<ReaderState>,
    cancel: CancellationToken,
) {
    let start = loop {
        match stream_bounds(&client, &stream).await {
            Ok(b) => break b.last_seq,
            Err(e) => {
                tracing::warn!(error = %e, stream, "shared reader: stream not readable yet");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    };
    state.position.store(start, Ordering::Release);
    let mut tail = StreamTail::new(&client, &stream, From::Seq(start + 1), Vec::new());
    let mut index: Index<Arc<str>> = Index::new();
    let mut slots: HashMap<Arc<str>, Slot> = HashMap::new();
    let mut last_tick = Instant::now();
    let fell_behind = metrics::counter!("fpaas_pipeline_fell_behind_total");
    let unreadable = metrics::counter!("fpaas_pipeline_unreadable_events_total");
    loop {
        // Control first, so a join is answered with the position before the next event.
        while let Ok(c) = ctrl.try_recv() {
            apply(c, &mut index, &mut slots, &state);
        }
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            c = ctrl.recv() => {
                match c {
                    Some(c) => apply(c, &mut index, &mut slots, &state),
                    None => return,
                }
                continue;
            }
            next = tail.next(Duration::from_millis(200)) => next,
        };
        match next {
            Ok(Some(msg)) => {
                state.position.store(msg.seq, Ordering::Release);
                let Some(event) = StreamEvent::from_msg(&msg) else {
                    unreadable.increment(1);
                    continue;
                };
                let candidates = index.candidates(&event.key());
                if candidates.is_empty() {
                    continue;
                }
                let event = Arc::new(event);
                for id in candidates {
                    let Some(slot) = slots.get(&id) else { continue };
                    if !slot.sub.predicate_matches(&event) {
                        continue;
                    }
                    match slot.tx.try_send(Feed::Event(event.clone())) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            fell_behind.increment(1);
                            tracing::debug!(subscription = %id, seq = msg.seq, "queue full: catching up on its own");
                            remove(&id, &mut index, &mut slots, &state);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            remove(&id, &mut index, &mut slots, &state);
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, stream, "shared reader: read failed; resuming");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
        if last_tick.elapsed() >= TICK_EVERY {
            last_tick = Instant::now();
            let position = state.position.load(Ordering::Acquire);
            let mut closed = Vec::new();
            for (id, slot) in &slots {
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    slot.tx.try_send(Feed::Tick(position))
                {
                    closed.push(id.clone());
                }
            }
            for id in closed {
                remove(&id, &mut index, &mut slots, &state);
            }
        }
    }
}

fn apply(
    c: Ctrl,
    index: &mut Index<Arc<str>>,
    slots: &mut HashMap<Arc<str>, Slot>,
    state: &ReaderState,
) {
    match c {
        Ctrl::Join { sub, tx, reply } => {
            let id: Arc<str> = Arc::from(sub.id.as_str());
            remove(&id, index, slots, state);
            index.insert_compiled(id.clone(), sub.compiled.clone());
            slots.insert(id, Slot { sub, tx });
            state.live.store(slots.len() as u64, Ordering::Relaxed);
            let _ = reply.send(state.position.load(Ordering::Acquire));
        }
        Ctrl::Leave { id } => remove(&id, index, slots, state),
    }
}

fn remove(
    id: &str,
    index: &mut Index<Arc<str>>,
    slots: &mut HashMap<Arc<str>, Slot>,
    state: &ReaderState,
) {
    if let Some((key, _)) = slots.remove_entry(id) {
        index.remove(&key);
    }
    state.live.store(slots.len() as u64, Ordering::Relaxed);
}
