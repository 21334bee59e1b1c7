//! The shared live reader of a node: one [`StreamTail`] at the live edge of the firehose stream turns each
//! message into a [`WireEvent`] once and offers it on a bounded broadcast ring that every live client reads
//! from. The ring is shared, so a client's memory cost is its place in the ring, not a copy; a client that
//! falls a whole ring behind gets `Lagged` and reads on from its own catch-up reader instead, so it never
//! slows the reader or another client.
//!
//! Join rule: the reader stores its position *before* it offers an event. A client that subscribes to the
//! ring and then reads [`Hub::position`] = `R` will find every event after `R` on the ring; it covers events
//! up to `R` itself (see `session`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use fpaas_bus::tail::{From, StreamTail, stream_bounds};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::SubscribeConfig;
use crate::wire::{self, WireEvent};

/// The node's shared reader, its ring and the connection count.
#[derive(Debug)]
pub struct Hub {
    pub(crate) client: fpaas_bus::Client,
    pub(crate) config: SubscribeConfig,
    tx: broadcast::Sender<Arc<WireEvent>>,
    position: AtomicU64,
    started: AtomicU64,
    pub(crate) connections: AtomicUsize,
    pub(crate) cancel: CancellationToken,
}

impl Hub {
    /// Starts the shared reader of `config.stream` on `client`; it stops when `cancel` is cancelled.
    pub fn start(
        client: fpaas_bus::Client,
        config: SubscribeConfig,
        cancel: CancellationToken,
    ) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(config.buffer_events.max(16));
        let hub = Arc::new(Hub {
            client,
            config,
            tx,
            position: AtomicU64::new(0),
            started: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            cancel,
        });
        crate::metrics::register();
        tokio::spawn(Arc::clone(&hub).run());
        hub
    }

    /// A receiver of every event offered from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<WireEvent>> {
        self.tx.subscribe()
    }

    /// The last stream sequence the reader has processed (0 until it has started).
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::SeqCst)
    }

    /// Whether the reader has found the stream and started reading.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst) == 1
    }

    /// Open `/subscribe` connections on this node.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    async fn run(self: Arc<Self>) {
        let stream = self.config.stream.clone();
        let start = loop {
            match stream_bounds(&self.client, &stream).await {
                Ok(b) => break b.last_seq,
                Err(e) => {
                    tracing::warn!(error = %e, stream, "subscribe: stream not readable yet");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        self.position.store(start, Ordering::SeqCst);
        self.started.store(1, Ordering::SeqCst);
        tracing::info!(stream, position = start, "subscribe: shared reader started");
        let mut tail = StreamTail::new(&self.client, &stream, From::Seq(start + 1), Vec::new());
        let mut backoff = Duration::from_millis(100);
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return,
                n = tail.next(Duration::from_secs(1)) => n,
            };
            match next {
                Ok(Some(m)) => {
                    backoff = Duration::from_millis(100);
                    let event = wire::to_v1(m.seq, m.stored_us, &m.payload);
                    self.position.store(m.seq, Ordering::SeqCst);
                    match event {
                        Ok(Some(ev)) => {
                            // No receiver is not an error: nobody is live right now.
                            let _ = self.tx.send(Arc::new(ev));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            metrics::counter!("fpaas_subscribe_drops_total", "reason" => "not_an_event").increment(1);
                            tracing::warn!(seq = m.seq, error = %e, "subscribe: skipping a message that is not an event");
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "subscribe: shared reader failed; reading on");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
