//! `fpaas serve`: flags (and an optional `--config` file, then `FPAAS_*` variables; flags win) →
//! [`ApiConfig`], run through [`super::service::with_nats`] (ops server, `nats` health, signals, drain), and the
//! HTTP API from `fpaas-api` until SIGTERM / Ctrl-C, which finishes the requests in flight.

use fpaas_api::ApiConfig;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// JSON or TOML file with `ApiConfig` fields (docs/config.md); flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective configuration as JSON (the admin token masked) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address of the HTTP API.
    #[arg(long)]
    pub listen: Option<String>,
    /// NATS URL(s), comma separated.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Ops HTTP address (/metrics, /health, /ready); `none` disables.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Replicas of the control-plane buckets and the dead-letter stream when created.
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Accept webhook URLs on loopback addresses (local development and tests only).
    #[arg(long)]
    pub allow_loopback: bool,
    /// Accept webhook URLs on private (RFC 1918, ULA) addresses.
    #[arg(long)]
    pub allow_private: bool,
}

impl Args {
    /// The configuration: defaults, then the file and the environment (`FPAAS_ADMIN_TOKEN` …), then the flags.
    pub fn to_config(&self) -> anyhow::Result<ApiConfig> {
        let mut cfg: ApiConfig = super::load_config(self.config.as_deref(), "ApiConfig")?;
        super::set(&mut cfg.listen, &self.listen);
        super::set(&mut cfg.nats_url, &self.nats_url);
        super::set(&mut cfg.replicas, &self.replicas);
        cfg.webhook_addresses.allow_loopback |= self.allow_loopback;
        cfg.webhook_addresses.allow_private |= self.allow_private;
        if self.metrics_listen.is_some() {
            cfg.metrics_listen.clone_from(&self.metrics_listen);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = a.to_config()?;
    let mut shown = cfg.clone();
    if shown.admin_token.is_some() {
        shown.admin_token = Some("***".to_owned());
    }
    if super::service::print_config(a.print_config, &shown)? {
        return Ok(());
    }
    let (url, listen) = (cfg.nats_url.clone(), cfg.metrics_listen.clone());
    super::service::with_nats(
        "api",
        &url,
        listen.as_deref(),
        "finishing the requests in flight",
        |client, health, shutdown| async move {
            health.require("api");
            fpaas_api::serve(&cfg, client, shutdown, |addr| {
                tracing::info!(%addr, "fpaas api ready");
                health.up("api", format!("listening on {addr}"));
            })
            .await?;
            Ok(())
        },
    )
    .await
}
