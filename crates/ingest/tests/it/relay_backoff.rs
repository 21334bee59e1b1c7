//! The reconnect loop cannot spin. A relay that answers every connect with an error frame, one that closes after
//! one (good) frame, and a stream that refuses every publish (sealed): in each case the shuffler keeps
//! retrying, but the number of relay connects in an observation window stays within what the configured
//! backoff schedule allows (delays doubling from `backoff_min_ms` to `backoff_max_ms`, each at least half its
//! ceiling), because only a relay connection that stayed open for `relay_stable_ms` resets the backoff, and a
//! session that stored nothing makes the next attempt after a publish failure wait longer. While publishes are
//! refused, `/ready` is false and names the reason.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fpaas_ingest::Shuffler;
use fpaas_ops::Health;
use fpaas_sim::{FaultConfig, Generator, Sim, SimConfig};
use fpaas_testkit::{NatsServer, eventually};
use futures::SinkExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const BACKOFF_MIN_MS: u64 = 20;
const BACKOFF_MAX_MS: u64 = 400;
const WINDOW: Duration = Duration::from_secs(4);

/// The most connects the backoff schedule allows within `window` (the first one is immediate; the k-th retry
/// waits at least half of `min(min * 2^k, max)`).
fn max_connects(window: Duration) -> u64 {
    let mut t = 0u64;
    (0u32..)
        .take_while(|k| {
            t += (BACKOFF_MIN_MS << (*k).min(20)).min(BACKOFF_MAX_MS) / 2;
            t <= window.as_millis() as u64
        })
        .count() as u64
        + 1
}

#[derive(Clone, Copy)]
enum Mode {
    /// An error frame, then close, on every connect.
    ErrorFrame,
    /// The next good commit frame, then close.
    OneFrame,
}

/// A hostile relay on a free port: its URL and its connect counter.
async fn hostile_relay(mode: Mode) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let connects = Arc::new(AtomicU64::new(0));
    let generator = Arc::new(tokio::sync::Mutex::new(Generator::new(
        5,
        50,
        1,
        FaultConfig::default(),
    )));
    let counter = Arc::clone(&connects);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let generator = Arc::clone(&generator);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let frame = match mode {
                    Mode::ErrorFrame => {
                        fpaas_sim::encode::error_frame("InternalError", "try again later")
                            .expect("error frame")
                    }
                    Mode::OneFrame => {
                        let generated = generator.lock().await.next_event().expect("event");
                        generated.frames.last().expect("frame").to_vec()
                    }
                };
                let _ = ws.send(Message::Binary(frame.into())).await;
                let _ = ws.close(None).await;
            });
        }
    });
    (url, connects)
}

fn config(nats: &str, relay: &str, instance: &str) -> fpaas_ingest::ShufflerConfig {
    let mut cfg = test_config(nats, relay, instance);
    cfg.backoff_min_ms = BACKOFF_MIN_MS;
    cfg.backoff_max_ms = BACKOFF_MAX_MS;
    cfg
}

/// Runs a shuffler against `relay` for [`WINDOW`] after its first connect; returns the connects counted by the
/// relay within the window and the shuffler's stats.
async fn observe(
    nats: &NatsServer,
    relay: &str,
    connects: &AtomicU64,
    instance: &str,
) -> (u64, fpaas_ingest::ShufflerStats) {
    let shuffler = Shuffler::new(config(&nats.url(), relay, instance));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(Health::new(), shutdown.clone()));
    eventually(Duration::from_secs(15), || async {
        connects.load(Ordering::Relaxed) > 0
    })
    .await
    .expect("first connect");
    let start = Instant::now();
    let at_start = connects.load(Ordering::Relaxed);
    while start.elapsed() < WINDOW {
        assert!(!task.is_finished(), "the shuffler exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = connects.load(Ordering::Relaxed) - at_start + 1;
    shutdown.cancel();
    let done = task.await.expect("join").expect("run ok");
    (seen, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frame_on_every_connect_backs_off() {
    let nats = NatsServer::new();
    let (relay, connects) = hostile_relay(Mode::ErrorFrame).await;
    let (seen, done) = observe(&nats, &relay, &connects, "err").await;
    let bound = max_connects(WINDOW);
    eprintln!(
        "error-frame relay: {seen} connects in {WINDOW:?} (schedule allows {bound}); {done:?}"
    );
    assert!(seen >= 5, "it keeps retrying: {seen}");
    assert!(
        seen <= bound,
        "{seen} connects in {WINDOW:?}; the backoff schedule allows {bound}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_one_frame_backs_off_and_still_stores_each_event_once() {
    let nats = NatsServer::new();
    let (relay, connects) = hostile_relay(Mode::OneFrame).await;
    let (seen, done) = observe(&nats, &relay, &connects, "one").await;
    let bound = max_connects(WINDOW);
    eprintln!("one-frame relay: {seen} connects in {WINDOW:?} (schedule allows {bound}); {done:?}");
    assert!(seen >= 5, "it keeps retrying: {seen}");
    assert!(
        seen <= bound,
        "{seen} connects in {WINDOW:?}; the backoff schedule allows {bound}"
    );
    assert!(done.published >= 1, "the frames were published: {done:?}");
    assert_eq!(done.duplicates, 0, "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_publish_rejections_back_off_and_are_not_ready() {
    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 8,
        rate: Some(1e-6),
        ..Default::default()
    })
    .await
    .expect("sim");
    sim.advance(200);
    let cfg = config(&nats.url(), &sim.url(), "sealed");
    // The stream exactly as the shuffler wants it, then sealed: every publish is refused.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    fpaas_bus::ensure_stream(&js, &cfg.stream)
        .await
        .expect("stream");
    let mut sealed = js
        .get_stream("FIREHOSE")
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    sealed.sealed = true;
    js.update_stream(sealed).await.expect("seal");

    let shuffler = Shuffler::new(cfg);
    let stats = shuffler.stats();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(health.clone(), shutdown.clone()));
    eventually(Duration::from_secs(15), || async {
        stats.relay_connects.load(Ordering::Relaxed) > 0
    })
    .await
    .expect("first connect");
    let start = Instant::now();
    let at_start = stats.relay_connects.load(Ordering::Relaxed);
    while start.elapsed() < WINDOW {
        assert!(!task.is_finished(), "the shuffler exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = stats.relay_connects.load(Ordering::Relaxed) - at_start + 1;
    let bound = max_connects(WINDOW);
    let reasons = health.not_ready_reasons();
    eprintln!(
        "sealed stream: {seen} relay connects in {WINDOW:?} (schedule allows {bound}); not ready: {reasons:?}"
    );
    assert!(seen >= 3, "it keeps retrying: {seen}");
    assert!(
        seen <= bound,
        "{seen} connects in {WINDOW:?}; the backoff schedule allows {bound}"
    );
    assert!(!health.is_ready());
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("stream") && r.contains("publishes failing")),
        "the reason is reported: {reasons:?}"
    );
    assert_eq!(stream_len(&js, "FIREHOSE").await, Some(0));
    shutdown.cancel();
    task.await.expect("join").expect("run ok");
}
