//! The worker against a real nats-server and real HTTP receivers on loopback: what it delivers is exactly
//! what a model computes from the same events (filter, transform, order, batch limits), signatures verify,
//! retries follow the receiver's answers, the last failure becomes a dead letter, 410 disables, and a
//! worker that dies mid-delivery is replaced by another that redelivers the same batch under the same id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use fpaas_control::{SubState, Subscription, SubscriptionSpec, layout};
use fpaas_event::Event;
use fpaas_pipeline::WorkerConfig;
use fpaas_testkit::stream::{corpus_events, publish_events};
use fpaas_testkit::{NatsServer, Received, Reply, WebhookReceiver, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Env {
    /// `None` when the test holds its server itself (to stop and start it).
    _server: Option<NatsServer>,
    client: async_nats::Client,
    subs: fpaas_bus::KvBucket,
}

async fn env() -> Env {
    let server = NatsServer::new();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            max_bytes: 1 << 30,
            ..Default::default()
        },
    )
    .await
    .expect("stream");
    let subs =
        fpaas_bus::ensure_kv_on(&client, &fpaas_bus::KvSettings::bucket(layout::SUBS_BUCKET))
            .await
            .expect("subs bucket");
    Env {
        _server: Some(server),
        client,
        subs,
    }
}

fn config(id: &str) -> WorkerConfig {
    let mut c = WorkerConfig {
        worker_id: id.into(),
        partitions: 4,
        lease_ttl_secs: 2,
        queue_capacity: 64,
        metrics_listen: None,
        ..Default::default()
    };
    c.webhook_addresses.allow_loopback = true;
    c
}

fn start_worker(env: &Env, id: &str) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let client = env.client.clone();
    let cfg = config(id);
    let c = cancel.clone();
    let handle = tokio::spawn(async move {
        fpaas_pipeline::run(client, cfg, c).await.expect("worker");
    });
    (cancel, handle)
}

async fn put_sub(env: &Env, id: &str, spec: Value) -> Subscription {
    let spec: SubscriptionSpec = serde_json::from_value(spec).expect("spec");
    let sub = Subscription::from_spec(id.into(), "t_test".into(), spec);
    env.subs
        .put(
            &layout::sub_key("t_test", id),
            Bytes::from(serde_json::to_vec(&sub).unwrap()),
        )
        .await
        .expect("put sub");
    sub
}

async fn get_sub(env: &Env, id: &str) -> Subscription {
    let bytes = env
        .subs
        .get(&layout::sub_key("t_test", id))
        .await
        .unwrap()
        .expect("sub");
    serde_json::from_slice(&bytes).unwrap()
}

fn secret_of(sub: &Subscription) -> fpaas_webhook::Secret {
    fpaas_webhook::Secret::parse(&sub.secrets[0].secret).expect("secret")
}

/// The batches a receiver got, verified and parsed.
fn batches(received: &[Received], secret: &fpaas_webhook::Secret) -> Vec<Value> {
    received
        .iter()
        .map(|r| {
            let id = r.header("webhook-id").expect("webhook-id");
            let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
            let sig = r.header("webhook-signature").expect("webhook-signature");
            fpaas_webhook::sign::verify(
                id,
                ts,
                sig,
                &r.body,
                std::slice::from_ref(secret),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
                Duration::from_secs(300),
            )
            .unwrap_or_else(|e| panic!("signature of {id}: {e:?}"));
            let v: Value = serde_json::from_slice(&r.body).expect("batch JSON");
            assert_eq!(v["batch_id"], id, "webhook-id is the batch id");
            v
        })
        .collect()
}

/// Events of accepted batches, first delivery of each batch id only, in order.
fn delivered_events(batches: &[Value]) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for b in batches {
        if seen.insert(b["batch_id"].as_str().unwrap().to_owned()) {
            out.extend(b["events"].as_array().unwrap().iter().cloned());
        }
    }
    out
}

fn model(
    events: &[Event],
    seqs: &[u64],
    keep: impl Fn(&Event) -> bool,
    map: impl Fn(&Value) -> Value,
) -> Vec<(u64, Value)> {
    events
        .iter()
        .zip(seqs)
        .filter(|(e, _)| keep(e))
        .map(|(e, s)| {
            (
                *s,
                map(&serde_json::from_slice::<Value>(
                    &fpaas_event::WireMessage::from_event(e).payload,
                )
                .unwrap()),
            )
        })
        .collect()
}

/// The filter `collections: [app.bsky.feed.*], operations: [create]`: as in Jetstream, collections and
/// operations do not exclude events that have none (identity, account).
fn is_feed_create(e: &Event) -> bool {
    match &e.commit {
        None => true,
        Some(c) => {
            c.collection.starts_with("app.bsky.feed.")
                && c.operation == fpaas_event::Operation::Create
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivers_exactly_the_filtered_transformed_events_in_order_within_batch_limits() {
    let env = env().await;
    let receiver = WebhookReceiver::start().await;
    let events = corpus_events(900);
    let (old, new) = events.split_at(600);
    let mut seqs = publish_events(&env.client, old).await;

    let likes_did = events
        .iter()
        .find(|e| {
            e.commit
                .as_ref()
                .is_some_and(|c| c.collection == "app.bsky.feed.like")
        })
        .unwrap()
        .did
        .clone();
    let feed = put_sub(
        &env,
        "s_feed",
        json!({
            "filter": {"collections": ["app.bsky.feed.*"], "operations": ["create"]},
            "transform": "{did: did, c: commit.collection, r: commit.rkey}",
            "batching": {"max_events": 25, "max_bytes": 8192, "max_wait_ms": 200},
            "start": {"at": "retention_start"},
            "delivery": {"type": "webhook", "url": receiver.url("/feed")}
        }),
    )
    .await;
    let one_did = put_sub(
        &env,
        "s_did",
        json!({
            "filter": {"dids": [likes_did], "predicate": "commit.collection == 'app.bsky.feed.like'"},
            "batching": {"max_events": 1000, "max_wait_ms": 100},
            "start": {"at": "retention_start"},
            "delivery": {"type": "webhook", "url": receiver.url("/did")}
        }),
    )
    .await;
    let (cancel, handle) = start_worker(&env, "w_one");
    // Live events after the worker started: caught up, then delivered from the shared reader.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    seqs.extend(publish_events(&env.client, new).await);

    let want_feed = model(
        &events,
        &seqs,
        is_feed_create,
        |v| json!({"did": v["did"], "c": v["commit"]["collection"], "r": v["commit"]["rkey"]}),
    );
    let want_did = model(
        &events,
        &seqs,
        |e| {
            e.did == likes_did
                && e.commit
                    .as_ref()
                    .is_some_and(|c| c.collection == "app.bsky.feed.like")
        },
        Value::clone,
    );
    let count = |path: &str| {
        let r = receiver.received();
        r.iter()
            .filter(|x| x.path == path)
            .map(|x| {
                serde_json::from_slice::<Value>(&x.body).unwrap()["events"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .sum::<usize>()
    };
    eventually(Duration::from_secs(30), || {
        let done = count("/feed") >= want_feed.len() && count("/did") >= want_did.len();
        async move { done }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "delivered feed {} of {}, did {} of {}",
            count("/feed"),
            want_feed.len(),
            count("/did"),
            want_did.len()
        )
    });
    cancel.cancel();
    handle.await.unwrap();

    for (path, sub, want, max_events) in [
        ("/feed", &feed, &want_feed, 25usize),
        ("/did", &one_did, &want_did, 1000),
    ] {
        let received: Vec<Received> = receiver
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect();
        let bs = batches(&received, &secret_of(sub));
        for b in &bs {
            let n = b["events"].as_array().unwrap().len();
            assert!((1..=max_events).contains(&n), "{path}: batch of {n}");
            assert!(
                b["batch_id"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{}.", sub.id))
            );
        }
        if path == "/feed" {
            for r in &received {
                assert!(
                    r.body.len() <= 8192,
                    "batch body {} > max_bytes",
                    r.body.len()
                );
            }
        }
        let got = delivered_events(&bs);
        let got: Vec<(u64, Value)> = got
            .iter()
            .map(|e| (e["seq"].as_u64().unwrap(), e["data"].clone()))
            .collect();
        if got.len() != want.len() {
            let mut seen = BTreeMap::new();
            for b in &bs {
                for e in b["events"].as_array().unwrap() {
                    seen.entry(e["seq"].as_u64().unwrap())
                        .or_insert_with(Vec::new)
                        .push(b["batch_id"].as_str().unwrap().to_owned());
                }
            }
            let dups: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
            eprintln!("DUPS {path}: {dups:?}");
            let w: BTreeSet<u64> = want.iter().map(|x| x.0).collect();
            let extra: Vec<_> = got.iter().filter(|x| !w.contains(&x.0)).take(5).collect();
            let g: BTreeSet<u64> = got.iter().map(|x| x.0).collect();
            let missing: Vec<_> = want.iter().filter(|x| !g.contains(&x.0)).take(5).collect();
            eprintln!("EXTRA {extra:?}\nMISSING {missing:?}");
        }
        assert_eq!(got.len(), want.len(), "{path}: delivered vs model");
        assert_eq!(
            &got, want,
            "{path}: the same events, transformed, in stream order"
        );
    }
    // The ids are the events' dedup ids.
    let first = &delivered_events(&batches(
        &receiver
            .received()
            .into_iter()
            .filter(|r| r.path == "/did")
            .collect::<Vec<_>>(),
        &secret_of(&one_did),
    ))[0];
    assert!(
        first["id"].as_str().unwrap().starts_with("c:did:"),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_follow_the_receiver_then_dead_letter_and_410_disables() {
    let env = env().await;
    let receiver = WebhookReceiver::start().await;
    let events = corpus_events(40);
    publish_events(&env.client, &events).await;
    let spec = |path: &str, schedule: Vec<u64>| {
        json!({
            "filter": {"collections": ["app.bsky.feed.like"]},
            "batching": {"max_events": 1000, "max_wait_ms": 50},
            "start": {"at": "retention_start"},
            "delivery": {"type": "webhook", "url": receiver.url(path), "timeout_ms": 500,
                         "retry": {"schedule_ms": schedule}}
        })
    };
    // /retry: 500, then 429 with Retry-After: 1, then a timeout, then 200.
    // /dead: always 500 with a schedule of two short retries. /gone: 410.
    receiver.respond_with(|r| match r.path.as_str() {
        "/dead" => Reply::status(500),
        "/gone" => Reply::status(410),
        _ => Reply::ok(),
    });
    let retry_spec = spec("/retry", vec![100, 100, 100]);
    receiver.push([
        Reply::status(500),
        Reply::status(429).retry_after("1"),
        Reply::ok().delay(Duration::from_millis(1500)),
    ]);
    put_sub(&env, "s_retry", retry_spec).await;
    let (cancel, handle) = start_worker(&env, "w_r");
    let at = |path: &str| -> Vec<Received> {
        receiver
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    };
    eventually(Duration::from_secs(20), || {
        let done = at("/retry").len() >= 4;
        async move { done }
    })
    .await
    .expect("four attempts");
    let attempts = at("/retry");
    let ids: BTreeSet<&str> = attempts[..4]
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same webhook-id");
    let gap = attempts[2].at - attempts[1].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 honoured ({gap:?})"
    );

    put_sub(&env, "s_dead", spec("/dead", vec![50, 50])).await;
    put_sub(&env, "s_gone", spec("/gone", vec![50])).await;
    eventually(Duration::from_secs(20), || {
        let done = at("/dead").len() >= 3 && !at("/gone").is_empty();
        async move { done }
    })
    .await
    .expect("dead and gone attempted");
    // The dead letter: one batch with every like, after exactly 3 attempts.
    let dlq = fpaas_bus::ensure_msglog(
        &async_nats::jetstream::new(env.client.clone()),
        &fpaas_bus::MsgLogSettings::default(),
    )
    .await
    .unwrap();
    let subject = layout::dlq_subject("t_test", "s_dead");
    let letters = {
        let mut found = Vec::new();
        for _ in 0..100 {
            found = dlq.list(&subject, 1, 10).await.unwrap();
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found
    };
    assert_eq!(letters.len(), 1, "one dead letter");
    assert_eq!(letters[0].header(layout::HDR_ATTEMPTS), Some("3"));
    assert_eq!(at("/dead").len(), 3, "no attempt after the schedule");
    let body: Value = serde_json::from_slice(&letters[0].payload).unwrap();
    let likes = events
        .iter()
        .filter(|e| {
            e.commit
                .as_ref()
                .is_some_and(|c| c.collection == "app.bsky.feed.like")
        })
        .count();
    assert_eq!(body["events"].as_array().unwrap().len(), likes);
    assert_eq!(
        body,
        serde_json::from_slice::<Value>(&at("/dead")[0].body).unwrap()
    );
    // 410: disabled, with a reason, and not attempted again.
    eventually(Duration::from_secs(10), || async {
        get_sub(&env, "s_gone").await.state == SubState::Disabled
    })
    .await
    .expect("disabled after 410");
    assert!(get_sub(&env, "s_gone").await.disabled_reason.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(at("/gone").len(), 1);
    cancel.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_dies_mid_delivery_is_replaced_and_the_batch_keeps_its_id() {
    let env = env().await;
    let receiver = WebhookReceiver::start().await;
    let events = corpus_events(300);
    let seqs = publish_events(&env.client, &events).await;
    // The first attempt hangs (the worker dies during it); later ones succeed.
    receiver.push([Reply::ok().delay(Duration::from_secs(30))]);
    let sub = put_sub(
        &env,
        "s_kill",
        json!({
            "filter": {"kinds": ["commit"]},
            "batching": {"max_events": 50, "max_wait_ms": 100},
            "start": {"at": "retention_start"},
            "delivery": {"type": "webhook", "url": receiver.url("/k"), "timeout_ms": 60000}
        }),
    )
    .await;
    let (_a_cancel, a) = start_worker(&env, "w_a");
    receiver
        .wait_for(1, Duration::from_secs(15))
        .await
        .expect("first attempt");
    a.abort(); // no shutdown: leases and the pending batch stay behind, as after kill -9
    let _ = a.await;
    let (b_cancel, b) = start_worker(&env, "w_b");
    let commits = events.iter().filter(|e| e.commit.is_some()).count();
    let count = || delivered_events(&batches(&receiver.received(), &secret_of(&sub))).len();
    eventually(Duration::from_secs(30), || {
        // The hung first attempt counts as delivered by id; the redelivery must carry that id.
        let done = count() >= commits;
        async move { done }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {commits}", count()));
    b_cancel.cancel();
    b.await.unwrap();
    let all = batches(&receiver.received(), &secret_of(&sub));
    let first_id = all[0]["batch_id"].as_str().unwrap();
    let again: Vec<&Value> = all[1..]
        .iter()
        .filter(|b| b["batch_id"] == first_id)
        .collect();
    assert_eq!(
        again.len(),
        1,
        "the batch in flight was redelivered once, under its id"
    );
    assert_eq!(again[0]["events"], all[0]["events"], "with the same events");
    // Every event at least once; every repeat of an event carries the batch id of its first delivery.
    let mut first_batch: BTreeMap<String, String> = BTreeMap::new();
    for b in &all {
        for e in b["events"].as_array().unwrap() {
            let id = e["id"].as_str().unwrap().to_owned();
            let bid = b["batch_id"].as_str().unwrap().to_owned();
            let first = first_batch.entry(id.clone()).or_insert(bid.clone());
            assert_eq!(*first, bid, "event {id} repeated under another batch id");
        }
    }
    let want: BTreeSet<u64> = events
        .iter()
        .zip(&seqs)
        .filter(|(e, _)| e.commit.is_some())
        .map(|(_, s)| *s)
        .collect();
    let got: BTreeSet<u64> = delivered_events(&all)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, want, "nothing lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_split_the_subscriptions_and_one_takes_over_when_the_other_dies() {
    let env = env().await;
    let receiver = WebhookReceiver::start().await;
    let mut subs = Vec::new();
    for i in 0..8 {
        subs.push(
            put_sub(
                &env,
                &format!("s_pair{i}"),
                json!({
                    "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.like"]},
                    "batching": {"max_events": 100, "max_wait_ms": 50},
                    "start": {"at": "seq", "seq": 1},
                    "delivery": {"type": "webhook", "url": receiver.url(&format!("/p{i}"))}
                }),
            )
            .await,
        );
    }
    let (_ca, a) = start_worker(&env, "w_1");
    let (cb, b) = start_worker(&env, "w_2");
    let events = corpus_events(600);
    let (first, second) = events.split_at(300);
    publish_events(&env.client, first).await;
    let likes = |evs: &[Event]| {
        evs.iter()
            .filter(|e| {
                e.commit
                    .as_ref()
                    .is_some_and(|c| c.collection == "app.bsky.feed.like")
            })
            .count()
    };
    let per_path = || {
        let mut m: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for r in receiver.received() {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            for e in v["events"].as_array().unwrap() {
                m.entry(r.path.clone())
                    .or_default()
                    .insert(e["seq"].as_u64().unwrap());
            }
        }
        m
    };
    let want1 = likes(first);
    eventually(Duration::from_secs(30), || {
        let m = per_path();
        let done = m.len() == 8 && m.values().all(|s| s.len() >= want1);
        async move { done }
    })
    .await
    .expect("both workers deliver the first half");
    let leases = fpaas_bus::ensure_kv_on(
        &env.client,
        &fpaas_bus::KvSettings {
            max_age_secs: 2,
            ..fpaas_bus::KvSettings::bucket(layout::LEASES_BUCKET)
        },
    )
    .await
    .unwrap();
    // Both workers own partitions (the first one hands extras back once it sees the second).
    let both = BTreeSet::from(["w_1".to_owned(), "w_2".to_owned()]);
    eventually(Duration::from_secs(10), || async {
        let owners: BTreeSet<String> = leases
            .snapshot("part.*", false)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.state {
                fpaas_bus::KvState::Value(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                _ => None,
            })
            .collect();
        owners == both
    })
    .await
    .expect("both workers hold partitions");
    // Worker 1 dies without handing anything back; worker 2 takes every subscription.
    a.abort();
    let _ = a.await;
    let died = std::time::Instant::now();
    publish_events(&env.client, second).await;
    let want = want1 + likes(second);
    eventually(Duration::from_secs(30), || {
        let m = per_path();
        let done = m.values().all(|s| s.len() >= want);
        async move { done }
    })
    .await
    .expect("every subscription complete after the takeover");
    let took = died.elapsed();
    assert!(took < Duration::from_secs(12), "takeover took {took:?}");
    cb.cancel();
    b.await.unwrap();
    // Nothing lost, and never an event of one subscription at another's URL.
    for s in per_path().values() {
        assert_eq!(s.len(), want);
    }
    drop(subs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_positions_live_time_and_seq_start_where_they_say() {
    let env = env().await;
    let receiver = WebhookReceiver::start().await;
    let events = corpus_events(300);
    let (a, rest) = events.split_at(100);
    let (b, c) = rest.split_at(100);
    let seqs_a = publish_events(&env.client, a).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seqs_b = publish_events(&env.client, b).await;
    let spec = |path: &str, start: Value| {
        json!({
            "filter": {"kinds": ["commit"]},
            "batching": {"max_events": 1000, "max_wait_ms": 50},
            "start": start,
            "delivery": {"type": "webhook", "url": receiver.url(path)}
        })
    };
    put_sub(
        &env,
        "s_time",
        spec("/time", json!({"at": "time", "time": t.to_rfc3339()})),
    )
    .await;
    put_sub(
        &env,
        "s_seq",
        spec("/seq", json!({"at": "seq", "seq": seqs_a[50]})),
    )
    .await;
    put_sub(&env, "s_live", spec("/live", json!({"at": "live"}))).await;
    // Opened before the worker starts (both creating it at once, with other settings, is refused: 10058).
    let progress = fpaas_bus::ensure_kv_on(
        &env.client,
        &fpaas_bus::KvSettings::bucket(layout::PROGRESS_BUCKET),
    )
    .await
    .unwrap();
    let (cancel, handle) = start_worker(&env, "w_start");
    // The live subscription's position is fixed when the worker first runs it: wait for its progress.
    eventually(Duration::from_secs(10), || async {
        progress
            .get(&layout::progress_key("s_live"))
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await
    .expect("live position fixed");
    let seqs_c = publish_events(&env.client, c).await;
    let commits = |evs: &[Event], seqs: &[u64]| -> Vec<u64> {
        evs.iter()
            .zip(seqs)
            .filter(|(e, _)| e.commit.is_some())
            .map(|(_, s)| *s)
            .collect()
    };
    let got = |path: &str| -> Vec<u64> {
        receiver
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .flat_map(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["seq"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let want_time: Vec<u64> = [commits(b, &seqs_b), commits(c, &seqs_c)].concat();
    let want_seq: Vec<u64> = [
        commits(&a[50..], &seqs_a[50..]),
        commits(b, &seqs_b),
        commits(c, &seqs_c),
    ]
    .concat();
    let want_live = commits(c, &seqs_c);
    eventually(Duration::from_secs(20), || {
        let done = got("/time").len() >= want_time.len()
            && got("/seq").len() >= want_seq.len()
            && got("/live").len() >= want_live.len();
        async move { done }
    })
    .await
    .expect("all three delivered");
    cancel.cancel();
    handle.await.unwrap();
    assert_eq!(
        got("/time"),
        want_time,
        "time: the first event stored at or after it"
    );
    assert_eq!(got("/seq"), want_seq, "seq: from that stream sequence");
    assert_eq!(
        got("/live"),
        want_live,
        "live: what was published after the worker first ran it"
    );
}

/// A topic delivery publishes exactly the model's events (filtered, transformed, in order) into the topic's
/// stream, one message each with the id `<subscription>:<event id>`; a second run over the same events (the
/// progress removed, as if every batch were redelivered) stores nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_delivery_publishes_the_matched_events_once_each() {
    let env = env().await;
    let js = async_nats::jetstream::new(env.client.clone());
    let stream = layout::topic_stream("t_test", "likes");
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            name: stream.clone(),
            subjects: vec![layout::topic_subject("t_test", "likes")],
            max_bytes: 64 << 20,
            ..Default::default()
        },
    )
    .await
    .expect("topic stream");
    let events = corpus_events(900);
    let seqs = publish_events(&env.client, &events).await;
    put_sub(
        &env,
        "s_topic",
        json!({
            "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.like"], "operations": ["create"]},
            "transform": "{post: commit.record.subject.uri, n: `1`}",
            "batching": {"max_events": 50, "max_wait_ms": 100},
            "start": {"at": "retention_start"},
            "delivery": {"type": "topic", "topic": "likes"}
        }),
    )
    .await;
    let is_like_create = |e: &Event| {
        e.commit.as_ref().is_some_and(|c| {
            c.collection == "app.bsky.feed.like" && c.operation == fpaas_event::Operation::Create
        })
    };
    let want = model(
        &events,
        &seqs,
        is_like_create,
        |v| json!({"post": v["commit"]["record"]["subject"]["uri"], "n": 1}),
    );
    assert!(want.len() > 20, "the corpus has likes: {}", want.len());
    let want_ids: Vec<String> = events
        .iter()
        .filter(|e| is_like_create(e))
        .map(|e| format!("s_topic:{}", fpaas_event::WireMessage::from_event(e).msg_id))
        .collect();

    // (msg id, payload) of every message of the topic, in order.
    let read = || async {
        let mut tail = fpaas_bus::tail::StreamTail::new(
            &env.client,
            &stream,
            fpaas_bus::tail::From::First,
            Vec::new(),
        );
        let mut out = Vec::new();
        while let Ok(Some(m)) = tail.next(Duration::from_millis(300)).await {
            out.push((
                m.header("Nats-Msg-Id").unwrap_or_default().to_owned(),
                m.payload.to_vec(),
            ));
        }
        out
    };
    let (cancel, handle) = start_worker(&env, "w_topic");
    eventually(Duration::from_secs(30), || async {
        read().await.len() >= want.len()
    })
    .await
    .unwrap_or_else(|e| panic!("topic filled ({} events expected): {e}", want.len()));
    let stored = read().await;
    let got: Vec<Value> = stored
        .iter()
        .map(|(_, payload)| serde_json::from_slice(payload).expect("topic message JSON"))
        .collect();
    let want_values: Vec<Value> = want.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        got, want_values,
        "the topic holds the model's events, in order"
    );
    let ids: Vec<String> = stored.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        ids, want_ids,
        "ids derived from the subscription and the source event"
    );
    cancel.cancel();
    handle.await.unwrap();

    // Everything again (progress removed): the topic's dedup drops every repeat.
    let progress = fpaas_bus::ensure_kv_on(
        &env.client,
        &fpaas_bus::KvSettings::bucket(layout::PROGRESS_BUCKET),
    )
    .await
    .expect("progress bucket");
    progress
        .delete(&layout::progress_key("s_topic"), None, None)
        .await
        .expect("delete progress");
    let last = *seqs.last().expect("published");
    let (cancel, handle) = start_worker(&env, "w_topic2");
    eventually(Duration::from_secs(30), || async {
        progress
            .get(&layout::progress_key("s_topic"))
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|p| p["acked_seq"].as_u64() >= Some(last) && p["pending"].is_null())
    })
    .await
    .expect("the second run went through every event");
    cancel.cancel();
    handle.await.unwrap();
    assert_eq!(read().await.len(), want.len(), "nothing stored twice");
}

/// Chaining: stage 1 maps the firehose's likes to `{post, n: 1}` into a topic; stage 2 takes the topic as its
/// source, keeps what its predicate selects and delivers to a webhook. The receiver gets exactly what the model
/// computes from the same events, in order, each event carrying the id stage 1 gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_of_a_topic_receives_what_another_published_into_it() {
    let env = env().await;
    let js = async_nats::jetstream::new(env.client.clone());
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            name: layout::topic_stream("t_test", "likes"),
            subjects: vec![layout::topic_subject("t_test", "likes")],
            max_bytes: 64 << 20,
            ..Default::default()
        },
    )
    .await
    .expect("topic stream");
    let receiver = WebhookReceiver::start().await;
    let events = corpus_events(900);
    let seqs = publish_events(&env.client, &events).await;
    put_sub(
        &env,
        "s_map",
        json!({
            "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.like"], "operations": ["create"]},
            "transform": "{post: commit.record.subject.uri, did: did, n: `1`}",
            "batching": {"max_events": 50, "max_wait_ms": 100},
            "start": {"at": "retention_start"},
            "delivery": {"type": "topic", "topic": "likes"}
        }),
    )
    .await;
    // Stage 2 keeps the likes by DIDs starting with a-h (about a quarter) and reshapes them.
    let reduce = put_sub(
        &env,
        "s_reduce",
        json!({
            "source": {"topic": "likes"},
            "filter": {"predicate": "starts_with(did, 'did:plc:a') || starts_with(did, 'did:plc:b') || starts_with(did, 'did:plc:c') || starts_with(did, 'did:plc:d') || starts_with(did, 'did:plc:e') || starts_with(did, 'did:plc:f') || starts_with(did, 'did:plc:g') || starts_with(did, 'did:plc:h')"},
            "transform": "{p: post, by: did}",
            "batching": {"max_events": 40, "max_wait_ms": 100},
            "start": {"at": "retention_start"},
            "delivery": {"type": "webhook", "url": receiver.url("/reduce")}
        }),
    )
    .await;
    let is_like_create = |e: &Event| {
        e.commit.as_ref().is_some_and(|c| {
            c.collection == "app.bsky.feed.like" && c.operation == fpaas_event::Operation::Create
        })
    };
    let stage1 = model(
        &events,
        &seqs,
        is_like_create,
        |v| json!({"post": v["commit"]["record"]["subject"]["uri"], "did": v["did"], "n": 1}),
    );
    let want: Vec<Value> = stage1
        .iter()
        .filter(|(_, v)| {
            v["did"].as_str().is_some_and(|d| {
                d.strip_prefix("did:plc:")
                    .is_some_and(|r| r.starts_with(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']))
            })
        })
        .map(|(_, v)| json!({"p": v["post"], "by": v["did"]}))
        .collect();
    assert!(
        !want.is_empty() && want.len() < stage1.len(),
        "the predicate selects some, not all: {} of {}",
        want.len(),
        stage1.len()
    );
    let want_ids: Vec<String> = events
        .iter()
        .filter(|e| is_like_create(e))
        .map(|e| format!("s_map:{}", fpaas_event::WireMessage::from_event(e).msg_id))
        .collect();

    let (cancel, handle) = start_worker(&env, "w_chain");
    let secret = secret_of(&reduce);
    let got = eventually_some_events(&receiver, &secret, want.len()).await;
    // Its lag is measured against the topic (the firehose is ~900 events ahead of the topic's sequences).
    let stats = fpaas_bus::ensure_kv_on(
        &env.client,
        &fpaas_bus::KvSettings::bucket(layout::STATS_BUCKET),
    )
    .await
    .expect("stats bucket");
    let want_n = want.len() as u64;
    eventually(Duration::from_secs(15), || async {
        stats
            .get(&layout::stats_key("s_reduce"))
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v["delivered_events"] == want_n && v["lag_events"] == 0)
    })
    .await
    .expect("stage 2's stats: everything delivered, no lag against its topic");
    cancel.cancel();
    handle.await.unwrap();
    let data: Vec<Value> = got.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(data, want, "stage 2 delivered the model's events, in order");
    for e in &got {
        let id = e["id"].as_str().expect("id");
        assert!(want_ids.iter().any(|w| w == id), "{id} is a stage-1 id");
    }
}

/// The events of the first delivery of each batch, once at least `n` arrived (30 s at most).
async fn eventually_some_events(
    receiver: &WebhookReceiver,
    secret: &fpaas_webhook::Secret,
    n: usize,
) -> Vec<Value> {
    let mut got = Vec::new();
    let _ = eventually(Duration::from_secs(30), || {
        got = delivered_events(&batches(&receiver.received(), secret));
        let done = got.len() >= n;
        async move { done }
    })
    .await;
    // Settle: nothing more than the model may arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    delivered_events(&batches(&receiver.received(), secret))
}

/// A receiver's answers as output (a "serverless" reducer): each batch is answered with
/// `{"events": [{"batch", "count"}]}`, which lands in the subscription's output topic with the id
/// `<batch id>:0` — once per batch although the first attempt was refused and the batch sent again; the counts
/// add up to the delivered events. Answers that are not of that shape publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_of_the_receiver_are_published_into_the_output_topic_once_per_batch() {
    let env = env().await;
    let js = async_nats::jetstream::new(env.client.clone());
    for topic in ["counts", "junk"] {
        fpaas_bus::ensure_stream(
            &js,
            &fpaas_bus::StreamSettings {
                name: layout::topic_stream("t_test", topic),
                subjects: vec![layout::topic_subject("t_test", topic)],
                max_bytes: 64 << 20,
                ..Default::default()
            },
        )
        .await
        .expect("topic stream");
    }
    let receiver = WebhookReceiver::start().await;
    // The reducer's first attempt is refused: that batch is sent again and answered then.
    let refused = std::sync::atomic::AtomicBool::new(false);
    // Hostile answers, in turn: not JSON, the wrong shape, nested past the parser's depth limit, more than
    // 10,000 events. None may publish anything (the body is capped at 1 MiB by the sender).
    let junk: Vec<Vec<u8>> = vec![
        b"thanks!".to_vec(),
        br#"{"events": "x"}"#.to_vec(),
        b"[1, 2, 3]".to_vec(),
        format!(r#"{{"events": [{}1{}]}}"#, "[".repeat(300), "]".repeat(300)).into_bytes(),
        format!(r#"{{"events": [{}0]}}"#, "0,".repeat(10_000)).into_bytes(),
    ];
    let next_junk = std::sync::atomic::AtomicUsize::new(0);
    receiver.respond_with(move |r| {
        if r.path == "/junk" {
            let n = next_junk.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Reply::ok().body(junk[n % junk.len()].clone());
        }
        if !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Reply::status(500);
        }
        let batch: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let count = batch["events"].as_array().map_or(0, Vec::len);
        Reply::ok().body(
            serde_json::to_vec(&json!({"events": [{"batch": batch["batch_id"], "count": count}]}))
                .unwrap(),
        )
    });
    let events = corpus_events(600);
    let seqs = publish_events(&env.client, &events).await;
    let spec = |path: &str, topic: &str| {
        json!({
            "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.like"]},
            "batching": {"max_events": 20, "max_wait_ms": 100},
            "start": {"at": "retention_start"},
            "delivery": {"type": "webhook", "url": receiver.url(path), "output_topic": topic,
                         "retry": {"schedule_ms": [50, 50, 50]}}
        })
    };
    put_sub(&env, "s_reducer", spec("/reduce", "counts")).await;
    put_sub(&env, "s_junk", spec("/junk", "junk")).await;
    let likes = model(
        &events,
        &seqs,
        |e| {
            e.commit
                .as_ref()
                .is_some_and(|c| c.collection == "app.bsky.feed.like")
        },
        Value::clone,
    )
    .len();
    assert!(likes > 40, "batches of 20: several");

    let read = |topic: &'static str| {
        let client = env.client.clone();
        async move {
            let mut tail = fpaas_bus::tail::StreamTail::new(
                &client,
                &layout::topic_stream("t_test", topic),
                fpaas_bus::tail::From::First,
                Vec::new(),
            );
            let mut out = Vec::new();
            while let Ok(Some(m)) = tail.next(Duration::from_millis(300)).await {
                let v: Value = serde_json::from_slice(&m.payload).expect("JSON");
                out.push((m.header("Nats-Msg-Id").unwrap_or_default().to_owned(), v));
            }
            out
        }
    };
    let (cancel, handle) = start_worker(&env, "w_answers");
    let total = |msgs: &[(String, Value)]| -> usize {
        msgs.iter()
            .map(|(_, v)| v["count"].as_u64().unwrap_or(0) as usize)
            .sum()
    };
    eventually(Duration::from_secs(30), || async {
        total(&read("counts").await) >= likes
    })
    .await
    .expect("every like counted in the output topic");
    cancel.cancel();
    handle.await.unwrap();

    let counts = read("counts").await;
    assert_eq!(
        total(&counts),
        likes,
        "counts add up to the delivered likes"
    );
    let mut batch_ids = BTreeSet::new();
    for (id, v) in &counts {
        let batch = v["batch"].as_str().expect("batch id");
        assert_eq!(id, &format!("{batch}:0"), "id derived from the batch id");
        assert!(
            batch_ids.insert(batch.to_owned()),
            "{batch} published twice"
        );
        assert!(batch.starts_with("s_reducer."), "{batch}");
    }
    let posts_to_reduce = receiver
        .received()
        .iter()
        .filter(|r| r.path == "/reduce")
        .count();
    assert!(
        posts_to_reduce > counts.len(),
        "one batch was sent twice ({posts_to_reduce} POSTs, {} batches)",
        counts.len()
    );
    let junk_posts = receiver
        .received()
        .iter()
        .filter(|r| r.path == "/junk")
        .count();
    assert!(
        junk_posts >= 5,
        "every hostile answer was tried: {junk_posts}"
    );
    assert!(
        read("junk").await.is_empty(),
        "an answer that is not {{\"events\"}} publishes nothing"
    );
}

/// Every key of a state bucket (decoded) with its value as JSON text and the id of its last write.
async fn state_of(env: &Env, bucket: &str) -> BTreeMap<String, (String, String)> {
    let js = async_nats::jetstream::new(env.client.clone());
    let Some(b) = fpaas_bus::StateBucket::open(&js, &layout::state_kv_bucket("t_test", bucket))
        .await
        .expect("open")
    else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for kv in b.keys(">").await.expect("keys") {
        let e = b.get(&kv).await.expect("get").expect("present");
        let key = layout::decode_state_key(&kv).expect("a key we encoded");
        out.insert(
            key,
            (
                String::from_utf8(e.value.to_vec()).unwrap(),
                e.msg_id.unwrap_or_default(),
            ),
        );
    }
    out
}

async fn progress_of(progress: &fpaas_bus::KvBucket, sub: &str) -> Option<fpaas_control::Progress> {
    progress
        .get(&layout::progress_key(sub))
        .await
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// `kv` deliveries: `incr` counts likes per post (by 2, summed within a batch) and `put` keeps each liker's
/// last liked rkey — exactly the model's maps, keys with `:` encoded and decoded back. Then the last batch is
/// redelivered the way a crash after the writes and before the progress save makes it happen (progress set back
/// to that batch pending): the worker sends the same batch id with the same events, the bucket drops every
/// increment as a duplicate, and no counter moves. Writing one plan twice through `fpaas_pipeline::state`
/// counts once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_deliveries_write_what_the_model_computes_and_a_redelivered_batch_counts_once() {
    let env = env().await;
    let events = corpus_events(900);
    let seqs = publish_events(&env.client, &events).await;
    let likes =
        r#"{"kinds": ["commit"], "collections": ["app.bsky.feed.like"], "operations": ["create"]}"#;
    let likes: Value = serde_json::from_str(likes).unwrap();
    put_sub(
        &env,
        "s_incr",
        json!({
            "filter": likes,
            "transform": "{post: commit.record.subject.uri, n: `2`}",
            "batching": {"max_events": 50, "max_wait_ms": 100},
            "start": {"at": "retention_start"},
            "delivery": {"type": "kv", "bucket": "likes", "key": "post", "op": "incr", "by": "n"}
        }),
    )
    .await;
    put_sub(
        &env,
        "s_put",
        json!({
            "filter": likes,
            "batching": {"max_events": 50, "max_wait_ms": 100},
            "start": {"at": "retention_start"},
            "delivery": {"type": "kv", "bucket": "last-like", "key": "did", "value": "{rkey: commit.rkey}"}
        }),
    )
    .await;
    let is_like_create = |e: &Event| {
        e.commit.as_ref().is_some_and(|c| {
            c.collection == "app.bsky.feed.like" && c.operation == fpaas_event::Operation::Create
        })
    };
    let mut want_counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut want_last: BTreeMap<String, String> = BTreeMap::new();
    for (_, v) in model(&events, &seqs, is_like_create, Clone::clone) {
        let post = v["commit"]["record"]["subject"]["uri"].as_str().unwrap();
        *want_counts.entry(post.to_owned()).or_insert(0) += 2;
        want_last.insert(
            v["did"].as_str().unwrap().to_owned(),
            json!({"rkey": v["commit"]["rkey"]}).to_string(),
        );
    }
    assert!(want_counts.len() > 10, "the corpus has likes");
    assert!(
        want_counts.values().any(|n| *n > 2),
        "some post is liked twice"
    );
    let last = *seqs.last().unwrap();
    let progress = fpaas_bus::ensure_kv_on(
        &env.client,
        &fpaas_bus::KvSettings::bucket(layout::PROGRESS_BUCKET),
    )
    .await
    .expect("progress bucket");
    let done = |sub: &'static str| {
        let progress = progress.clone();
        async move {
            progress_of(&progress, sub)
                .await
                .is_some_and(|p| p.acked_seq >= last && p.pending.is_none())
        }
    };

    let (cancel, handle) = start_worker(&env, "w_kv");
    eventually(Duration::from_secs(30), || async {
        done("s_incr").await && done("s_put").await
    })
    .await
    .expect("both subscriptions went through every event");
    cancel.cancel();
    handle.await.unwrap();
    let counts = state_of(&env, "likes").await;
    let got: BTreeMap<String, i64> = counts
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.parse().unwrap()))
        .collect();
    assert_eq!(
        got, want_counts,
        "counters = the model's likes per post × 2"
    );
    let got_last: BTreeMap<String, String> = state_of(&env, "last-like")
        .await
        .into_iter()
        .map(|(k, (v, _))| (k, v))
        .collect();
    assert_eq!(got_last, want_last, "values = each liker's last like");

    // The last batch written, from the ids of the writes: `<sub>.<from>-<to>.g<gen>:<key>`.
    let (batch_id, from, to) = counts
        .values()
        .map(|(_, id)| {
            let batch = id.split_once(':').expect("batch id:key").0.to_owned();
            let range = batch.split('.').nth(1).expect("range").to_owned();
            let (from, to) = range.split_once('-').unwrap();
            (
                batch,
                from.parse::<u64>().unwrap(),
                to.parse::<u64>().unwrap(),
            )
        })
        .max_by_key(|(_, _, to)| *to)
        .unwrap();
    let pending = fpaas_control::Progress {
        acked_seq: from - 1,
        pending: Some(fpaas_control::PendingBatch {
            batch_id: batch_id.clone(),
            from_seq: from,
            to_seq: to,
            attempt: 1,
        }),
    };
    progress
        .put(
            &layout::progress_key("s_incr"),
            Bytes::from(serde_json::to_vec(&pending).unwrap()),
        )
        .await
        .unwrap();
    let (cancel, handle) = start_worker(&env, "w_kv2");
    eventually(Duration::from_secs(30), || done("s_incr"))
        .await
        .expect("the batch was redelivered");
    cancel.cancel();
    handle.await.unwrap();
    assert_eq!(
        state_of(&env, "likes").await,
        counts,
        "batch {batch_id} sent again: no counter moved"
    );

    // The same plan written twice through the library: stored once.
    let js = async_nats::jetstream::new(env.client.clone());
    let bucket = fpaas_bus::StateBucket::ensure(
        &js,
        "lib_counts",
        fpaas_bus::StateKind::Counters,
        1,
        fpaas_bus::Storage::File,
    )
    .await
    .unwrap();
    let target = fpaas_pipeline::state::KvTarget::new(
        "t_test",
        &serde_json::from_value(json!({"bucket": "x", "key": "k", "op": "incr"})).unwrap(),
    )
    .unwrap();
    let data: Vec<Vec<u8>> = ["a", "b", "a"]
        .iter()
        .map(|k| json!({"k": k}).to_string().into_bytes())
        .collect();
    let plan = fpaas_pipeline::state::plan(&target, "s_x.1-3.g1", data.iter().map(Vec::as_slice));
    let first = fpaas_pipeline::state::write(&bucket, target.op, &plan)
        .await
        .unwrap();
    let again = fpaas_pipeline::state::write(&bucket, target.op, &plan)
        .await
        .unwrap();
    assert_eq!((first.written, first.duplicates), (2, 0));
    assert_eq!((again.written, again.duplicates), (0, 2));
    let a = bucket.get("a").await.unwrap().unwrap();
    assert_eq!(&a.value[..], b"2");
}

/// What a collector over `commit.collection` in 5 s windows must emit, recounted from the events with plain
/// code: `(window start ms, collection)` → the aggregates.
fn collector_model(events: &[Event]) -> BTreeMap<(i64, String), Value> {
    let mut groups: BTreeMap<(i64, String), Vec<&Event>> = BTreeMap::new();
    for e in events {
        let Some(c) = &e.commit else { continue };
        let start = (e.time_us / 1_000).div_euclid(5_000) * 5_000;
        groups
            .entry((start, c.collection.clone()))
            .or_default()
            .push(e);
    }
    groups
        .into_iter()
        .map(|(k, evs)| {
            let mut by_did: BTreeMap<&str, u64> = BTreeMap::new();
            for e in &evs {
                *by_did.entry(e.did.as_str()).or_default() += 1;
            }
            let mut top: Vec<(&str, u64)> = by_did.iter().map(|(d, n)| (*d, *n)).collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let lens: Vec<u64> = evs
                .iter()
                .map(|e| e.commit.as_ref().unwrap().rkey.chars().count() as u64)
                .collect();
            let top: Vec<Value> = top
                .iter()
                .take(3)
                .map(|(d, n)| json!({"value": d, "count": n}))
                .collect();
            (
                k,
                json!({"events": evs.len(), "dids": by_did.len(), "top": top,
                       "rkey_chars": lens.iter().sum::<u64>(), "longest": lens.iter().max()}),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_windows_equal_a_recount_through_a_worker_kill_and_a_nats_outage() {
    let mut server = NatsServer::new();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            max_bytes: 1 << 30,
            ..Default::default()
        },
    )
    .await
    .expect("stream");
    let subs =
        fpaas_bus::ensure_kv_on(&client, &fpaas_bus::KvSettings::bucket(layout::SUBS_BUCKET))
            .await
            .expect("subs bucket");
    let env = Env {
        _server: None,
        client: client.clone(),
        subs,
    };
    let receiver = WebhookReceiver::start().await;
    // 2,400 real events 10 ms apart in event time (24 s: five 5 s windows), published in three parts.
    let t0 = 1_790_000_000_000_000i64;
    let mut events = corpus_events(2_400);
    for (i, e) in events.iter_mut().enumerate() {
        e.time_us = t0 + i as i64 * 10_000;
    }
    let sub = put_sub(
        &env,
        "s_collect",
        json!({
            "filter": {"kinds": ["commit"]},
            "collect": {
                "key": "commit.collection",
                "window": {"type": "tumbling", "size_s": 5, "lateness_s": 6},
                "aggregations": {
                    "dids": {"op": "distinct", "field": "did"},
                    "top": {"op": "top_k", "field": "did", "k": 3},
                    "rkey_chars": {"op": "sum", "field": "length(commit.rkey)"},
                    "longest": {"op": "max", "field": "length(commit.rkey)"}
                }
            },
            "batching": {"max_events": 20, "max_wait_ms": 200},
            "start": {"at": "retention_start"},
            "delivery": {"type": "webhook", "url": receiver.url("/c")}
        }),
    )
    .await;
    publish_events(&client, &events[..800]).await;
    let (_a_cancel, a) = start_worker(&env, "w_a");
    receiver
        .wait_for(1, Duration::from_secs(20))
        .await
        .expect("a first window");
    // Worker A dies (no shutdown) while the next part streams in: it has counted events its last save
    // does not hold, which its successor counts again from the saved windows — once.
    let more = {
        let client = client.clone();
        let part = events[800..1_600].to_vec();
        tokio::spawn(async move { publish_events(&client, &part).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.abort();
    let _ = a.await;
    more.await.unwrap();
    let (b_cancel, b) = start_worker(&env, "w_b");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // NATS goes away and comes back (same store) while worker B runs. (The pauses stay well below the
    // lateness bound: a source quiet for longer would let the last open window close before the third part.)
    server.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.start();
    eventually(Duration::from_secs(20), || {
        let c = client.clone();
        async move { c.connection_state() == async_nats::connection::State::Connected }
    })
    .await
    .expect("reconnected");
    publish_events(&client, &events[1_600..]).await;

    let model = collector_model(&events);
    let outputs = || {
        let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for b in batches(&receiver.received(), &secret_of(&sub)) {
            for e in b["events"].as_array().unwrap() {
                by_id
                    .entry(e["id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(e["data"].clone());
            }
        }
        by_id
    };
    eventually(Duration::from_secs(40), || {
        let done = outputs().len() >= model.len();
        async move { done }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {} windows", outputs().len(), model.len()));
    b_cancel.cancel();
    b.await.unwrap();
    let outputs = outputs();
    let mut got: BTreeMap<(i64, String), Value> = BTreeMap::new();
    for (id, copies) in &outputs {
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "output {id} was emitted with different contents: {copies:?}"
        );
        let o = &copies[0];
        let start = chrono::DateTime::parse_from_rfc3339(o["window"]["start"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let key = (start, o["key"].as_str().unwrap().to_owned());
        assert!(
            got.insert(key.clone(), o.clone()).is_none(),
            "two ids for {key:?}"
        );
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        model.keys().collect::<Vec<_>>(),
        "one output per window and collection"
    );
    for (key, want) in &model {
        for field in ["events", "dids", "top", "rkey_chars", "longest"] {
            assert_eq!(got[key][field], want[field], "{field} of {key:?}");
        }
    }
}

/// A collector's results written to state: count windows of 3 events per collection, each closed window put
/// into a values bucket under its collection and added to a counters bucket by its `events` — exactly what the
/// events make: per collection ⌊n / 3⌋ windows, so a counter of 3·⌊n / 3⌋ and a last window of 3 events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collectors_windows_are_written_to_state() {
    let env = env().await;
    let events = corpus_events(600);
    let seqs = publish_events(&env.client, &events).await;
    let collect = json!({
        "key": "commit.collection",
        "window": {"type": "count", "events": 3},
        "aggregations": {"n": {"op": "count"}}
    });
    for (id, delivery) in [
        (
            "s_coll_incr",
            json!({"type": "kv", "bucket": "per-coll", "key": "key", "op": "incr", "by": "events"}),
        ),
        (
            "s_coll_put",
            json!({"type": "kv", "bucket": "last-window", "key": "key", "value": "{events: events, n: n}"}),
        ),
    ] {
        put_sub(
            &env,
            id,
            json!({
                "filter": {"kinds": ["commit"]},
                "collect": collect,
                "batching": {"max_events": 20, "max_wait_ms": 50},
                "start": {"at": "retention_start"},
                "delivery": delivery
            }),
        )
        .await;
    }
    let mut per: BTreeMap<String, i64> = BTreeMap::new();
    for e in &events {
        if let Some(c) = &e.commit {
            *per.entry(c.collection.clone()).or_insert(0) += 1;
        }
    }
    let want_counts: BTreeMap<String, String> = per
        .iter()
        .filter(|(_, n)| **n >= 3)
        .map(|(c, n)| (c.clone(), (n / 3 * 3).to_string()))
        .collect();
    assert!(want_counts.len() >= 3, "the corpus has several collections");
    let want_last: BTreeMap<String, String> = want_counts
        .keys()
        .map(|c| (c.clone(), json!({"events": 3, "n": 3}).to_string()))
        .collect();
    let values = |m: BTreeMap<String, (String, String)>| -> BTreeMap<String, String> {
        m.into_iter().map(|(k, (v, _))| (k, v)).collect()
    };
    // Opened before the worker starts: the worker takes an existing bucket as it is, while creating it here
    // after the worker did, with other settings, would be refused (10058).
    let progress = fpaas_bus::ensure_kv_on(
        &env.client,
        &fpaas_bus::KvSettings::bucket(layout::PROGRESS_BUCKET),
    )
    .await
    .expect("progress bucket");
    let (cancel, handle) = start_worker(&env, "w_coll");
    let last = *seqs.last().unwrap();
    eventually(Duration::from_secs(30), || async {
        values(state_of(&env, "per-coll").await) == want_counts
            && values(state_of(&env, "last-window").await) == want_last
    })
    .await
    .unwrap_or_else(|e| panic!("state = the collector's windows ({e}); want {want_counts:?}"));
    eventually(Duration::from_secs(30), || async {
        progress_of(&progress, "s_coll_incr")
            .await
            .is_some_and(|p| p.acked_seq >= last && p.pending.is_none())
    })
    .await
    .expect("the collector subscription went through every event");
    cancel.cancel();
    handle.await.unwrap();
    assert_eq!(
        values(state_of(&env, "per-coll").await),
        want_counts,
        "and nothing more"
    );
}
