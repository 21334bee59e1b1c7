//! The simulator over a real socket: determinism, cursor semantics, rate limiting, faults, kicking clients,
//! ConsumerTooSlow and capture replay.

use crate::common;

use std::time::{Duration, Instant};

use common::{Got, connect, eventually, kind, next, read_n, seq};
use fpaas_sim::{FaultConfig, Generator, Sim, SimConfig, TruthEvent, read_capture};

fn cfg() -> SimConfig {
    SimConfig {
        seed: 11,
        repos: 200,
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn same_seed_gives_identical_frames_over_the_socket() {
    let (a, _) = Sim::start(cfg()).await.expect("start a");
    let (b, _) = Sim::start(cfg()).await.expect("start b");
    let mut wa = connect(&a.subscribe_url(None)).await;
    let mut wb = connect(&b.subscribe_url(None)).await;
    let fa = read_n(&mut wa, 300).await;
    let fb = read_n(&mut wb, 300).await;
    assert_eq!(fa, fb);
    // And they are exactly what the generator makes offline.
    let mut g = Generator::new(11, 200, 1, FaultConfig::default());
    for (i, f) in fa.iter().enumerate() {
        let ev = g.next_event().expect("gen");
        assert_eq!(
            ev.frames.last().map(|b| b.to_vec()).as_ref(),
            Some(f),
            "frame {i}"
        );
        assert_eq!(seq(f), Some(i as i64 + 1));
    }
    assert!(a.truth().len() >= 300);
    a.shutdown().await.expect("shutdown a");
    b.shutdown().await.expect("shutdown b");
}

#[tokio::test]
async fn cursor_semantics() {
    let (sim, _) = Sim::start(SimConfig {
        limit: Some(100),
        window: 50,
        ..cfg()
    })
    .await
    .expect("start");
    // Drive the whole stream: 100 events, seqs 1..=100.
    let mut live = connect(&sim.subscribe_url(None)).await;
    let frames = read_n(&mut live, 100).await;
    assert_eq!(seq(&frames[99]), Some(100));
    assert_eq!(sim.head_seq(), Some(100));

    // In the window: everything after the cursor.
    let mut ws = connect(&sim.subscribe_url(Some(80))).await;
    let got = read_n(&mut ws, 20).await;
    let seqs: Vec<_> = got.iter().map(|f| seq(f).expect("seq")).collect();
    assert_eq!(seqs, (81..=100).collect::<Vec<_>>());

    // Cursor == head: nothing to replay, then live.
    let mut at_head = connect(&sim.subscribe_url(Some(100))).await;

    // Older than the window: #info OutdatedCursor, then the whole window (51..=100).
    let mut ws = connect(&sim.subscribe_url(Some(10))).await;
    let got = read_n(&mut ws, 51).await;
    assert_eq!(kind(&got[0]).as_deref(), Some("#info"));
    let (_, body) = common::decode(&got[0]).expect("decode info");
    assert_eq!(
        common::field(&body, "name"),
        Some(&ipld_core::ipld::Ipld::String("OutdatedCursor".into()))
    );
    let seqs: Vec<_> = got[1..].iter().map(|f| seq(f).expect("seq")).collect();
    assert_eq!(seqs, (51..=100).collect::<Vec<_>>());

    // Ahead of the head: error frame FutureCursor, then close.
    let mut ws = connect(&sim.subscribe_url(Some(500))).await;
    match next(&mut ws).await {
        Got::Frame(f) => assert_eq!(kind(&f).as_deref(), Some("error:FutureCursor")),
        Got::Closed => panic!("expected an error frame"),
    }
    assert!(matches!(next(&mut ws).await, Got::Closed));

    // The limit holds: the at-head client receives nothing more (idle, connection open).
    let idle = tokio::time::timeout(Duration::from_millis(200), next(&mut at_head)).await;
    assert!(idle.is_err(), "no events past the limit");
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn cursor_ahead_is_produced_on_demand_in_fast_mode() {
    let (sim, _) = Sim::start(cfg()).await.expect("start");
    // Nothing produced yet; in as-fast-as-possible mode the sim runs ahead up to the window.
    let mut ws = connect(&sim.subscribe_url(Some(40))).await;
    let got = read_n(&mut ws, 5).await;
    assert_eq!(seq(&got[0]), Some(41));
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn rate_is_roughly_respected() {
    let (sim, _) = Sim::start(SimConfig {
        rate: Some(200.0),
        ..cfg()
    })
    .await
    .expect("start");
    let mut ws = connect(&sim.subscribe_url(None)).await;
    let t0 = Instant::now();
    let got = read_n(&mut ws, 100).await;
    let took = t0.elapsed();
    // 100 events at 200/s is ~0.5 s; allow generous slack either way on a shared box.
    assert!(took >= Duration::from_millis(300), "too fast: {took:?}");
    assert!(took < Duration::from_secs(5), "too slow: {took:?}");
    let seqs: Vec<_> = got.iter().map(|f| seq(f).expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "contiguous seqs");
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn faults_appear_and_every_real_event_still_arrives() {
    let (sim, _) = Sim::start(SimConfig {
        limit: Some(100),
        faults: FaultConfig {
            malformed_every: Some(10),
            truncated_every: Some(15),
            unknown_type_every: Some(20),
            oversize_every: Some(50),
            hostile_every: None,
        },
        ..cfg()
    })
    .await
    .expect("start");
    let mut ws = connect(&sim.subscribe_url(None)).await;
    // 100 events + 10 malformed + 6 truncated + 5 unknown.
    let frames = read_n(&mut ws, 121).await;
    let (mut undecodable, mut foo, mut commits_etc, mut oversize) = (0, 0, vec![], 0);
    for f in &frames {
        match kind(f).as_deref() {
            None => undecodable += 1,
            Some("#foo") => foo += 1,
            Some(_) => {
                commits_etc.push(seq(f).expect("seq"));
                if f.len() > 1_000_000 {
                    oversize += 1;
                }
            }
        }
    }
    assert_eq!(undecodable, 16, "malformed + truncated");
    assert_eq!(foo, 5);
    assert_eq!(oversize, 2);
    assert_eq!(commits_etc, (1..=100).collect::<Vec<_>>());
    let truth = sim.truth();
    let over: Vec<i64> = truth
        .iter()
        .filter_map(|t| match t {
            TruthEvent::Op {
                seq,
                oversize: true,
                ..
            } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(over, vec![50, 100]);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn disconnect_all_kicks_clients_and_they_can_resume() {
    let (sim, _) = Sim::start(SimConfig {
        rate: Some(500.0),
        ..cfg()
    })
    .await
    .expect("start");
    let mut ws = connect(&sim.subscribe_url(None)).await;
    let got = read_n(&mut ws, 10).await;
    let last = seq(&got[9]).expect("seq");
    eventually(Duration::from_secs(5), || sim.clients() == 1).await;
    sim.disconnect_all();
    // Drain whatever was in flight, then the close.
    let mut last_seen = last;
    while let Got::Frame(f) = next(&mut ws).await {
        last_seen = seq(&f).expect("seq");
    }
    eventually(Duration::from_secs(5), || sim.clients() == 0).await;
    let mut ws = connect(&sim.subscribe_url(Some(last_seen))).await;
    let got = read_n(&mut ws, 5).await;
    assert_eq!(
        seq(&got[0]),
        Some(last_seen + 1),
        "resume right after the cursor"
    );
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn slow_consumer_gets_consumer_too_slow() {
    let (sim, _) = Sim::start(SimConfig {
        rate: Some(1.0),
        window: 20,
        ..cfg()
    })
    .await
    .expect("start");
    let mut ws = connect(&sim.subscribe_url(None)).await;
    eventually(Duration::from_secs(5), || sim.clients() == 1).await;
    // Everything the client has not read yet falls out of the window at once.
    sim.advance(100);
    let mut saw_error = false;
    while let Got::Frame(f) = next(&mut ws).await {
        saw_error |= kind(&f).as_deref() == Some("error:ConsumerTooSlow");
    }
    assert!(saw_error);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn replays_a_capture_and_honours_cursors() {
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/corpus/frames.bin.zst"
    );
    let expected = read_capture(corpus).expect("corpus");
    let seqs: Vec<i64> = expected
        .iter()
        .map(|f| fpaas_sim::frame_seq(f).expect("real frames have seqs"))
        .collect();
    let (sim, _) = Sim::start(SimConfig {
        replay: Some(corpus.into()),
        ..SimConfig::default()
    })
    .await
    .expect("start");
    let mut ws = connect(&sim.subscribe_url(None)).await;
    let got = read_n(&mut ws, 150).await;
    assert_eq!(got, expected, "byte-identical replay");
    assert_eq!(sim.head_seq(), seqs.last().copied());
    assert!(sim.truth().is_empty());

    let mut ws = connect(&sim.subscribe_url(Some(seqs[99]))).await;
    let got = read_n(&mut ws, 50).await;
    assert_eq!(got, expected[100..]);

    let mut ws = connect(&sim.subscribe_url(Some(seqs[149] + 1))).await;
    match next(&mut ws).await {
        Got::Frame(f) => assert_eq!(kind(&f).as_deref(), Some("error:FutureCursor")),
        Got::Closed => panic!("expected FutureCursor"),
    }
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn serve_takes_a_listener_and_stops_on_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(fpaas_sim::serve(listener, cfg(), token.clone()));
    let mut ws = connect(&format!("ws://{addr}{}", fpaas_sim::SUBSCRIBE_PATH)).await;
    let _ = read_n(&mut ws, 3).await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns after shutdown")
        .expect("join")
        .expect("serve ok");
}
