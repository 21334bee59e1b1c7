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
