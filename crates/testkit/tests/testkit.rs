//! The test kit itself: servers start, stop and restart on the same port and store; clusters elect
//! a meta leader; `eventually` returns values and times out.

use std::net::TcpStream;
use std::time::Duration;

use fpaas_testkit::{
    NatsCluster, NatsServer, NatsServerOptions, eventually, eventually_some, free_port, python,
    workspace_root,
};

#[tokio::test]
async fn server_restarts_on_same_port_and_keeps_store() {
    let mut server = NatsServer::new();
    let port = server.port();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    js.publish("keep.a", "x".into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    server.stop();
    assert!(!server.is_running());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port still open after stop"
    );

    server.start();
    assert_eq!(server.port(), port);
    // The old client reconnects by itself; the stream and its message survived.
    let mut info = eventually_some(Duration::from_secs(10), || {
        let js = js.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(1), js.get_stream("KEEP"))
                .await
                .ok()?
                .ok()
        }
    })
    .await
    .expect("stream back after restart");
    let info = info.info().await.expect("stream info");
    assert_eq!(info.state.messages, 1);
}

#[tokio::test]
async fn max_payload_option_reaches_the_server() {
    let server = NatsServer::with_options(NatsServerOptions {
        max_payload: Some(3 * 1024 * 1024),
        ..Default::default()
    });
    let client = async_nats::connect(server.url()).await.expect("connect");
    assert_eq!(client.server_info().max_payload, 3 * 1024 * 1024);
}

#[test]
fn binary_option_pid_and_scratch_dir() {
    let server = NatsServer::with_options(NatsServerOptions {
        binary: Some(fpaas_testkit::nats_server_bin()),
        ..Default::default()
    });
    let pid = server.pid().expect("running server has a pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let scratch = server.scratch_dir().to_path_buf();
    assert!(server.store_dir().starts_with(&scratch));
    std::fs::write(scratch.join("bench.log"), "x").expect("scratch dir is writable");
    drop(server);
    assert!(!scratch.exists(), "scratch dir removed with the server");
}

#[tokio::test]
async fn cluster_of_three_elects_a_leader_and_tolerates_a_node_restart() {
    let mut cluster = NatsCluster::start(3);
    assert_eq!(cluster.urls().len(), 3);
    cluster.wait_ready().await;
    let client = async_nats::connect(cluster.urls()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "R3".into(),
        subjects: vec!["r3.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("create R3 stream");

    cluster.stop_node(2);
    assert!(!cluster.is_running(2));
    cluster.start_node(2);
    cluster.wait_ready().await;
}

#[tokio::test]
async fn eventually_returns_and_times_out() {
    let mut calls = 0;
    eventually(Duration::from_secs(1), || {
        calls += 1;
        let done = calls >= 3;
        async move { done }
    })
    .await
    .expect("condition becomes true");
    assert_eq!(calls, 3);

    let err = eventually(Duration::from_millis(50), || async { false })
        .await
        .expect_err("never true");
    assert!(err.attempts >= 2, "polled more than once: {err}");
}

#[test]
fn paths_and_ports() {
    assert!(workspace_root().join("Cargo.toml").is_file());
    assert!(python().is_file());
    // Ports come from below the ephemeral range, distinct within the process, and bindable.
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    for port in &ports {
        assert!((20_000..32_000).contains(port), "{port}");
    }
    for port in &ports {
        std::net::TcpListener::bind(("127.0.0.1", *port)).expect("a picked port binds");
    }
}

#[test]
fn prom_value_sums_the_series_matching_the_label_filter() {
    let page = "# TYPE fpaas_x_drops_total counter\n\
                fpaas_x_drops_total{reason=\"a\",stage=\"decode\"} 2\n\
                fpaas_x_drops_total{reason=\"b\",stage=\"decode\"} 3\n\
                fpaas_x_drops_total_other 100\n";
    assert_eq!(
        fpaas_testkit::prom_value(page, "fpaas_x_drops_total", ""),
        5.0
    );
    assert_eq!(
        fpaas_testkit::prom_value(page, "fpaas_x_drops_total", "reason=\"b\""),
        3.0
    );
    assert_eq!(
        fpaas_testkit::prom_value(page, "fpaas_x_drops_total", "reason=\"c\""),
        0.0
    );
}
