//! The API's command line (`fpaas tenant|sub|dlq|topic|state`) against a real `fpaas serve` and `fpaas worker` on a real
//! nats-server: a tenant and a subscription created from the command line, read back, changed, paused and
//! resumed; an invalid spec exits 1 with the API's code and position on stderr; a batch the receiver refused
//! lands in the dead letters, `dlq replay --all` delivers it with its original `webhook-id`, and `dlq list`
//! is then empty; a topic is created, read, refused twice and deleted; a kv delivery's counters are watched, listed and
//! read, and the bucket deleted once nothing writes it; the tenant is deleted with everything
//! it owned.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fpaas_testkit::stream::{corpus_events, publish_events};
use fpaas_testkit::{
    NatsServer, Proc, Reply, WebhookReceiver, eventually, eventually_some, free_port,
};
use serde_json::{Value, json};

const ADMIN: &str = "cli-admin-token-0123456789";

/// Runs `fpaas ARGS` against `api`, with `stdin`; the output.
fn run(api: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fpaas"));
    c.args(args)
        .env("FPAAS_API", api)
        .env("FPAAS_ADMIN_TOKEN", ADMIN)
        .env_remove("FPAAS_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        c.env("FPAAS_TOKEN", t);
    }
    let mut child = c.spawn().expect("spawn fpaas");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().expect("fpaas")
}

/// `fpaas ARGS` that must succeed: its stdout as JSON (`null` when empty).
fn ok(api: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> Value {
    let out = run(api, token, args, stdin);
    assert!(
        out.status.success(),
        "fpaas {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("fpaas {args:?} printed {text}: {e}"))
    }
}

/// `fpaas ARGS` that must fail: its stderr.
fn fails(api: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(api, token, args, stdin);
    assert_eq!(out.status.code(), Some(1), "fpaas {args:?} fails with 1");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_manages_tenants_subscriptions_and_dead_letters() {
    let nats = NatsServer::new();
    let client = fpaas_bus::connect(&nats.url(), "cli-test").await.unwrap();
    let js = fpaas_bus::jetstream(client.clone(), 64);
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            max_bytes: 1 << 30,
            ..Default::default()
        },
    )
    .await
    .expect("stream");
    let events = corpus_events(50);
    publish_events(&client, &events).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let api = format!("http://{listen}");
    let _serve = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_fpaas"))
            .args(["serve", "--listen", &listen, "--nats-url", &nats.url()])
            .args(["--metrics-listen", "none", "--allow-loopback"])
            .env("FPAAS_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    );
    eventually(Duration::from_secs(30), || async {
        reqwest::get(format!("{api}/openapi.json"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
    .expect("the API answers");
    let a = api.as_str();

    // Tenants (admin token from FPAAS_ADMIN_TOKEN).
    let created = ok(
        a,
        None,
        &[
            "tenant",
            "create",
            "acme",
            "--max-subscriptions",
            "3",
            "--max-topics",
            "4",
        ],
        None,
    );
    let tenant_id = created["tenant"]["id"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["tenant"]["quotas"]["max_subscriptions"], 3);
    assert_eq!(created["tenant"]["quotas"]["max_topics"], 4);
    let listed = ok(a, None, &["tenant", "list"], None);
    assert_eq!(listed["tenants"][0]["id"], tenant_id.as_str());
    let updated = ok(
        a,
        None,
        &[
            "tenant",
            "update",
            &tenant_id,
            "--name",
            "acme2",
            "--max-state-buckets",
            "5",
            "--max-topic-bytes",
            "1073741824",
        ],
        None,
    );
    assert_eq!(updated["name"], "acme2");
    assert_eq!(updated["quotas"]["max_state_buckets"], 5);
    assert_eq!(updated["quotas"]["max_topic_bytes"], 1_073_741_824u64);
    assert_eq!(updated["quotas"]["max_topics"], 4, "unchanged");
    let key = ok(
        a,
        None,
        &["tenant", "key-create", &tenant_id, "--label", "ci"],
        None,
    );
    let keys = ok(a, None, &["tenant", "keys", &tenant_id], None);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    ok(
        a,
        None,
        &[
            "tenant",
            "key-delete",
            &tenant_id,
            key["key"]["key_id"].as_str().unwrap(),
        ],
        None,
    );
    // A tenant key cannot manage tenants.
    let err = fails(
        a,
        Some(&token),
        &["tenant", "list", "--token", &token],
        None,
    );
    assert!(err.contains("403 forbidden"), "{err}");

    // Subscriptions (FPAAS_TOKEN).
    let t = Some(token.as_str());
    let receiver = WebhookReceiver::start().await;
    receiver.respond_with(|_| Reply::status(500));
    let spec = json!({
        "name": "likes",
        "filter": {"collections": ["app.bsky.feed.like"]},
        "batching": {"max_events": 1000, "max_wait_ms": 50},
        "start": {"at": "retention_start"},
        "delivery": {"type": "webhook", "url": receiver.url("/hook"), "timeout_ms": 1000,
                     "retry": {"schedule_ms": [50]}}
    })
    .to_string();
    let err = fails(
        a,
        t,
        &["sub", "create", "-"],
        Some(&spec.replace("\"likes\"", "\"x\", \"transform\": \"{a: \"")),
    );
    assert!(
        err.contains("422 bad_jmespath") && err.contains("position"),
        "{err}"
    );
    let sub = ok(a, t, &["sub", "create", "-"], Some(&spec));
    let id = sub["id"].as_str().unwrap().to_owned();
    assert!(
        sub["secrets"][0]["secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    assert_eq!(
        ok(a, t, &["sub", "list"], None)["subscriptions"][0]["id"],
        id.as_str()
    );
    let got = ok(a, t, &["sub", "get", &id], None);
    assert_eq!(got["name"], "likes");
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("patch.json");
    std::fs::write(&patch, r#"{"name": "liked"}"#).unwrap();
    let changed = ok(a, t, &["sub", "update", &id, patch.to_str().unwrap()], None);
    assert_eq!(changed["name"], "liked");
    let err = fails(
        a,
        t,
        &[
            "sub",
            "update",
            &id,
            patch.to_str().unwrap(),
            "--if-match",
            "999999",
        ],
        None,
    );
    assert!(err.contains("409 conflict"), "{err}");
    assert_eq!(ok(a, t, &["sub", "pause", &id], None)["state"], "paused");
    assert_eq!(ok(a, t, &["sub", "resume", &id], None)["state"], "active");
    let rotated = ok(
        a,
        t,
        &["sub", "rotate-secret", &id, "--overlap-secs", "60"],
        None,
    );
    assert_eq!(
        rotated["secrets"].as_array().unwrap().len(),
        2,
        "old and new during the overlap"
    );
    let err = fails(a, t, &["sub", "get", "sub_nope"], None);
    assert!(err.contains("404 not_found"), "{err}");

    // A worker: the receiver refuses, so the batch of likes is dead-lettered after two attempts.
    let _worker = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_fpaas"))
            .args(["worker", "--nats-url", &nats.url(), "--allow-loopback"])
            .args(["--metrics-listen", "none", "--lease-ttl-secs", "2"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    );
    let letters = eventually_some(Duration::from_secs(30), || async {
        let l = ok(a, t, &["dlq", "list", &id], None);
        l["dead_letters"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
            .then_some(l)
    })
    .await
    .expect("a dead letter");
    let seq = letters["dead_letters"][0]["seq"].as_u64().unwrap();
    let first = receiver.received()[0].clone();
    let body = run(a, t, &["dlq", "get", &id, &seq.to_string()], None);
    let body: Value = serde_json::from_slice(&body.stdout).unwrap();
    assert_eq!(body, serde_json::from_slice::<Value>(&first.body).unwrap());
    let err = fails(a, t, &["dlq", "replay", &id, "--all"], None);
    assert!(err.contains("502 delivery_failed"), "{err}");
    receiver.respond_with(|_| Reply::ok());
    let replayed = ok(a, t, &["dlq", "replay", &id, "--all"], None);
    assert_eq!(
        replayed["replayed"].as_array().unwrap().len(),
        1,
        "{replayed}"
    );
    let last = receiver.received().last().unwrap().clone();
    assert_eq!(last.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(last.body, first.body);
    assert_eq!(
        ok(a, t, &["dlq", "list", &id], None)["dead_letters"],
        json!([])
    );
    assert_eq!(ok(a, t, &["dlq", "purge", &id], None)["purged"], 0);
    let stats = ok(a, t, &["sub", "stats", &id], None);
    assert_eq!(stats["subscription_id"], id.as_str());
    assert!(ok(a, t, &["sub", "usage"], None).is_object());

    // Pull: fetch and acknowledge (nothing waits: the subscription starts live and no event follows).
    let puller = ok(
        a,
        t,
        &["sub", "create", "-"],
        Some(r#"{"delivery": {"type": "pull"}}"#),
    );
    let pull_id = puller["id"].as_str().unwrap().to_owned();
    let pulled = ok(
        a,
        t,
        &["sub", "pull", &pull_id, "--max-wait-ms", "100"],
        None,
    );
    assert_eq!(pulled["batches"], json!([]));
    let acked = ok(a, t, &["sub", "ack", &pull_id, "x.1-2.g1"], None);
    assert_eq!(acked["unknown"], json!(["x.1-2.g1"]));
    let err = fails(a, t, &["sub", "pull", &id], None);
    assert!(err.contains("409 conflict"), "{err}");
    ok(a, t, &["sub", "delete", &pull_id], None);

    // Topics.
    let topic = ok(
        a,
        t,
        &[
            "topic",
            "create",
            "per-post",
            "--max-age-secs",
            "3600",
            "--max-bytes",
            "1048576",
        ],
        None,
    );
    assert_eq!(topic["max_age_secs"], 3600);
    assert_eq!(ok(a, t, &["topic", "get", "per-post"], None)["messages"], 0);
    assert_eq!(
        ok(a, t, &["topic", "list"], None)["topics"][0]["name"],
        "per-post"
    );
    let err = fails(a, t, &["topic", "create", "per-post"], None);
    assert!(err.contains("409 conflict"), "{err}");
    ok(a, t, &["topic", "delete", "per-post"], None);
    assert_eq!(ok(a, t, &["topic", "list"], None)["topics"], json!([]));

    // State: a kv delivery counts likes per post; the worker writes, the command line reads and watches.
    let counting = ok(
        a,
        t,
        &["sub", "create", "-"],
        Some(
            &json!({
                "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.like"], "operations": ["create"]},
                "transform": "{post: commit.record.subject.uri}",
                "batching": {"max_wait_ms": 50},
                "start": {"at": "retention_start"},
                "delivery": {"type": "kv", "bucket": "likes", "key": "post", "op": "incr"}
            })
            .to_string(),
        ),
    );
    let counting_id = counting["id"].as_str().unwrap().to_owned();
    assert_eq!(
        ok(a, t, &["state", "list"], None)["buckets"][0]["kind"],
        "counters"
    );
    let mut watch = Command::new(env!("CARGO_BIN_EXE_fpaas"))
        .args(["state", "watch", "likes", "--prefix", "at://"])
        .env("FPAAS_API", a)
        .env("FPAAS_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fpaas state watch");
    let stdout = watch.stdout.take().unwrap();
    let first_line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().next()
    });
    let line = tokio::time::timeout(Duration::from_secs(30), first_line)
        .await
        .expect("a change is printed")
        .unwrap()
        .expect("a line")
        .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    let change: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(change["op"], "put", "{change}");
    let key = change["key"].as_str().unwrap().to_owned();
    let listed = ok(
        a,
        t,
        &[
            "state", "keys", "likes", "--prefix", "at://", "--limit", "1000",
        ],
        None,
    );
    let entry = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key.as_str())
        .expect("the watched key is listed")
        .clone();
    let one = ok(a, t, &["state", "key", "likes", &key], None);
    assert_eq!(one["value"], entry["value"]);
    assert!(one["value"].as_i64().unwrap() >= 1);
    assert!(
        ok(a, t, &["state", "get", "likes"], None)["keys"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let err = fails(a, t, &["state", "delete", "likes"], None);
    assert!(err.contains("409 conflict"), "{err}");
    ok(a, t, &["sub", "delete", &counting_id], None);
    ok(a, t, &["state", "delete", "likes"], None);
    assert_eq!(ok(a, t, &["state", "list"], None)["buckets"], json!([]));

    ok(a, t, &["sub", "delete", &id], None);
    assert_eq!(ok(a, t, &["sub", "list"], None)["subscriptions"], json!([]));
    ok(a, None, &["tenant", "delete", &tenant_id], None);
    let err = fails(a, t, &["sub", "list"], None);
    assert!(
        err.contains("401"),
        "the deleted tenant's key is refused: {err}"
    );
    let err = fails(a, None, &["sub", "list"], None);
    assert!(err.contains("FPAAS_TOKEN"), "no token: {err}");
}
