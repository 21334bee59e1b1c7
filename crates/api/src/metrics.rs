//! Request metrics: `fpaas_api_requests_total{route,method,status}` (route = the route template, so ids do
//! not explode the label set; `unmatched` for unknown paths) and `fpaas_api_request_duration_seconds{route}`;
//! `fpaas_api_dead_letter_replays_total{outcome}` (`accepted` / `failed`) is counted by the replay handler.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Counts and times one request.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("fpaas_api_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("fpaas_api_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}

/// Exports the replay counters at zero from the start, so a dashboard sees them before the first replay.
pub fn register() {
    for outcome in ["accepted", "failed"] {
        metrics::counter!("fpaas_api_dead_letter_replays_total", "outcome" => outcome).increment(0);
    }
}
