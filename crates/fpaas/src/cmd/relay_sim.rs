//! `fpaas relay-sim --listen ADDR`: the relay simulator (crate `fpaas-sim`) as a process.

use anyhow::Context;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2470")]
    pub listen: String,
    /// Seed of the deterministic generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events per second; 0 = as fast as the client reads.
    #[arg(long, default_value_t = 350.0)]
    pub rate: f64,
    /// Stop generating after this many events (the connection stays open).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Events retained for ?cursor= replay.
    #[arg(long, default_value_t = 100_000)]
    pub window: usize,
    /// Number of simulated repositories.
    #[arg(long, default_value_t = 10_000)]
    pub repos: usize,
    /// Serve the frames of this capture file instead of generating.
    #[arg(long)]
    pub replay: Option<std::path::PathBuf>,
    /// Inject a malformed (garbage) frame every N frames.
    #[arg(long)]
    pub inject_malformed_every: Option<u64>,
    /// Inject a truncated frame every N frames.
    #[arg(long)]
    pub inject_truncated_every: Option<u64>,
    /// Inject a frame with an unknown message type every N frames.
    #[arg(long)]
    pub inject_unknown_every: Option<u64>,
    /// Make every Nth commit carry a record over the 1,000,000-byte limit.
    #[arg(long)]
    pub inject_oversize_every: Option<u64>,
    /// Small frames (~1 kB: commit, one MST node, records) instead of realistic ones (~5.4 kB with a
    /// per-repository MST proof path, like real relay frames). The events are the same.
    #[arg(long)]
    pub small_frames: bool,
}

/// `fpaas relay-sim`: the simulator's flags (shared with `fpaas dev`) and the process's own.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub sim: Args,
    /// Ops HTTP address (/metrics, /health, /ready); `none` disables. (Inside `fpaas dev` the simulator's
    /// metrics are on the dev stack's ops server.)
    #[arg(long, env = "FPAAS_METRICS_LISTEN", default_value = "none")]
    pub metrics_listen: String,
}

impl Args {
    /// The simulator configuration these flags describe.
    pub fn config(&self) -> fpaas_sim::SimConfig {
        let mut cfg = fpaas_sim::SimConfig {
            seed: self.seed,
            rate: (self.rate > 0.0).then_some(self.rate),
            limit: self.limit,
            window: self.window,
            repos: self.repos,
            replay: self.replay.clone(),
            small_frames: self.small_frames,
            ..Default::default()
        };
        cfg.faults.malformed_every = self.inject_malformed_every;
        cfg.faults.truncated_every = self.inject_truncated_every;
        cfg.faults.unknown_type_every = self.inject_unknown_every;
        cfg.faults.oversize_every = self.inject_oversize_every;
        cfg
    }
}

pub async fn run(run: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        sim: args,
        metrics_listen,
    } = run;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, seed = args.seed, rate = args.rate, "relay-sim listening: ws://{addr}");
    let service =
        super::service::Service::start(Some(&metrics_listen), "closing client connections").await?;
    service.health.up("relay-sim", format!("ws://{addr}"));
    let result = fpaas_sim::serve(listener, args.config(), service.shutdown.clone()).await;
    service.stop().await;
    result?;
    Ok(())
}
