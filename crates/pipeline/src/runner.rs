//! One subscription's runner: from its saved progress it first finishes a batch that was in flight
//! (same events, same id), then catches up on a reader of its own (server-side subject filters, so it reads
//! only what its collections can match), joins the shared reader near the live edge, and falls back to
//! catching up whenever its queue overflowed. Everything it matches goes through the batcher and is
//! delivered one batch at a time, in stream order; progress moves only after the receiver accepted a batch
//! (or it was dead-lettered).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fpaas_bus::tail::{From, StreamTail, first_seq_at_or_after, next_seq_matching, stream_bounds};
use fpaas_bus::{Backoff, BusError, KvWrite};
use fpaas_control::{PendingBatch, Progress, SubState, Subscription, layout};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Batcher, Item};
use crate::collect::{Added, CollectState, Collector, Output};
use crate::event::StreamEvent;
use crate::reader::{Ctrl, Feed};
use crate::stats::SubCounters;
use crate::sub::{Start, SubConfig, Transformed};
use crate::worker::Shared;

/// How long a read waits before the runner looks at its batch deadline again.
const READ_WAIT: Duration = Duration::from_millis(100);
/// Longest wait for the stream's answer to "the next message on my subjects from sequence N".
const GAP_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle progress (no match for a while) is saved at most this often: with 10,000 subscriptions, every 5 s
/// would be 2,000 KV writes a second for positions that a restart re-scans in one request.
const IDLE_SAVE_EVERY: Duration = Duration::from_secs(30);
/// A collector's windows are saved at most this often while events flow (and whenever it emitted): a restart
/// replays at most this much of the stream.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// A collector's saved windows: the state and the stream position it reflects, in one blob (so they never
/// disagree), with the number of outputs emitted so far (for the ids of output batches).
/// Outputs of windows closed by the wall clock (an idle source) are saved before they are delivered: a replay
/// could close those windows differently, so the decision must survive a crash.
#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    position: u64,
    emitted: u64,
    state: &'a CollectState,
    #[serde(skip_serializing_if = "<[Output]>::is_empty")]
    outbox: &'a [Output],
}

#[derive(serde::Deserialize)]
struct Snapshot {
    position: u64,
    emitted: u64,
    state: CollectState,
    #[serde(default)]
    outbox: Vec<Output>,
}

/// A collecting runner's stage: the collector, its outputs waiting to be delivered, and when it last saved.
struct Collecting {
    collector: Collector,
    outbox: Vec<Output>,
    outbox_since: Option<Instant>,
    emitted: u64,
    last_event: Instant,
    last_checkpoint: Instant,
    saved_at: u64,
    dirty: bool,
    /// The outbox holds outputs of an idle close, to be saved before they are delivered.
    save_outbox_first: bool,
}

/// How often a pull subscription at its bound of waiting batches looks again: from this …
const PULL_ROOM_POLL_MIN: Duration = Duration::from_millis(100);
/// … backing off to this (one subject count per look; only subscriptions at their bound look).
const PULL_ROOM_POLL_MAX: Duration = Duration::from_secs(1);

/// Why a runner stopped for good.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Cancelled (worker shutdown, subscription changed, paused, deleted or moved).
    Cancelled,
    /// The receiver answered 410 Gone: the subscription was disabled.
    Disabled,
}

/// A failure that makes the runner start over from its saved progress.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("progress of {0} is not readable: {1}")]
    BadProgress(String, String),
}

enum Step {
    Stop(Stop),
    Continue,
}

pub(crate) struct Runner {
    pub(crate) sub: Arc<SubConfig>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) counters: Arc<SubCounters>,
    pub(crate) cancel: CancellationToken,
    progress: Progress,
    last_saved: Instant,
    collecting: Option<Collecting>,
}

impl Runner {
    pub(crate) fn new(
        sub: Arc<SubConfig>,
        shared: Arc<Shared>,
        counters: Arc<SubCounters>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            sub,
            shared,
            counters,
            cancel,
            progress: Progress::default(),
            last_saved: Instant::now(),
            collecting: None,
        }
    }

    /// Runs until cancelled or disabled; failures start over from the saved progress after a backoff.
    pub(crate) async fn run(mut self) -> Stop {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let result = self.run_once().await;
            self.leave().await;
            match result {
                Ok(stop) => return stop,
                Err(e) => {
                    tracing::warn!(subscription = %self.sub.id, error = %e, "runner failed; starting over from saved progress");
                    let delay = backoff.next_delay();
                    tokio::select! {
                        () = self.cancel.cancelled() => return Stop::Cancelled,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn leave(&self) {
        let _ = self
            .shared
            .reader_ctrl
            .send(Ctrl::Leave {
                id: self.sub.id.clone(),
            })
            .await;
    }

    async fn run_once(&mut self) -> Result<Stop, RunError> {
        self.progress = Box::pin(self.load_progress()).await?;
        if self.sub.collect.is_some() {
            Box::pin(self.load_collector()).await?;
        }
        self.counters
            .acked_seq
            .store(self.progress.acked_seq, Ordering::Relaxed);
        if let Some(pending) = self.progress.pending.clone()
            && let Step::Stop(s) = Box::pin(self.redeliver(pending)).await?
        {
            return Ok(s);
        }
        let mut batcher = Batcher::new(
            &self.sub.id,
            self.sub.generation,
            self.sub.limits,
            self.progress.acked_seq,
        );
        loop {
            let rx = match Box::pin(self.catch_up(&mut batcher)).await? {
                CatchUp::Stop(s) => return Ok(s),
                CatchUp::Live(rx) => rx,
            };
            if let Step::Stop(s) = self.live(&mut batcher, rx).await? {
                return Ok(s);
            }
        }
    }

    /// A collecting subscription's stage: its saved windows and the position they reflect replace the
    /// progress record's position (which is only written after them); without a snapshot, or one of a changed
    /// collector, it starts empty at the recorded position.
    async fn load_collector(&mut self) -> Result<(), RunError> {
        let Some(spec) = &self.sub.collect else {
            return Ok(());
        };
        let mut collector = Collector::new(spec)
            .map_err(|e| RunError::BadProgress(self.sub.id.clone(), format!("collector: {e}")))?;
        let mut emitted = 0;
        let mut outbox = Vec::new();
        if let Some(bytes) = self.shared.collect.get(&self.sub.id).await? {
            let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
                RunError::BadProgress(self.sub.id.clone(), format!("collector: {e}"))
            })?;
            if collector.restore(snapshot.state) {
                self.progress.acked_seq = snapshot.position;
                emitted = snapshot.emitted;
                outbox = snapshot.outbox;
            } else {
                tracing::info!(subscription = %self.sub.id, "collector changed; its windows start empty");
            }
        }
        // A collector delivers what it emits, never a range of the stream: nothing to redeliver.
        self.progress.pending = None;
        self.collecting = Some(Collecting {
            collector,
            outbox_since: (!outbox.is_empty()).then(Instant::now),
            outbox,
            emitted,
            last_event: Instant::now(),
            last_checkpoint: Instant::now(),
            saved_at: self.progress.acked_seq,
            dirty: false,
            save_outbox_first: false,
        });
        Ok(())
    }

    /// Counts a matched event in the collector (its outputs wait in the outbox).
    fn collect_event(&mut self, batcher: &mut Batcher, event: &StreamEvent) {
        self.counters.matched.fetch_add(1, Ordering::Relaxed);
        let data = self.sub.transform_data(event);
        let Some(c) = self.collecting.as_mut() else {
            return;
        };
        match data {
            Ok(data) => {
                let before = c.outbox.len();
                match c.collector.add(&data, event.time_us, &mut c.outbox) {
                    Added::Counted => {}
                    Added::Late => {
                        metrics::counter!("fpaas_pipeline_collect_late_events_total").increment(1);
                    }
                    Added::Skipped => {
                        metrics::counter!("fpaas_pipeline_collect_skipped_events_total")
                            .increment(1);
                    }
                }
                if c.outbox.len() > before && c.outbox_since.is_none() {
                    c.outbox_since = Some(Instant::now());
                }
                c.last_event = Instant::now();
                c.dirty = true;
            }
            Err(reason) => {
                self.counters
                    .transform_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(subscription = %self.sub.id, seq = event.seq, reason, "transform failed; event skipped");
            }
        }
        batcher.scanned(event.seq);
    }

    /// At the live edge with no event for the lateness bound: the watermark moves on with the wall clock
    /// (an idle source would otherwise hold its last windows open for ever).
    fn collect_idle(&mut self) {
        let Some(c) = self.collecting.as_mut() else {
            return;
        };
        let quiet = Duration::from_millis(
            self.sub
                .collect
                .as_ref()
                .map_or(0, |spec| spec.window.lateness_ms())
                .max(1_000),
        );
        if c.collector.is_empty() || c.last_event.elapsed() < quiet {
            return;
        }
        let before = c.outbox.len();
        let quiet_ms = i64::try_from(c.last_event.elapsed().as_millis()).unwrap_or(i64::MAX);
        c.collector.idle(quiet_ms, &mut c.outbox);
        if c.outbox.len() > before {
            c.dirty = true;
            c.save_outbox_first = true;
            if c.outbox_since.is_none() {
                c.outbox_since = Some(Instant::now());
            }
        }
    }

    /// Whether the collector's outputs or its windows are due to be delivered and saved.
    fn collect_due(&self, batcher: &Batcher) -> bool {
        let Some(c) = &self.collecting else {
            return false;
        };
        let out_due = c.outbox.len() >= self.sub.limits.max_events
            || c.outbox_since
                .is_some_and(|t| t.elapsed() >= self.sub.limits.max_wait);
        let save_due = (c.dirty || batcher.scanned_to() > c.saved_at)
            && c.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        out_due || save_due
    }

    /// Delivers the collector's outputs (in batches within the subscription's limits), then saves its windows
    /// with the position they reflect, then the progress record. A crash before the save replays from the
    /// last one: the same events close the same windows, whose outputs carry the same ids.
    async fn checkpoint(&mut self, batcher: &Batcher) -> Result<Step, RunError> {
        let position = batcher.scanned_to();
        if self
            .collecting
            .as_ref()
            .is_some_and(|c| c.save_outbox_first)
        {
            if let Step::Stop(s) = self.save_snapshot(position, true).await? {
                return Ok(Step::Stop(s));
            }
            if let Some(c) = self.collecting.as_mut() {
                c.save_outbox_first = false;
            }
        }
        let (outputs, first_no) = match self.collecting.as_mut() {
            Some(c) => {
                c.outbox_since = None;
                (std::mem::take(&mut c.outbox), c.emitted)
            }
            None => return Ok(Step::Continue),
        };
        let mut no = first_no;
        let mut rest: &[Output] = &outputs;
        while !rest.is_empty() {
            let mut bytes = 0;
            let mut n = 0;
            for o in rest {
                if n > 0
                    && (n >= self.sub.limits.max_events
                        || bytes + o.data.len() + 256 > self.sub.limits.max_bytes)
                {
                    break;
                }
                bytes += o.data.len() + 256;
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let items: Vec<Item> = chunk
                .iter()
                .map(|o| Item {
                    seq: position,
                    id: o.id.clone(),
                    time_us: o.time_us,
                    data: o.data.clone(),
                })
                .collect();
            let id = format!(
                "{}.o{}-{}.g{}",
                self.sub.id,
                no + 1,
                no + n as u64,
                self.sub.generation
            );
            no += n as u64;
            let batch = Batch {
                body: crate::batch::body(&self.sub.id, &id, &items),
                id,
                from_seq: position,
                to_seq: position,
                covers_to: position,
                events: items.len(),
                first_time_us: items[0].time_us,
            };
            metrics::counter!("fpaas_pipeline_collect_outputs_total").increment(n as u64);
            if let Step::Stop(s) = Box::pin(self.deliver_with(batch, 0, false)).await? {
                return Ok(Step::Stop(s));
            }
        }
        if let Some(c) = self.collecting.as_mut() {
            c.emitted = no;
        }
        if let Step::Stop(s) = self.save_snapshot(position, false).await? {
            return Ok(Step::Stop(s));
        }
        if let Some(c) = self.collecting.as_mut() {
            c.saved_at = position;
            c.dirty = false;
            c.last_checkpoint = Instant::now();
        }
        self.save_progress(Progress {
            acked_seq: position,
            pending: None,
        })
        .await?;
        Ok(Step::Continue)
    }

    /// Saves the collector's windows at `position` (with its outbox when `with_outbox`), retrying until it
    /// worked or the runner is stopped.
    async fn save_snapshot(&mut self, position: u64, with_outbox: bool) -> Result<Step, RunError> {
        let Some(c) = self.collecting.as_ref() else {
            return Ok(Step::Continue);
        };
        let bytes = serde_json::to_vec(&SnapshotRef {
            position,
            emitted: c.emitted,
            state: &c.collector.state,
            outbox: if with_outbox { &c.outbox } else { &[] },
        })
        .unwrap_or_default();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match self.shared.collect.put(&self.sub.id, &bytes).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(subscription = %self.sub.id, error = %e, "saving the collector's windows failed; retrying");
                    let delay = backoff.next_delay();
                    tokio::select! {
                        () = self.cancel.cancelled() => return Ok(Step::Stop(Stop::Cancelled)),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        metrics::counter!("fpaas_pipeline_collect_checkpoints_total").increment(1);
        metrics::gauge!("fpaas_pipeline_collect_snapshot_bytes").set(bytes.len() as f64);
        Ok(Step::Continue)
    }

    /// The saved progress, or a new one from the subscription's start.
    async fn load_progress(&self) -> Result<Progress, RunError> {
        let key = layout::progress_key(&self.sub.id);
        if let Some(bytes) = self.shared.progress.get(&key).await? {
            return serde_json::from_slice(&bytes)
                .map_err(|e| RunError::BadProgress(self.sub.id.clone(), e.to_string()));
        }
        let client = &self.shared.client;
        let stream = self.stream();
        let first = match &self.sub.start {
            Start::Live => stream_bounds(client, stream).await?.last_seq + 1,
            Start::RetentionStart => stream_bounds(client, stream).await?.first_seq,
            Start::Time(t) => first_seq_at_or_after(client, stream, t).await?,
            Start::Seq(s) => *s,
        };
        let progress = Progress {
            acked_seq: first.saturating_sub(1),
            pending: None,
        };
        // Only the first writer fixes the start; a concurrent owner's value wins.
        let bytes = serde_json::to_vec(&progress).unwrap_or_default();
        match self.shared.progress.create(&key, bytes.into()).await? {
            KvWrite::Written(_) => Ok(progress),
            _ => match self.shared.progress.get(&key).await? {
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| RunError::BadProgress(self.sub.id.clone(), e.to_string())),
                None => Ok(progress),
            },
        }
    }

    async fn save_progress(&mut self, progress: Progress) -> Result<(), RunError> {
        let key = layout::progress_key(&self.sub.id);
        let bytes = serde_json::to_vec(&progress).unwrap_or_default();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match self.shared.progress.put(&key, bytes.clone().into()).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(subscription = %self.sub.id, error = %e, "saving progress failed; retrying");
                    let delay = backoff.next_delay();
                    tokio::select! {
                        () = self.cancel.cancelled() => return Err(RunError::Bus(e)),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.counters
            .acked_seq
            .store(progress.acked_seq, Ordering::Relaxed);
        self.progress = progress;
        self.last_saved = Instant::now();
        Ok(())
    }

    /// Moves progress over events that matched nothing (so a restart does not re-read them): in the counters
    /// (lag) at once, in the progress bucket at most every [`IDLE_SAVE_EVERY`].
    async fn save_idle(&mut self, batcher: &Batcher) -> Result<(), RunError> {
        if !batcher.is_empty() || batcher.scanned_to() <= self.progress.acked_seq {
            return Ok(());
        }
        if self.collecting.is_some() {
            // Its position is saved only with its windows (a checkpoint); the lag shows it at once.
            self.counters
                .acked_seq
                .store(batcher.scanned_to(), Ordering::Relaxed);
            return Ok(());
        }
        // Nothing waits: everything up to `scanned_to` is accounted for, which the lag shows at once; the
        // bucket is written less often (an older saved position only means a short re-scan after a restart).
        self.counters
            .acked_seq
            .store(batcher.scanned_to(), Ordering::Relaxed);
        if self.last_saved.elapsed() >= IDLE_SAVE_EVERY {
            // Boxed: the KV write's future would otherwise be part of every idle runner's task.
            Box::pin(self.save_progress(Progress {
                acked_seq: batcher.scanned_to(),
                pending: None,
            }))
            .await?;
        }
        Ok(())
    }

    /// Finishes the batch that was in flight when the last owner stopped: the same range, the same id.
    async fn redeliver(&mut self, pending: PendingBatch) -> Result<Step, RunError> {
        let mut tail = StreamTail::new(
            &self.shared.client,
            self.stream(),
            From::Seq(pending.from_seq),
            self.sub.subject_filters(),
        );
        let mut items = Vec::new();
        'read: loop {
            let msg = tokio::select! {
                () = self.cancel.cancelled() => return Ok(Step::Stop(Stop::Cancelled)),
                m = tail.next(Duration::from_secs(1)) => m?,
            };
            let Some(msg) = msg else {
                // Nothing more up to `to_seq` (the rest was removed by retention, or never matched).
                match next_seq_matching(
                    &self.shared.client,
                    self.stream(),
                    &self.sub.subject_filters(),
                    tail.position().max(pending.from_seq),
                )
                .await?
                {
                    Some(s) if s <= pending.to_seq => continue 'read,
                    _ => break 'read,
                }
            };
            if msg.seq > pending.to_seq {
                break;
            }
            if let Some(event) = self.event_of(&msg)
                && self.sub.matches(&event)
                && let Transformed::Item(item) = self.sub.transform(&event)
            {
                items.push(item);
            }
            if msg.pending == 0 {
                break;
            }
        }
        if items.is_empty() {
            self.save_progress(Progress {
                acked_seq: pending.to_seq.max(self.progress.acked_seq),
                pending: None,
            })
            .await?;
            return Ok(Step::Continue);
        }
        let body = crate::batch::body(&self.sub.id, &pending.batch_id, &items);
        let batch = Batch {
            id: pending.batch_id.clone(),
            from_seq: items[0].seq,
            to_seq: items[items.len() - 1].seq,
            covers_to: pending.to_seq,
            events: items.len(),
            first_time_us: items[0].time_us,
            body,
        };
        self.counters
            .redelivered_batches
            .fetch_add(1, Ordering::Relaxed);
        self.deliver(batch, pending.attempt).await
    }

    /// Reads on its own from the saved position until it is at the live edge, then joins the shared
    /// reader.
    async fn catch_up(&mut self, batcher: &mut Batcher) -> Result<CatchUp, RunError> {
        let filters = self.sub.subject_filters();
        let mut tail = StreamTail::new(
            &self.shared.client,
            self.stream(),
            From::Seq(batcher.scanned_to() + 1),
            filters.clone(),
        );
        // After a join: the queue and the reader's position at the join; the tail must cover up to it.
        let mut joined: Option<(mpsc::Receiver<Feed>, u64)> = None;
        // Fast path, before any reader is opened: join at once, and when nothing on our subjects lies between
        // the saved position and the shared reader's, go live without a consumer of our own (a live start,
        // an idle subscription moved or restarted). Thousands of subscriptions then start without a consumer
        // each.
        let topic = self.sub.source_stream.is_some();
        if !topic && let Some((rx, joined_at)) = self.join().await {
            // Bounded: while the stream elects a leader the answer may take long; without it the runner
            // simply reads the gap on its own reader below.
            let gap_empty = joined_at <= batcher.scanned_to()
                || self
                    .nothing_between(&filters, batcher.scanned_to() + 1, joined_at)
                    .await;
            joined = Some((rx, joined_at));
            if gap_empty {
                batcher.scanned(joined_at);
                if let Some(rx) = self.switch(&mut joined) {
                    return Ok(CatchUp::Live(rx));
                }
            }
        }
        loop {
            if let Step::Stop(s) = self.flush_if_due(batcher).await? {
                return Ok(CatchUp::Stop(s));
            }
            let msg = tokio::select! {
                () = self.cancel.cancelled() => return Ok(CatchUp::Stop(Stop::Cancelled)),
                m = tail.next(READ_WAIT) => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(subscription = %self.sub.id, error = %e, "catch-up read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match msg {
                Some(msg) => {
                    if let Some((_, joined_at)) = &joined
                        && msg.seq > *joined_at
                    {
                        // Covered up to the join position; the queue has everything after it.
                        batcher.scanned(*joined_at);
                        if let Some(rx) = self.switch(&mut joined) {
                            return Ok(CatchUp::Live(rx));
                        }
                    }
                    if let Step::Stop(s) = self.consider(batcher, &msg).await? {
                        return Ok(CatchUp::Stop(s));
                    }
                    // A topic is read on this reader for good: the shared reader reads the firehose only.
                    if msg.pending == 0 && joined.is_none() && !topic {
                        joined = self.join().await;
                    }
                }
                None => {
                    self.collect_idle();
                    match &joined {
                        None if topic => {}
                        None => joined = self.join().await,
                        Some((_, joined_at)) => {
                            let joined_at = *joined_at;
                            // No answer in time: keep reading, ask again at the next idle read.
                            if self
                                .nothing_between(&filters, batcher.scanned_to() + 1, joined_at)
                                .await
                            {
                                batcher.scanned(joined_at);
                                if let Some(rx) = self.switch(&mut joined) {
                                    return Ok(CatchUp::Live(rx));
                                }
                            }
                        }
                    }
                    self.save_idle(batcher).await?;
                }
            }
        }
    }

    /// The queue after a join, unless the reader already dropped it (then keep catching up).
    fn switch(
        &self,
        joined: &mut Option<(mpsc::Receiver<Feed>, u64)>,
    ) -> Option<mpsc::Receiver<Feed>> {
        let (rx, _) = joined.take()?;
        if rx.is_closed() { None } else { Some(rx) }
    }

    /// Whether the stream holds nothing on `filters` from `from` up to `to` (bounded by [`GAP_CHECK_TIMEOUT`]:
    /// while the stream elects a leader the answer may take long, and no answer counts as "not known empty").
    async fn nothing_between(&self, filters: &[String], from: u64, to: u64) -> bool {
        let next = tokio::time::timeout(
            GAP_CHECK_TIMEOUT,
            next_seq_matching(&self.shared.client, self.stream(), filters, from),
        )
        .await;
        matches!(next, Ok(Ok(n)) if n.is_none_or(|n| n > to))
    }

    /// The stream this subscription reads: its topic's, or the firehose.
    fn stream(&self) -> &str {
        self.sub
            .source_stream
            .as_deref()
            .unwrap_or(&self.shared.stream)
    }

    /// The event of a message of [`Self::stream`].
    fn event_of(&self, msg: &fpaas_bus::tail::TailMsg) -> Option<StreamEvent> {
        if self.sub.source_stream.is_some() {
            Some(StreamEvent::from_topic_msg(msg))
        } else {
            StreamEvent::from_msg(msg)
        }
    }

    async fn join(&self) -> Option<(mpsc::Receiver<Feed>, u64)> {
        let (tx, rx) = mpsc::channel(self.shared.queue_capacity);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.shared
            .reader_ctrl
            .send(Ctrl::Join {
                sub: self.sub.clone(),
                tx,
                reply: reply_tx,
            })
            .await
            .ok()?;
        let at = reply_rx.await.ok()?;
        Some((rx, at))
    }

    async fn consider(
        &mut self,
        batcher: &mut Batcher,
        msg: &fpaas_bus::tail::TailMsg,
    ) -> Result<Step, RunError> {
        if msg.seq <= batcher.scanned_to() {
            return Ok(Step::Continue);
        }
        match self.event_of(msg) {
            Some(event) if self.sub.matches(&event) => self.add(batcher, &event).await,
            _ => {
                batcher.scanned(msg.seq);
                Ok(Step::Continue)
            }
        }
    }

    /// Adds a matched event to the batch (sending the batch first when the event would overflow it).
    async fn add(&mut self, batcher: &mut Batcher, event: &StreamEvent) -> Result<Step, RunError> {
        if self.collecting.is_some() {
            self.collect_event(batcher, event);
            if self
                .collecting
                .as_ref()
                .is_some_and(|c| c.outbox.len() >= self.sub.limits.max_events)
            {
                return Box::pin(self.checkpoint(batcher)).await;
            }
            return Ok(Step::Continue);
        }
        self.counters.matched.fetch_add(1, Ordering::Relaxed);
        match self.sub.transform(event) {
            Transformed::Item(item) => {
                if batcher.would_overflow(item.data.len())
                    && let Some(batch) = batcher.take()
                    && let Step::Stop(s) = Box::pin(self.deliver(batch, 0)).await?
                {
                    return Ok(Step::Stop(s));
                }
                batcher.push(item);
                Ok(Step::Continue)
            }
            Transformed::Failed(reason) => {
                self.counters
                    .transform_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(subscription = %self.sub.id, seq = event.seq, reason, "transform failed; event skipped");
                batcher.scanned(event.seq);
                Ok(Step::Continue)
            }
        }
    }

    /// Reads the shared reader's queue until it is closed (fell behind) or the runner stops.
    async fn live(
        &mut self,
        batcher: &mut Batcher,
        mut rx: mpsc::Receiver<Feed>,
    ) -> Result<Step, RunError> {
        loop {
            if let Step::Stop(s) = self.flush_if_due(batcher).await? {
                return Ok(Step::Stop(s));
            }
            let wait = batcher
                .deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1));
            let feed = tokio::select! {
                () = self.cancel.cancelled() => return Ok(Step::Stop(Stop::Cancelled)),
                f = tokio::time::timeout(wait, rx.recv()) => f,
            };
            match feed {
                Err(_) => self.collect_idle(),
                Ok(None) => {
                    self.counters.fell_behind.fetch_add(1, Ordering::Relaxed);
                    return Ok(Step::Continue);
                }
                Ok(Some(Feed::Tick(position))) => {
                    batcher.scanned(position);
                    self.collect_idle();
                    self.save_idle(batcher).await?;
                }
                Ok(Some(Feed::Event(event))) => {
                    if event.seq > batcher.scanned_to()
                        && let Step::Stop(s) = self.add(batcher, &event).await?
                    {
                        return Ok(Step::Stop(s));
                    }
                }
            }
        }
    }

    /// Sends the batch when it is full or its wait is over.
    async fn flush_if_due(&mut self, batcher: &mut Batcher) -> Result<Step, RunError> {
        if self.collecting.is_some() {
            if self.collect_due(batcher) {
                return Box::pin(self.checkpoint(batcher)).await;
            }
            return Ok(Step::Continue);
        }
        let full = batcher.is_full() || batcher.deadline().is_some_and(|d| d <= Instant::now());
        if !full {
            return Ok(Step::Continue);
        }
        let Some(batch) = batcher.take() else {
            return Ok(Step::Continue);
        };
        Box::pin(self.deliver(batch, 0)).await
    }

    /// Delivers one batch: pending saved first, then attempts by the retry schedule; progress after a 2xx
    /// or after the dead letter is stored; 410 disables the subscription.
    async fn deliver(&mut self, batch: Batch, attempts_before: u32) -> Result<Step, RunError> {
        self.deliver_with(batch, attempts_before, true).await
    }

    /// [`Self::deliver`]; with `track` false (a collector's outputs) no pending batch or progress is saved:
    /// the collector's checkpoint after its outputs were delivered does that.
    async fn deliver_with(
        &mut self,
        batch: Batch,
        attempts_before: u32,
        track: bool,
    ) -> Result<Step, RunError> {
        self.counters
            .oldest_undelivered_us
            .store(batch.first_time_us, Ordering::Relaxed);
        if track {
            self.save_progress(Progress {
                acked_seq: self.progress.acked_seq,
                pending: Some(PendingBatch {
                    batch_id: batch.id.clone(),
                    from_seq: batch.from_seq,
                    to_seq: batch.covers_to,
                    attempt: attempts_before,
                }),
            })
            .await?;
        }
        if let crate::sub::Target::Pull {
            subject,
            max_waiting,
        } = &self.sub.target
            && let Step::Stop(s) = self.wait_for_room(subject, *max_waiting).await
        {
            return Ok(Step::Stop(s));
        }
        let mut attempt = attempts_before;
        loop {
            self.shared
                .rate
                .acquire(&self.sub.tenant, self.sub.max_events_per_s, batch.events)
                .await;
            attempt += 1;
            let outcome = tokio::select! {
                () = self.cancel.cancelled() => return Ok(Step::Stop(Stop::Cancelled)),
                o = crate::deliver::send(&self.shared, &self.sub, &batch) => o,
            };
            match outcome {
                crate::deliver::Sent::Accepted => {
                    self.counters.delivered(&batch);
                    self.counters
                        .oldest_undelivered_us
                        .store(0, Ordering::Relaxed);
                    self.counters.retrying.store(false, Ordering::Relaxed);
                    if track {
                        self.save_progress(Progress {
                            acked_seq: batch.covers_to,
                            pending: None,
                        })
                        .await?;
                    }
                    return Ok(Step::Continue);
                }
                crate::deliver::Sent::Gone => {
                    self.counters
                        .failed("410 Gone: subscription disabled".into());
                    self.disable().await?;
                    return Ok(Step::Stop(Stop::Disabled));
                }
                crate::deliver::Sent::Retry { error, delay } => {
                    self.counters.failed(error.clone());
                    let next = delay(attempt);
                    match next {
                        Some(wait) => {
                            self.counters.retrying.store(true, Ordering::Relaxed);
                            tracing::debug!(subscription = %self.sub.id, batch = %batch.id, attempt, error, wait_ms = wait.as_millis() as u64, "delivery failed; retrying");
                            tokio::select! {
                                () = self.cancel.cancelled() => return Ok(Step::Stop(Stop::Cancelled)),
                                () = tokio::time::sleep(wait) => {}
                            }
                        }
                        None => {
                            self.counters.retrying.store(false, Ordering::Relaxed);
                            crate::deliver::dead_letter(
                                &self.shared,
                                &self.sub,
                                &batch,
                                attempt,
                                &error,
                            )
                            .await?;
                            self.counters.dead_lettered(&batch);
                            tracing::info!(subscription = %self.sub.id, batch = %batch.id, attempt, error, "batch dead-lettered");
                            if track {
                                self.save_progress(Progress {
                                    acked_seq: batch.covers_to,
                                    pending: None,
                                })
                                .await?;
                            }
                            return Ok(Step::Continue);
                        }
                    }
                }
            }
        }
    }

    /// A pull delivery's backpressure: waits while the subscription's subject holds `max_waiting` batches
    /// (until clients acknowledge some). Not a failed attempt, never a dead letter; the lag shows it.
    async fn wait_for_room(&self, subject: &str, max_waiting: u32) -> Step {
        let mut waited = false;
        let mut backoff = Backoff::new(PULL_ROOM_POLL_MIN, PULL_ROOM_POLL_MAX);
        loop {
            match crate::deliver::pull_waiting(&self.shared, subject).await {
                Ok(n) if n < u64::from(max_waiting) => return Step::Continue,
                Ok(n) => {
                    if !waited {
                        waited = true;
                        metrics::counter!("fpaas_pipeline_pull_full_total").increment(1);
                        tracing::debug!(subscription = %self.sub.id, waiting = n, max_waiting, "pull bound reached; waiting for acks");
                    }
                }
                Err(e) => {
                    tracing::warn!(subscription = %self.sub.id, error = %e, "counting waiting pull batches failed; retrying");
                }
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Step::Stop(Stop::Cancelled),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Marks the subscription disabled (the receiver answered 410 Gone), unless it changed meanwhile.
    async fn disable(&self) -> Result<(), RunError> {
        let key = layout::sub_key(&self.sub.tenant, &self.sub.id);
        for _ in 0..5 {
            let Some(entry) = self.shared.subs.entry(&key).await? else {
                return Ok(());
            };
            let fpaas_bus::KvState::Value(bytes) = entry.state else {
                return Ok(());
            };
            let Ok(mut sub) = serde_json::from_slice::<Subscription>(&bytes) else {
                return Ok(());
            };
            if sub.generation != self.sub.generation {
                return Ok(());
            }
            let before = sub.clone();
            sub.set_state(SubState::Disabled);
            sub.disabled_reason = Some("the receiver answered 410 Gone".into());
            sub.bump_if_changed(&before);
            let bytes = serde_json::to_vec(&sub).unwrap_or_default();
            if let KvWrite::Written(_) = self
                .shared
                .subs
                .update(&key, bytes.into(), entry.revision)
                .await?
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

enum CatchUp {
    Stop(Stop),
    Live(mpsc::Receiver<Feed>),
}
