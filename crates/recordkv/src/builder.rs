//! `fpaas record-kv`: the builder that turns the firehose stream into the record KV.
//!
//! A durable pull consumer on the stream (server-side filters: the configured collections, plus
//! `atproto.firehose.account.deleted` and `atproto.firehose.sync`) is read in bounded batches. Each
//! batch is applied — creates/updates put the [`RecordValue`] JSON, deletes write a delete marker, an
//! account deletion removes all of that DID's records — and only after every write of the batch was
//! acknowledged by the server are its messages acked, and only then is the next batch fetched. A kill
//! at any point therefore loses nothing (unacked messages are redelivered) and re-applying is
//! harmless (see [`crate::apply`]: equal revisions are duplicates, older ones stale).
//!
//! Within a batch, writes run concurrently across keys and in order per key ([`crate::keyed`]); an
//! account deletion is a barrier (everything before it is written first, everything after it later).
//! `#sync` events are logged and counted and leave the records as they are (`docs/record-kv.md`).
//!
//! Delete markers carry `Nats-TTL` ([`RecordKvConfig::delete_marker_ttl_secs`], 7 days by default,
//! at least the firehose retention; 0 = forever), so the bucket does not grow forever with deletes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fpaas_event::{Event, Kind, Operation};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use fpaas_bus::{Delivery, DurableReader, ReaderOptions, Settle, Stopped};

use crate::apply::{Change, Outcome, apply_change, delete_value};
use crate::batches::{self, Stage};
use crate::config::RecordKvConfig;
use crate::error::Error;
use crate::key::{RecordKey, did_pattern, encode_token};
use crate::keyed::run_keyed;
use crate::store::{BucketOptions, EntryState, Kv};
use crate::value::{RecordValue, rev_newer, tid_from_micros};

/// Counts of one batch (or, summed, of a run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Batches applied.
    pub batches: u64,
    /// Messages received.
    pub messages: u64,
    /// Record changes by outcome label (`written`, `deleted`, `duplicate`, `stale`, …).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Messages ignored by design, by reason (`did_filtered`, `account_status`, `identity`).
    pub skipped: BTreeMap<&'static str, u64>,
    /// Messages that cannot be applied, by reason (`bad_event`, `bad_key`, `missing_record`); acked
    /// as terminated.
    pub dropped: BTreeMap<&'static str, u64>,
    /// `#account` deletions applied.
    pub account_deletions: u64,
    /// Records removed by account deletions.
    pub account_records_deleted: u64,
    /// `#sync` events seen.
    pub syncs: u64,
}

impl BuildStats {
    /// Records written (puts and delete markers).
    pub fn writes(&self) -> u64 {
        self.outcome(Outcome::Written) + self.outcome(Outcome::Deleted)
    }

    /// The count of one outcome.
    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(outcome.as_str()).copied().unwrap_or(0)
    }
}

impl batches::Stats for BuildStats {
    fn add(&mut self, other: &BuildStats) {
        self.batches += other.batches;
        self.messages += other.messages;
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in &other.skipped {
            *self.skipped.entry(k).or_default() += v;
        }
        for (k, v) in &other.dropped {
            *self.dropped.entry(k).or_default() += v;
        }
        self.account_deletions += other.account_deletions;
        self.account_records_deleted += other.account_records_deleted;
        self.syncs += other.syncs;
    }
}

impl BuildStats {
    fn emit_metrics(&self, elapsed: Duration) {
        for (outcome, n) in &self.outcomes {
            metrics::counter!("fpaas_recordkv_changes_total", "outcome" => *outcome).increment(*n);
        }
        for (reason, n) in &self.skipped {
            metrics::counter!("fpaas_recordkv_skipped_events_total", "reason" => *reason)
                .increment(*n);
        }
        for (reason, n) in &self.dropped {
            metrics::counter!("fpaas_recordkv_drops_total", "reason" => *reason).increment(*n);
        }
        metrics::counter!("fpaas_recordkv_messages_total").increment(self.messages);
        metrics::counter!("fpaas_recordkv_account_records_deleted_total")
            .increment(self.account_records_deleted);
        metrics::counter!("fpaas_recordkv_sync_events_total").increment(self.syncs);
        metrics::histogram!("fpaas_recordkv_batch_duration_seconds").record(elapsed.as_secs_f64());
    }
}

/// What one message asks for.
enum Item {
    Commit {
        key: String,
        did: String,
        change: Change,
        redelivered: bool,
    },
    AccountDeleted {
        did: String,
        rev: Option<String>,
    },
    Sync {
        did: String,
        rev: String,
    },
    Skip(&'static str),
    Drop(&'static str),
}

/// The record KV builder.
#[derive(Debug)]
pub struct RecordKvBuilder {
    config: RecordKvConfig,
    kv: Kv,
    /// `<bucket>_accounts`: one key per deleted account (encoded DID) → `{did, status, rev}`.
    accounts: Kv,
    /// The deleted accounts (DID → deletion rev), loaded at start and kept by this instance.
    deleted_accounts: Mutex<HashMap<String, String>>,
    reader: DurableReader,
    dids: HashSet<String>,
}

impl RecordKvBuilder {
    /// Validates the config, creates the bucket if missing (making it accept per-message TTLs when
    /// delete markers expire) and creates (or updates) the durable consumer on the stream. The
    /// stream must exist (the shuffler or `bus` creates it).
    ///
    /// # Errors
    /// [`Error::Config`] for a bad config, [`Error::MarkerTtlUnsupported`] when markers are to
    /// expire on a server without per-message TTLs, [`Error::Bus`] when the server refuses.
    pub async fn new(client: &fpaas_bus::Client, config: RecordKvConfig) -> Result<Self, Error> {
        let filters = config.validate()?;
        let marker_ttl = config.delete_marker_ttl();
        Self::start(client, config, filters, marker_ttl).await
    }

    /// Like [`RecordKvBuilder::new`], but delete markers expire after `marker_ttl` (any duration
    /// of at least 1 s, or `None` for never) instead of `config.delete_marker_ttl_secs`, and
    /// nothing checks it against the firehose retention. For tests of expiry, which cannot wait
    /// a day; everything else uses `new`, whose check is what makes expiry safe.
    ///
    /// # Errors
    /// As [`RecordKvBuilder::new`].
    #[doc(hidden)]
    pub async fn with_marker_ttl(
        client: &fpaas_bus::Client,
        config: RecordKvConfig,
        marker_ttl: Option<Duration>,
    ) -> Result<Self, Error> {
        let filters = config.filters()?;
        Self::start(client, config, filters, marker_ttl).await
    }

    async fn start(
        client: &fpaas_bus::Client,
        config: RecordKvConfig,
        filters: Vec<String>,
        marker_ttl: Option<Duration>,
    ) -> Result<Self, Error> {
        let kv = Kv::open_or_create(
            client,
            &BucketOptions {
                bucket: config.bucket.clone(),
                description: "fpaas record KV: <collection>.<did>.<rkey> -> record JSON".into(),
                replicas: config.replicas,
                delete_marker_ttl: marker_ttl,
            },
        )
        .await?;
        let accounts = Kv::open_or_create(
            client,
            &BucketOptions {
                bucket: format!("{}_accounts", config.bucket),
                description:
                    "fpaas record KV: deleted accounts (encoded DID -> {did, status, rev})".into(),
                replicas: config.replicas,
                delete_marker_ttl: None,
            },
        )
        .await?;
        let reader = DurableReader::ensure(
            client,
            &ReaderOptions {
                stream: config.stream.clone(),
                durable: config.durable.clone(),
                description: "fpaas recordkv".into(),
                filters,
                ack_wait: config.ack_wait(),
                max_ack_pending: (config.batch_size * 2) as i64,
            },
        )
        .await
        .map_err(|e| Error::bus("create durable consumer", e))?;
        match marker_ttl {
            None => info!("delete markers never expire"),
            Some(ttl) => {
                let retention = reader.stream_max_age();
                if retention.is_zero() || retention > ttl {
                    warn!(
                        ?ttl,
                        ?retention,
                        "delete markers expire before the firehose stream drops the events older \
                         than them: a redelivered old create could bring a deleted record back; \
                         raise delete_marker_ttl_secs above the stream's max_age"
                    );
                } else {
                    info!(?ttl, "delete markers expire");
                }
            }
        }
        let dids = config.dids.iter().cloned().collect();
        let mut deleted = HashMap::new();
        for entry in accounts.snapshot(">", false).await? {
            if let EntryState::Value(bytes) = entry.state
                && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
                && let Some(did) = value["did"].as_str()
            {
                let rev = value["rev"].as_str().unwrap_or("");
                deleted.insert(did.to_string(), rev.to_string());
            }
        }
        Ok(Self {
            config,
            kv,
            accounts,
            deleted_accounts: Mutex::new(deleted),
            reader,
            dids,
        })
    }

    /// The bucket being written.
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// Runs until `shutdown` is cancelled; the batch in progress is finished and acked first.
    /// Retryable failures (NATS outages, contention) are retried with backoff (the batch is
    /// re-applied: idempotent), by the bus's consume loop.
    ///
    /// # Errors
    /// Only for errors that retrying cannot fix ([`Error::is_retryable`] false).
    #[instrument(skip_all, fields(bucket = %self.config.bucket, durable = %self.config.durable))]
    pub async fn run(self, shutdown: CancellationToken) -> Result<BuildStats, Error> {
        info!(collections = ?self.config.collections, dids = self.dids.len(), "record-kv builder started");
        // Every drop, skip and retry series exists from zero (alerts see 0, not a missing series).
        for reason in ["bad_event", "bad_key", "missing_record", "bad_record"] {
            metrics::counter!("fpaas_recordkv_drops_total", "reason" => reason).increment(0);
        }
        for reason in ["did_filtered", "account_status", "identity"] {
            metrics::counter!("fpaas_recordkv_skipped_events_total", "reason" => reason)
                .increment(0);
        }
        metrics::counter!("fpaas_recordkv_batch_retries_total").increment(0);
        let (total, stopped) =
            batches::run(&self, &self.reader, self.config.batch_size, &shutdown).await?;
        match stopped {
            Stopped::Clean => info!(?total, "record-kv builder stopped"),
            Stopped::BatchUnacked => {
                info!(?total, "record-kv builder stopped (last batch not acked)")
            }
        }
        Ok(total)
    }

    /// Fetches and applies one batch (waiting up to `wait` for messages). Returns its stats.
    ///
    /// # Errors
    /// [`Error::Bus`] when fetching or writing fails (the batch is then not acked).
    pub async fn step(&mut self, wait: Duration) -> Result<BuildStats, Error> {
        batches::step(&*self, &self.reader, self.config.batch_size, wait).await
    }

    /// Messages of the stream this builder has not applied yet (pending plus unacked).
    ///
    /// # Errors
    /// [`Error::Bus`] on a server failure.
    pub async fn backlog(&mut self) -> Result<u64, Error> {
        self.reader
            .backlog()
            .await
            .map_err(|e| Error::bus("consumer info", e))
    }

    async fn flush(
        &self,
        segment: Vec<(String, (String, Change, bool))>,
        stats: &mut BuildStats,
    ) -> Result<(), Error> {
        if segment.is_empty() {
            return Ok(());
        }
        let outcomes = run_keyed(
            segment,
            self.config.concurrency,
            |key, (did, change, redelivered)| async move {
                // A record of a deleted account must not come back: neither a replay published after
                // the deletion for a key it never saw, nor a redelivered message whose first
                // delivery was never acked (it then arrives after the deletion that followed it).
                // Known deletions are cached; a redelivery also asks the bucket (other instances).
                if let Change::Put { rev, .. } = &change {
                    let deleted = match self.cached_deletion(&did) {
                        Some(rev) => Some(rev),
                        None if redelivered => self.account_deletion_rev(&did).await?,
                        None => None,
                    };
                    if let Some(deleted) = deleted
                        && !rev_newer(rev, &deleted)
                    {
                        // Leave the same marker the deletion would have left had it seen the record.
                        let marker = Change::Delete { rev: deleted };
                        apply_change(&self.kv, &key, &marker).await?;
                        return Ok(Outcome::Stale);
                    }
                }
                apply_change(&self.kv, &key, &change).await
            },
        )
        .await?;
        for outcome in outcomes {
            *stats.outcomes.entry(outcome.as_str()).or_default() += 1;
        }
        Ok(())
    }

    /// Writes a delete marker over every record value of `did`, carrying `rev` (the TID of the
    /// account event's time: records written before the deletion are then stale if they are ever
    /// delivered again). Returns how many.
    async fn delete_account(&self, did: &str, rev: Option<&str>) -> Result<u64, Error> {
        let pattern = did_pattern(did)?;
        // Recorded first: if this is interrupted, the redelivered deletion repeats everything.
        let record = serde_json::json!({"did": did, "status": "deleted", "rev": rev});
        self.accounts
            .put(&encode_token(did, "did")?, Bytes::from(record.to_string()))
            .await?;
        self.remember_deletion(did, rev.unwrap_or(""));
        let live: Vec<(String, u64)> = self
            .kv
            .snapshot(&pattern, true)
            .await?
            .into_iter()
            .filter(|e| matches!(e.state, EntryState::Value(_)))
            .map(|e| (e.key, e.revision))
            .collect();
        let kv = &self.kv;
        let deleted = run_keyed(live, self.config.concurrency, |key, revision| async move {
            delete_value(kv, &key, revision, rev).await
        })
        .await?;
        Ok(deleted.into_iter().filter(|d| *d).count() as u64)
    }

    fn cached_deletion(&self, did: &str) -> Option<String> {
        let cache = self
            .deleted_accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cache.get(did).cloned()
    }

    fn remember_deletion(&self, did: &str, rev: &str) {
        let mut cache = self
            .deleted_accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cache.insert(did.to_string(), rev.to_string());
    }

    /// The rev of `did`'s account deletion, if it was deleted.
    async fn account_deletion_rev(&self, did: &str) -> Result<Option<String>, Error> {
        let Some(bytes) = self.accounts.get(&encode_token(did, "did")?).await? else {
            return Ok(None);
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        // A deletion without a rev (no event time) blocks every redelivered put.
        Ok(Some(value["rev"].as_str().unwrap_or("").to_string()))
    }

    fn classify(&self, delivery: &Delivery) -> Item {
        if !self.dids.is_empty()
            && let Some(did) = delivery.header(fpaas_event::HEADER_DID)
            && !self.dids.contains(did)
        {
            return Item::Skip("did_filtered");
        }
        let Ok(event) = fpaas_event::decode_payload(&delivery.payload) else {
            return Item::Drop("bad_event");
        };
        if !self.dids.is_empty() && !self.dids.contains(&event.did) {
            return Item::Skip("did_filtered");
        }
        let mut item = classify_event(event);
        if let Item::Commit { redelivered, .. } = &mut item {
            *redelivered = delivery.redelivered;
        }
        item
    }
}

impl Stage for RecordKvBuilder {
    type Stats = BuildStats;
    const RETRY_METRIC: &'static str = "fpaas_recordkv_batch_retries_total";

    /// Applies a batch: every write acknowledged by the server; the caller acks the messages.
    async fn apply_batch(&self, batch: &[Delivery]) -> Result<(BuildStats, Vec<Settle>), Error> {
        let started = Instant::now();
        let mut stats = BuildStats {
            batches: 1,
            messages: batch.len() as u64,
            ..Default::default()
        };
        let mut segment: Vec<(String, (String, Change, bool))> = Vec::new();
        let mut settle = vec![Settle::Ack; batch.len()];
        for (i, delivery) in batch.iter().enumerate() {
            match self.classify(delivery) {
                Item::Commit {
                    key,
                    did,
                    change,
                    redelivered,
                } => segment.push((key, (did, change, redelivered))),
                Item::AccountDeleted { did, rev } => {
                    self.flush(std::mem::take(&mut segment), &mut stats).await?;
                    let removed = self.delete_account(&did, rev.as_deref()).await?;
                    info!(%did, removed, "account deleted: records removed");
                    stats.account_deletions += 1;
                    stats.account_records_deleted += removed;
                }
                Item::Sync { did, rev } => {
                    info!(%did, %rev, "sync event: records left as they are; re-import the repository to resync");
                    stats.syncs += 1;
                }
                Item::Skip(reason) => *stats.skipped.entry(reason).or_default() += 1,
                Item::Drop(reason) => {
                    warn!(subject = %delivery.subject, stream_seq = delivery.stream_seq, reason, "event dropped");
                    *stats.dropped.entry(reason).or_default() += 1;
                    settle[i] = Settle::Term;
                }
            }
        }
        self.flush(segment, &mut stats).await?;
        // Every write of the batch is acknowledged by the server: now the messages may go.
        stats.emit_metrics(started.elapsed());
        debug!(messages = stats.messages, writes = stats.writes(), elapsed = ?started.elapsed(), "batch applied");
        Ok((stats, settle))
    }
}

fn classify_event(event: Event) -> Item {
    match event.kind {
        Kind::Commit => {
            let Some(commit) = event.commit else {
                return Item::Drop("bad_event");
            };
            let key = RecordKey::new(&commit.collection, &event.did, &commit.rkey);
            let Ok(encoded) = key.encode() else {
                return Item::Drop("bad_key");
            };
            let change = match commit.operation {
                Operation::Delete => Change::Delete { rev: commit.rev },
                op @ (Operation::Create | Operation::Update) => {
                    let (Some(record), Some(cid)) = (commit.record, commit.cid) else {
                        return Item::Drop("missing_record");
                    };
                    let Ok(record) = record.to_value() else {
                        return Item::Drop("bad_record");
                    };
                    let value = RecordValue {
                        uri: key.at_uri(),
                        did: event.did.clone(),
                        collection: commit.collection,
                        rkey: commit.rkey,
                        cid,
                        rev: commit.rev.clone(),
                        record,
                        seq: event.seq,
                        time_us: event.time_us,
                    };
                    let Ok(json) = serde_json::to_vec(&value) else {
                        return Item::Drop("bad_record");
                    };
                    Change::Put {
                        rev: commit.rev,
                        value: Bytes::from(json),
                        create: op == Operation::Create,
                    }
                }
            };
            Item::Commit {
                key: encoded,
                did: key.did,
                change,
                redelivered: false,
            }
        }
        Kind::Account => match event.account {
            Some(account) if !account.active && account.status.as_deref() == Some("deleted") => {
                Item::AccountDeleted {
                    did: event.did,
                    rev: (event.time_us > 0).then(|| tid_from_micros(event.time_us as u64, 0)),
                }
            }
            _ => Item::Skip("account_status"),
        },
        Kind::Sync => Item::Sync {
            did: event.did,
            rev: event.sync.map(|s| s.rev).unwrap_or_default(),
        },
        Kind::Identity => Item::Skip("identity"),
    }
}
