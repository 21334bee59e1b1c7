//! The simulator's WebSocket server: `GET /xrpc/com.atproto.sync.subscribeRepos` over axum, one shared
//! event log (generated or replayed from a capture) that every client reads, cursor replay, rate limiting,
//! backpressure (`ConsumerTooSlow`), and the [`Sim`] handle tests use.
//!
//! Cursor semantics (as a relay): no cursor → live from the current head; `cursor = c` within the retained
//! window → every event with `seq > c`; `c` older than the window → `#info OutdatedCursor`, then the whole
//! window; `c` beyond the head → error frame `FutureCursor`, then close. In as-fast-as-possible mode (no
//! `rate`) the log grows on demand, so a cursor up to `window` events past the head is produced first.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::capture::{CaptureError, CaptureReader};
use crate::encode;
use crate::generate::{FaultConfig, Generator, TruthEvent};

/// Path of the firehose endpoint.
pub const SUBSCRIBE_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";

/// Events produced per lock acquisition in as-fast-as-possible mode.
const PRODUCE_BATCH: u64 = 256;
/// Entries handed to a connection per lock acquisition.
const SEND_BATCH: usize = 256;
/// Tick of the rate-driven producer.
const RATE_TICK: Duration = Duration::from_millis(5);

/// Simulator configuration (the `fpaas relay-sim` flags map onto it one to one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Seed of the deterministic generator: the same seed gives byte-identical frames.
    pub seed: u64,
    /// Events per second. `None`: as fast as the fastest client reads (events are produced on demand).
    pub rate: Option<f64>,
    /// Produce this many events in total, then idle with connections kept open. `None`: unbounded.
    pub limit: Option<u64>,
    /// Number of most recent events retained for cursor replay; a client further behind is cut off with
    /// `ConsumerTooSlow`.
    pub window: usize,
    /// Deterministic fault injection (all off by default).
    pub faults: FaultConfig,
    /// Serve the frames of this capture file (corpus format) instead of generating; seqs come from the
    /// frames. Frames without a seq are sent just before the next frame that has one.
    pub replay: Option<PathBuf>,
    /// Number of simulated accounts.
    pub repos: usize,
    /// Seq of the first generated event.
    pub start_seq: i64,
    /// Multiplies the rates of identity, account and sync events (1 = realistic). Tests use ~50 so that
    /// short runs contain them.
    pub rare_boost: u32,
    /// Small frames (commit, one MST node, records: ~1 kB) instead of realistic ones (a per-repository MST
    /// proof path as well: ~5.4 kB and ~10 blocks per commit, like real relay frames). Same events either way.
    pub small_frames: bool,
    /// Keep the ground truth of every generated event in memory ([`Sim::truth`]). Turn off for long runs
    /// ([`serve`] always does).
    pub record_truth: bool,
    /// Event times follow the wall clock instead of the simulated one ([`Generator::with_wall_clock`]): for
    /// latency measurements from the relay frame on.
    pub wall_clock: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            rate: None,
            limit: None,
            window: 50_000,
            faults: FaultConfig::default(),
            replay: None,
            repos: 5_000,
            start_seq: 1,
            rare_boost: 1,
            small_frames: false,
            record_truth: true,
            wall_clock: false,
        }
    }
}

/// Errors starting or running the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding or serving the listener failed.
    #[error("simulator i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The replay capture could not be opened.
    #[error("replay capture: {0}")]
    Capture(#[from] CaptureError),
    /// The configuration is unusable.
    #[error("invalid simulator config: {0}")]
    Config(String),
}

/// Decodes just the `seq` of a frame's body (`None` for error frames and bodies without a seq).
pub fn frame_seq(frame: &[u8]) -> Option<i64> {
    #[derive(Deserialize)]
    struct SeqOnly {
        #[serde(default)]
        op: Option<i64>,
        #[serde(default)]
        seq: Option<i64>,
    }
    let mut it = serde_ipld_dagcbor::de::Deserializer::from_slice(frame).into_iter::<SeqOnly>();
    let header = it.next()?.ok()?;
    if header.op != Some(1) {
        return None;
    }
    it.next()?.ok()?.seq
}

struct Entry {
    seq: i64,
    frames: Vec<Bytes>,
}

enum Source {
    Gen(Box<Generator>),
    Replay {
        reader: CaptureReader,
        extras: Vec<Bytes>,
    },
}

struct LogState {
    source: Source,
    exhausted: bool,
    produced: u64,
    log: VecDeque<Arc<Entry>>,
    evicted_through: Option<i64>,
    head: Option<i64>,
    truth: Vec<TruthEvent>,
    /// Events of the ground truth a consumer must deliver (oversize ones excluded), counted even when the
    /// truth itself is not kept.
    deliverable: u64,
}

impl LogState {
    fn can_produce(&self, cfg: &SimConfig) -> bool {
        !self.exhausted && cfg.limit.is_none_or(|l| self.produced < l)
    }

    fn next_entry(&mut self, cfg: &SimConfig) -> Option<Entry> {
        match &mut self.source {
            Source::Gen(g) => match g.next_event() {
                Ok(ev) => {
                    self.deliverable += ev
                        .truth
                        .iter()
                        .filter(|t| !matches!(t, TruthEvent::Op { oversize: true, .. }))
                        .count() as u64;
                    if cfg.record_truth {
                        self.truth.extend(ev.truth);
                    }
                    Some(Entry {
                        seq: ev.seq,
                        frames: ev.frames,
                    })
                }
                Err(error) => {
                    warn!(%error, "generator failed; no more events");
                    None
                }
            },
            Source::Replay { reader, extras } => loop {
                match reader.next() {
                    Some(Ok(frame)) => {
                        let frame = Bytes::from(frame);
                        match frame_seq(&frame) {
                            Some(seq) if self.head.is_none_or(|h| seq > h) => {
                                let mut frames = std::mem::take(extras);
                                frames.push(frame);
                                return Some(Entry { seq, frames });
                            }
                            _ => extras.push(frame),
                        }
                    }
                    Some(Err(error)) => {
                        warn!(%error, "replay capture unreadable; no more events");
                        return None;
                    }
                    None => {
                        info!("replay capture exhausted");
                        return None;
                    }
                }
            },
        }
    }

    /// Produces up to `n` events; returns how many.
    fn produce(&mut self, cfg: &SimConfig, n: u64) -> u64 {
        let mut made = 0;
        while made < n && self.can_produce(cfg) {
            let Some(entry) = self.next_entry(cfg) else {
                self.exhausted = true;
                break;
            };
            self.head = Some(entry.seq);
            self.log.push_back(Arc::new(entry));
            while self.log.len() > cfg.window.max(1) {
                if let Some(old) = self.log.pop_front() {
                    self.evicted_through = Some(old.seq);
                }
            }
            self.produced += 1;
            made += 1;
        }
        if made > 0 {
            metrics::counter!("fpaas_sim_events_generated_total").increment(made);
        }
        made
    }

    /// Entries with `seq > after` (all retained ones when `after` is `None`), at most `max`.
    fn collect_after(&self, after: Option<i64>, max: usize) -> Vec<Arc<Entry>> {
        let start = match after {
            Some(a) => self.log.partition_point(|e| e.seq <= a),
            None => 0,
        };
        self.log.range(start..).take(max).cloned().collect()
    }
}

struct Shared {
    cfg: SimConfig,
    state: Mutex<LogState>,
    head_tx: watch::Sender<Option<i64>>,
    kick: Mutex<CancellationToken>,
    shutdown: CancellationToken,
    /// Connections that are past their cursor handling and streaming.
    streaming: AtomicUsize,
}

impl Shared {
    fn new(cfg: SimConfig, shutdown: CancellationToken) -> Result<Arc<Self>, SimError> {
        if cfg.window == 0 {
            return Err(SimError::Config("window must be at least 1".into()));
        }
        if let Some(rate) = cfg.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(SimError::Config(format!("rate must be > 0, got {rate}")));
        }
        let source = match &cfg.replay {
            Some(path) => Source::Replay {
                reader: CaptureReader::open(path)?,
                extras: Vec::new(),
            },
            None => Source::Gen(Box::new(
                Generator::new(cfg.seed, cfg.repos, cfg.start_seq, cfg.faults.clone())
                    .with_rare_boost(cfg.rare_boost)
                    .with_small_frames(cfg.small_frames)
                    .with_wall_clock(cfg.wall_clock),
            )),
        };
        let (head_tx, _) = watch::channel(None);
        Ok(Arc::new(Self {
            cfg,
            state: Mutex::new(LogState {
                source,
                exhausted: false,
                produced: 0,
                log: VecDeque::new(),
                evicted_through: None,
                head: None,
                truth: Vec::new(),
                deliverable: 0,
            }),
            head_tx,
            kick: Mutex::new(CancellationToken::new()),
            shutdown,
            streaming: AtomicUsize::new(0),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock cannot leave the log half-updated in a way readers mind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_head(&self, head: Option<i64>) {
        self.head_tx.send_replace(head);
    }

    fn kick_token(&self) -> CancellationToken {
        self.kick.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn asap(&self) -> bool {
        self.cfg.rate.is_none()
    }
}

/// Serves the simulator on `listener` until `shutdown` is cancelled. Nobody can read the ground truth of
/// a server started this way, so `record_truth` is ignored (off) to keep memory flat on long runs; use
/// [`Sim::start`] when a test needs it.
pub async fn serve(
    listener: TcpListener,
    mut cfg: SimConfig,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    cfg.record_truth = false;
    let shared = Shared::new(cfg, shutdown)?;
    run(listener, shared).await
}

async fn run(listener: TcpListener, shared: Arc<Shared>) -> Result<(), SimError> {
    let producer = shared.cfg.rate.map(|rate| {
        let shared = shared.clone();
        tokio::spawn(rate_producer(shared, rate))
    });
    let addr = listener.local_addr()?;
    info!(%addr, replay = ?shared.cfg.replay, rate = ?shared.cfg.rate, "relay simulator listening");
    let shutdown = shared.shutdown.clone();
    let app = Router::new()
        .route(SUBSCRIBE_PATH, get(subscribe))
        .with_state(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Some(p) = producer {
        p.abort();
    }
    result.map_err(SimError::Io)
}

async fn rate_producer(shared: Arc<Shared>, rate: f64) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(RATE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        let (head, done) = {
            let mut st = shared.lock();
            let behind = due.saturating_sub(st.produced);
            // Cap a catch-up burst at one second's worth so a stalled box does not freeze the lock.
            let made = st.produce(&shared.cfg, behind.min(rate.ceil() as u64 + 1));
            ((made > 0).then_some(st.head), !st.can_produce(&shared.cfg))
        };
        if let Some(h) = head {
            shared.publish_head(h);
        }
        if done {
            debug!("rate producer finished");
            return;
        }
    }
}

#[derive(Debug, Deserialize)]
struct SubscribeQuery {
    cursor: Option<i64>,
}

async fn subscribe(
    ws: WebSocketUpgrade,
    Query(q): Query<SubscribeQuery>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    ws.on_upgrade(move |socket| connection(socket, shared, q.cursor))
}

enum Start {
    After(Option<i64>),
    Outdated(Option<i64>),
    Future(Option<i64>),
}

enum Step {
    Send(Vec<Arc<Entry>>),
    Wait,
    TooSlow,
}

#[tracing::instrument(skip(socket, shared))]
async fn connection(socket: WebSocket, shared: Arc<Shared>, cursor: Option<i64>) {
    metrics::gauge!("fpaas_sim_clients_connected").increment(1.0);
    let reason = serve_client(socket, &shared, cursor).await;
    metrics::gauge!("fpaas_sim_clients_connected").decrement(1.0);
    metrics::counter!("fpaas_sim_disconnects_total", "reason" => reason).increment(1);
    debug!(reason, "client done");
}

async fn send_error_and_close(
    tx: &mut (impl SinkExt<Message> + Unpin),
    error: &str,
    message: &str,
) {
    if let Ok(frame) = encode::error_frame(error, message) {
        let _ = tx.send(Message::Binary(Bytes::from(frame))).await;
    }
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: close_code::POLICY,
            reason: error.into(),
        })))
        .await;
}

async fn serve_client(socket: WebSocket, shared: &Shared, cursor: Option<i64>) -> &'static str {
    let kick = shared.kick_token();
    let mut head_rx = shared.head_tx.subscribe();
    let (mut tx, mut rx) = socket.split();

    let start = {
        let mut st = shared.lock();
        let produced_head = match cursor {
            Some(c) if shared.asap() && st.head.is_none_or(|h| h < c) => {
                let mut made = 0;
                while st.head.is_none_or(|h| h < c)
                    && made < shared.cfg.window as u64
                    && st.can_produce(&shared.cfg)
                {
                    made += st.produce(&shared.cfg, 1);
                }
                (made > 0).then_some(st.head)
            }
            _ => None,
        };
        if let Some(h) = produced_head {
            shared.publish_head(h);
        }
        match cursor {
            None => Start::After(st.head),
            Some(c) if st.head.is_none_or(|h| c > h) => Start::Future(st.head),
            Some(c) if st.evicted_through.is_some_and(|e| e > c) => {
                Start::Outdated(st.evicted_through)
            }
            Some(c) => Start::After(Some(c)),
        }
    };
    let mut after = match start {
        Start::After(a) => a,
        Start::Future(head) => {
            debug!(?cursor, ?head, "future cursor");
            let msg = format!(
                "cursor {} is ahead of the stream head {head:?}",
                cursor.unwrap_or_default()
            );
            send_error_and_close(&mut tx, "FutureCursor", &msg).await;
            return "future_cursor";
        }
        Start::Outdated(through) => {
            let frame = encode::info_frame(
                "OutdatedCursor",
                "Requested cursor exceeded limit. Possibly missing events",
            );
            if let Ok(frame) = frame
                && tx.send(Message::Binary(Bytes::from(frame))).await.is_err()
            {
                return "send_failed";
            }
            through
        }
    };

    shared.streaming.fetch_add(1, Ordering::SeqCst);
    let _streaming = StreamingGuard(&shared.streaming);
    loop {
        head_rx.borrow_and_update();
        let step = {
            let mut st = shared.lock();
            if st
                .evicted_through
                .is_some_and(|e| after.is_none_or(|a| e > a))
            {
                Step::TooSlow
            } else {
                let mut batch = st.collect_after(after, SEND_BATCH);
                // Never produce more than the window at once, or this client would lose events it asked for.
                let n = PRODUCE_BATCH.min(shared.cfg.window as u64);
                if batch.is_empty() && shared.asap() && st.produce(&shared.cfg, n) > 0 {
                    shared.publish_head(st.head);
                    batch = st.collect_after(after, SEND_BATCH);
                }
                if batch.is_empty() {
                    Step::Wait
                } else {
                    Step::Send(batch)
                }
            }
        };
        match step {
            Step::TooSlow => {
                send_error_and_close(
                    &mut tx,
                    "ConsumerTooSlow",
                    "client fell more than the replay window behind",
                )
                .await;
                return "too_slow";
            }
            Step::Send(batch) => {
                let mut frames_sent = 0u64;
                let send = async {
                    for entry in &batch {
                        for frame in &entry.frames {
                            tx.feed(Message::Binary(frame.clone())).await?;
                            frames_sent += 1;
                        }
                    }
                    tx.flush().await
                };
                let outcome = tokio::select! {
                    r = send => Some(r),
                    () = kick.cancelled() => None,
                    () = shared.shutdown.cancelled() => None,
                };
                metrics::counter!("fpaas_sim_frames_sent_total").increment(frames_sent);
                match outcome {
                    Some(Ok(())) => {
                        after = batch.last().map(|e| e.seq).or(after);
                    }
                    Some(Err(_)) => return "send_failed",
                    None => {
                        let _ = tx.send(going_away()).await;
                        return "kicked";
                    }
                }
            }
            Step::Wait => {
                tokio::select! {
                    changed = head_rx.changed() => {
                        if changed.is_err() {
                            return "shutdown";
                        }
                    }
                    msg = rx.next() => match msg {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return "client_closed",
                        Some(Ok(_)) => {}
                    },
                    () = kick.cancelled() => {
                        let _ = tx.send(going_away()).await;
                        return "kicked";
                    }
                    () = shared.shutdown.cancelled() => {
                        let _ = tx.send(going_away()).await;
                        return "shutdown";
                    }
                }
            }
        }
    }
}

struct StreamingGuard<'a>(&'a AtomicUsize);

impl Drop for StreamingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn going_away() -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::AWAY,
        reason: "relay simulator closing the connection".into(),
    }))
}

/// A running simulator on 127.0.0.1, for tests and embedding.
/// Dropping it stops the server (without waiting); [`Sim::shutdown`] stops it and waits.
pub struct Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<JoinHandle<Result<(), SimError>>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl Sim {
    /// Starts a simulator on `127.0.0.1:0` and returns it with its address.
    pub async fn start(cfg: SimConfig) -> Result<(Sim, SocketAddr), SimError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(cfg, CancellationToken::new())?;
        let task = tokio::spawn(run(listener, shared.clone()));
        Ok((
            Sim {
                shared,
                addr,
                task: Some(task),
            },
            addr,
        ))
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT` (append [`SUBSCRIBE_PATH`], or use [`Sim::subscribe_url`]).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The full firehose URL, with `?cursor=` when given.
    pub fn subscribe_url(&self, cursor: Option<i64>) -> String {
        match cursor {
            Some(c) => format!("ws://{}{SUBSCRIBE_PATH}?cursor={c}", self.addr),
            None => format!("ws://{}{SUBSCRIBE_PATH}", self.addr),
        }
    }

    /// Ground truth of every event generated so far (empty in replay mode or with `record_truth` off).
    pub fn truth(&self) -> Vec<TruthEvent> {
        self.shared.lock().truth.clone()
    }

    /// Seq of the newest event produced so far.
    pub fn head_seq(&self) -> Option<i64> {
        self.shared.lock().head
    }

    /// Number of clients currently streaming (connected and past cursor handling).
    pub fn clients(&self) -> usize {
        self.shared.streaming.load(Ordering::SeqCst)
    }

    /// Number of events a consumer must deliver among those produced so far (the ground truth less oversize
    /// records), kept even when `record_truth` is off.
    pub fn deliverable_events(&self) -> u64 {
        self.shared.lock().deliverable
    }

    /// Number of events produced so far.
    pub fn produced(&self) -> u64 {
        self.shared.lock().produced
    }

    /// Produces up to `n` events now (as if time passed or a client asked), returning the new head.
    pub fn advance(&self, n: u64) -> Option<i64> {
        let head = {
            let mut st = self.shared.lock();
            st.produce(&self.shared.cfg, n);
            st.head
        };
        self.shared.publish_head(head);
        head
    }

    /// Closes every connected client (with a close frame, code 1001); new connections are accepted.
    pub fn disconnect_all(&self) {
        let mut kick = self.shared.kick.lock().unwrap_or_else(|p| p.into_inner());
        kick.cancel();
        *kick = CancellationToken::new();
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        self.shared.shutdown.cancel();
        match self.task.take() {
            Some(task) => match task.await {
                Ok(r) => r,
                Err(e) => Err(SimError::Io(std::io::Error::other(e))),
            },
            None => Ok(()),
        }
    }
}
