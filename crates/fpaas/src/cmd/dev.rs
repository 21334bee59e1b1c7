//! `fpaas dev`: the whole stack on one machine for local development — a project-local nats-server with
//! JetStream (child process, store under `.dev/`), the relay simulator, and the shuffler (in-process, from
//! `fpaas-ingest`) publishing the simulator's events into the stream, with its ops server (`/metrics`,
//! `/health`, `/ready`, `/health/detailed`) on `--metrics-listen` and a log line of its counts every 5 s.

use anyhow::Context;
use std::process::Stdio;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
// Its own group id: the flattened relay-sim flags are also a struct named `Args`, and clap rejects two groups
// with the same name.
#[group(id = "dev_args")]
pub struct Args {
    /// nats-server binary (installed by scripts/setup-tools.sh).
    #[arg(
        long,
        default_value = ".tools/venv/bin/nats-server",
        env = "FPAAS_NATS_SERVER"
    )]
    nats_server: std::path::PathBuf,
    /// NATS client port.
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    /// NATS monitoring port.
    #[arg(long, default_value_t = 8222)]
    nats_monitor_port: u16,
    /// State directory (JetStream store, logs).
    #[arg(long, default_value = ".dev")]
    state_dir: std::path::PathBuf,
    /// Address of the shuffler's ops server (/metrics, /health, /ready, /health/detailed).
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics_listen: String,
    /// Shuffler instance name (its key in the cursor bucket).
    #[arg(long, default_value = "dev")]
    instance: String,
    /// The stream's `max_bytes` disk guard (logical bytes; oldest messages are discarded beyond it).
    /// Smaller than the shuffler's 32 GiB production default so that the local stack starts on a laptop's
    /// disk: JetStream reserves it against 75% of free disk and refuses a stream that does not fit.
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    stream_max_bytes: i64,
    #[command(flatten)]
    sim: super::relay_sim::Args,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let store = args.state_dir.join("nats");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let mut nats = tokio::process::Command::new(&args.nats_server)
        .args(["-js", "-a", "127.0.0.1", "-p"])
        .arg(args.nats_port.to_string())
        .arg("-m")
        .arg(args.nats_monitor_port.to_string())
        .arg("--store_dir")
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (run `bash scripts/setup-tools.sh` to install it)",
                args.nats_server.display()
            )
        })?;
    tracing::info!(
        port = args.nats_port,
        monitor = args.nats_monitor_port,
        "nats-server started"
    );

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(&args.sim.listen)
        .await
        .with_context(|| format!("binding {}", args.sim.listen))?;
    let sim_addr = listener.local_addr()?;
    let sim_task = tokio::spawn(fpaas_sim::serve(
        listener,
        args.sim.config(),
        shutdown.clone(),
    ));
    tracing::info!(
        "relay-sim: ws://{sim_addr}  (try: fpaas tail --relay ws://{sim_addr} --collection app.bsky.feed.post)"
    );

    let metrics = fpaas_ops::install_metrics();
    let health = fpaas_ops::Health::new();
    let ops_listener = tokio::net::TcpListener::bind(&args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    let ops = tokio::spawn(fpaas_ops::serve(
        ops_listener,
        fpaas_ops::router(metrics, health.clone()),
        shutdown.clone(),
    ));
    tracing::info!("shuffler ops: http://{}/metrics", args.metrics_listen);
    let cfg = fpaas_ingest::ShufflerConfig {
        relay: format!("ws://{sim_addr}"),
        instance: args.instance.clone(),
        nats_url: format!("nats://127.0.0.1:{}", args.nats_port),
        metrics_listen: None,
        stream: fpaas_bus::StreamSettings {
            max_bytes: args.stream_max_bytes,
            ..Default::default()
        },
        ..Default::default()
    };
    let shuffler = fpaas_ingest::Shuffler::new(cfg);
    let stats = shuffler.stats();
    let shuffler_shutdown = CancellationToken::new();
    let shuffler_task = tokio::spawn(shuffler.run(health, shuffler_shutdown.clone()));
    let watch = tokio::spawn(watch(stats, shutdown.clone()));

    tokio::select! {
        _ = super::shutdown_signal() => tracing::info!("shutting down"),
        status = nats.wait() => tracing::error!(?status, "nats-server exited"),
    }
    // The shuffler first (it drains and saves its cursor while NATS and the relay are still up).
    shuffler_shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(15), shuffler_task).await {
        Ok(Ok(Ok(stats))) => tracing::info!(?stats, "shuffler stopped"),
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "shuffler failed"),
        _ => tracing::error!("shuffler did not stop in time"),
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), ops).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), sim_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), watch).await;
    let _ = nats.kill().await;
    Ok(())
}

/// Log the shuffler's counts every 5 s.
async fn watch(stats: std::sync::Arc<fpaas_ingest::LiveStats>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let s = stats.snapshot();
                tracing::info!(
                    frames = s.frames,
                    events = s.events,
                    published = s.published,
                    duplicates = s.duplicates,
                    drops = s.drops,
                    acks_in_flight = s.acks_in_flight,
                    cursor = ?s.cursor_seq,
                    "shuffler counts"
                );
            }
        }
    }
}
