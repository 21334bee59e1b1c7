//! `ensure_msglog` and `MsgLog` against a real nats-server: publish with headers returns the sequence, list by
//! subject (only that subject, from a sequence, with a limit), get and delete by sequence, purge by subject,
//! idempotent provisioning with a changed retention.

use crate::common;

use bytes::Bytes;
use fpaas_bus::{MsgLogSettings, ensure_msglog};
use fpaas_testkit::NatsServer;

#[tokio::test]
async fn publish_list_get_delete_purge() {
    let server = NatsServer::new();
    let js = common::js_with_timeout(&server.url()).await;
    let settings = MsgLogSettings {
        name: "LOG_TEST".into(),
        subjects: vec!["log.>".into()],
        ..Default::default()
    };
    let log = ensure_msglog(&js, &settings).await.expect("create");
    assert_eq!(log.name(), "LOG_TEST");

    let mut seqs = Vec::new();
    for i in 0..5u32 {
        let subject = if i % 2 == 0 { "log.a.x" } else { "log.b.x" };
        let body = Bytes::from(format!("body {i}"));
        let n = i.to_string();
        let seq = log
            .publish(
                subject,
                &[("Fpaas-Attempts", &n), ("Fpaas-Last-Error", "500 boom")],
                body,
            )
            .await
            .expect("publish");
        seqs.push(seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(
        log.publish("log.a.x", &[("Bad Header", "v")], Bytes::new())
            .await
            .is_err(),
        "an invalid header name is refused"
    );

    let a = log.list("log.a.x", 0, 100).await.expect("list");
    assert_eq!(
        a.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [seqs[0], seqs[2], seqs[4]]
    );
    assert_eq!(a[1].payload, Bytes::from("body 2"));
    assert_eq!(a[1].header("Fpaas-Attempts"), Some("2"));
    assert_eq!(a[1].header("Fpaas-Last-Error"), Some("500 boom"));
    assert_eq!(a[1].subject, "log.a.x");
    assert!(a[1].time <= std::time::SystemTime::now());
    let page = log.list("log.a.x", seqs[0] + 1, 1).await.expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, seqs[2]);
    assert_eq!(
        log.list("log.*.x", 0, 100).await.expect("wildcard").len(),
        5
    );
    assert!(log.list("log.c.x", 0, 100).await.expect("none").is_empty());

    let one = log.get(seqs[1]).await.expect("get").expect("exists");
    assert_eq!(one.subject, "log.b.x");
    assert_eq!(one.payload, Bytes::from("body 1"));
    assert_eq!(log.get(9_999).await.expect("get"), None);
    assert_eq!(log.get(0).await.expect("get 0"), None);

    assert!(log.delete(seqs[2]).await.expect("delete"));
    assert!(!log.delete(seqs[2]).await.expect("delete again"));
    assert!(!log.delete(9_999).await.expect("delete missing"));
    assert_eq!(log.get(seqs[2]).await.expect("get"), None);
    assert_eq!(log.list("log.a.x", 0, 100).await.expect("list").len(), 2);

    assert_eq!(log.purge("log.a.x").await.expect("purge"), 2);
    assert!(log.list("log.a.x", 0, 100).await.expect("list").is_empty());
    assert_eq!(log.list("log.b.x", 0, 100).await.expect("list").len(), 2);

    // Provisioning again (with a shorter retention) keeps the messages.
    let shorter = MsgLogSettings {
        max_age_secs: 3_600,
        ..settings
    };
    let again = ensure_msglog(&js, &shorter).await.expect("update");
    assert_eq!(again.list("log.b.x", 0, 100).await.expect("list").len(), 2);
}
