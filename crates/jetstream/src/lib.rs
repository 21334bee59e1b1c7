//! `GET /subscribe`: Jetstream v1's WebSocket, served from our durable, deduplicated firehose stream, so a
//! client written for Bluesky's Jetstream switches by changing its URL (and gains 24 h of replay and no gap
//! when a shuffler dies). `docs/subscribe.md` says what is compatible, what differs and why.
//!
//! | module | owns |
//! |---|---|
//! | [`options`] | query parameters and `options_update` messages: Jetstream v1's rules, limits and error texts; the [`options::Filter`] |
//! | [`wire`] | stream event → v1 JSON with `time_us` = NATS store time; zstd frames with Jetstream's dictionary |
//! | [`hub`] | the node's one shared live reader and its broadcast ring; the connection count |
//! | `session` | one connection: cursor → start, live ring / own catch-up reader / joining, filter, writes, client messages |
//! | [`metrics`] | `fpaas_subscribe_*` |

pub mod hub;
pub mod metrics;
pub mod options;
mod session;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

pub use hub::Hub;

/// Configuration of `/subscribe` (part of `fpaas serve`'s configuration, field `subscribe`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SubscribeConfig {
    /// Serve `GET /subscribe` (a Jetstream v1-compatible WebSocket, no authentication, like public Jetstream).
    pub enabled: bool,
    /// The firehose stream it reads.
    pub stream: String,
    /// Most open connections on this node; more are answered `503`.
    pub max_connections: usize,
    /// Events the shared live ring holds. A client further behind than this leaves the ring and reads on
    /// from its own reader of the stream until it catches up (memory: about this many events, ~1 KB each,
    /// plus their zstd forms when a compressed client is connected).
    pub buffer_events: usize,
    /// A write that the client does not take within this many seconds closes the connection (a stalled
    /// client; a slow one that keeps reading is never closed for being slow).
    pub write_timeout_secs: u64,
    /// Seconds between pings; a client that sends nothing (not even a pong) for three intervals is closed.
    pub ping_interval_secs: u64,
}

impl Default for SubscribeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stream: "FIREHOSE".to_owned(),
            max_connections: 5_000,
            buffer_events: 16_384,
            write_timeout_secs: 60,
            ping_interval_secs: 30,
        }
    }
}

impl SubscribeConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.stream.is_empty() {
            return Err("subscribe.stream must not be empty".to_owned());
        }
        if self.max_connections == 0 {
            return Err("subscribe.max_connections must be > 0".to_owned());
        }
        if !(16..=1_048_576).contains(&self.buffer_events) {
            return Err("subscribe.buffer_events must be 16..=1048576".to_owned());
        }
        if self.write_timeout_secs == 0 || self.ping_interval_secs == 0 {
            return Err(
                "subscribe.write_timeout_secs and ping_interval_secs must be > 0".to_owned(),
            );
        }
        Ok(())
    }
}

/// The `/subscribe` route.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/subscribe", get(subscribe))
        .with_state(hub)
}

fn reject(reason: &'static str, status: StatusCode, body: String) -> Response {
    ::metrics::counter!("fpaas_subscribe_rejected_total", "reason" => reason).increment(1);
    (status, body).into_response()
}

/// Counts a connection for as long as it lives.
struct ConnGuard(Arc<Hub>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let n = self.0.connections.fetch_sub(1, Ordering::SeqCst) - 1;
        ::metrics::gauge!("fpaas_subscribe_connections").set(n as f64);
    }
}

async fn subscribe(
    State(hub): State<Arc<Hub>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let encoding = headers.get("socket-encoding").and_then(|v| v.to_str().ok());
    let query = match options::parse_query(&pairs, encoding) {
        Ok(q) => q,
        Err(e) => return reject("bad_request", StatusCode::BAD_REQUEST, e.to_string()),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let open = hub.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let guard = ConnGuard(Arc::clone(&hub));
    ::metrics::gauge!("fpaas_subscribe_connections").set(open as f64);
    if open > hub.config.max_connections {
        return reject(
            "too_many_connections",
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections".to_owned(),
        );
    }
    let covered = match session::resolve(&hub, query.start).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "subscribe: cannot resolve the start");
            return reject(
                "unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "stream unavailable".to_owned(),
            );
        }
    };
    upgrade
        .max_message_size(session::MAX_CLIENT_MESSAGE)
        // Clients send little (an options_update now and then); events are queued and written in batches of
        // what the ring holds (`session`), up to 32 KiB per write. Smaller than the 2 × 128 KiB defaults.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(32 * 1024)
        .on_upgrade(move |socket| async move {
            let _guard = guard;
            session::run(socket, hub, query, covered).await;
        })
}
