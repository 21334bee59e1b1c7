//! The record KV workload: records/s written by the builder, likes/s indexed, like-index queries/s,
//! the cost of the two common watches under both key orders ([`fill_bucket`] serves the server memory
//! per record measurement, which needs server restarts and so is driven by the caller). Runs
//! against a dedicated, empty nats-server (the caller starts it): it creates the `FIREHOSE` stream and
//! the buckets it measures, and deletes the key-order buckets it made once measured.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use fpaas_event::{CommitEvent, Event, Kind, Operation};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use fpaas_bus::delete_streams;
use fpaas_recordkv::RecordKvBuilder;
use fpaas_recordkv::config::{LikeIndexConfig, RecordKvConfig};
use fpaas_recordkv::key::{RecordKey, encode_collection, encode_token};
use fpaas_recordkv::likes::{LIKE_COLLECTION, LikeIndex, LikeIndexer};
use fpaas_recordkv::store::{BucketOptions, Kv};
use fpaas_recordkv::value::tid_from_micros;

use crate::error::{Context, Result, bail};
use crate::publish::{ACKS_IN_FLIGHT, Prepared, publish_all};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Events published and applied by the builder.
    pub records: usize,
    /// Distinct DIDs among them.
    pub dids: usize,
    /// Distinct liked posts.
    pub posts: usize,
    /// Like-index queries per query kind.
    pub queries: usize,
    /// Keys per layout in the key-order measurement.
    pub layout_keys: usize,
    /// Builder batch size and write concurrency.
    pub batch_size: usize,
    /// Writes in flight.
    pub concurrency: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            records: 50_000,
            dids: 2_000,
            posts: 2_000,
            queries: 1_000,
            layout_keys: 100_000,
            batch_size: 1_000,
            concurrency: 256,
        }
    }
}

/// Results, each key ending in its unit.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    /// (key, value) in display order.
    pub figures: Vec<(String, f64)>,
}

impl BenchReport {
    fn add(&mut self, key: &str, value: f64) {
        self.figures.push((key.to_string(), value));
    }
}

const COLLECTIONS: [&str; 4] = [
    "app.bsky.feed.like",
    "app.bsky.feed.post",
    "app.bsky.feed.repost",
    "app.bsky.graph.follow",
];

fn did(i: usize) -> String {
    format!("did:plc:bench{i:019}")
}

/// The firehose mix (docs/measurements.md): 69% likes, 12% posts, 10% reposts, the rest follows; all creates.
fn event(i: usize, options: &BenchOptions) -> Event {
    let r = (i * 7_919) % 100;
    let collection = match r {
        0..=68 => COLLECTIONS[0],
        69..=80 => COLLECTIONS[1],
        81..=90 => COLLECTIONS[2],
        _ => COLLECTIONS[3],
    };
    let author = did(i % options.dids);
    let micros = 1_750_000_000_000_000u64 + i as u64 * 1_000;
    let rkey = tid_from_micros(micros, (i % 1024) as u16);
    let post = (i * 31) % options.posts.max(1);
    let record = match collection {
        "app.bsky.feed.like" | "app.bsky.feed.repost" => serde_json::json!({
            "$type": collection, "createdAt": "2026-07-04T14:39:14.123Z",
            "subject": {"uri": format!("at://{}/app.bsky.feed.post/{post}", did(post % options.dids)),
                        "cid": "bafyreiabcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrs"}}),
        "app.bsky.feed.post" => serde_json::json!({
            "$type": collection, "createdAt": "2026-07-04T14:39:14.123Z", "langs": ["en"],
            "text": "a post of about the median length seen on the firehose, with a few more words in it to be realistic"}),
        _ => serde_json::json!({"$type": collection, "createdAt": "2026-07-04T14:39:14.123Z",
                                "subject": did((i * 13) % options.dids)}),
    };
    Event {
        did: author,
        time_us: micros as i64,
        kind: Kind::Commit,
        seq: i as i64,
        time: "2026-07-04T14:39:14.123Z".into(),
        commit: Some(CommitEvent {
            rev: rkey.clone(),
            operation: Operation::Create,
            collection: collection.into(),
            rkey,
            record: Some(fpaas_event::model::RecordJson::from_value(&record)),
            cid: Some("bafyreiabcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrs".into()),
        }),
        identity: None,
        account: None,
        sync: None,
    }
}

async fn backlog(js: &jetstream::Context, stream: &str, durable: &str) -> Result<u64> {
    let stream = js.get_stream(stream).await.context("get stream")?;
    let info = stream
        .consumer_info(durable)
        .await
        .context("consumer info")?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

async fn wait_drained(js: &jetstream::Context, stream: &str, durable: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while backlog(js, stream, durable).await? > 0 {
        if Instant::now() > deadline {
            bail!("{durable} did not drain within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs the throughput, query and key-order measurements (memory per record needs server
/// restarts: see [`fill_bucket`] and the caller).
///
/// # Errors
/// Any NATS failure.
pub async fn run(client: &async_nats::Client, options: &BenchOptions) -> Result<BenchReport> {
    let mut report = BenchReport::default();
    let js = fpaas_bus::jetstream(client.clone(), ACKS_IN_FLIGHT);
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            max_bytes: 8 << 30,
            ..Default::default()
        },
    )
    .await
    .context("ensure stream")?;

    // 1. Builder: records/s written, from a full stream (catch-up speed).
    let started = Instant::now();
    let events = (0..options.records).map(|i| Prepared::event(&event(i, options)));
    let n = publish_all(&js, events, ACKS_IN_FLIGHT).await?;
    report.add("events_published", n as f64);
    report.add(
        "publish_events_per_s",
        n as f64 / started.elapsed().as_secs_f64(),
    );
    let config = RecordKvConfig {
        batch_size: options.batch_size,
        concurrency: options.concurrency,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let builder = RecordKvBuilder::new(client, config).await?;
    let task = tokio::spawn(builder.run(shutdown.clone()));
    wait_drained(&js, "FIREHOSE", "record-kv").await?;
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let stats = task.await.context("builder task")??;
    report.add("records_written", stats.writes() as f64);
    report.add("records_per_s", stats.writes() as f64 / elapsed);
    let records = Kv::open(client, "record").await?;
    let (messages, bytes) = records.usage().await?;
    report.add("kv_bytes_per_record", bytes as f64 / messages.max(1) as f64);

    // 2. Like indexer: likes/s.
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let indexer = LikeIndexer::new(
        client,
        LikeIndexConfig {
            batch_size: options.batch_size,
            concurrency: options.concurrency,
            ..Default::default()
        },
    )
    .await?;
    let task = tokio::spawn(indexer.run(shutdown.clone()));
    wait_drained(&js, "KV_record", "like-indexer").await?;
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let istats = task.await.context("indexer task")??;
    report.add("likes_indexed", istats.indexed as f64);
    report.add("likes_indexed_per_s", istats.indexed as f64 / elapsed);

    // 3. Queries: likers of a post, count of a post, likes by a DID (16 in flight).
    let index = LikeIndex::open(client, "likes").await?;
    let post_uri = |i: usize| {
        let post = i % options.posts.max(1);
        format!(
            "at://{}/app.bsky.feed.post/{post}",
            did(post % options.dids)
        )
    };
    let (rate, likers_seen) = timed_queries(options.queries, |i| {
        let (index, uri) = (&index, post_uri(i));
        async move { index.likers(&uri).await.map(|l| l.len()) }
    })
    .await?;
    report.add("get_likers_queries_per_s", rate);
    report.add(
        "get_likers_mean_likers",
        likers_seen as f64 / options.queries.max(1) as f64,
    );
    let (rate, _) = timed_queries(options.queries, |i| {
        let (index, uri) = (&index, post_uri(i));
        async move { index.count(&uri).await.map(|_| 0) }
    })
    .await?;
    report.add("count_likes_queries_per_s", rate);
    let (rate, _) = timed_queries(options.queries, |i| {
        let (index, d) = (&index, did(i % options.dids));
        async move { index.likes_by(&d).await.map(|l| l.len()) }
    })
    .await?;
    report.add("get_likes_by_queries_per_s", rate);

    // 4. Key order: the two common watches on collection-first and DID-first buckets.
    key_order(client, options, &mut report).await?;
    Ok(report)
}

/// Runs queries `0..n` with 16 in flight: (queries/s, the sum of their results).
async fn timed_queries<F, Fut>(n: usize, query: F) -> Result<(f64, usize)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<usize, fpaas_recordkv::Error>>,
{
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(query)
        .buffer_unordered(16)
        .collect()
        .await;
    let mut sum = 0;
    for r in results {
        sum += r?;
    }
    Ok((n as f64 / started.elapsed().as_secs_f64(), sum))
}

/// The key-order measurement's buckets: (name, whether keys are DID-first).
const KEY_ORDER_BUCKETS: [(&str, bool); 2] =
    [("bench_coll_first", false), ("bench_did_first", true)];

/// Fills two buckets with the same `layout_keys` records under both key orders and times reading the
/// initial values of "one collection, all DIDs" and "one DID, all collections".
async fn key_order(
    client: &async_nats::Client,
    options: &BenchOptions,
    report: &mut BenchReport,
) -> Result<()> {
    let value = Bytes::from(vec![b'x'; 400]);
    let n = options.layout_keys;
    // 2,000 DIDs (50 records each), 4 collections with the firehose mix.
    let dids = (n / 50).max(1);
    for (bucket, did_first) in KEY_ORDER_BUCKETS {
        let kv = Kv::open_or_create(
            client,
            &BucketOptions {
                bucket: bucket.into(),
                description: "fpaas bench: key order".into(),
                replicas: 1,
                delete_marker_ttl: None,
            },
        )
        .await?;
        let js = fpaas_bus::jetstream(client.clone(), ACKS_IN_FLIGHT);
        let mut msgs = Vec::with_capacity(n);
        for i in 0..n {
            let collection = COLLECTIONS[match (i * 7_919) % 100 {
                0..=68 => 0,
                69..=80 => 1,
                81..=90 => 2,
                _ => 3,
            }];
            let key = RecordKey::new(collection, did(i % dids), tid_from_micros(i as u64, 0));
            let c = encode_collection(&key.collection)?;
            let d = encode_token(&key.did, "did")?;
            let r = encode_token(&key.rkey, "rkey")?;
            let subject = if did_first {
                format!("$KV.{bucket}.{d}.{c}.{r}")
            } else {
                format!("$KV.{bucket}.{c}.{d}.{r}")
            };
            msgs.push(Prepared::bare(subject, value.clone()));
        }
        publish_all(&js, msgs, ACKS_IN_FLIGHT).await?;
        let like = encode_collection(LIKE_COLLECTION)?;
        let one_did = encode_token(&did(dids / 2), "did")?;
        let (collection_pattern, did_pattern) = if did_first {
            (format!("*.{like}.*"), format!("{one_did}.>"))
        } else {
            (format!("{like}.>"), format!("*.{one_did}.*"))
        };
        let layout = if did_first {
            "did_first"
        } else {
            "collection_first"
        };
        for (what, pattern) in [("collection", collection_pattern), ("did", did_pattern)] {
            // Best of 3: the first read also warms the server's subject index.
            let mut best = f64::MAX;
            let mut got = 0;
            for _ in 0..3 {
                let started = Instant::now();
                got = kv.snapshot_each(&pattern, false, |_| {}).await?;
                best = best.min(started.elapsed().as_secs_f64() * 1_000.0);
            }
            report.add(&format!("{layout}_watch_one_{what}_initial_ms"), best);
            report.add(&format!("{layout}_watch_one_{what}_keys"), got as f64);
        }
    }
    // The key-order buckets exist for this measurement only.
    let streams: Vec<String> = KEY_ORDER_BUCKETS
        .iter()
        .map(|(bucket, _)| format!("KV_{bucket}"))
        .collect();
    delete_streams(client, &streams).await?;
    Ok(())
}

/// Writes `n` records of `value_size` bytes into `bucket` under collection-first keys (the firehose
/// collection mix, 50 records per DID): the fill used to measure server memory per record.
///
/// # Errors
/// Any NATS failure.
pub async fn fill_bucket(
    client: &async_nats::Client,
    bucket: &str,
    n: usize,
    value_size: usize,
) -> Result<()> {
    Kv::open_or_create(
        client,
        &BucketOptions {
            bucket: bucket.into(),
            description: "fpaas bench: memory per record".into(),
            replicas: 1,
            delete_marker_ttl: None,
        },
    )
    .await?;
    let js = fpaas_bus::jetstream(client.clone(), ACKS_IN_FLIGHT);
    let value = Bytes::from(vec![b'x'; value_size]);
    let dids = (n / 50).max(1);
    let mut msgs = Vec::with_capacity(n);
    for i in 0..n {
        let key = RecordKey::new(
            COLLECTIONS[i % 4],
            did(i % dids),
            tid_from_micros(i as u64, 0),
        );
        msgs.push(Prepared::bare(
            format!("$KV.{bucket}.{}", key.encode()?),
            value.clone(),
        ));
    }
    publish_all(&js, msgs, ACKS_IN_FLIGHT).await?;
    Ok(())
}
