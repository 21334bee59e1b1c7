//! `GET /subscribe` against a real nats-server and a real WebSocket server on 127.0.0.1:0: events from the real
//! corpus published as the shuffler publishes them, read by tokio-tungstenite clients. What a client library
//! cannot show: a slow client leaving the shared ring and catching up on its own reader without losing or
//! repeating anything, a stalled client closed by the write timeout while another keeps up, a client behind
//! retention closed with a reason, `requireHello`, close codes of bad messages, and exact cursor resumes.

use std::sync::Arc;
use std::time::Duration;

use fpaas_jetstream::{Hub, SubscribeConfig};
use fpaas_testkit::stream::{corpus_events, publish_events, read_stream};
use fpaas_testkit::{NatsServer, eventually};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Env {
    server: Option<NatsServer>,
    client: async_nats::Client,
    hub: Arc<Hub>,
    addr: std::net::SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn env(config: SubscribeConfig, max_bytes: i64) -> Env {
    let server = NatsServer::new();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            max_bytes,
            ..Default::default()
        },
    )
    .await
    .expect("stream");
    let cancel = CancellationToken::new();
    let hub = Hub::start(client.clone(), config, cancel.clone());
    eventually(Duration::from_secs(10), || async { hub.is_started() })
        .await
        .expect("the shared reader starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = fpaas_jetstream::router(Arc::clone(&hub));
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Env {
        server: Some(server),
        client,
        hub,
        addr,
        cancel,
    }
}

async fn connect(addr: std::net::SocketAddr, query: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/subscribe?{query}"))
        .await
        .expect("connect");
    ws
}

/// The next event as JSON, or `None` after `wait` without one (or on close).
async fn next_event(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Some(Ok(Message::Binary(b)))) => {
                let json = fpaas_jetstream::wire::decompress(&b).expect("zstd with the dictionary");
                return serde_json::from_slice(&json).ok();
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn read_until_quiet(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = next_event(ws, quiet).await {
        out.push(v);
    }
    out
}

/// What the stream holds, as `/subscribe` sends it, with `time_us` zeroed (store times are compared apart).
async fn expected(client: &async_nats::Client) -> Vec<Value> {
    let js = async_nats::jetstream::new(client.clone());
    read_stream(&js, "FIREHOSE")
        .await
        .iter()
        .filter_map(|m| fpaas_jetstream::wire::to_v1(m.seq, 0, &m.payload).expect("an event"))
        .map(|w| serde_json::from_slice(&w.json).expect("json"))
        .collect()
}

fn zero_time(mut v: Vec<Value>) -> Vec<Value> {
    for e in &mut v {
        e["time_us"] = Value::from(0);
    }
    v
}

fn increasing(v: &[Value]) -> bool {
    v.windows(2)
        .all(|w| w[1]["time_us"].as_i64() > w[0]["time_us"].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_leaves_the_ring_catches_up_and_misses_nothing() {
    let e = env(
        SubscribeConfig {
            buffer_events: 16,
            ..Default::default()
        },
        1 << 30,
    )
    .await;
    let mut slow = connect(e.addr, "").await;
    let mut fast = connect(e.addr, "wantedCollections=app.bsky.feed.*").await;
    eventually(Duration::from_secs(5), || async {
        e.hub.connections() == 2
    })
    .await
    .expect("both connected");
    let events = corpus_events(1_500);
    let publisher = {
        let client = e.client.clone();
        tokio::spawn(async move { publish_events(&client, &events).await })
    };
    // The slow one reads a message every 2 ms at first: far behind a 16-event ring.
    let mut got = Vec::new();
    for _ in 0..100 {
        match next_event(&mut slow, Duration::from_secs(10)).await {
            Some(v) => got.push(v),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    publisher.await.expect("published");
    got.extend(read_until_quiet(&mut slow, Duration::from_secs(3)).await);
    let fast_got = read_until_quiet(&mut fast, Duration::from_secs(2)).await;
    let want = expected(&e.client).await;
    assert!(increasing(&got), "time_us increases in stream order");
    assert_eq!(got.len(), want.len(), "every event once");
    assert_eq!(zero_time(got), want);
    let want_feed: Vec<Value> = want
        .iter()
        .filter(|v| {
            v["kind"] != "commit"
                || v["commit"]["collection"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("app.bsky.feed."))
        })
        .cloned()
        .collect();
    assert_eq!(zero_time(fast_got), want_feed, "the fast client's prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_resume_after_the_event_and_hello_gates_delivery() {
    let e = env(SubscribeConfig::default(), 1 << 30).await;
    publish_events(&e.client, &corpus_events(300)).await;
    let mut all_ws = connect(e.addr, "cursor=0").await;
    let all = read_until_quiet(&mut all_ws, Duration::from_secs(2)).await;
    assert_eq!(zero_time(all.clone()), expected(&e.client).await);
    assert!(increasing(&all));

    // Resume with the time_us of the 100th event: exactly the ones after it.
    let cursor = all[99]["time_us"].as_i64().expect("time_us");
    let mut resumed_ws = connect(e.addr, &format!("cursor={cursor}")).await;
    let resumed = read_until_quiet(&mut resumed_ws, Duration::from_secs(2)).await;
    assert_eq!(resumed, all[100..].to_vec());

    // A cursor in the future is live: nothing old.
    let future = chrono_now_us() + 3_600_000_000;
    let mut live = connect(e.addr, &format!("cursor={future}")).await;
    assert!(
        next_event(&mut live, Duration::from_millis(700))
            .await
            .is_none()
    );

    // requireHello: nothing until the first options_update, which is also the filter ({} = everything).
    let mut hello = connect(e.addr, "requireHello=true&cursor=0").await;
    assert!(
        next_event(&mut hello, Duration::from_millis(700))
            .await
            .is_none()
    );
    hello
        .send(Message::text(
            r#"{"type":"options_update","payload":{"wantedCollections":["app.bsky.feed.like"]}}"#,
        ))
        .await
        .expect("hello");
    let likes = read_until_quiet(&mut hello, Duration::from_secs(2)).await;
    assert!(!likes.is_empty());
    assert!(
        likes
            .iter()
            .all(|v| v["kind"] != "commit" || v["commit"]["collection"] == "app.bsky.feed.like")
    );

    // maxMessageSizeBytes skips larger events.
    let mut small = connect(e.addr, "cursor=0&maxMessageSizeBytes=600").await;
    let smalls = read_until_quiet(&mut small, Duration::from_secs(2)).await;
    assert!(!smalls.is_empty() && smalls.len() < all.len());
    assert!(smalls.iter().all(|v| v.to_string().len() <= 600));
}

fn chrono_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The close frame a connection ends with (reading past any events), waiting at most `wait` for each message.
async fn close_of<S>(ws: &mut S, wait: Duration) -> Option<(u16, String)>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return Some((f.code.into(), f.reason.to_string()));
            }
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_close_with_their_codes_and_bad_queries_get_400() {
    let e = env(SubscribeConfig::default(), 1 << 30).await;
    let mut a = connect(e.addr, "").await;
    a.send(Message::text("{")).await.expect("send");
    assert_eq!(
        close_of(&mut a, Duration::from_secs(5)).await.map(|c| c.0),
        Some(1007)
    );
    let mut b = connect(e.addr, "").await;
    b.send(Message::text(
        r#"{"type":"options_update","payload":{"wantedCollections":["x"]}}"#,
    ))
    .await
    .expect("send");
    let (code, reason) = close_of(&mut b, Duration::from_secs(5))
        .await
        .expect("a close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("invalid collection: x"), "{reason}");
    // A message over 10 MB is refused with 1009, not read into memory without bound.
    let mut big = connect(e.addr, "").await;
    let huge = format!(
        r#"{{"type":"options_update","payload":{{"wantedDids":["{}"]}}}}"#,
        "x".repeat(11_000_000)
    );
    let _ = big.send(Message::text(huge)).await;
    assert_eq!(
        close_of(&mut big, Duration::from_secs(5))
            .await
            .map(|c| c.0),
        Some(1009)
    );
    // Unknown types and binary messages are ignored.
    let mut c = connect(e.addr, "cursor=0").await;
    c.send(Message::text(r#"{"type":"something_else"}"#))
        .await
        .expect("send");
    c.send(Message::binary(vec![1, 2, 3])).await.expect("send");
    publish_events(&e.client, &corpus_events(5)).await;
    assert!(next_event(&mut c, Duration::from_secs(3)).await.is_some());

    let http = reqwest::Client::new();
    let too_many: String = (0..101)
        .map(|i| format!("wantedCollections=app.bsky.c{i}&"))
        .collect();
    let r = http
        .get(format!("http://{}/subscribe?{too_many}", e.addr))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.text().await.expect("body"),
        "invalid subscriber options: too many wanted collections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_closed_by_the_write_timeout_while_another_keeps_up() {
    let e = env(
        SubscribeConfig {
            write_timeout_secs: 1,
            ..Default::default()
        },
        1 << 30,
    )
    .await;
    // ~6 MB of events: more than the kernel buffers toward a client that reads nothing.
    publish_events(&e.client, &corpus_events(12_000)).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(e.addr).await.expect("tcp");
    let (stalled, _) =
        tokio_tungstenite::client_async(format!("ws://{}/subscribe?cursor=0", e.addr), stream)
            .await
            .expect("handshake");
    let mut reader = connect(e.addr, "cursor=0").await;
    let got = read_until_quiet(&mut reader, Duration::from_secs(3)).await;
    assert_eq!(
        got.len(),
        expected(&e.client).await.len(),
        "the reader got everything"
    );
    eventually(Duration::from_secs(15), || async {
        e.hub.connections() == 1
    })
    .await
    .expect("the stalled client was closed, the reader is still connected");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_retention_is_closed_with_a_reason() {
    // A stream of at most ~256 KB: a client that stops reading falls out of it.
    let e = env(
        SubscribeConfig {
            buffer_events: 16,
            ..Default::default()
        },
        256 * 1024,
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(e.addr).await.expect("tcp");
    let (mut behind, _) =
        tokio_tungstenite::client_async(format!("ws://{}/subscribe", e.addr), stream)
            .await
            .expect("handshake");
    eventually(Duration::from_secs(5), || async {
        e.hub.connections() == 1
    })
    .await
    .expect("connected");
    publish_events(&e.client, &corpus_events(20_000)).await;
    // It reads again: what it gets ends with a close that names retention.
    let reason = close_of(&mut behind, Duration::from_secs(10)).await;
    let (code, text) = reason.expect("a close frame");
    assert_eq!(code, 1008);
    assert!(text.contains("retention"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_read_on_across_a_nats_outage_without_gap_or_repeat() {
    let mut e = env(SubscribeConfig::default(), 1 << 30).await;
    let mut live = connect(e.addr, "").await;
    let mut behind = connect(e.addr, "cursor=0").await;
    eventually(Duration::from_secs(5), || async {
        e.hub.connections() == 2
    })
    .await
    .expect("connected");
    let events = corpus_events(400);
    publish_events(&e.client, &events[..200]).await;
    let mut got_live = Vec::new();
    let mut got_behind = Vec::new();
    for _ in 0..20 {
        got_live.push(
            next_event(&mut live, Duration::from_secs(5))
                .await
                .expect("live event"),
        );
        got_behind.push(
            next_event(&mut behind, Duration::from_secs(5))
                .await
                .expect("event"),
        );
    }
    // nats-server goes away for 3 s (store kept) while both clients are mid-stream.
    let mut server = e.server.take().expect("server");
    tokio::task::spawn_blocking(move || {
        server.stop();
        std::thread::sleep(Duration::from_secs(3));
        server.start();
        server
    })
    .await
    .map(|s| e.server = Some(s))
    .expect("restart");
    publish_events(&e.client, &events[200..]).await;
    got_live.extend(read_until_quiet(&mut live, Duration::from_secs(8)).await);
    got_behind.extend(read_until_quiet(&mut behind, Duration::from_secs(8)).await);
    let want = expected(&e.client).await;
    assert!(increasing(&got_live) && increasing(&got_behind));
    assert_eq!(
        zero_time(got_behind),
        want,
        "the cursor client: everything once"
    );
    assert_eq!(
        zero_time(got_live),
        want,
        "the live client: everything once"
    );
}
