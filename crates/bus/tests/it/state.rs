//! State buckets against a real nats-server: the server facts the `kv` delivery's exactly-once rests on
//! (`docs/mapreduce.md`, State) — a counter bucket adds increments, drops one whose `Nats-Msg-Id` it saw within
//! its duplicate window, refuses a put, a delete marker and a compare-and-set increment — and the kinds and
//! reads of [`fpaas_bus::StateBucket`].

use bytes::Bytes;
use fpaas_bus::{StateBucket, StateKind, StateOp, StateWrite, Storage, WatchFrom};
use fpaas_testkit::NatsServer;
use futures::StreamExt;

fn incr(key: &str, id: &str, by: i64) -> StateWrite {
    StateWrite {
        key: key.into(),
        msg_id: id.into(),
        op: StateOp::Incr(by),
    }
}

#[tokio::test]
async fn counters_add_drop_resent_ids_and_refuse_anything_but_increments() {
    let server = NatsServer::new();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let counters = StateBucket::ensure(&js, "c", StateKind::Counters, 1, Storage::File)
        .await
        .unwrap();
    let r = counters
        .write(&[incr("a", "b1:a", 3), incr("b", "b1:b", -2)])
        .await
        .unwrap();
    assert_eq!((r.written, r.duplicates), (2, 0));
    let r = counters
        .write(&[incr("a", "b1:a", 3), incr("a", "b2:a", 4)])
        .await
        .unwrap();
    assert_eq!((r.written, r.duplicates), (1, 1), "b1:a was seen");
    let a = counters.get("a").await.unwrap().unwrap();
    assert_eq!(&a.value[..], b"7");
    assert_eq!(a.msg_id.as_deref(), Some("b2:a"));
    assert_eq!(&counters.get("b").await.unwrap().unwrap().value[..], b"-2");
    assert!(counters.get("none").await.unwrap().is_none());

    // What the server refuses on a counter stream (the reasons a counter bucket is increment-only).
    for (headers, what) in [
        (vec![], "a put"),
        (vec![("KV-Operation", "DEL")], "a delete marker"),
        (
            vec![
                ("Nats-Incr", "+1"),
                ("Nats-Expected-Last-Subject-Sequence", "1"),
            ],
            "a compare-and-set increment",
        ),
    ] {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(k, v);
        }
        let ack = js
            .publish_with_headers("$KV.c.a", h, Bytes::from_static(b"x"))
            .await
            .unwrap()
            .await;
        assert!(ack.is_err(), "the server refuses {what}");
    }
    assert_eq!(&counters.get("a").await.unwrap().unwrap().value[..], b"7");

    // Kinds: our own check before sending, and an existing bucket keeps its kind.
    let put = StateWrite {
        key: "a".into(),
        msg_id: "p".into(),
        op: StateOp::Put(Bytes::from_static(b"1")),
    };
    assert!(counters.write(std::slice::from_ref(&put)).await.is_err());
    assert!(
        StateBucket::ensure(&js, "c", StateKind::Values, 1, Storage::File)
            .await
            .is_err()
    );
    let values = StateBucket::ensure(&js, "v", StateKind::Values, 1, Storage::File)
        .await
        .unwrap();
    assert!(values.write(&[incr("a", "i", 1)]).await.is_err());
    let mut watch = values.watch(">", WatchFrom::New).await.unwrap();
    assert_eq!(
        values
            .write(std::slice::from_ref(&put))
            .await
            .unwrap()
            .written,
        1
    );
    assert_eq!(values.write(&[put]).await.unwrap().duplicates, 1);
    let (entry, _) = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (entry.key.as_str(), &entry.value[..], entry.present),
        ("a", &b"1"[..], true)
    );
    assert_eq!(values.keys(">").await.unwrap(), ["a"]);
    assert!(StateBucket::delete(&js, "v").await.unwrap());
    assert!(StateBucket::open(&js, "v").await.unwrap().is_none());
}
