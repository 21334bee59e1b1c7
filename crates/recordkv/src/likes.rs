//! `fpaas like-indexer` and the like queries: likes-by-subject (post AT-URI → likers, count) and
//! likes-by-actor (DID → liked posts), kept in one KV bucket (`likes`) derived from the record KV.
//!
//! Layout (every component encoded with [`crate::key::encode_token`]):
//!
//! | key | value | read by |
//! |---|---|---|
//! | `s.<subject uri>.<liker did>.<like rkey>` | [`LikeEntry`] | `get-likers <uri>`: keys under `s.<uri>.*.*`; count = number of keys |
//! | `a.<liker did>.<like rkey>` | [`LikeEntry`] | `get-likes-by <did>`: keys under `a.<did>.*`; also the undo record of an unlike |
//!
//! An unlike reaches the indexer as a delete marker on `app_bsky_feed_like.<did>.<rkey>` with no
//! value; the `a.` entry of that (liker, rkey) says which post it liked, so the `s.` entry can be
//! removed. Index entries are removed without markers ([`Kv::remove`]), so the bucket holds exactly
//! one subject per live like per direction and a count is one consumer-info round trip.
//!
//! The indexer is a durable consumer on the record bucket's stream (`KV_record`, filter
//! `$KV.record.app_bsky_feed_like.>`) from the beginning, then live; every step is idempotent
//! (puts of the same value, removals of what is already gone), messages are acked after their
//! index writes, so it can be killed and restarted at any point.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument};

use fpaas_bus::{Delivery, DurableReader, ReaderOptions, Settle};

use crate::batches::{self, Stage};
use crate::config::LikeIndexConfig;
use crate::error::Error;
use crate::key::{RecordKey, collection_pattern, encode_token, kv_subject};
use crate::keyed::run_keyed;
use crate::store::{BucketOptions, EntryState, Kv};
use crate::value::RecordValue;

/// The like collection.
pub const LIKE_COLLECTION: &str = "app.bsky.feed.like";
/// Longest subject AT-URI indexed (bytes); longer ones are dropped (`subject_too_long`) so that index
/// keys stay far below the NATS control-line limit.
pub const MAX_SUBJECT_URI: usize = 512;

/// One like, as stored in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LikeEntry {
    /// The DID that liked.
    pub liker: String,
    /// The like record's key.
    pub rkey: String,
    /// The AT-URI of the like record.
    pub uri: String,
    /// The AT-URI of what was liked (usually a post).
    pub subject: String,
    /// The CID of the liked record, when the like carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_cid: Option<String>,
    /// The like's `createdAt`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Repository revision of the like.
    pub rev: String,
}

/// `s.<subject>.<liker>.<rkey>`.
fn subject_key(subject: &str, liker: &str, rkey: &str) -> Result<String, Error> {
    Ok(format!(
        "s.{}.{}.{}",
        encode_token(subject, "subject uri")?,
        encode_token(liker, "did")?,
        encode_token(rkey, "rkey")?
    ))
}

/// `a.<liker>.<rkey>`.
fn actor_key(liker: &str, rkey: &str) -> Result<String, Error> {
    Ok(format!(
        "a.{}.{}",
        encode_token(liker, "did")?,
        encode_token(rkey, "rkey")?
    ))
}

/// Reads the like index.
#[derive(Clone, Debug)]
pub struct LikeIndex {
    kv: Kv,
}

impl LikeIndex {
    /// Opens the index bucket (it must exist: the indexer creates it).
    ///
    /// # Errors
    /// [`Error::Bus`] when the bucket does not exist or the server cannot be reached.
    pub async fn open(client: &fpaas_bus::Client, bucket: &str) -> Result<Self, Error> {
        Ok(Self {
            kv: Kv::open(client, bucket).await?,
        })
    }

    /// Everyone who liked `subject_uri`, sorted by liker then rkey.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty URI, [`Error::Bus`] on a server failure.
    pub async fn likers(&self, subject_uri: &str) -> Result<Vec<LikeEntry>, Error> {
        let pattern = format!("s.{}.*.*", encode_token(subject_uri, "subject uri")?);
        self.read(&pattern).await
    }

    /// The number of likes of `subject_uri` (one round trip, no values read).
    ///
    /// # Errors
    /// As [`LikeIndex::likers`].
    pub async fn count(&self, subject_uri: &str) -> Result<u64, Error> {
        let pattern = format!("s.{}.*.*", encode_token(subject_uri, "subject uri")?);
        self.kv.count(&pattern).await
    }

    /// Everything `did` liked, sorted by like rkey (TIDs: oldest first).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty DID, [`Error::Bus`] on a server failure.
    pub async fn likes_by(&self, did: &str) -> Result<Vec<LikeEntry>, Error> {
        let pattern = format!("a.{}.*", encode_token(did, "did")?);
        self.read(&pattern).await
    }

    async fn read(&self, pattern: &str) -> Result<Vec<LikeEntry>, Error> {
        let mut out = Vec::new();
        self.kv
            .snapshot_each(pattern, false, |entry| {
                if let EntryState::Value(bytes) = entry.state
                    && let Ok(like) = serde_json::from_slice::<LikeEntry>(&bytes)
                {
                    out.push(like);
                }
            })
            .await?;
        out.sort_by(|a, b| (&a.liker, &a.rkey).cmp(&(&b.liker, &b.rkey)));
        Ok(out)
    }
}

/// Counts of the indexer (per batch, or summed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Batches applied.
    pub batches: u64,
    /// Messages received.
    pub messages: u64,
    /// Likes indexed (put).
    pub indexed: u64,
    /// Unlikes that removed an indexed like.
    pub removed: u64,
    /// Unlikes of likes that were never indexed (nothing to undo).
    pub unknown_unlikes: u64,
    /// Messages that could not be indexed, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

impl batches::Stats for IndexStats {
    fn add(&mut self, other: &IndexStats) {
        self.batches += other.batches;
        self.messages += other.messages;
        self.indexed += other.indexed;
        self.removed += other.removed;
        self.unknown_unlikes += other.unknown_unlikes;
        for (k, v) in &other.dropped {
            *self.dropped.entry(k).or_default() += v;
        }
    }
}

enum LikeChange {
    Like(LikeEntry),
    Unlike,
}

enum Applied {
    Indexed,
    Removed,
    Unknown,
}

/// The like indexer.
#[derive(Debug)]
pub struct LikeIndexer {
    config: LikeIndexConfig,
    index: Kv,
    reader: DurableReader,
    record_prefix: String,
}

impl LikeIndexer {
    /// Creates the index bucket if missing and the durable consumer on the record bucket's stream.
    /// The record bucket must exist (the record KV builder creates it).
    ///
    /// # Errors
    /// [`Error::Config`] for a bad config, [`Error::Bus`] when the server refuses.
    pub async fn new(client: &fpaas_bus::Client, config: LikeIndexConfig) -> Result<Self, Error> {
        config.validate()?;
        let records = Kv::open(client, &config.record_bucket).await?;
        let index = Kv::open_or_create(
            client,
            &BucketOptions {
                bucket: config.bucket.clone(),
                description: "fpaas like index: s.<subject>.<liker>.<rkey>, a.<liker>.<rkey>"
                    .into(),
                replicas: config.replicas,
                delete_marker_ttl: None,
            },
        )
        .await?;
        let reader = DurableReader::ensure(
            client,
            &ReaderOptions {
                stream: records.stream_name(),
                durable: config.durable.clone(),
                // The description existing deployments' durable has (as the builder's).
                description: "fpaas recordkv".into(),
                filters: vec![kv_subject(
                    &config.record_bucket,
                    &collection_pattern(LIKE_COLLECTION)?,
                )],
                ack_wait: config.ack_wait(),
                max_ack_pending: (config.batch_size * 2) as i64,
            },
        )
        .await
        .map_err(|e| Error::bus("create durable consumer", e))?;
        Ok(Self {
            record_prefix: format!("$KV.{}.", config.record_bucket),
            config,
            index,
            reader,
        })
    }

    /// Runs until `shutdown` is cancelled (the batch in progress is finished and acked first);
    /// retryable failures are retried with backoff by the bus's consume loop.
    ///
    /// # Errors
    /// Only for errors that retrying cannot fix ([`Error::is_retryable`] false).
    #[instrument(skip_all, fields(bucket = %self.config.bucket, durable = %self.config.durable))]
    pub async fn run(self, shutdown: CancellationToken) -> Result<IndexStats, Error> {
        info!("like indexer started");
        // Every drop and retry series exists from zero (alerts see 0, not a missing series).
        for reason in [
            "foreign_subject",
            "bad_key",
            "not_a_like",
            "subject_too_long",
        ] {
            metrics::counter!("fpaas_likeindex_drops_total", "reason" => reason).increment(0);
        }
        metrics::counter!("fpaas_likeindex_batch_retries_total").increment(0);
        let (total, _) =
            batches::run(&self, &self.reader, self.config.batch_size, &shutdown).await?;
        info!(?total, "like indexer stopped");
        Ok(total)
    }

    /// Fetches and applies one batch.
    ///
    /// # Errors
    /// [`Error::Bus`] when fetching or writing fails (the batch is then not acked).
    pub async fn step(&mut self, wait: Duration) -> Result<IndexStats, Error> {
        batches::step(&*self, &self.reader, self.config.batch_size, wait).await
    }

    /// Record KV changes not yet indexed.
    ///
    /// # Errors
    /// [`Error::Bus`] on a server failure.
    pub async fn backlog(&mut self) -> Result<u64, Error> {
        self.reader
            .backlog()
            .await
            .map_err(|e| Error::bus("consumer info", e))
    }

    /// (liker, rkey, change) of a record KV message, or a drop reason.
    fn classify(&self, delivery: &Delivery) -> Result<(String, String, LikeChange), &'static str> {
        let key = delivery
            .subject
            .strip_prefix(&self.record_prefix)
            .ok_or("foreign_subject")?;
        let key = RecordKey::decode(key).map_err(|_| "bad_key")?;
        if key.collection != LIKE_COLLECTION {
            return Err("not_a_like");
        }
        if delivery.kv_deleted {
            return Ok((key.did, key.rkey, LikeChange::Unlike));
        }
        let Ok(value) = serde_json::from_slice::<RecordValue>(&delivery.payload) else {
            // Not a record we can read: whatever was indexed for this key is undone.
            return Ok((key.did, key.rkey, LikeChange::Unlike));
        };
        let subject = value
            .record
            .pointer("/subject/uri")
            .and_then(|v| v.as_str());
        let Some(subject) = subject.filter(|s| !s.is_empty()) else {
            return Ok((key.did, key.rkey, LikeChange::Unlike));
        };
        if subject.len() > MAX_SUBJECT_URI {
            return Err("subject_too_long");
        }
        let entry = LikeEntry {
            liker: key.did.clone(),
            rkey: key.rkey.clone(),
            uri: value.uri,
            subject: subject.to_string(),
            subject_cid: value
                .record
                .pointer("/subject/cid")
                .and_then(|v| v.as_str())
                .map(String::from),
            created_at: value
                .record
                .get("createdAt")
                .and_then(|v| v.as_str())
                .map(String::from),
            rev: value.rev,
        };
        Ok((key.did, key.rkey, LikeChange::Like(entry)))
    }
}

/// Applies one like or unlike to the index (idempotent).
async fn apply_like(
    index: &Kv,
    liker: &str,
    rkey: &str,
    change: LikeChange,
) -> Result<Applied, Error> {
    let a_key = actor_key(liker, rkey)?;
    let previous = match index.get(&a_key).await? {
        Some(bytes) => serde_json::from_slice::<LikeEntry>(&bytes).ok(),
        None => None,
    };
    match change {
        LikeChange::Like(entry) => {
            if let Some(old) = &previous
                && old.subject != entry.subject
            {
                // An update that changed the subject: undo the old direction first.
                index
                    .remove(&subject_key(&old.subject, liker, rkey)?)
                    .await?;
            }
            let value = Bytes::from(serde_json::to_vec(&entry).unwrap_or_default());
            // The undo record first, so a crash between the two writes never leaves an `s.` entry
            // that an unlike could not find.
            if previous.as_ref() != Some(&entry) {
                index.put(&a_key, value.clone()).await?;
            }
            index
                .put(&subject_key(&entry.subject, liker, rkey)?, value)
                .await?;
            Ok(Applied::Indexed)
        }
        LikeChange::Unlike => match previous {
            Some(old) => {
                index
                    .remove(&subject_key(&old.subject, liker, rkey)?)
                    .await?;
                index.remove(&a_key).await?;
                Ok(Applied::Removed)
            }
            None => Ok(Applied::Unknown),
        },
    }
}

impl Stage for LikeIndexer {
    type Stats = IndexStats;
    const RETRY_METRIC: &'static str = "fpaas_likeindex_batch_retries_total";

    /// Applies a batch: every index write acknowledged by the server; the caller acks the messages.
    async fn apply_batch(&self, batch: &[Delivery]) -> Result<(IndexStats, Vec<Settle>), Error> {
        let started = Instant::now();
        let mut stats = IndexStats {
            batches: 1,
            messages: batch.len() as u64,
            ..Default::default()
        };
        let mut work: Vec<(String, (String, String, LikeChange))> = Vec::with_capacity(batch.len());
        let mut settle = vec![Settle::Ack; batch.len()];
        for (i, delivery) in batch.iter().enumerate() {
            match self.classify(delivery) {
                Ok((liker, rkey, change)) => {
                    work.push((format!("{liker}/{rkey}"), (liker, rkey, change)));
                }
                Err(reason) => {
                    debug!(subject = %delivery.subject, reason, "like not indexed");
                    *stats.dropped.entry(reason).or_default() += 1;
                    settle[i] = Settle::Term;
                }
            }
        }
        let index = &self.index;
        let applied = run_keyed(
            work,
            self.config.concurrency,
            |_, (liker, rkey, change)| async move { apply_like(index, &liker, &rkey, change).await },
        )
        .await?;
        for a in applied {
            match a {
                Applied::Indexed => stats.indexed += 1,
                Applied::Removed => stats.removed += 1,
                Applied::Unknown => stats.unknown_unlikes += 1,
            }
        }
        metrics::counter!("fpaas_likeindex_likes_indexed_total").increment(stats.indexed);
        metrics::counter!("fpaas_likeindex_likes_removed_total").increment(stats.removed);
        metrics::counter!("fpaas_likeindex_unknown_unlikes_total").increment(stats.unknown_unlikes);
        for (reason, n) in &stats.dropped {
            metrics::counter!("fpaas_likeindex_drops_total", "reason" => *reason).increment(*n);
        }
        metrics::histogram!("fpaas_likeindex_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok((stats, settle))
    }
}
