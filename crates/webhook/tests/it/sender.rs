//! The sender against real HTTP servers on loopback (`fpaas_testkit::WebhookReceiver`): what a receiver sees
//! (headers, signature, body) and how each kind of answer — or non-answer — is classified.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fpaas_testkit::{Reply, WebhookReceiver};
use fpaas_webhook::sign::{DEFAULT_TOLERANCE, verify};
use fpaas_webhook::{AddrPolicy, BatchRequest, Outcome, RetryReason, Secret, Sender};

const BODY: &str = r#"{"type":"fpaas.batch","subscription_id":"s_aaaaaaaaaaaaaaaa","batch_id":"s_aaaaaaaaaaaaaaaa.1-2.g1","from_seq":1,"to_seq":2,"events":[]}"#;

fn local_sender() -> Sender {
    Sender::new(AddrPolicy {
        allow_loopback: true,
        ..AddrPolicy::default()
    })
    .expect("sender")
}

fn batch(url: String, secrets: Vec<Secret>, timeout: Duration) -> BatchRequest {
    BatchRequest {
        url,
        batch_id: "s_aaaaaaaaaaaaaaaa.1-2.g1".to_owned(),
        body: Bytes::from_static(BODY.as_bytes()),
        secrets,
        timeout,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[tokio::test]
async fn accepted_request_carries_the_contract_headers_and_a_valid_signature() {
    let receiver = WebhookReceiver::start().await;
    receiver.push([Reply::ok().body("thanks")]);
    let (new, old) = (Secret::generate(), Secret::generate());
    let req = batch(
        receiver.url("/hook?x=1"),
        vec![new.clone(), old.clone()],
        Duration::from_secs(5),
    );

    let outcome = local_sender().deliver(&req).await;
    let Outcome::Accepted { status, body, .. } = outcome else {
        panic!("expected accepted, got {outcome:?}");
    };
    assert_eq!(status, 200);
    assert_eq!(body, Bytes::from_static(b"thanks"));

    let got = receiver
        .wait_for(1, Duration::from_secs(5))
        .await
        .expect("one request");
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hook?x=1");
    assert_eq!(r.body, BODY.as_bytes());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("webhook-id"), Some("s_aaaaaaaaaaaaaaaa.1-2.g1"));
    assert_eq!(
        r.header("user-agent"),
        Some(concat!("fpaas/", env!("CARGO_PKG_VERSION")))
    );
    let ts = r.header("webhook-timestamp").expect("timestamp");
    let ts_num: u64 = ts.parse().expect("unix seconds");
    assert!(ts_num.abs_diff(unix_now()) <= 5, "timestamp {ts} is now");
    let sig = r.header("webhook-signature").expect("signature");
    assert_eq!(sig.split(' ').count(), 2, "one entry per secret: {sig}");
    for secret in [new, old] {
        verify(
            "s_aaaaaaaaaaaaaaaa.1-2.g1",
            ts,
            sig,
            &r.body,
            &[secret],
            unix_now(),
            DEFAULT_TOLERANCE,
        )
        .expect("each secret verifies");
    }
    assert!(
        verify(
            "s_aaaaaaaaaaaaaaaa.1-2.g1",
            ts,
            sig,
            &r.body,
            &[Secret::generate()],
            unix_now(),
            DEFAULT_TOLERANCE
        )
        .is_err()
    );
}

#[tokio::test]
async fn statuses_are_classified() {
    let receiver = WebhookReceiver::start().await;
    let sender = local_sender();
    let req = batch(
        receiver.url("/"),
        vec![Secret::generate()],
        Duration::from_secs(5),
    );

    receiver.push([Reply::status(204)]);
    assert!(matches!(
        sender.deliver(&req).await,
        Outcome::Accepted { status: 204, .. }
    ));

    receiver.push([Reply::status(500).body("database down")]);
    let outcome = sender.deliver(&req).await;
    let Outcome::Retry {
        reason,
        retry_after,
        detail,
    } = outcome
    else {
        panic!("500 is a retry: {outcome:?}");
    };
    assert_eq!(reason, RetryReason::Status(500));
    assert_eq!(retry_after, None);
    assert!(
        detail.contains("500") && detail.contains("database down"),
        "{detail}"
    );

    receiver.push([Reply::status(429).retry_after("7")]);
    assert_eq!(
        sender.deliver(&req).await,
        Outcome::Retry {
            reason: RetryReason::Status(429),
            retry_after: Some(Duration::from_secs(7)),
            detail: "HTTP 429".to_owned(),
        }
    );

    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    receiver.push([Reply::status(503).retry_after(&date)]);
    let Outcome::Retry {
        reason: RetryReason::Status(503),
        retry_after: Some(wait),
        ..
    } = sender.deliver(&req).await
    else {
        panic!("503 with a date");
    };
    assert!(
        wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );

    receiver.push([Reply::status(503).retry_after("999999")]);
    assert!(matches!(
        sender.deliver(&req).await,
        Outcome::Retry { retry_after: Some(w), .. } if w == Duration::from_secs(3600)
    ));

    receiver.push([Reply::status(410)]);
    assert_eq!(sender.deliver(&req).await, Outcome::Gone);

    receiver.push([Reply::status(400).body("bad field")]);
    assert!(matches!(
        sender.deliver(&req).await,
        Outcome::Retry {
            reason: RetryReason::Status(400),
            ..
        }
    ));
    assert_eq!(receiver.count(), 7);
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_a_slow_but_timely_one_is_accepted() {
    let receiver = WebhookReceiver::start().await;
    let sender = local_sender();

    receiver.push([Reply::ok().delay(Duration::from_secs(5))]);
    let req = batch(
        receiver.url("/"),
        vec![Secret::generate()],
        Duration::from_millis(300),
    );
    let started = std::time::Instant::now();
    let outcome = sender.deliver(&req).await;
    let took = started.elapsed();
    assert!(
        matches!(
            outcome,
            Outcome::Retry {
                reason: RetryReason::Timeout,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );

    receiver.push([Reply::ok().delay(Duration::from_millis(400))]);
    let req = batch(
        receiver.url("/"),
        vec![Secret::generate()],
        Duration::from_secs(5),
    );
    let outcome = sender.deliver(&req).await;
    let Outcome::Accepted { elapsed, .. } = outcome else {
        panic!("slow but in time: {outcome:?}");
    };
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
}

#[tokio::test]
async fn connection_refused_and_dropped_connections_are_retries() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let sender = local_sender();
    let req = batch(
        format!("http://127.0.0.1:{closed_port}/"),
        vec![Secret::generate()],
        Duration::from_secs(5),
    );
    let outcome = sender.deliver(&req).await;
    assert!(
        matches!(
            outcome,
            Outcome::Retry {
                reason: RetryReason::Connect,
                ..
            }
        ),
        "{outcome:?}"
    );

    let receiver = WebhookReceiver::start().await;
    receiver.push([Reply::drop_connection()]);
    let req = batch(
        receiver.url("/"),
        vec![Secret::generate()],
        Duration::from_secs(5),
    );
    let outcome = sender.deliver(&req).await;
    assert!(
        matches!(
            outcome,
            Outcome::Retry {
                reason: RetryReason::Other,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        receiver.count(),
        1,
        "the request arrived, no answer came back"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = WebhookReceiver::start().await;
    let receiver = WebhookReceiver::start().await;
    receiver.push([Reply::status(307).header("location", &target.url("/elsewhere"))]);
    let req = batch(
        receiver.url("/"),
        vec![Secret::generate()],
        Duration::from_secs(5),
    );
    let outcome = local_sender().deliver(&req).await;
    assert!(
        matches!(
            outcome,
            Outcome::Retry {
                reason: RetryReason::Status(307),
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(receiver.count(), 1);
    assert_eq!(target.count(), 0, "the redirect target was never contacted");
}

#[tokio::test]
async fn the_response_body_is_read_up_to_one_mebibyte() {
    let receiver = WebhookReceiver::start().await;
    receiver.push([Reply::ok().body(vec![b'x'; 3 << 20])]);
    let req = batch(
        receiver.url("/"),
        vec![Secret::generate()],
        Duration::from_secs(10),
    );
    let Outcome::Accepted { body, .. } = local_sender().deliver(&req).await else {
        panic!("accepted");
    };
    assert_eq!(body.len(), 1 << 20);
}

#[tokio::test]
async fn the_guard_refuses_before_connecting() {
    let receiver = WebhookReceiver::start().await;
    let strict = Sender::new(AddrPolicy::default()).expect("sender");
    for url in [
        receiver.url("/"),
        format!("http://localhost:{}/", receiver.addr().port()),
        format!("http://[::ffff:127.0.0.1]:{}/", receiver.addr().port()),
    ] {
        let req = batch(
            url.clone(),
            vec![Secret::generate()],
            Duration::from_secs(5),
        );
        let outcome = strict.deliver(&req).await;
        let Outcome::Retry {
            reason: RetryReason::NotAllowed,
            detail,
            ..
        } = outcome
        else {
            panic!("{url}: {outcome:?}");
        };
        assert!(detail.contains("url_not_allowed"), "{detail}");
    }
    let req = batch(
        "ftp://example.com/".to_owned(),
        vec![],
        Duration::from_secs(5),
    );
    assert!(matches!(
        strict.deliver(&req).await,
        Outcome::Retry {
            reason: RetryReason::NotAllowed,
            ..
        }
    ));
    assert_eq!(receiver.count(), 0);
}
