//! `fpaas bench record-kv`: records/s written by the builder, likes/s indexed, like-index queries/s,
//! the cost of the two common watches under both key orders ([`fill_bucket`] serves the server memory
//! per record measurement, which needs server restarts and so is driven by the caller). Runs
//! against a dedicated, empty nats-server (the caller starts it): it creates the `FIREHOSE` stream and
//! the buckets it measures.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use fpaas_event::{CommitEvent, Event, Kind, Operation};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::RecordKvBuilder;
use crate::config::{LikeIndexConfig, RecordKvConfig};
use crate::error::Error;
use crate::key::{RecordKey, encode_collection, encode_token};
use crate::likes::{LIKE_COLLECTION, LikeIndex, LikeIndexer};
use crate::store::{BucketOptions, Kv};
use crate::value::tid_from_micros;

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

async fn publish_all(
    js: &jetstream::Context,
    events: impl Iterator<Item = Event>,
) -> Result<usize, Error> {
    let mut acks = futures::stream::FuturesOrdered::new();
    let mut n = 0;
    for e in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", fpaas_event::msg_id(&e));
        headers.insert(fpaas_event::HEADER_DID, e.did.as_str());
        let ack = js
            .publish_with_headers(fpaas_event::subject(&e), headers, e.to_json_vec().into())
            .await
            .map_err(|err| Error::nats("publish", err))?;
        acks.push_back(ack.into_future());
        if acks.len() >= 1_024
            && let Some(ack) = acks.next().await
        {
            ack.map_err(|err| Error::nats("publish ack", err))?;
        }
        n += 1;
    }
    while let Some(ack) = acks.next().await {
        ack.map_err(|err| Error::nats("publish ack", err))?;
    }
    Ok(n)
}

async fn backlog(js: &jetstream::Context, stream: &str, durable: &str) -> Result<u64, Error> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| Error::nats("get stream", e))?;
    let info = stream
        .consumer_info(durable)
        .await
        .map_err(|e| Error::nats("consumer info", e))?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

async fn wait_drained(js: &jetstream::Context, stream: &str, durable: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while backlog(js, stream, durable).await? > 0 {
        if Instant::now() > deadline {
            return Err(Error::Config(format!(
                "{durable} did not drain within 600 s"
            )));
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
pub async fn run(
    client: &async_nats::Client,
    options: &BenchOptions,
) -> Result<BenchReport, Error> {
    let mut report = BenchReport::default();
    let js = fpaas_bus::jetstream(client.clone(), 1_024);
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            max_bytes: 8 << 30,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| Error::nats("ensure stream", e))?;

    // 1. Builder: records/s written, from a full stream (catch-up speed).
    let started = Instant::now();
    let n = publish_all(&js, (0..options.records).map(|i| event(i, options))).await?;
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
    let stats = task
        .await
        .map_err(|e| Error::Config(format!("builder task: {e}")))??;
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
    let istats = task
        .await
        .map_err(|e| Error::Config(format!("indexer task: {e}")))??;
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
    let mut likers_seen = 0usize;
    let started = Instant::now();
    let results: Vec<Result<usize, Error>> = futures::stream::iter(0..options.queries)
        .map(|i| {
            let index = &index;
            let uri = post_uri(i);
            async move { index.likers(&uri).await.map(|l| l.len()) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        likers_seen += r?;
    }
    report.add(
        "get_likers_queries_per_s",
        options.queries as f64 / started.elapsed().as_secs_f64(),
    );
    report.add(
        "get_likers_mean_likers",
        likers_seen as f64 / options.queries.max(1) as f64,
    );
    let started = Instant::now();
    let counts: Vec<Result<u64, Error>> = futures::stream::iter(0..options.queries)
        .map(|i| {
            let index = &index;
            let uri = post_uri(i);
            async move { index.count(&uri).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for c in counts {
        c?;
    }
    report.add(
        "count_likes_queries_per_s",
        options.queries as f64 / started.elapsed().as_secs_f64(),
    );
    let started = Instant::now();
    let by: Vec<Result<usize, Error>> = futures::stream::iter(0..options.queries)
        .map(|i| {
            let index = &index;
            let d = did(i % options.dids);
            async move { index.likes_by(&d).await.map(|l| l.len()) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for b in by {
        b?;
    }
    report.add(
        "get_likes_by_queries_per_s",
        options.queries as f64 / started.elapsed().as_secs_f64(),
    );

    // 4. Key order: the two common watches on collection-first and DID-first buckets.
    key_order(client, options, &mut report).await?;
    Ok(report)
}

/// Fills two buckets with the same `layout_keys` records under both key orders and times reading the
/// initial values of "one collection, all DIDs" and "one DID, all collections".
async fn key_order(
    client: &async_nats::Client,
    options: &BenchOptions,
    report: &mut BenchReport,
) -> Result<(), Error> {
    let value = Bytes::from(vec![b'x'; 400]);
    let n = options.layout_keys;
    // 2,000 DIDs (50 records each), 4 collections with the firehose mix.
    let dids = (n / 50).max(1);
    for (bucket, did_first) in [("bench_coll_first", false), ("bench_did_first", true)] {
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
        let js = fpaas_bus::jetstream(client.clone(), 1_024);
        let mut acks = futures::stream::FuturesUnordered::new();
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
            acks.push(
                js.publish(subject, value.clone())
                    .await
                    .map_err(|e| Error::nats("publish", e))?
                    .into_future(),
            );
            if acks.len() >= 1_024
                && let Some(ack) = acks.next().await
            {
                ack.map_err(|e| Error::nats("publish ack", e))?;
            }
        }
        while let Some(ack) = acks.next().await {
            ack.map_err(|e| Error::nats("publish ack", e))?;
        }
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
) -> Result<(), Error> {
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
    let js = fpaas_bus::jetstream(client.clone(), 1_024);
    let value = Bytes::from(vec![b'x'; value_size]);
    let dids = (n / 50).max(1);
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let key = RecordKey::new(
            COLLECTIONS[i % 4],
            did(i % dids),
            tid_from_micros(i as u64, 0),
        );
        acks.push(
            js.publish(format!("$KV.{bucket}.{}", key.encode()?), value.clone())
                .await
                .map_err(|e| Error::nats("publish", e))?
                .into_future(),
        );
        if acks.len() >= 1_024
            && let Some(ack) = acks.next().await
        {
            ack.map_err(|e| Error::nats("publish ack", e))?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack.map_err(|e| Error::nats("publish ack", e))?;
    }
    Ok(())
}
