//! The guard end to end: a reqwest client built with the guard against a real HTTP server on loopback. With
//! loopback refused, neither the literal address nor the name `localhost` is reached (the server counts
//! requests); with loopback allowed, both are.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fpaas_webhook::{AddrPolicy, guard};

/// A real axum server on 127.0.0.1:0 answering 200 "ok" and counting requests.
async fn counting_server() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = axum::Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test server");
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, hits)
}

/// What the sender does: check the URL, then send with the guarded client.
async fn guarded_get(policy: &AddrPolicy, url: &str) -> Result<String, String> {
    let url = policy
        .check_url(url)
        .map_err(|e| format!("{}: {e}", e.code()))?;
    let client = policy.client_builder().build().expect("client");
    match client.get(url).send().await {
        Ok(resp) => Ok(resp.text().await.expect("body")),
        Err(e) => match guard::guard_error_of(&e) {
            Some(g) => Err(format!("{}: {g}", g.code())),
            None => Err(format!("other: {e}")),
        },
    }
}

#[tokio::test]
async fn loopback_is_refused_by_address_and_by_name_unless_allowed() {
    let (port, hits) = counting_server().await;
    let strict = AddrPolicy::default();

    let err = guarded_get(&strict, &format!("http://127.0.0.1:{port}/"))
        .await
        .expect_err("literal loopback refused");
    assert!(err.starts_with("url_not_allowed"), "{err}");

    // `check_url` refuses the name localhost by itself; the resolver refuses it too, without the URL check.
    let err = guarded_get(&strict, &format!("http://localhost:{port}/"))
        .await
        .expect_err("localhost refused");
    assert!(err.starts_with("url_not_allowed"), "{err}");
    let client = strict.client_builder().build().expect("client");
    let err = client
        .get(format!("http://localhost:{port}/"))
        .send()
        .await
        .expect_err("resolver refuses localhost");
    let guard_err = guard::guard_error_of(&err).expect("the guard's error is the cause");
    assert_eq!(guard_err.code(), "url_not_allowed", "{guard_err}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the server was never reached"
    );

    let local = AddrPolicy {
        allow_loopback: true,
        ..AddrPolicy::default()
    };
    assert_eq!(
        guarded_get(&local, &format!("http://127.0.0.1:{port}/")).await,
        Ok("ok".to_owned())
    );
    assert_eq!(
        guarded_get(&local, &format!("http://localhost:{port}/")).await,
        Ok("ok".to_owned())
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}
