//! `fpaas dev`: the whole stack on one machine for local development — a project-local nats-server with
//! JetStream (child process, store under `.dev/`; with `--cluster` three of them in one cluster, R=3), the relay simulator, the shuffler (in-process, from
//! `fpaas-ingest`) publishing the simulator's events into the stream, the HTTP API (`fpaas-api`) and a
//! subscription worker (`fpaas-pipeline`, loopback webhooks allowed), with one ops server (`/metrics`,
//! `/health`, `/ready`, `/health/detailed`) on `--metrics-listen` and a log line of the shuffler's counts every
//! 5 s. It keeps a demo tenant and a demo subscription (likes, 1,000 events or 1 s, to 127.0.0.1:8787) in
//! `.dev/demo.json` and prints the one command that receives its signed batches.

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
    /// Three nats-server nodes in one JetStream cluster on loopback instead of one (client ports
    /// `--nats-port` … +2, monitoring ports `--nats-monitor-port` … +2, routes on `--cluster-port` … +2), with
    /// every stream and bucket at R=3: the production topology on one machine.
    #[arg(long)]
    cluster: bool,
    /// First route port of `--cluster`.
    #[arg(long, default_value_t = 6222)]
    cluster_port: u16,
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
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api_listen: String,
    /// The API's admin token (local development only: anyone on this machine can use it).
    #[arg(
        long,
        default_value = "dev-admin-token-change-me",
        env = "FPAAS_ADMIN_TOKEN"
    )]
    admin_token: String,
    /// Where the demo subscription delivers (`fpaas receive --listen` there).
    #[arg(long, default_value = "127.0.0.1:8787")]
    demo_receiver: String,
    #[command(flatten)]
    sim: super::relay_sim::Args,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nodes: u16 = if args.cluster { 3 } else { 1 };
    let replicas = usize::from(nodes);
    let mut servers = Vec::new();
    for i in 0..nodes {
        let store = if args.cluster {
            args.state_dir.join(format!("nats-cluster/n{i}"))
        } else {
            args.state_dir.join("nats")
        };
        std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
        let mut cmd = tokio::process::Command::new(&args.nats_server);
        cmd.args(["-js", "-a", "127.0.0.1", "-p"])
            .arg((args.nats_port + i).to_string())
            .arg("-m")
            .arg((args.nats_monitor_port + i).to_string())
            .arg("--store_dir")
            .arg(&store);
        if args.cluster {
            let routes: Vec<String> = (0..nodes)
                .filter(|j| *j != i)
                .map(|j| format!("nats://127.0.0.1:{}", args.cluster_port + j))
                .collect();
            cmd.args([
                "--server_name",
                &format!("n{i}"),
                "--cluster_name",
                "fpaas-dev",
            ])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", args.cluster_port + i))
            .arg("--routes")
            .arg(routes.join(","));
        }
        // Its log goes to a file beside its store: a child holding our stderr would outlive us if we were
        // SIGKILLed, and keep whoever reads our output waiting.
        let log_path = args.state_dir.join(if args.cluster {
            format!("nats-n{i}.log")
        } else {
            "nats.log".to_owned()
        });
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run `bash scripts/setup-tools.sh` to install it)",
                    args.nats_server.display()
                )
            })?;
        servers.push(child);
    }
    let nats_url = (0..nodes)
        .map(|i| format!("nats://127.0.0.1:{}", args.nats_port + i))
        .collect::<Vec<_>>()
        .join(",");
    tracing::info!(
        nodes,
        url = %nats_url,
        monitor = args.nats_monitor_port,
        replicas,
        logs = %args.state_dir.display(),
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
        nats_url: nats_url.clone(),
        metrics_listen: None,
        stream: fpaas_bus::StreamSettings {
            max_bytes: args.stream_max_bytes,
            replicas,
            ..Default::default()
        },
        cursor_kv: fpaas_bus::KvSettings {
            replicas,
            ..fpaas_ingest::ShufflerConfig::default().cursor_kv
        },
        ..Default::default()
    };
    let shuffler = fpaas_ingest::Shuffler::new(cfg);
    let stats = shuffler.stats();
    let shuffler_shutdown = CancellationToken::new();
    let shuffler_task = tokio::spawn(shuffler.run(health, shuffler_shutdown.clone()));
    let watch = tokio::spawn(watch(stats, shutdown.clone()));

    // The subscription service: the API and one worker, on their own NATS connection.
    let client = fpaas_bus::connect(&nats_url, "fpaas-dev").await?;
    let api_cfg = fpaas_api::ApiConfig {
        listen: args.api_listen.clone(),
        nats_url: nats_url.clone(),
        metrics_listen: None,
        admin_token: Some(args.admin_token.clone()),
        replicas,
        webhook_addresses: fpaas_webhook::AddrPolicy {
            allow_loopback: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let api_task = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            fpaas_api::serve(&api_cfg, client, shutdown, |addr| {
                let _ = ready_tx.send(addr);
            })
            .await
        })
    };
    let mut worker_cfg = fpaas_pipeline::WorkerConfig {
        nats_url,
        metrics_listen: None,
        worker_id: "dev".into(),
        replicas,
        ..Default::default()
    };
    worker_cfg.webhook_addresses.allow_loopback = true;
    let worker_task = tokio::spawn(fpaas_pipeline::run(
        client.clone(),
        worker_cfg,
        shutdown.clone(),
    ));
    if let Ok(addr) = ready_rx.await {
        match demo(&args, addr).await {
            Ok(text) => println!("{text}"),
            Err(e) => tracing::warn!(error = %e, "demo subscription not set up"),
        }
    }

    let first_exit = futures::future::select_all(servers.iter_mut().map(|c| Box::pin(c.wait())));
    tokio::select! {
        _ = super::shutdown_signal() => tracing::info!("shutting down"),
        (status, i, _) = first_exit => tracing::error!(?status, node = i, "nats-server exited"),
    }
    // The shuffler first (it drains and saves its cursor while NATS and the relay are still up).
    shuffler_shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(15), shuffler_task).await {
        Ok(Ok(Ok(stats))) => tracing::info!(?stats, "shuffler stopped"),
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "shuffler failed"),
        _ => tracing::error!("shuffler did not stop in time"),
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), worker_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), ops).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), sim_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), watch).await;
    for mut server in servers {
        let _ = server.kill().await;
    }
    Ok(())
}

/// The demo tenant and subscription (kept in `.dev/demo.json`, re-created when the API does not know them),
/// and the text that tells a newcomer what to paste.
async fn demo(args: &Args, api: std::net::SocketAddr) -> anyhow::Result<String> {
    use serde_json::{Value, json};
    let base = format!("http://{api}");
    let http = reqwest::Client::new();
    let path = args.state_dir.join("demo.json");
    let saved: Option<Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(saved) = &saved {
        let (token, id) = (saved["token"].as_str(), saved["subscription_id"].as_str());
        if let (Some(token), Some(id)) = (token, id) {
            let known = http
                .get(format!("{base}/v1/subscriptions/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if known {
                return Ok(banner(&base, saved, &args.demo_receiver));
            }
        }
    }
    let tenant: Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(&args.admin_token)
        .json(&json!({"name": "demo"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = tenant["token"]
        .as_str()
        .context("no token in the tenant answer")?
        .to_owned();
    let sub: Value = http
        .post(format!("{base}/v1/subscriptions"))
        .bearer_auth(&token)
        .json(&json!({
            "name": "demo: likes",
            "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.like"], "operations": ["create"]},
            "batching": {"max_events": 1000, "max_wait_ms": 1000},
            "delivery": {"type": "webhook", "url": format!("http://{}/", args.demo_receiver),
                         // Retried every 3 s for a minute, so batches arrive soon after the receiver starts.
                         "retry": {"schedule_ms": vec![3000; 20]}}
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let saved = json!({
        "token": token,
        "subscription_id": sub["id"],
        "secret": sub["secrets"][0]["secret"],
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&saved)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(banner(&base, &saved, &args.demo_receiver))
}

fn banner(api: &str, demo: &serde_json::Value, receiver: &str) -> String {
    let s = |k: &str| demo[k].as_str().unwrap_or_default().to_owned();
    format!(
        "\n\
         FPaaS API: {api}   (OpenAPI: {api}/openapi.json)\n\
         Web console: {api}/   (sign in with the demo key {token})\n\
         Jetstream-compatible WebSocket: {ws}/subscribe   (any Jetstream client; docs/subscribe.md)\n\
         Demo subscription {id}: likes, batches of 1,000 events or 1 s, signed, to http://{receiver}/\n\
         Receive them (in another terminal):\n\
         \n    target/release/fpaas receive --listen {receiver} --secret {secret}\n\
         \n\
         Its stats:\n\
         \n    curl -s -H 'authorization: Bearer {token}' {api}/v1/subscriptions/{id}/stats\n",
        id = s("subscription_id"),
        secret = s("secret"),
        token = s("token"),
        ws = api.replacen("http://", "ws://", 1),
    )
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
