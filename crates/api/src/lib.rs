//! The FPaaS HTTP API: an axum router under `/v1` over the control-plane store (`fpaas-control`) and the
//! dead-letter stream, with `/openapi.json`. It holds no business logic: authentication, parsing, the
//! mapping of store errors to stable answers, and the shapes of the answers. Stateless: several copies can
//! run against the same NATS.
//!
//! | module | owns |
//! |---|---|
//! | [`routes`] | the route table (every operation once: method, path, access, schemas, handler) and the handlers |
//! | [`openapi`] | the OpenAPI 3.1 document built from the route table |
//! | [`error`] | [`ApiError`] → status + `{"error", "message"}`; the JSON body extractor |
//! | `auth` | bearer tokens: the admin token (constant-time hash compare), tenant API keys |
//! | `console` | the web console's page, script and style sheet (built in) at `/` and `/console/{file}`, with its CSP |
//! | [`console_api`] | the console's playground (`POST /v1/playground`) and a subscription's live tail (SSE) |
//! | [`state_api`] | the state endpoints: buckets, keys by prefix, one key, the Server-Sent Events watch |
//! | `state` | [`AppState`]: store, dead-letter log, admin token hash, the webhook sender of replays |
//! | `metrics` | `fpaas_api_requests_total{route,method,status}`, `fpaas_api_request_duration_seconds{route}` |
//!
//! `fpaas serve` also serves `GET /subscribe` (crate `fpaas-jetstream`) beside `/v1`, outside the request
//! metrics and the body limit (it is a long-lived WebSocket with its own `fpaas_subscribe_*` metrics).

pub mod auth;
mod console;
pub mod console_api;
pub mod error;
mod metrics;
pub mod openapi;
pub mod routes;
mod state;
pub mod state_api;

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::MethodRouter;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ApiJson, ERROR_CODES};
pub use state::AppState;

/// Largest request body: 1 MiB (a filter with 10,000 DIDs is about 400 KB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Configuration of `fpaas serve`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the HTTP API.
    pub listen: String,
    /// NATS URL(s), comma separated.
    pub nats_url: String,
    /// Address of the ops HTTP server (`/metrics`, `/health`, `/ready`, `/health/detailed`); absent = no server.
    pub metrics_listen: Option<String>,
    /// The admin token (bearer of `/v1/tenants…`). Absent: tenant management is refused. Prefer the
    /// environment (`FPAAS_ADMIN_TOKEN`) to a file; only its SHA-256 is kept in memory.
    pub admin_token: Option<String>,
    /// Replicas of the control-plane KV buckets and the dead-letter stream when created: 1 or 3.
    pub replicas: usize,
    /// How long dead letters are kept, in seconds (default 7 days).
    pub dlq_max_age_secs: u64,
    /// Which webhook destinations a subscription may name (checked when it is created or changed) and a dead
    /// letter may be replayed to. The default refuses loopback, private, link-local and metadata addresses;
    /// it must match the workers' `webhook_addresses`.
    pub webhook_addresses: fpaas_webhook::AddrPolicy,
    /// `GET /subscribe`, the Jetstream v1-compatible WebSocket (`docs/subscribe.md`).
    pub subscribe: fpaas_jetstream::SubscribeConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            metrics_listen: Some("127.0.0.1:9103".to_owned()),
            admin_token: None,
            replicas: 1,
            dlq_max_age_secs: fpaas_control::layout::DLQ_DEFAULT_MAX_AGE_SECS,
            webhook_addresses: fpaas_webhook::AddrPolicy::default(),
            subscribe: fpaas_jetstream::SubscribeConfig::default(),
        }
    }
}

impl ApiConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ServeError::Config`] naming the field.
    pub fn validate(&self) -> Result<(), ServeError> {
        if !(1..=5).contains(&self.replicas) {
            return Err(ServeError::Config(format!(
                "replicas ({}) must be 1..=5",
                self.replicas
            )));
        }
        if self.dlq_max_age_secs == 0 {
            return Err(ServeError::Config(
                "dlq_max_age_secs must be > 0".to_owned(),
            ));
        }
        self.subscribe.validate().map_err(ServeError::Config)?;
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(ServeError::Config(
                "admin_token must be at least 16 characters".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Why the API cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A configuration value is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The listen address cannot be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control-plane store cannot be opened.
    #[error("opening the control-plane store: {0}")]
    Store(#[source] fpaas_control::StoreError),
    /// The dead-letter stream cannot be opened.
    #[error("opening the dead-letter stream: {0}")]
    Bus(#[source] fpaas_bus::BusError),
    /// The HTTP server failed.
    #[error("serving: {0}")]
    Io(#[source] std::io::Error),
    /// The webhook client (for dead-letter replays) cannot be built.
    #[error("{0}")]
    Webhook(#[source] fpaas_webhook::SenderError),
}

/// The API router (routes from [`routes::operations`], body limit, JSON 404/405, request metrics).
pub fn router(state: AppState) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    for op in routes::operations() {
        let handler = (op.handler)();
        let merged = match by_path.remove(op.path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(op.path, merged);
    }
    let mut router = Router::new()
        .route("/", axum::routing::get(console::index))
        .route("/console/{file}", axum::routing::get(console::asset));
    for (path, method_router) in by_path {
        router = router.route(path, method_router);
    }
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then finishes in-flight requests.
///
/// # Errors
/// [`ServeError::Io`] when the server fails.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    run_app(listener, router(state), shutdown).await
}

/// Serves `app` (the API router, possibly merged with other routes) on `listener` until `shutdown`.
///
/// # Errors
/// [`ServeError::Io`] when the server fails.
pub async fn run_app(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "api listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ServeError::Io)
}

/// `fpaas serve`: opens the store and the dead-letter stream on `client`, binds `config.listen` and serves
/// until `shutdown`. `on_ready` is called once the API accepts requests (the caller marks health up).
///
/// # Errors
/// See [`ServeError`].
pub async fn serve(
    config: &ApiConfig,
    client: fpaas_bus::Client,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    config.validate()?;
    let js = fpaas_bus::jetstream(client.clone(), 256);
    let state = loop {
        match AppState::open(&js, config).await {
            Ok(state) => break state,
            Err(e) if !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, "control plane not ready; retrying in 1 s");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
            Err(_) => return Ok(()),
        }
    };
    metrics::register();
    if state.admin_token_sha256.is_none() {
        tracing::warn!("no admin_token configured: /v1/tenants refuses every request");
    }
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let mut app = router(state);
    if config.subscribe.enabled {
        let hub = fpaas_jetstream::Hub::start(client, config.subscribe.clone(), shutdown.clone());
        app = app.merge(fpaas_jetstream::router(hub));
    }
    if let Ok(addr) = listener.local_addr() {
        on_ready(addr);
    }
    run_app(listener, app, shutdown).await
}
