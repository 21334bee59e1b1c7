//! The ops HTTP endpoints and their server loop:
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format (`text/plain; version=0.0.4`): the recorder's families, then [`crate::extra`]'s |
//! | `GET /health` | `200 ok` while the process runs (liveness) |
//! | `GET /ready` | `200 ready`, or `503` listing the required components that are down |
//! | `GET /health/detailed` | JSON: `{"ready": bool, "components": [...]}` |

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::{ComponentReport, Health};

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Errors of the ops server.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The HTTP server failed (accept loop or listener).
    #[error("ops http server failed")]
    Serve(#[source] std::io::Error),
}

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    health: Health,
}

/// The ops router; merge it into an API router or serve it on its own port with [`serve`].
pub fn router(metrics: PrometheusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready_handler))
        .route("/health/detailed", get(detailed_handler))
        .with_state(OpsState { metrics, health })
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes in-flight requests.
///
/// # Errors
/// [`OpsError::Serve`] when the server fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), OpsError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "ops http listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(OpsError::Serve)
}

async fn metrics_handler(State(state): State<OpsState>) -> Response {
    let mut page = state.metrics.render();
    crate::extra::render_into(&mut page);
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], page).into_response()
}

async fn ready_handler(State(state): State<OpsState>) -> Response {
    let reasons = state.health.not_ready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", reasons.join("; ")),
        )
            .into_response()
    }
}

#[derive(Serialize)]
struct Detailed {
    ready: bool,
    components: Vec<ComponentReport>,
}

async fn detailed_handler(State(state): State<OpsState>) -> Response {
    let components = state.health.snapshot();
    let ready = state.health.is_ready();
    axum::Json(Detailed { ready, components }).into_response()
}
