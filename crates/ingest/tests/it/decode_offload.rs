//! Decoding never blocks the async runtime for long: frames with ~900 KB records (just under the 1,000,000-byte
//! record limit; thousands of small maps, the expensive shape to convert) are decoded and normalized on tokio's blocking pool, so a ticker task on the same
//! single-worker runtime keeps running on time while the shuffler stores them. The ticker's worst lateness is
//! compared with the time the decode path (decode, CID check, normalize, event JSON) takes for one such frame,
//! measured here inline: it must stay below half of it (inline it was the whole of it: 53 ms and more). Also measures a `spawn_blocking` round trip, the number behind the offload threshold.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use fpaas_ingest::Shuffler;
use fpaas_ops::Health;
use fpaas_sim::encode::{self, Block, ByteStr, CommitBody, RepoOp};
use fpaas_testkit::{NatsServer, eventually};
use futures::SinkExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const FRAMES: i64 = 12;
/// Mention facets per record: ~150 bytes of DAG-CBOR each, ~900 KB in all.
const FACETS: usize = 5_800;
const DID: &str = "did:plc:abcdefghijklmnopqrstuvwx";

/// A `#commit` frame creating one post with `FACETS` mention facets.
fn big_commit(seq: i64) -> Vec<u8> {
    let rev = fpaas_sim::tid::tid(1_783_123_200_000_000 + seq as u64, 1);
    let rkey = fpaas_sim::tid::tid(1_783_123_100_000_000 + seq as u64, 2);
    let post = fpaas_sim::records::Post {
        type_: "app.bsky.feed.post",
        text: "x".repeat(1_000),
        facets: (0..FACETS as u64)
            .map(|i| fpaas_sim::records::Facet {
                type_: "app.bsky.richtext.facet",
                index: fpaas_sim::records::ByteSlice {
                    byte_start: i % 900,
                    byte_end: i % 900 + 10,
                },
                features: vec![fpaas_sim::records::Feature::Mention {
                    did: DID.to_owned(),
                }],
            })
            .collect(),
        reply: None,
        embed: None,
        langs: vec!["en"],
        created_at: "2026-07-04T00:00:00.000Z".to_owned(),
    };
    let block = Block::encode(&post).expect("record");
    let path = format!("app.bsky.feed.post/{rkey}");
    let mst = encode::mst_node(&mut vec![(path.clone(), block.cid)]).expect("mst");
    let commit = encode::commit_block(DID, &rev, mst.cid).expect("commit");
    let car = encode::car(&[commit.cid], [&commit, &mst, &block]).expect("car");
    let ops = [RepoOp {
        action: "create",
        path,
        cid: Some(block.cid),
        prev: None,
    }];
    CommitBody {
        seq,
        rebase: false,
        too_big: false,
        repo: DID,
        commit: commit.cid,
        rev: &rev,
        since: None,
        blocks: ByteStr(&car),
        ops: &ops,
        blobs: &[],
        prev_data: None,
        time: "2026-07-04T00:00:00.000Z",
    }
    .encode_frame()
    .expect("frame")
}

/// A relay that, once `go` is notified, sends `frames` and then stays open, idle.
async fn relay(frames: Arc<Vec<Bytes>>, go: Arc<tokio::sync::Notify>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let frames = Arc::clone(&frames);
            let go = Arc::clone(&go);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                go.notified().await;
                for f in frames.iter() {
                    if ws.send(Message::Binary(f.clone())).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn large_frames_are_decoded_off_the_runtime() {
    let frames: Vec<Bytes> = (1..=FRAMES).map(|s| Bytes::from(big_commit(s))).collect();
    let size = frames[0].len();
    // The work taken off the runtime, measured inline: decode + CID check + normalize + event JSON of a frame.
    let started = Instant::now();
    for f in &frames[..3] {
        let frame = fpaas_proto::frame::decode_frame_bytes(f).expect("decodes");
        let normalized = fpaas_event::normalize(&frame);
        assert_eq!(normalized.events.len(), 1, "{:?}", normalized.dropped);
        assert!(normalized.events[0].to_json_vec().len() > 900_000);
    }
    let decode = started.elapsed() / 3;
    // A spawn_blocking round trip (the cost that keeps small frames inline).
    let started = Instant::now();
    for _ in 0..2_000 {
        tokio::task::spawn_blocking(|| 1u8).await.expect("join");
    }
    let round_trip = started.elapsed() / 2_000;

    let nats = NatsServer::new();
    let go = Arc::new(tokio::sync::Notify::new());
    let url = relay(Arc::new(frames), Arc::clone(&go)).await;
    let shuffler = Shuffler::new(test_config(&nats.url(), &url, "big"));
    let stats = shuffler.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(shuffler.run(Health::new(), shutdown.clone()));
    eventually(Duration::from_secs(20), || async {
        stats.relay_connects.load(Ordering::Relaxed) > 0
    })
    .await
    .expect("connected");

    // The ticker: how late does a 2 ms interval fire while the big frames go through?
    let worst_us = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let ticker = {
        let (worst_us, running) = (Arc::clone(&worst_us), Arc::clone(&running));
        tokio::spawn(async move {
            let period = Duration::from_millis(2);
            let mut next = Instant::now() + period;
            while running.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next.into()).await;
                let late = Instant::now().saturating_duration_since(next);
                worst_us.fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                next = Instant::now() + period;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    go.notify_one();
    eventually(Duration::from_secs(60), || async {
        stats.watermark_seq.load(Ordering::Relaxed) == FRAMES
    })
    .await
    .unwrap_or_else(|e| panic!("all big frames stored: {e}; {:?}", stats.snapshot()));
    running.store(false, Ordering::Relaxed);
    ticker.await.expect("ticker");
    shutdown.cancel();
    let done = task.await.expect("join").expect("run ok");
    let worst = Duration::from_micros(worst_us.load(Ordering::Relaxed));
    eprintln!(
        "{} KB frames ({FACETS} facets per record): decode path (incl. event JSON) {decode:?} per frame (inline), spawn_blocking round trip \
         {round_trip:?}; worst ticker lateness while shuffling {worst:?}; {done:?}",
        size / 1000
    );
    assert_eq!(done.published, FRAMES as u64, "{done:?}");
    assert!(
        worst < decode / 2,
        "the runtime stalled {worst:?}; decoding one frame takes {decode:?}"
    );
}
