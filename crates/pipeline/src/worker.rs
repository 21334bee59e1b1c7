//! The worker: watches the subscriptions bucket, holds partition leases, runs one [`crate::runner`] per
//! active subscription of its partitions, the shared reader, and the stats writer.
//!
//! Partitions: a subscription belongs to partition `fnv1a(id) % partitions`. Each worker heartbeats
//! `worker.<id>` and claims partitions `part.<n>` in the leases bucket, whose entries expire after the lease
//! time unless refreshed. A worker aims at `ceil(partitions / live workers)` partitions: it claims free ones
//! up to that, and hands back extra ones (stopping their runners first). A dead worker's partitions expire
//! after the lease time and are claimed by the others at their next tick: a subscription moves within
//! `lease_ttl + lease_ttl / 3` (documented in `docs/subscriptions.md`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fpaas_bus::tail::stream_bounds;
use fpaas_bus::{KvBucket, KvSettings, KvState, KvWrite, ensure_kv_on};
use fpaas_control::{SubState, SubStats, Subscription, layout};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::rate::RateLimiter;
use crate::reader::{self, Ctrl, ReaderState};
use crate::runner::{Runner, Stop};
use crate::stats::SubCounters;

/// Worker settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// NATS URL(s), comma separated.
    pub nats_url: String,
    /// Address of the ops HTTP server (`/metrics`, `/health`, `/ready`, `/health/detailed`) when run as
    /// `fpaas worker`; absent or `none` = no server.
    pub metrics_listen: Option<String>,
    /// This worker's name in the leases bucket; empty = `w_` + random (a restarted worker is a new one).
    pub worker_id: String,
    /// The firehose stream.
    pub stream: String,
    /// Partitions subscriptions are spread over (all workers must agree; more partitions than workers).
    pub partitions: u32,
    /// Lease lifetime in seconds: a dead worker's subscriptions move after at most this plus a third.
    pub lease_ttl_secs: u64,
    /// Matched events queued per live subscription before it falls back to catching up on its own.
    pub queue_capacity: usize,
    /// Replicas of the worker's KV buckets and dead-letter stream (1, or 3 in a cluster).
    pub replicas: usize,
    /// Dead letters are kept this many seconds.
    pub dead_letter_max_age_secs: u64,
    /// Which webhook target addresses are allowed besides public ones (the SSRF guard). Nothing else in
    /// production; the local stack and tests allow loopback.
    pub webhook_addresses: fpaas_webhook::AddrPolicy,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            metrics_listen: Some("127.0.0.1:9104".into()),
            worker_id: String::new(),
            stream: "FIREHOSE".into(),
            partitions: 32,
            lease_ttl_secs: 10,
            queue_capacity: 4_096,
            replicas: 1,
            dead_letter_max_age_secs: layout::DLQ_DEFAULT_MAX_AGE_SECS,
            webhook_addresses: fpaas_webhook::AddrPolicy::default(),
        }
    }
}

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// NATS provisioning failed.
    #[error(transparent)]
    Bus(#[from] fpaas_bus::BusError),
    /// Bad settings.
    #[error("worker config: {0}")]
    Config(String),
}

/// What every runner of a worker shares.
pub(crate) struct Shared {
    pub(crate) client: fpaas_bus::Client,
    pub(crate) stream: String,
    pub(crate) progress: KvBucket,
    pub(crate) subs: KvBucket,
    pub(crate) dlq: crate::deliver::DeadLetters,
    /// The stream of waiting pull batches.
    pub(crate) pull: fpaas_bus::MsgLog,
    pub(crate) sender: crate::deliver::Sender,
    pub(crate) reader_ctrl: mpsc::Sender<Ctrl>,
    pub(crate) queue_capacity: usize,
    pub(crate) rate: RateLimiter,
    pub(crate) tenants: KvBucket,
    /// Collectors' saved windows.
    pub(crate) collect: fpaas_bus::BlobStore,
    /// The running subscriptions' counters, rendered on `/metrics`.
    pub(crate) registry: Arc<crate::stats::Registry>,
    /// State buckets opened by `kv` deliveries, by KV bucket name.
    pub(crate) states: tokio::sync::Mutex<HashMap<String, fpaas_bus::StateBucket>>,
    /// Replicas of a state bucket the worker creates (the API normally did).
    pub(crate) state_replicas: usize,
}

struct Running {
    generation: u64,
    cancel: CancellationToken,
    handle: JoinHandle<Stop>,
    counters: Arc<SubCounters>,
    partition: u32,
    /// The topic stream it reads (`None`: the firehose).
    source_stream: Option<String>,
    /// Its subject in the pull stream, for a pull delivery (purged when the subscription is deleted).
    pull_subject: Option<String>,
    /// Its series leave `/metrics` when it stops.
    _listed: Listed,
}

/// A subscription's place in the metrics registry, removed on drop (unless a newer runner replaced it).
struct Listed {
    registry: Arc<crate::stats::Registry>,
    id: String,
    counters: Arc<SubCounters>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.registry.remove_if_same(&self.id, &self.counters);
    }
}

/// The partition of a subscription id (FNV-1a, stable across versions and machines).
pub fn partition_of(id: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

/// The buckets and the dead-letter stream a worker uses.
struct Provisioned {
    subs: KvBucket,
    progress: KvBucket,
    stats: KvBucket,
    tenants: KvBucket,
    leases: KvBucket,
    dlq: crate::deliver::DeadLetters,
    collect: fpaas_bus::BlobStore,
    pull: fpaas_bus::MsgLog,
}

/// Creates (or opens) the worker's buckets and the dead-letter stream.
async fn provision(
    client: &fpaas_bus::Client,
    config: &WorkerConfig,
) -> Result<Provisioned, fpaas_bus::BusError> {
    let kv = |bucket: &str, description: &str, max_age_secs: u64| KvSettings {
        description: description.to_owned(),
        max_age_secs,
        replicas: config.replicas,
        ..KvSettings::bucket(bucket)
    };
    let subs = ensure_kv_on(
        client,
        &kv(
            layout::SUBS_BUCKET,
            "fpaas subscriptions (written by the API)",
            0,
        ),
    )
    .await?;
    let progress = ensure_kv_on(
        client,
        &kv(
            layout::PROGRESS_BUCKET,
            "fpaas subscription progress (written by workers)",
            0,
        ),
    )
    .await?;
    let stats = ensure_kv_on(
        client,
        &kv(
            layout::STATS_BUCKET,
            "fpaas subscription stats (written by workers)",
            0,
        ),
    )
    .await?;
    let tenants = ensure_kv_on(
        client,
        &kv(
            layout::TENANTS_BUCKET,
            "fpaas tenants and API keys (written by the API)",
            0,
        ),
    )
    .await?;
    let leases = ensure_kv_on(
        client,
        &kv(
            layout::LEASES_BUCKET,
            "fpaas worker heartbeats and partition leases (expire unless refreshed)",
            config.lease_ttl_secs,
        ),
    )
    .await?;
    let dlq = crate::deliver::DeadLetters::ensure(
        client,
        config.replicas,
        config.dead_letter_max_age_secs,
    )
    .await?;
    let collect = fpaas_bus::BlobStore::ensure(
        client,
        layout::COLLECT_BUCKET,
        "fpaas collectors' open windows (written by workers)",
        config.replicas,
    )
    .await?;
    let pull = fpaas_bus::ensure_msglog(
        &fpaas_bus::jetstream(client.clone(), 256),
        &fpaas_control::pull_log_settings(config.replicas),
    )
    .await?;
    Ok(Provisioned {
        collect,
        subs,
        progress,
        stats,
        tenants,
        leases,
        dlq,
        pull,
    })
}

/// Runs a worker until `cancel`; what it owns is handed back on the way out.
///
/// # Errors
/// [`WorkerError`] when its buckets cannot be provisioned.
pub async fn run(
    client: fpaas_bus::Client,
    config: WorkerConfig,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    if config.partitions == 0 || config.lease_ttl_secs == 0 || config.queue_capacity == 0 {
        return Err(WorkerError::Config(
            "partitions, lease_ttl_secs and queue_capacity must be positive".into(),
        ));
    }
    let worker_id = if config.worker_id.is_empty() {
        format!("w_{:016x}", rand::random::<u64>())
    } else {
        config.worker_id.clone()
    };
    // NATS may be starting or briefly overloaded: provisioning is retried until it works or the worker is
    // stopped (the process stays up, not ready, and says why).
    let mut backoff = fpaas_bus::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let Provisioned {
        subs,
        progress,
        stats,
        tenants,
        leases,
        dlq,
        collect,
        pull,
    } = loop {
        match provision(&client, &config).await {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(error = %e, "provisioning the worker's buckets failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    let sender = crate::deliver::Sender::new(&config.webhook_addresses)
        .map_err(|e| WorkerError::Config(e.to_string()))?;
    let (ctrl_tx, ctrl_rx) = mpsc::channel(1024);
    let reader_state = Arc::new(ReaderState::default());
    let reader_cancel = cancel.child_token();
    let reader = tokio::spawn(reader::run(
        client.clone(),
        config.stream.clone(),
        ctrl_rx,
        reader_state.clone(),
        reader_cancel.clone(),
    ));
    let shared = Arc::new(Shared {
        client: client.clone(),
        stream: config.stream.clone(),
        progress,
        subs: subs.clone(),
        dlq,
        pull,
        sender,
        reader_ctrl: ctrl_tx,
        queue_capacity: config.queue_capacity,
        rate: RateLimiter::default(),
        tenants,
        collect,
        registry: crate::stats::Registry::new(),
        states: tokio::sync::Mutex::new(HashMap::new()),
        state_replicas: config.replicas,
    });
    tracing::info!(worker = %worker_id, partitions = config.partitions, lease_ttl_secs = config.lease_ttl_secs, "worker started");

    let mut directory: HashMap<String, Subscription> = HashMap::new();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut owned: HashMap<u32, u64> = HashMap::new(); // partition -> lease revision
    let tick = Duration::from_millis((config.lease_ttl_secs * 1000 / 3).max(200));
    let mut lease_timer = tokio::time::interval(tick);
    let mut stats_timer = tokio::time::interval(Duration::from_secs(1));
    let mut last_written: HashMap<String, (SubStats, std::time::Instant)> = HashMap::new();
    let mut watch = None;
    // When this worker last refreshed every lease it holds.
    let mut last_refresh = std::time::Instant::now();
    register_metrics();
    metrics::counter!("fpaas_pipeline_fell_behind_total").absolute(0);
    metrics::counter!("fpaas_pipeline_unreadable_events_total").absolute(0);
    metrics::counter!("fpaas_pipeline_answer_events_total").absolute(0);
    metrics::counter!("fpaas_pipeline_invalid_answers_total").absolute(0);
    for name in [
        "fpaas_pipeline_collect_late_events_total",
        "fpaas_pipeline_collect_skipped_events_total",
        "fpaas_pipeline_collect_skipped_values_total",
        "fpaas_pipeline_collect_outputs_total",
        "fpaas_pipeline_collect_checkpoints_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!("fpaas_pipeline_collect_snapshot_bytes").set(0.0);
    crate::state::register_metrics();
    metrics::counter!("fpaas_pipeline_pull_full_total").absolute(0);
    let gauge_partitions = metrics::gauge!("fpaas_pipeline_partitions_owned");
    let gauge_subs = metrics::gauge!("fpaas_pipeline_subscriptions_running");
    let gauge_live = metrics::gauge!("fpaas_pipeline_subscriptions_live");

    let mut dirty = false;
    loop {
        if watch.is_none() {
            match subs.watch(">").await {
                Ok(w) => watch = Some(Box::pin(w)),
                Err(e) => tracing::warn!(error = %e, "watching subscriptions failed; retrying"),
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            item = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => { tokio::time::sleep(Duration::from_millis(500)).await; None }
                }
            } => {
                match item {
                    Some(Ok((entry, _))) => {
                        if let Some((_, id)) = layout::parse_sub_key(&entry.key) {
                            let id = id.to_owned();
                            match entry.state {
                                KvState::Value(bytes) => match serde_json::from_slice::<Subscription>(&bytes) {
                                    Ok(sub) => { directory.insert(id, sub); }
                                    Err(e) => tracing::warn!(key = entry.key, error = %e, "unreadable subscription"),
                                },
                                KvState::Deleted { .. } => {
                                    directory.remove(&id);
                                    let _ = shared.progress.remove(&layout::progress_key(&id)).await;
                                    let _ = shared.collect.delete(&id).await;
                                    let _ = stats.remove(&layout::stats_key(&id)).await;
                                }
                            }
                            // Reconciled shortly, once for a burst of changes (a worker starting on 10,000
                            // subscriptions would otherwise reconcile 10,000 times over a growing directory).
                            dirty = true;
                        }
                    }
                    Some(Err(e)) => { tracing::warn!(error = %e, "subscription watch failed; re-watching"); watch = None; }
                    None => { watch = None; }
                }
            }
            _ = lease_timer.tick() => {
                leases_tick(&leases, &worker_id, &config, &mut owned, &mut running, &mut last_refresh).await;
                reconcile(&shared, &stats, &config, &directory, &owned, &mut running).await;
                gauge_partitions.set(owned.len() as f64);
                gauge_subs.set(running.len() as f64);
                gauge_live.set(reader_state.live.load(Ordering::Relaxed) as f64);
            }
            _ = stats_timer.tick() => {
                write_stats(&shared, &stats, &running, &mut last_written).await;
            }
            _ = tokio::time::sleep(RECONCILE_DEBOUNCE), if dirty => {
                dirty = false;
                reconcile(&shared, &stats, &config, &directory, &owned, &mut running).await;
            }
        }
    }

    // Shutdown: stop runners (their pending batches stay for the next owner), save stats, hand back leases.
    for (_, r) in running.iter() {
        r.cancel.cancel();
    }
    for (_, r) in running.drain() {
        let _ = tokio::time::timeout(Duration::from_secs(5), r.handle).await;
    }
    reader_cancel.cancel();
    let _ = reader.await;
    for (partition, revision) in owned.drain() {
        let _ = leases
            .delete(&format!("part.{partition}"), Some(revision), None)
            .await;
    }
    let _ = leases
        .delete(&format!("worker.{worker_id}"), None, None)
        .await;
    tracing::info!(worker = %worker_id, "worker stopped");
    Ok(())
}

/// Describes every pipeline metric, so `/metrics` says what each is before its first event.
fn register_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "fpaas_pipeline_attempts_total",
        "Delivery attempts by outcome."
    );
    describe_counter!(
        "fpaas_pipeline_fell_behind_total",
        "Times a subscription's queue overflowed and it caught up on its own reader."
    );
    describe_counter!(
        "fpaas_pipeline_unreadable_events_total",
        "Stream messages on subjects that are not firehose events (skipped)."
    );
    describe_counter!(
        "fpaas_pipeline_answer_events_total",
        "Events of receivers' answers published into output topics."
    );
    describe_counter!(
        "fpaas_pipeline_invalid_answers_total",
        "Answers to a subscription with an output topic that were not {\"events\": [...]} (ignored)."
    );
    describe_counter!(
        "fpaas_pipeline_state_writes_total",
        "Puts and increments a kv delivery stored in a state bucket (by op)."
    );
    describe_counter!(
        "fpaas_pipeline_state_duplicate_writes_total",
        "Writes of a resent batch that the state bucket dropped as duplicates (not applied twice)."
    );
    describe_counter!(
        "fpaas_pipeline_state_skipped_total",
        "Events a kv delivery could not write (by reason: not_json, no_key, bad_key, bad_value, too_large)."
    );
    describe_counter!(
        "fpaas_pipeline_pull_full_total",
        "Times a pull subscription reached its bound of waiting batches and waited for acknowledgements."
    );
    describe_counter!(
        "fpaas_pipeline_rate_limited_total",
        "Batches that waited for their tenant's delivery-rate quota (per tenant)."
    );
    describe_counter!(
        "fpaas_pipeline_collect_late_events_total",
        "Events a collector dropped because their window had closed."
    );
    describe_counter!(
        "fpaas_pipeline_collect_skipped_events_total",
        "Events a collector skipped because their key was null or failed."
    );
    describe_counter!(
        "fpaas_pipeline_collect_skipped_values_total",
        "Aggregated fields that were null or failed (the event counted, the value not)."
    );
    describe_counter!(
        "fpaas_pipeline_collect_outputs_total",
        "Window outputs (one per group of a closed window) delivered by collectors."
    );
    describe_counter!(
        "fpaas_pipeline_collect_checkpoints_total",
        "Collector windows saved with their stream position."
    );
    describe_gauge!(
        "fpaas_pipeline_collect_snapshot_bytes",
        "Size of the last collector checkpoint saved by this worker."
    );
    describe_gauge!(
        "fpaas_pipeline_partitions_owned",
        "Partitions this worker holds a lease on."
    );
    describe_gauge!(
        "fpaas_pipeline_subscriptions_running",
        "Subscriptions this worker runs."
    );
    describe_gauge!(
        "fpaas_pipeline_subscriptions_live",
        "Subscriptions fed by the shared reader (the rest are catching up)."
    );
    describe_histogram!(
        "fpaas_pipeline_attempt_seconds",
        metrics::Unit::Seconds,
        "Duration of one delivery attempt."
    );
    describe_histogram!(
        "fpaas_pipeline_delivery_age_seconds",
        metrics::Unit::Seconds,
        "Event time of a batch's first event to the receiver's acceptance."
    );
}

/// Heartbeat, refresh owned leases, hand back extra partitions, claim free ones.
async fn leases_tick(
    leases: &KvBucket,
    worker_id: &str,
    config: &WorkerConfig,
    owned: &mut HashMap<u32, u64>,
    running: &mut HashMap<String, Running>,
    last_refresh: &mut std::time::Instant,
) {
    let ttl = Duration::from_secs(config.lease_ttl_secs);
    let me = Bytes::from(worker_id.to_owned());
    let op_timeout = (ttl / 3).max(Duration::from_millis(300));
    match tokio::time::timeout(
        op_timeout,
        leases.put(&format!("worker.{worker_id}"), me.clone()),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "lease heartbeat failed");
            give_up_stale_leases(ttl, owned, running, last_refresh).await;
            return;
        }
        Err(_) => {
            tracing::warn!("lease heartbeat timed out");
            give_up_stale_leases(ttl, owned, running, last_refresh).await;
            return;
        }
    }
    let mut all_refreshed = true;
    // Refresh what we hold; a lease that changed hands (expired and claimed) is lost.
    let mut lost = Vec::new();
    for (partition, revision) in owned.iter_mut() {
        match tokio::time::timeout(
            op_timeout,
            leases.update(&format!("part.{partition}"), me.clone(), *revision),
        )
        .await
        {
            Ok(Ok(KvWrite::Written(r))) => *revision = r,
            Ok(Ok(_)) => lost.push(*partition),
            Ok(Err(e)) => {
                all_refreshed = false;
                tracing::warn!(error = %e, partition, "lease refresh failed");
            }
            Err(_) => {
                all_refreshed = false;
                tracing::warn!(partition, "lease refresh timed out");
            }
        }
    }
    if all_refreshed {
        *last_refresh = std::time::Instant::now();
    } else {
        give_up_stale_leases(ttl, owned, running, last_refresh).await;
    }
    for partition in lost {
        tracing::warn!(partition, "partition lease lost");
        owned.remove(&partition);
        stop_partition(partition, running).await;
    }
    let Ok(Ok(entries)) = tokio::time::timeout(op_timeout, leases.snapshot(">", false)).await
    else {
        return;
    };
    let workers = entries
        .iter()
        .filter(|e| e.key.starts_with("worker.") && matches!(e.state, KvState::Value(_)))
        .count()
        .max(1);
    let held: BTreeSet<u32> = entries
        .iter()
        .filter(|e| matches!(e.state, KvState::Value(_)))
        .filter_map(|e| e.key.strip_prefix("part.")?.parse().ok())
        .collect();
    let target = (config.partitions as usize).div_ceil(workers);
    // Hand back extras (highest numbers first), runners stopped before the lease goes.
    while owned.len() > target {
        let Some(&partition) = owned.keys().max() else {
            break;
        };
        let revision = owned.remove(&partition).unwrap_or(0);
        stop_partition(partition, running).await;
        let _ = leases
            .delete(&format!("part.{partition}"), Some(revision), None)
            .await;
        tracing::info!(partition, "partition handed back");
    }
    // Take back our own leases first: a lease that still names this worker (its refreshes failed while the
    // bucket changed leader, and the runners were stopped) is not anybody else's; compare-and-set on its
    // revision takes it back at once instead of waiting for it to expire.
    for entry in &entries {
        if owned.len() >= target {
            break;
        }
        let Some(partition) = entry
            .key
            .strip_prefix("part.")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if owned.contains_key(&partition) || partition >= config.partitions {
            continue;
        }
        if matches!(&entry.state, KvState::Value(v) if *v == me)
            && let Ok(Ok(KvWrite::Written(r))) = tokio::time::timeout(
                op_timeout,
                leases.update(&entry.key, me.clone(), entry.revision),
            )
            .await
        {
            tracing::info!(partition, "own partition lease taken back");
            if owned.is_empty() {
                *last_refresh = std::time::Instant::now();
            }
            owned.insert(partition, r);
        }
    }
    // Claim free partitions, starting at a worker-specific offset so workers do not race for the same.
    let offset = partition_of(worker_id, config.partitions);
    for i in 0..config.partitions {
        if owned.len() >= target {
            break;
        }
        let partition = (offset + i) % config.partitions;
        if held.contains(&partition) {
            continue;
        }
        if let Ok(KvWrite::Written(r)) = leases
            .create(&format!("part.{partition}"), me.clone())
            .await
        {
            tracing::info!(partition, "partition claimed");
            if owned.is_empty() {
                *last_refresh = std::time::Instant::now();
            }
            owned.insert(partition, r);
        }
    }
}

/// After a failed refresh: a worker whose leases were last all refreshed more than half their lifetime ago
/// stops acting on them before they can expire and be claimed by another worker (two owners of a subscription
/// would form different batches). Checked after trying to refresh, not before: a tick that runs late (the
/// main loop was busy) but refreshes by compare-and-set has proven the leases are still its own.
async fn give_up_stale_leases(
    ttl: Duration,
    owned: &mut HashMap<u32, u64>,
    running: &mut HashMap<String, Running>,
    last_refresh: &std::time::Instant,
) {
    if owned.is_empty() || last_refresh.elapsed() <= ttl / 2 {
        return;
    }
    tracing::warn!(
        partitions = owned.len(),
        "leases not refreshed for half their lifetime: stopping their runners"
    );
    let partitions: Vec<u32> = owned.keys().copied().collect();
    owned.clear();
    for partition in partitions {
        stop_partition(partition, running).await;
    }
}

async fn stop_partition(partition: u32, running: &mut HashMap<String, Running>) {
    let ids: Vec<String> = running
        .iter()
        .filter(|(_, r)| r.partition == partition)
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        if let Some(r) = running.remove(&id) {
            r.cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), r.handle).await;
        }
    }
}

/// How long after a subscription change the runners are reconciled (changes arriving meanwhile join it).
const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(50);

/// Starts, restarts and stops runners so that exactly the active subscriptions of owned partitions run,
/// each at its current generation.
async fn reconcile(
    shared: &Arc<Shared>,
    stats: &KvBucket,
    config: &WorkerConfig,
    directory: &HashMap<String, Subscription>,
    owned: &HashMap<u32, u64>,
    running: &mut HashMap<String, Running>,
) {
    // Stop what must not run (or runs an old generation, or ended).
    let stale: Vec<String> = running
        .iter()
        .filter(|(id, r)| {
            r.handle.is_finished()
                || match directory.get(*id) {
                    None => true,
                    Some(sub) => {
                        sub.state != SubState::Active
                            || sub.generation != r.generation
                            || !owned.contains_key(&r.partition)
                    }
                }
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        if let Some(r) = running.remove(&id) {
            r.cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), r.handle).await;
            // A deleted pull subscription: what its runner stored after the API's purge goes too.
            if let Some(subject) = &r.pull_subject
                && !directory.contains_key(&id)
            {
                let _ = shared.pull.purge(subject).await;
            }
        }
    }
    let to_start: Vec<(&String, &Subscription, u32)> = directory
        .iter()
        .filter(|(id, sub)| sub.state == SubState::Active && !running.contains_key(*id))
        .map(|(id, sub)| (id, sub, partition_of(id, config.partitions)))
        .filter(|(_, _, partition)| owned.contains_key(partition))
        .collect();
    if to_start.is_empty() {
        return;
    }
    // Each tenant's quota once, every subscription's stored figures concurrently (in order).
    let mut quotas: HashMap<&str, u32> = HashMap::new();
    for (_, sub, _) in &to_start {
        if !quotas.contains_key(sub.tenant_id.as_str()) {
            let q = tenant_rate_quota(&shared.tenants, &sub.tenant_id).await;
            quotas.insert(&sub.tenant_id, q);
        }
    }
    let keys: Vec<String> = to_start
        .iter()
        .map(|(id, _, _)| layout::stats_key(id))
        .collect();
    let previous: Vec<SubStats> = futures::stream::iter(keys)
        .map(|key| {
            let stats = stats.clone();
            async move {
                // Bounded (the main loop waits for it): figures not read in time start from zero.
                match tokio::time::timeout(Duration::from_secs(1), stats.get(&key)).await {
                    Ok(Ok(Some(bytes))) => serde_json::from_slice(&bytes).unwrap_or_default(),
                    _ => SubStats::default(),
                }
            }
        })
        .buffered(64)
        .collect()
        .await;
    for ((id, sub, partition), previous) in to_start.into_iter().zip(previous) {
        let quota = quotas.get(sub.tenant_id.as_str()).copied().unwrap_or(0);
        let cfg = match crate::deliver::compile(sub, quota) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(subscription = %id, error = %e, "subscription cannot run");
                continue;
            }
        };
        let counters = Arc::new(SubCounters::new(&sub.tenant_id, id, &previous));
        let cancel = CancellationToken::new();
        shared.registry.insert(id, counters.clone());
        let listed = Listed {
            registry: shared.registry.clone(),
            id: id.clone(),
            counters: counters.clone(),
        };
        let source_stream = cfg.source_stream.clone();
        let pull_subject = match &cfg.target {
            crate::sub::Target::Pull { subject, .. } => Some(subject.clone()),
            _ => None,
        };
        let runner = Runner::new(cfg, shared.clone(), counters.clone(), cancel.clone());
        let handle = tokio::spawn(runner.run());
        running.insert(
            id.clone(),
            Running {
                generation: sub.generation,
                cancel,
                handle,
                counters,
                partition,
                source_stream,
                pull_subject,
                _listed: listed,
            },
        );
    }
}

/// The tenant's delivery-rate quota in events per second (0 = none; a tenant record that cannot be read
/// leaves the subscription unlimited rather than stopped).
async fn tenant_rate_quota(tenants: &KvBucket, tenant_id: &str) -> u32 {
    let key = layout::tenant_key(tenant_id);
    match tokio::time::timeout(Duration::from_secs(1), tenants.get(&key)).await {
        Ok(Ok(Some(bytes))) => serde_json::from_slice::<fpaas_control::Tenant>(&bytes)
            .map(|t| u32::try_from(t.quotas.max_delivery_events_per_s).unwrap_or(u32::MAX))
            .unwrap_or(0),
        _ => 0,
    }
}

/// A subscription whose only change is its lag is written at most this often (the Prometheus gauges follow
/// the lag every second; the bucket is for the API, and thousands of subscriptions would otherwise mean
/// thousands of writes a second).
const LAG_ONLY_WRITE_EVERY: Duration = Duration::from_secs(30);

/// The stats without the fields that move by themselves (lag, time of writing).
fn counts_only(s: &SubStats) -> SubStats {
    SubStats {
        lag_events: 0,
        lag_seconds: 0.0,
        updated_at: None,
        ..s.clone()
    }
}

async fn write_stats(
    shared: &Shared,
    stats: &KvBucket,
    running: &HashMap<String, Running>,
    last: &mut HashMap<String, (SubStats, std::time::Instant)>,
) {
    if running.is_empty() {
        return;
    }
    // Bounded: this runs in the worker's main loop, which must keep refreshing leases while NATS elects a
    // new leader (an unbounded stream-info request there stopped a worker's runners on a cluster node loss).
    let last_seq = match tokio::time::timeout(
        Duration::from_secs(1),
        stream_bounds(&shared.client, &shared.stream),
    )
    .await
    {
        Ok(Ok(b)) => b.last_seq,
        _ => return,
    };
    shared
        .registry
        .stream_last_seq
        .store(last_seq, Ordering::Relaxed);
    // Subscriptions of topics: their lag is against their topic's last sequence (one bounded request per
    // topic; a topic that does not answer keeps its previous position).
    let topics: BTreeSet<String> = running
        .values()
        .filter_map(|r| r.source_stream.clone())
        .collect();
    let mut positions: HashMap<String, u64> = HashMap::new();
    if !topics.is_empty() {
        let lookups = topics.into_iter().map(|t| {
            let client = shared.client.clone();
            async move {
                let b =
                    tokio::time::timeout(Duration::from_secs(1), stream_bounds(&client, &t)).await;
                match b {
                    Ok(Ok(b)) => Some((t, b.last_seq)),
                    _ => None,
                }
            }
        });
        positions = futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect();
    }
    for r in running.values() {
        if let Some(p) = r.source_stream.as_deref().and_then(|t| positions.get(t)) {
            r.counters.source_last_seq.store(*p, Ordering::Relaxed);
        }
    }
    last.retain(|id, _| running.contains_key(id));
    let mut writes = Vec::new();
    for (id, r) in running {
        let s = r.counters.snapshot(last_seq);
        let due = match last.get(id) {
            None => true,
            Some((prev, at)) => {
                counts_only(prev) != counts_only(&s)
                    || ((prev.lag_events != s.lag_events || prev.lag_seconds != s.lag_seconds)
                        && at.elapsed() >= LAG_ONLY_WRITE_EVERY)
            }
        };
        if due {
            writes.push((id.clone(), s));
        }
    }
    // Concurrently, a bounded number at a time: one slow write does not hold the others.
    let writing = futures::stream::iter(writes)
        .map(|(id, s)| async move {
            let mut stamped = s.clone();
            stamped.updated_at = Some(chrono::Utc::now());
            let bytes = serde_json::to_vec(&stamped).unwrap_or_default();
            stats
                .put(&layout::stats_key(&id), bytes.into())
                .await
                .ok()
                .map(|_| (id, s))
        })
        .buffer_unordered(64)
        .filter_map(|w| async move { w })
        .collect::<Vec<(String, SubStats)>>();
    // What is not written within 2 s is written at a later tick.
    let Ok(done) = tokio::time::timeout(Duration::from_secs(2), writing).await else {
        return;
    };
    let now = std::time::Instant::now();
    for (id, s) in done {
        last.insert(id, (s, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("s_abc", 32), partition_of("s_abc", 32));
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            counts[partition_of(&format!("s_{i:016}"), 8) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }
}
