//! `fpaas worker`: configuration ([`WorkerConfig`]: defaults → `--config` file → `FPAAS_*` environment →
//! flags), the ops HTTP server, and the subscription worker from `fpaas-pipeline` until SIGTERM / Ctrl-C,
//! which stops its runners (a batch in flight is finished by the next owner, with the same id) and hands its
//! partition leases back so other workers take them at once.

use fpaas_pipeline::WorkerConfig;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// JSON or TOML file with `WorkerConfig` fields (see docs/config.md); flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// NATS URL(s), comma separated.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Firehose stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// This worker's name (default: random per start).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Partition lease lifetime in seconds.
    #[arg(long)]
    pub lease_ttl_secs: Option<u64>,
    /// Replicas of the worker's buckets and dead-letter stream when created.
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Allow webhook targets on loopback addresses (local development and tests only).
    #[arg(long)]
    pub allow_loopback: bool,
    /// Allow webhook targets on private (RFC 1918 / ULA) addresses.
    #[arg(long)]
    pub allow_private: bool,
    /// Ops HTTP address (/metrics, /health, /ready); `none` disables.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

impl Args {
    /// The configuration: defaults, then the file and environment, then the flags.
    pub fn to_config(&self) -> anyhow::Result<WorkerConfig> {
        let mut cfg: WorkerConfig = super::load_config(self.config.as_deref(), "WorkerConfig")?;
        super::set(&mut cfg.nats_url, &self.nats_url);
        if self.metrics_listen.is_some() {
            cfg.metrics_listen.clone_from(&self.metrics_listen);
        }
        super::set(&mut cfg.stream, &self.stream);
        super::set(&mut cfg.worker_id, &self.worker_id);
        super::set(&mut cfg.lease_ttl_secs, &self.lease_ttl_secs);
        super::set(&mut cfg.replicas, &self.replicas);
        cfg.webhook_addresses.allow_loopback |= self.allow_loopback;
        cfg.webhook_addresses.allow_private |= self.allow_private;
        Ok(cfg)
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = a.to_config()?;
    if super::service::print_config(a.print_config, &cfg)? {
        return Ok(());
    }
    let (url, listen) = (cfg.nats_url.clone(), cfg.metrics_listen.clone());
    super::service::with_nats(
        "worker",
        &url,
        listen.as_deref(),
        "stopping runners and handing back leases",
        |client, health, shutdown| async move {
            health.up("worker", "running");
            Ok(fpaas_pipeline::run(client, cfg, shutdown).await?)
        },
    )
    .await
}
