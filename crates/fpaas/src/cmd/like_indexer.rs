//! `fpaas like-indexer`: flags (and an optional JSON `--config`, flags win) → [`LikeIndexConfig`], the ops
//! HTTP server, and the like indexer from `fpaas-recordkv` until SIGTERM / Ctrl-C.

use anyhow::Context;
use fpaas_recordkv::{LikeIndexConfig, LikeIndexer};

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// JSON file with `LikeIndexConfig` fields (see docs/record-kv.md); flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// NATS URL(s), comma separated.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Record KV bucket to read.
    #[arg(long)]
    pub record_bucket: Option<String>,
    /// Index bucket to write.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Durable consumer name.
    #[arg(long)]
    pub durable: Option<String>,
    /// Messages per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Index writes in flight.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Ops HTTP address (/metrics, /health, /ready); `none` disables.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

impl Args {
    /// The configuration: defaults, then the file, then the flags.
    pub fn to_config(&self) -> anyhow::Result<LikeIndexConfig> {
        let mut cfg: LikeIndexConfig =
            super::load_config(self.config.as_deref(), "LikeIndexConfig")?;
        super::set(&mut cfg.record_bucket, &self.record_bucket);
        super::set(&mut cfg.nats_url, &self.nats_url);
        if self.metrics_listen.is_some() {
            cfg.metrics_listen.clone_from(&self.metrics_listen);
        }
        super::set(&mut cfg.bucket, &self.bucket);
        super::set(&mut cfg.durable, &self.durable);
        super::set(&mut cfg.batch_size, &self.batch_size);
        super::set(&mut cfg.concurrency, &self.concurrency);
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
        "like-indexer",
        &url,
        listen.as_deref(),
        "finishing the batch in progress",
        |client, health, shutdown| async move {
            let indexer = LikeIndexer::new(&client, cfg).await.context(
                "starting the like indexer (does the record bucket exist? run `fpaas record-kv`)",
            )?;
            health.up("like-indexer", "running");
            Ok(indexer.run(shutdown).await?)
        },
    )
    .await?;
    tracing::info!(
        indexed = stats.indexed,
        removed = stats.removed,
        "like-indexer finished"
    );
    Ok(())
}
