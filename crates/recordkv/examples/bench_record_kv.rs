//! Runs the record KV benchmark against a throwaway test nats-server (`cargo run --release -p
//! fpaas-recordkv --example bench_record_kv -- [records]`); `fpaas bench record-kv` is the same with
//! the CLI's table / JSON output.

use std::io::{Read, Write};
use std::net::TcpStream;

use fpaas_recordkv::bench::{BenchOptions, run};

fn rss(monitor_port: u16) -> Option<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", monitor_port)).ok()?;
    stream
        .write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    let json = body.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["mem"].as_u64()
}

#[tokio::main]
async fn main() {
    let records = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let server = fpaas_testkit::NatsServer::new();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let options = BenchOptions {
        records,
        ..Default::default()
    };
    let report = run(&client, &options).await.expect("bench");
    for (k, v) in report.figures {
        println!("{k:<55} {v:>14.2}");
    }
    drop(client);
    drop(server);

    // Memory at rest: a fresh server, restarted empty, then filled with `n` records and restarted.
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let mut server = fpaas_testkit::NatsServer::new();
    let client = async_nats::connect(server.url()).await.expect("connect");
    fpaas_recordkv::bench::fill_bucket(&client, "empty", 1, 450)
        .await
        .expect("fill");
    drop(client);
    server.stop();
    server.start();
    let empty = rss(server.monitor_port()).unwrap_or(0);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let started = std::time::Instant::now();
    fpaas_recordkv::bench::fill_bucket(&client, "mem", n, 450)
        .await
        .expect("fill");
    let fill_s = started.elapsed().as_secs_f64();
    let writing = rss(server.monitor_port()).unwrap_or(0);
    drop(client);
    server.stop();
    server.start();
    let rest = rss(server.monitor_port()).unwrap_or(0);
    println!("{:<55} {:>14.2}", "mem_records", n as f64);
    println!(
        "{:<55} {:>14.2}",
        "mem_fill_records_per_s",
        n as f64 / fill_s
    );
    println!(
        "{:<55} {:>14.2}",
        "server_rss_bytes_per_record_while_writing",
        writing.saturating_sub(empty) as f64 / n as f64
    );
    println!(
        "{:<55} {:>14.2}",
        "server_rss_bytes_per_record_at_rest",
        rest.saturating_sub(empty) as f64 / n as f64
    );
}
