//! `fpaas put-record`, `fpaas import-car` and `fpaas reset`: writing records straight into the record KV
//! (the local-development contract and backfill from a repository export) and removing the project's
//! streams, buckets and consumers.

use std::io::Write;

use anyhow::Context;
use fpaas_bus::{delete_streams, stream_names};
use fpaas_recordkv::import::{import_car as import, put_record as put};
use fpaas_recordkv::store::{BucketOptions, Kv};
use fpaas_recordkv::{DEFAULT_LIKES_BUCKET, DEFAULT_RECORD_BUCKET, DEFAULT_STREAM};

#[derive(clap::Args, Debug)]
pub struct PutRecordArgs {
    /// at://<did>/<collection>/<rkey>
    pub uri: String,
    /// The record as ATProto JSON (`$link`, `$bytes`), e.g. '{"$type":"app.bsky.feed.like",…}'; `-` reads stdin.
    pub json: String,
    /// Repository revision (TID) to store; default: a TID of now, so the mock wins over older data.
    #[arg(long)]
    pub rev: Option<String>,
    /// NATS URL(s), comma separated.
    #[arg(long, env = "FPAAS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Record KV bucket (created when missing).
    #[arg(long, default_value = DEFAULT_RECORD_BUCKET)]
    pub bucket: String,
}

/// Opens the record bucket; its delete markers (import pruning) expire after `marker_ttl`.
async fn open_bucket(
    url: &str,
    bucket: &str,
    who: &str,
    marker_ttl: Option<std::time::Duration>,
) -> anyhow::Result<Kv> {
    let client = fpaas_bus::connect(url, who).await?;
    Ok(Kv::open_or_create(
        &client,
        &BucketOptions {
            bucket: bucket.to_string(),
            description: "fpaas record KV: <collection>.<did>.<rkey> -> record JSON".into(),
            replicas: 1,
            delete_marker_ttl: marker_ttl,
        },
    )
    .await?)
}

pub async fn put_record(a: PutRecordArgs) -> anyhow::Result<()> {
    let text = if a.json == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the record from stdin")?
    } else {
        a.json.clone()
    };
    let record: serde_json::Value =
        serde_json::from_str(&text).context("the record is not JSON")?;
    let kv = open_bucket(&a.nats_url, &a.bucket, "fpaas-put-record", None).await?;
    let (value, outcome) = put(&kv, &a.uri, record, a.rev).await?;
    eprintln!("{}: {}", value.uri, outcome.as_str());
    println!("{}", serde_json::to_string(&value)?);
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ImportCarArgs {
    /// A repository export (com.atproto.sync.getRepo CAR), e.g. testdata/corpus/repo.car.
    pub file: std::path::PathBuf,
    /// Also put delete markers on this DID's records that the export does not hold (a resync).
    #[arg(long)]
    pub prune: bool,
    /// Import only this collection (NSID); repeatable. Default: all.
    #[arg(long = "collection")]
    pub collections: Vec<String>,
    /// NATS URL(s), comma separated.
    #[arg(long, env = "FPAAS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Record KV bucket (created when missing).
    #[arg(long, default_value = DEFAULT_RECORD_BUCKET)]
    pub bucket: String,
    /// KV writes in flight.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Seconds the delete markers of `--prune` stay (like `fpaas record-kv`'s); 0 = forever, else
    /// at least 86400.
    #[arg(long, default_value_t = fpaas_recordkv::config::DEFAULT_DELETE_MARKER_TTL_SECS)]
    pub delete_marker_ttl_secs: u64,
}

pub async fn import_car(a: ImportCarArgs) -> anyhow::Result<()> {
    let marker_ttl = fpaas_recordkv::config::delete_marker_ttl(a.delete_marker_ttl_secs)?;
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let kv = open_bucket(&a.nats_url, &a.bucket, "fpaas-import-car", marker_ttl).await?;
    let collections = a.collections.clone();
    let keep = move |c: &str| collections.iter().any(|k| k == c);
    let filter: Option<&dyn Fn(&str) -> bool> = if a.collections.is_empty() {
        None
    } else {
        Some(&keep)
    };
    let report = import(&kv, bytes.into(), a.prune, filter, a.concurrency.max(1)).await?;
    println!(
        "{}",
        serde_json::json!({
            "did": report.did, "rev": report.rev, "records": report.records,
            "outcomes": report.outcomes, "pruned": report.pruned, "skipped": report.skipped,
        })
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ResetArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Remove every stream and bucket on the server, not only the project's.
    #[arg(long)]
    pub all: bool,
    /// NATS URL(s), comma separated.
    #[arg(long, env = "FPAAS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

/// The project's streams: the firehose stream and the KV buckets of the record KV, the like index and
/// the shuffler cursors (deleting a stream deletes its consumers). The benchmarks run on servers of their
/// own and remove what they create.
fn project_streams() -> Vec<String> {
    let mut names = vec![DEFAULT_STREAM.to_string()];
    for bucket in [
        DEFAULT_RECORD_BUCKET.to_string(),
        format!("{DEFAULT_RECORD_BUCKET}_accounts"),
        DEFAULT_LIKES_BUCKET.to_string(),
        "fpaas_cursors".to_string(),
    ] {
        names.push(format!("KV_{bucket}"));
    }
    names
}

pub async fn reset(a: ResetArgs) -> anyhow::Result<()> {
    let client = fpaas_bus::connect(&a.nats_url, "fpaas-reset").await?;
    let existing = stream_names(&client).await?;
    let wanted = project_streams();
    let targets: Vec<String> = existing
        .into_iter()
        .filter(|name| a.all || wanted.contains(name))
        .collect();
    if targets.is_empty() {
        eprintln!("nothing to remove on {}", a.nats_url);
        return Ok(());
    }
    if !a.yes {
        eprint!(
            "remove {} from {} (their data and consumers)? [y/N] ",
            targets.join(", "),
            a.nats_url
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            anyhow::bail!("aborted: nothing removed");
        }
    }
    let deleted = delete_streams(&client, &targets).await?;
    for name in &deleted {
        println!("removed {name}");
    }
    Ok(())
}
