//! The one way a long-running command runs (`shuffler`, `record-kv`, `like-indexer`): the ops server
//! (`/metrics`, `/health`, `/ready`, `/health/detailed`) unless disabled, a health component `nats` that follows
//! the real NATS connection (so `/ready` turns false while NATS is unreachable), one cancellation token that
//! SIGTERM or Ctrl-C cancels, and an orderly stop: the command's work drains first, then the ops server.
//! The configuration layering (defaults → file → `FPAAS_*` environment → flags) is `fpaas_ops::config`.

use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Health component that mirrors the NATS connection.
pub const COMPONENT_NATS: &str = "nats";

/// `--print-config`: prints `cfg` as pretty JSON when `print` is set; `true` when it did (the command then exits).
///
/// # Errors
/// Serializing the configuration failed.
pub fn print_config<T: serde::Serialize>(print: bool, cfg: &T) -> anyhow::Result<bool> {
    if print {
        println!("{}", serde_json::to_string_pretty(cfg)?);
    }
    Ok(print)
}

/// Runs a service that works on NATS: [`Service::start`], a client named `fpaas-<component>` whose connection
/// the `nats` health component follows, then `body` (given the client, the health registry and the shutdown
/// token) until it returns; then flushes the client and stops the ops server.
///
/// # Errors
/// The ops address cannot be bound, a NATS URL is invalid, or what `body` returned.
pub async fn with_nats<R, Fut>(
    component: &'static str,
    nats_url: &str,
    metrics_listen: Option<&str>,
    on_signal: &'static str,
    body: impl FnOnce(fpaas_bus::Client, fpaas_ops::Health, CancellationToken) -> Fut,
) -> anyhow::Result<R>
where
    Fut: Future<Output = anyhow::Result<R>>,
{
    let mut service = Service::start(metrics_listen, on_signal).await?;
    let client = fpaas_bus::connect(nats_url, &format!("fpaas-{component}")).await?;
    service.follow_nats(&client);
    let result = body(
        client.clone(),
        service.health.clone(),
        service.shutdown.clone(),
    )
    .await;
    let _ = client.flush().await;
    service.stop().await;
    result
}

/// A running service's shell; see the module docs.
pub struct Service {
    /// The health registry the ops server reports.
    pub health: fpaas_ops::Health,
    /// Cancelled by SIGTERM / Ctrl-C: the command's work stops on it.
    pub shutdown: CancellationToken,
    /// Stops the ops server and the connection monitor (after the work has drained).
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Service {
    /// Installs the metrics recorder, starts the ops server on `metrics_listen` (`None`, `""`, `none` or `off`:
    /// no server) and the signal handler; `on_signal` says in the log what the command does when stopped.
    ///
    /// # Errors
    /// The ops address cannot be bound.
    pub async fn start(
        metrics_listen: Option<&str>,
        on_signal: &'static str,
    ) -> anyhow::Result<Self> {
        let metrics = fpaas_ops::install_metrics();
        let health = fpaas_ops::Health::new();
        let shutdown = CancellationToken::new();
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        match metrics_listen {
            None | Some("" | "none" | "off") => {}
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the ops server to {addr}"))?;
                let router = fpaas_ops::router(metrics, health.clone());
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    let _ = fpaas_ops::serve(listener, router, stop).await;
                }));
            }
        }
        super::cancel_on_signal(&shutdown, on_signal);
        Ok(Self {
            health,
            shutdown,
            stop,
            tasks,
        })
    }

    /// Makes the `nats` health component (required for `/ready`) follow `client`'s connection state.
    pub fn follow_nats(&mut self, client: &fpaas_bus::Client) {
        self.health.require(COMPONENT_NATS);
        let (client, health, stop) = (client.clone(), self.health.clone(), self.stop.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => match fpaas_bus::connection_state(&client) {
                        Ok(()) => health.up(COMPONENT_NATS, "connected"),
                        Err(state) => health.down(COMPONENT_NATS, state),
                    },
                }
            }
        }));
    }

    /// Stops the ops server and the monitor, once the command's work has returned.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
