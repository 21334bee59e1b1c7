//! The ops endpoints: unit-level through `Router::oneshot`, and once end to end through a real
//! socket on 127.0.0.1:0 with graceful shutdown.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fpaas_ops::{Health, Status, install_metrics, router, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

async fn get(app: axum::Router, path: &str) -> (StatusCode, String, String) {
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("infallible router");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn metrics_are_prometheus_histograms_and_install_is_idempotent() {
    let handle = install_metrics();
    let again = install_metrics();
    metrics::histogram!("fpaas_test_latency_seconds").record(0.003);
    metrics::histogram!("fpaas_test_frame_bytes").record(5_000.0);
    metrics::counter!("fpaas_test_events_total").increment(2);

    let (status, content_type, body) = get(router(handle, Health::new()), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        body.contains("fpaas_test_latency_seconds_bucket{le=\"0.005\"} 1"),
        "seconds histogram with buckets:\n{body}"
    );
    assert!(
        body.contains("fpaas_test_frame_bytes_bucket{le=\"16384\"} 1"),
        "bytes histogram with buckets:\n{body}"
    );
    assert!(body.contains("fpaas_test_events_total 2"), "{body}");
    // The second handle renders the same registry.
    assert!(again.render().contains("fpaas_test_events_total"));
}

#[tokio::test]
async fn health_ready_and_detailed_follow_components() {
    let health = Health::new();
    health.require("nats");
    health.set("relay", Status::Degraded, "one of two relays down");
    let app = router(install_metrics(), health.clone());

    let (status, _, body) = get(app.clone(), "/health").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));

    let (status, _, body) = get(app.clone(), "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("nats: starting"), "{body}");

    health.up("nats", "connected");
    let (status, _, _) = get(app.clone(), "/ready").await;
    assert_eq!(status, StatusCode::OK);

    let (status, content_type, body) = get(app.clone(), "/health/detailed").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("application/json"));
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["ready"], true);
    let components = json["components"].as_array().expect("components");
    assert_eq!(components.len(), 2);
    assert_eq!(components[0]["name"], "nats");
    assert_eq!(components[0]["status"], "up");
    assert_eq!(components[0]["required"], true);
    assert_eq!(components[1]["name"], "relay");
    assert_eq!(components[1]["status"], "degraded");
    assert_eq!(components[1]["detail"], "one of two relays down");

    let (status, _, _) = get(app, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test]
async fn serves_on_a_real_socket_and_shuts_down_on_cancel() {
    let health = Health::new();
    health.require("stream");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        router(install_metrics(), health.clone()),
        shutdown.clone(),
    ));

    let response = http_get(addr, "/ready").await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    health.up("stream", "FIREHOSE ready");
    let response = http_get(addr, "/ready").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let response = http_get(addr, "/metrics").await;
    assert!(response.contains("fpaas_ops_component_up"), "{response}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops after cancel")
        .expect("task")
        .expect("serve ok");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}
