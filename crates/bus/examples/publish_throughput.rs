//! Measures `Publisher` throughput against a local nats-server started by the test kit:
//! `cargo run -p fpaas-bus --release --example publish_throughput -- [messages] [max_in_flight] [payload_bytes]`.
//! Compare with the raw async-nats numbers in docs/measurements.md (~100k msg/s at 64 in flight, ~150k at 1,024).

use std::time::Instant;

use bytes::Bytes;
use fpaas_bus::{OutMsg, Publisher, StreamSettings, ensure_stream};
use fpaas_testkit::NatsServer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let total = args.next().transpose()?.unwrap_or(200_000);
    let in_flight = args.next().transpose()?.unwrap_or(1_024);
    let size = args.next().transpose()?.unwrap_or(512);

    let server = NatsServer::new();
    let client = fpaas_bus::connect(&server.url(), "throughput").await?;
    let js = fpaas_bus::jetstream(client, in_flight);
    let settings = StreamSettings {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        max_bytes: 8 << 30,
        ..Default::default()
    };
    ensure_stream(&js, &settings).await?;

    let payload = Bytes::from(vec![b'x'; size]);

    // Baseline: raw async-nats publishes with Nats-Msg-Id, a bounded deque of ack futures.
    let raw_js = js.clone();
    let started = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for i in 0..total {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("raw-{i}").as_str(),
        );
        let ack = raw_js
            .publish_with_headers(format!("bench.{}", i % 16), headers, payload.clone())
            .await?;
        acks.push_back(ack);
        if acks.len() >= in_flight
            && let Some(oldest) = acks.pop_front()
        {
            oldest.await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("raw async-nats: {:.0} msg/s", total as f64 / secs);
    let mut publisher = Publisher::new(js, in_flight);
    let started = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    for i in 0..total as u64 {
        publisher
            .publish(OutMsg {
                subject: format!("bench.{}", i % 16),
                msg_id: format!("m-{i}"),
                headers: vec![("Fpaas-Did", "did:plc:abcdefghijklmnopqrstuvwx".to_owned())],
                payload: payload.clone(),
                token: i,
            })
            .await;
        while let Some(done) = publisher.try_next_completion() {
            if done.is_ok() { ok += 1 } else { failed += 1 }
        }
    }
    while let Some(done) = publisher.next_completion().await {
        if done.is_ok() { ok += 1 } else { failed += 1 }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} msgs of {size} B, {in_flight} in flight: {:.0} msg/s ({ok} ok, {failed} failed, {secs:.2} s)",
        total as f64 / secs
    );
    Ok(())
}
