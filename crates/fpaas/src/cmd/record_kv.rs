//! `fpaas record-kv`: flags (and an optional JSON `--config` file, flags win) → [`RecordKvConfig`], the ops
//! HTTP server on `--metrics-listen`, and the record KV builder from `fpaas-recordkv` until SIGTERM / Ctrl-C,
//! which finishes and acks the batch in progress.

use anyhow::Context;
use fpaas_recordkv::{RecordKvBuilder, RecordKvConfig};

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// JSON file with `RecordKvConfig` fields (see docs/record-kv.md); flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// NATS URL(s), comma separated.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Record KV bucket.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Firehose stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// Durable consumer name = the builder's cursor.
    #[arg(long)]
    pub durable: Option<String>,
    /// Keep only this collection (NSID or prefix like app.bsky.feed.*); repeatable. Default: all.
    #[arg(long = "collection")]
    pub collections: Vec<String>,
    /// Keep only this DID; repeatable. Default: all.
    #[arg(long = "did")]
    pub dids: Vec<String>,
    /// Messages per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// KV writes in flight.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Bucket replicas when created.
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Seconds a delete marker stays before it expires; 0 = forever.
    /// At least 86400 (the firehose stream's retention), see docs/record-kv.md.
    #[arg(long)]
    pub delete_marker_ttl_secs: Option<u64>,
    /// Ops HTTP address (/metrics, /health, /ready); `none` disables.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

impl Args {
    /// The configuration: defaults, then the file, then the flags.
    pub fn to_config(&self) -> anyhow::Result<RecordKvConfig> {
        let mut cfg: RecordKvConfig = super::load_config(self.config.as_deref(), "RecordKvConfig")?;
        super::set(&mut cfg.nats_url, &self.nats_url);
        if self.metrics_listen.is_some() {
            cfg.metrics_listen.clone_from(&self.metrics_listen);
        }
        super::set(&mut cfg.bucket, &self.bucket);
        super::set(&mut cfg.stream, &self.stream);
        super::set(&mut cfg.durable, &self.durable);
        super::set(&mut cfg.batch_size, &self.batch_size);
        super::set(&mut cfg.concurrency, &self.concurrency);
        super::set(&mut cfg.replicas, &self.replicas);
        super::set(
            &mut cfg.delete_marker_ttl_secs,
            &self.delete_marker_ttl_secs,
        );
        if !self.collections.is_empty() {
            cfg.collections = self.collections.clone();
        }
        if !self.dids.is_empty() {
            cfg.dids = self.dids.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = a.to_config()?;
    if super::service::print_config(a.print_config, &cfg)? {
        return Ok(());
    }
    let (url, listen) = (cfg.nats_url.clone(), cfg.metrics_listen.clone());
    let stats = super::service::with_nats(
        "record-kv",
        &url,
        listen.as_deref(),
        "finishing the batch in progress",
        |client, health, shutdown| async move {
            let builder = RecordKvBuilder::new(&client, cfg).await.context(
                "starting the record KV builder (does the stream exist? run the shuffler or `fpaas dev`)",
            )?;
            health.up("record-kv", "running");
            Ok(builder.run(shutdown).await?)
        },
    )
    .await?;
    tracing::info!(
        messages = stats.messages,
        writes = stats.writes(),
        account_deletions = stats.account_deletions,
        syncs = stats.syncs,
        "record-kv finished"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_marker_ttl_flag_is_mapped_and_checked() {
        let cfg = Args::default().to_config().expect("defaults");
        assert_eq!(cfg.delete_marker_ttl_secs, 604_800);
        let args = |secs| Args {
            delete_marker_ttl_secs: Some(secs),
            ..Default::default()
        };
        assert_eq!(args(0).to_config().expect("0").delete_marker_ttl_secs, 0);
        assert_eq!(
            args(172_800)
                .to_config()
                .expect("2 days")
                .delete_marker_ttl_secs,
            172_800
        );
        let err = args(3_600).to_config().expect_err("below the retention");
        assert!(err.to_string().contains("86400"), "{err}");
    }
}
