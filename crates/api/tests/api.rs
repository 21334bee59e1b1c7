//! The API against a real nats-server, served in-process on 127.0.0.1:0 and called over HTTP:
//!
//! - tenant isolation, by walking `/openapi.json`: every operation is called with another tenant's key (and
//!   with no key, and a tenant key on admin routes) and must be refused or show only the caller's own
//!   resources; an operation the walk has no case for fails the test, so a new endpoint cannot be forgotten;
//! - the stable error answers: each documented code provoked, its status and body shape checked, and
//!   nothing half-created by a refused request;
//! - property test of request bodies: thousands of random and mutated bodies on every operation that takes
//!   one; never a 5xx, always the error shape, and the server still answers afterwards;
//! - dead letters end to end: a real worker dead-letters a batch the receiver refused, the API lists it, a
//!   replay to a receiver that still fails keeps it (502), a replay that succeeds delivers the same body
//!   under the same `webhook-id`, correctly signed, and removes it;
//! - the console's playground and live tail over real events in the firehose stream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fpaas_api::{ApiConfig, ERROR_CODES};
use fpaas_control::layout;
use fpaas_testkit::stream::{corpus_events, publish_events};
use fpaas_testkit::{NatsServer, Reply, WebhookReceiver, eventually_some};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "api-test-admin-token-0123456789";

struct Api {
    _nats: NatsServer,
    nats_url: String,
    client: fpaas_bus::Client,
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A reply: status and JSON body (`Value::Null` when empty or not JSON), and the raw body.
struct Answer {
    status: u16,
    json: Value,
    raw: Vec<u8>,
}

impl Api {
    async fn start() -> Self {
        let nats = NatsServer::new();
        let nats_url = nats.url();
        let client = fpaas_bus::connect(&nats_url, "api-test")
            .await
            .expect("connect");
        let cfg = ApiConfig {
            listen: "127.0.0.1:0".into(),
            nats_url: nats_url.clone(),
            metrics_listen: None,
            admin_token: Some(ADMIN.into()),
            webhook_addresses: fpaas_webhook::AddrPolicy {
                allow_loopback: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let (client, shutdown) = (client.clone(), shutdown.clone());
            tokio::spawn(async move {
                fpaas_api::serve(&cfg, client, shutdown, |addr| {
                    let _ = tx.send(addr);
                })
                .await
                .expect("serve");
            });
        }
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("the API starts")
            .expect("ready");
        Self {
            _nats: nats,
            nats_url,
            client,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    /// Creates the firehose stream (1 GiB); the JetStream context it used.
    async fn firehose(&self) -> fpaas_bus::JetStream {
        let js = fpaas_bus::jetstream(self.client.clone(), 64);
        fpaas_bus::ensure_stream(
            &js,
            &fpaas_bus::StreamSettings {
                max_bytes: 1 << 30,
                ..Default::default()
            },
        )
        .await
        .expect("stream");
        js
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let raw = resp.bytes().await.expect("body").to_vec();
        let json = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Answer { status, json, raw }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.raw(
            method,
            path,
            token,
            body.map(|b| serde_json::to_vec(&b).unwrap()),
        )
        .await
    }

    /// A tenant: (id, token).
    async fn tenant(&self, name: &str, quotas: Value) -> (String, String) {
        let a = self
            .call(
                Method::POST,
                "/v1/tenants",
                Some(ADMIN),
                Some(json!({"name": name, "quotas": quotas})),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.json);
        (
            a.json["tenant"]["id"].as_str().unwrap().to_owned(),
            a.json["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn subscription(&self, token: &str, url: &str) -> Value {
        let a = self
            .call(
                Method::POST,
                "/v1/subscriptions",
                Some(token),
                Some(sub_spec(url)),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.json);
        a.json
    }
}

fn sub_spec(url: &str) -> Value {
    json!({
        "name": "likes",
        "filter": {"collections": ["app.bsky.feed.like"]},
        "batching": {"max_events": 1000, "max_wait_ms": 50},
        "start": {"at": "retention_start"},
        "delivery": {"type": "webhook", "url": url, "timeout_ms": 1000,
                     "retry": {"schedule_ms": [50, 50]}}
    })
}

fn method_of(m: &str) -> Method {
    Method::from_bytes(m.to_uppercase().as_bytes()).expect("method")
}

/// Every operation of the document: (method, path template, operationId, access, takes a body).
fn operations(doc: &Value) -> Vec<(String, String, String, String, bool)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            ops.push((
                method.clone(),
                path.clone(),
                op["operationId"].as_str().expect("operationId").to_owned(),
                op["x-fpaas-access"].as_str().expect("access").to_owned(),
                op.get("requestBody").is_some(),
            ));
        }
    }
    ops
}

/// Stores a dead letter for (tenant, sub) the way a worker does; returns its sequence.
async fn put_dead_letter(api: &Api, tenant: &str, sub: &str) -> u64 {
    let js = fpaas_bus::jetstream(api.client.clone(), 16);
    let log = fpaas_bus::ensure_msglog(
        &js,
        &fpaas_bus::MsgLogSettings {
            name: layout::DLQ_STREAM.into(),
            subjects: vec![layout::DLQ_SUBJECTS.into()],
            ..Default::default()
        },
    )
    .await
    .expect("dlq");
    let batch_id = format!("{sub}.1-2.g1");
    log.publish(
        &layout::dlq_subject(tenant, sub),
        &[
            (layout::HDR_BATCH_ID, batch_id.as_str()),
            (layout::HDR_ATTEMPTS, "3"),
            (layout::HDR_LAST_ERROR, "status 500"),
            (layout::HDR_FROM_SEQ, "1"),
            (layout::HDR_TO_SEQ, "2"),
            (layout::HDR_EVENTS, "2"),
        ],
        bytes::Bytes::from_static(b"{\"events\":[1,2]}"),
    )
    .await
    .expect("publish dead letter")
}

/// What a call by tenant B on tenant A's resources must come to.
#[derive(Debug)]
enum Expect {
    /// Refused with this status (404 for another tenant's resource, 403 for admin routes).
    Refused(u16),
    /// Served, on B's own resources only: the answer must not mention any of A's ids.
    OwnOnly(u16),
    /// Public: anyone.
    Public,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_in_the_openapi_document_refuses_another_tenants_key() {
    let api = Api::start().await;
    let receiver = WebhookReceiver::start().await;
    let (a_id, a_token) = api.tenant("alice", json!({})).await;
    let (b_id, b_token) = api.tenant("bob", json!({})).await;
    // A's resources: a subscription, a dead letter, a second key.
    let a_sub = api.subscription(&a_token, &receiver.url("/a")).await;
    let a_sub_id = a_sub["id"].as_str().unwrap().to_owned();
    let a_seq = put_dead_letter(&api, &a_id, &a_sub_id).await;
    // A pull subscription of A, the target of the pull and ack operations.
    let a_pull = api
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(&a_token),
            Some(json!({"delivery": {"type": "pull"}})),
        )
        .await;
    assert_eq!(a_pull.status, 201, "{}", a_pull.json);
    let a_pull_id = a_pull.json["id"].as_str().unwrap().to_owned();
    let a_key = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{a_id}/keys"),
            Some(ADMIN),
            Some(json!({"label": "second"})),
        )
        .await;
    assert_eq!(a_key.status, 201);
    let a_key_id = a_key.json["key"]["key_id"].as_str().unwrap().to_owned();
    let a_topic = api
        .call(
            Method::POST,
            "/v1/topics",
            Some(&a_token),
            Some(json!({"name": "alices-likes", "max_bytes": 1_048_576})),
        )
        .await;
    assert_eq!(a_topic.status, 201, "{}", a_topic.json);
    // A state bucket, made by a subscription with a kv delivery, holding one key.
    let a_kv = api
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(&a_token),
            Some(json!({"delivery": {"type": "kv", "bucket": "alices-state", "key": "did"}})),
        )
        .await;
    assert_eq!(a_kv.status, 201, "{}", a_kv.json);
    let a_kv_id = a_kv.json["id"].as_str().unwrap().to_owned();
    let a_bucket = fpaas_bus::StateBucket::open(
        &fpaas_bus::jetstream(api.client.clone(), 16),
        &layout::state_kv_bucket(&a_id, "alices-state"),
    )
    .await
    .unwrap()
    .expect("the subscription created its bucket");
    a_bucket
        .write(&[fpaas_bus::StateWrite {
            key: "k1".into(),
            msg_id: "m1".into(),
            op: fpaas_bus::StateOp::Put(bytes::Bytes::from_static(b"{\"alices\":1}")),
        }])
        .await
        .unwrap();
    let a_ids = [
        a_id.clone(),
        a_sub_id.clone(),
        a_pull_id.clone(),
        a_key_id.clone(),
        "alices-likes".to_owned(),
        "alices-state".to_owned(),
        a_kv_id.clone(),
    ];
    let before = api
        .call(
            Method::GET,
            &format!("/v1/subscriptions/{a_sub_id}"),
            Some(&a_token),
            None,
        )
        .await;
    assert_eq!(before.status, 200);

    let doc = api
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .json;
    // The cases, by operationId. A new operation without a case fails the walk.
    let cases: BTreeMap<&str, Expect> = [
        ("openapi", Expect::Public),
        ("createTenant", Expect::Refused(403)),
        ("listTenants", Expect::Refused(403)),
        ("getTenant", Expect::Refused(403)),
        ("updateTenant", Expect::Refused(403)),
        ("deleteTenant", Expect::Refused(403)),
        ("createKey", Expect::Refused(403)),
        ("listKeys", Expect::Refused(403)),
        ("deleteKey", Expect::Refused(403)),
        ("createSubscription", Expect::OwnOnly(201)),
        ("listSubscriptions", Expect::OwnOnly(200)),
        ("usage", Expect::OwnOnly(200)),
        ("getSubscription", Expect::Refused(404)),
        ("updateSubscription", Expect::Refused(404)),
        ("deleteSubscription", Expect::Refused(404)),
        ("pauseSubscription", Expect::Refused(404)),
        ("resumeSubscription", Expect::Refused(404)),
        ("rotateSecret", Expect::Refused(404)),
        ("subscriptionStats", Expect::Refused(404)),
        ("pullSubscription", Expect::Refused(404)),
        ("ackSubscription", Expect::Refused(404)),
        ("listDeadLetters", Expect::Refused(404)),
        ("purgeDeadLetters", Expect::Refused(404)),
        ("getDeadLetter", Expect::Refused(404)),
        ("replayDeadLetter", Expect::Refused(404)),
        ("deleteDeadLetter", Expect::Refused(404)),
        ("createTopic", Expect::OwnOnly(201)),
        ("listTopics", Expect::OwnOnly(200)),
        ("getTopic", Expect::Refused(404)),
        ("deleteTopic", Expect::Refused(404)),
        ("listStateBuckets", Expect::OwnOnly(200)),
        ("getStateBucket", Expect::Refused(404)),
        ("deleteStateBucket", Expect::Refused(404)),
        ("listStateKeys", Expect::Refused(404)),
        ("getStateKey", Expect::Refused(404)),
        ("watchState", Expect::Refused(404)),
        ("tailSubscription", Expect::Refused(404)),
        ("playground", Expect::Refused(404)),
    ]
    .into_iter()
    .collect();
    // Valid bodies, so a refusal is about ownership, not about the body.
    let body_for = |id: &str| -> Value {
        match id {
            "createTenant" => json!({"name": "mallory"}),
            "updateTenant" => json!({"name": "renamed"}),
            "createKey" => json!({"label": "x"}),
            "createSubscription" => sub_spec(&receiver.url("/b")),
            "updateSubscription" => json!({"name": "hijacked"}),
            "rotateSecret" => json!({"overlap_secs": 0}),
            "createTopic" => json!({"name": "bobs-topic", "max_bytes": 1_048_576}),
            "pullSubscription" => json!({"max_events": 10}),
            "ackSubscription" => json!({"ids": [format!("{a_pull_id}.1-2.g1")]}),
            // A's topic as the source: B must not read it.
            "playground" => {
                json!({"source": {"topic": "alices-likes"}, "filter": {"predicate": "did"}})
            }
            other => panic!("no body for {other}"),
        }
    };
    let ops = operations(&doc);
    assert!(
        ops.len() >= 24,
        "the document lists every operation ({})",
        ops.len()
    );
    let mut walked = BTreeSet::new();
    for (method, template, id, access, has_body) in &ops {
        let expect = cases.get(id.as_str()).unwrap_or_else(|| {
            panic!("the isolation walk has no case for {id} ({method} {template}); add one")
        });
        let sub_id = if matches!(id.as_str(), "pullSubscription" | "ackSubscription") {
            &a_pull_id
        } else {
            &a_sub_id
        };
        let path = template
            .replace("{tenant_id}", &a_id)
            .replace("{sub_id}", sub_id)
            .replace("{key_id}", &a_key_id)
            .replace("{seq}", &a_seq.to_string())
            .replace("{topic}", "alices-likes")
            .replace("{bucket}", "alices-state")
            .replace("{key}", "k1");
        assert!(!path.contains('{'), "unknown path parameter in {template}");
        let body = has_body.then(|| body_for(id));
        // Without a token: 401 unless public.
        let anon = api.call(method_of(method), &path, None, body.clone()).await;
        match expect {
            Expect::Public => {
                assert_eq!(access, "public");
                assert_eq!(anon.status, 200, "{id} is public");
            }
            _ => {
                assert_eq!(anon.status, 401, "{id} without a token: {}", anon.json);
                assert_eq!(anon.json["error"], "unauthorized");
            }
        }
        // With B's key.
        let b = api
            .call(method_of(method), &path, Some(&b_token), body)
            .await;
        match expect {
            Expect::Public => {}
            Expect::Refused(status) => {
                assert_eq!(
                    b.status, *status,
                    "{id} with another tenant's key: {}",
                    b.json
                );
                let code = if *status == 404 {
                    "not_found"
                } else {
                    "forbidden"
                };
                assert_eq!(b.json["error"], code, "{id}");
                assert_eq!(
                    access,
                    if *status == 403 { "admin" } else { "tenant" },
                    "{id}"
                );
            }
            Expect::OwnOnly(status) => {
                assert_eq!(b.status, *status, "{id}: {}", b.json);
                let text = String::from_utf8_lossy(&b.raw);
                for a in &a_ids {
                    assert!(
                        !text.contains(a.as_str()),
                        "{id} shows {a} of another tenant: {text}"
                    );
                }
            }
        }
        walked.insert(id.clone());
    }
    let missing: Vec<&&str> = cases.keys().filter(|k| !walked.contains(**k)).collect();
    assert!(
        missing.is_empty(),
        "cases for operations the document lacks: {missing:?}"
    );

    // Nothing of A's changed: same subscription (revision included), dead letter and key still there.
    let after = api
        .call(
            Method::GET,
            &format!("/v1/subscriptions/{a_sub_id}"),
            Some(&a_token),
            None,
        )
        .await;
    assert_eq!(after.status, 200);
    assert_eq!(after.json, before.json, "A's subscription untouched");
    let topic = api
        .call(Method::GET, "/v1/topics/alices-likes", Some(&a_token), None)
        .await;
    assert_eq!(topic.status, 200, "A's topic still there: {}", topic.json);
    let value = api
        .call(
            Method::GET,
            "/v1/state/alices-state/keys/k1",
            Some(&a_token),
            None,
        )
        .await;
    assert_eq!(value.status, 200, "A's state still there: {}", value.json);
    assert_eq!(value.json["value"], json!({"alices": 1}));
    let letters = api
        .call(
            Method::GET,
            &format!("/v1/subscriptions/{a_sub_id}/dead-letters"),
            Some(&a_token),
            None,
        )
        .await;
    assert_eq!(letters.json["dead_letters"][0]["seq"], a_seq);
    let keys = api
        .call(
            Method::GET,
            &format!("/v1/tenants/{a_id}/keys"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        keys.json["keys"].as_array().unwrap().len(),
        2,
        "{}",
        keys.json
    );
    let own = api
        .call(Method::GET, "/v1/subscriptions", Some(&b_token), None)
        .await;
    assert_eq!(
        own.json["subscriptions"].as_array().unwrap().len(),
        1,
        "B sees its own one"
    );
    let a_still = api
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{a_pull_id}/pull"),
            Some(&a_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(a_still.status, 200, "A's pull subscription still answers A");
    assert_ne!(b_id, a_id);
    assert!(
        receiver.received().is_empty(),
        "no replay reached A's receiver"
    );
}

/// Asserts an error answer: status, code, the body's shape, and that the code is documented with that status.
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "expected {code}: {}", a.json);
    assert_eq!(a.json["error"], code, "{}", a.json);
    assert!(
        a.json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {}",
        a.json
    );
    assert!(
        ERROR_CODES.contains(&(code, status)),
        "{code} {status} is in the documented table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_stable_codes_and_create_nothing() {
    let api = Api::start().await;
    let (_, token) = api
        .tenant(
            "t",
            json!({"max_subscriptions": 2, "max_dids_per_filter": 3}),
        )
        .await;
    let t = Some(token.as_str());
    let post = |body: Value| api.call(Method::POST, "/v1/subscriptions", t, Some(body));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut s = sub_spec("http://127.0.0.1:9/hook");
        f(&mut s);
        s
    };
    let mut seen = BTreeSet::new();
    let mut check = |a: Answer, status: u16, code: &'static str| {
        assert_error(&a, status, code);
        seen.insert(code);
        a
    };
    check(
        api.raw(
            Method::POST,
            "/v1/subscriptions",
            t,
            Some(b"{not json".to_vec()),
        )
        .await,
        400,
        "bad_request",
    );
    check(
        post(with(&|s| s["colour"] = json!("red"))).await,
        400,
        "unknown_field",
    );
    check(
        post(with(&|s| s["filter"]["colour"] = json!(1))).await,
        400,
        "unknown_field",
    );
    let a = check(
        post(with(&|s| {
            s["filter"]["predicate"] = json!("commit.record.text == 'a' &&")
        }))
        .await,
        422,
        "bad_jmespath",
    );
    assert!(a.json["position"].is_u64(), "a position: {}", a.json);
    assert_eq!(a.json["field"], "filter.predicate");
    let a = check(
        post(with(&|s| s["transform"] = json!("{a: b"))).await,
        422,
        "bad_jmespath",
    );
    assert_eq!(a.json["field"], "transform");
    check(
        post(with(&|s| s["delivery"]["url"] = json!("ftp://x/y"))).await,
        422,
        "bad_url",
    );
    check(
        post(with(&|s| s["delivery"]["url"] = json!("not a url"))).await,
        422,
        "bad_url",
    );
    // The SSRF guard: the metadata address and private networks are refused whatever the loopback setting.
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "http://[fe80::1]/x",
    ] {
        let a = check(
            post(with(&|s| s["delivery"]["url"] = json!(url))).await,
            422,
            "url_not_allowed",
        );
        assert_eq!(a.json["field"], "delivery.url");
    }
    check(
        post(with(&|s| {
            s["filter"]["collections"] = json!(["not an nsid!"])
        }))
        .await,
        422,
        "bad_filter",
    );
    check(
        post(with(&|s| {
            s["filter"]["dids"] = json!(["did:plc:a", "did:plc:b", "did:plc:c", "did:plc:d"]);
        }))
        .await,
        429,
        "quota_exceeded",
    );
    let many: Vec<String> = (0..10_001).map(|i| format!("did:plc:{i:024}")).collect();
    let a = post(with(&|s| s["filter"]["dids"] = json!(many))).await;
    assert!(
        matches!(
            a.json["error"].as_str(),
            Some("limit_exceeded" | "quota_exceeded")
        ),
        "{}",
        a.json
    );
    check(
        post(with(&|s| s["batching"]["max_events"] = json!(0))).await,
        422,
        "limit_exceeded",
    );
    let big = vec![b' '; fpaas_api::MAX_BODY_BYTES + 10];
    let mut body = b"{\"name\":\"".to_vec();
    body.extend_from_slice(&big);
    body.extend_from_slice(b"\"}");
    check(
        api.raw(Method::POST, "/v1/subscriptions", t, Some(body))
            .await,
        413,
        "payload_too_large",
    );
    // Nothing half-created.
    let list = api.call(Method::GET, "/v1/subscriptions", t, None).await;
    assert_eq!(
        list.json["subscriptions"].as_array().unwrap().len(),
        0,
        "{}",
        list.json
    );

    // Quota on the number of subscriptions; the refused one is not created.
    let s1 = post(with(&|_| {})).await;
    assert_eq!(s1.status, 201);
    assert_eq!(post(with(&|_| {})).await.status, 201);
    check(post(with(&|_| {})).await, 429, "quota_exceeded");
    let list = api.call(Method::GET, "/v1/subscriptions", t, None).await;
    assert_eq!(list.json["subscriptions"].as_array().unwrap().len(), 2);

    // Auth, routes, methods, concurrency.
    check(
        api.call(Method::GET, "/v1/subscriptions", None, None).await,
        401,
        "unauthorized",
    );
    check(
        api.call(Method::GET, "/v1/subscriptions", Some("fpk_nope"), None)
            .await,
        401,
        "unauthorized",
    );
    check(
        api.call(Method::GET, "/v1/tenants", t, None).await,
        403,
        "forbidden",
    );
    check(
        api.call(Method::GET, "/v1/subscriptions/sub_missing", t, None)
            .await,
        404,
        "not_found",
    );
    check(
        api.call(Method::GET, "/v1/nothing-here", t, None).await,
        404,
        "not_found",
    );
    check(
        api.call(Method::PUT, "/v1/subscriptions", t, None).await,
        405,
        "method_not_allowed",
    );
    let id = s1.json["id"].as_str().unwrap();
    let stale = api
        .http
        .patch(format!("{}/v1/subscriptions/{id}", api.base))
        .bearer_auth(&token)
        .header("if-match", "\"999999\"")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    let status = stale.status().as_u16();
    let json: Value = stale.json().await.unwrap();
    check(
        Answer {
            status,
            json,
            raw: Vec::new(),
        },
        409,
        "conflict",
    );
    check(
        api.call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            t,
            Some(json!({"state": "disabled"})),
        )
        .await,
        422,
        "bad_value",
    );
    check(
        api.call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/dead-letters/1/replay"),
            t,
            None,
        )
        .await,
        404,
        "not_found",
    );
    // A refused update leaves the subscription as it was.
    let before = api
        .call(Method::GET, &format!("/v1/subscriptions/{id}"), t, None)
        .await;
    check(
        api.call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            t,
            Some(json!({"name": "changed", "filter": {"predicate": "a ||"}})),
        )
        .await,
        422,
        "bad_jmespath",
    );
    let after = api
        .call(Method::GET, &format!("/v1/subscriptions/{id}"), t, None)
        .await;
    assert_eq!(before.json, after.json, "nothing half-applied");

    // Every client error code of the table was provoked here (internal / unavailable / delivery_failed
    // are provoked by the dead-letter and outage tests).
    for (code, status) in ERROR_CODES {
        if *status < 500 {
            assert!(seen.contains(code), "{code} was not provoked");
        }
    }
}

/// A random JSON value, at most `depth` deep.
fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    let words = [
        "filter",
        "collections",
        "dids",
        "predicate",
        "transform",
        "batching",
        "max_events",
        "delivery",
        "webhook",
        "url",
        "type",
        "start",
        "at",
        "seq",
        "time",
        "name",
        "quotas",
        "state",
        "paused",
        "retry",
        "schedule_ms",
        "timeout_ms",
        "app.bsky.feed.*",
        "did:plc:x",
        "live",
        "http://127.0.0.1:1/",
        "overlap_secs",
        "label",
        "kinds",
        "operations",
        "commit",
        "create",
        "max_bytes",
        "max_wait_ms",
    ];
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e6),
        4 => json!(rng.random_range(0..100_000u64)),
        5 => json!(words[rng.random_range(0..words.len())]),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..5))
                .map(|_| {
                    (
                        words[rng.random_range(0..words.len())].to_owned(),
                        random_value(rng, depth - 1),
                    )
                })
                .collect(),
        ),
    }
}

/// Replaces one random node of `v` with a random value.
fn mutate(rng: &mut StdRng, v: &mut Value) {
    match v {
        Value::Object(m) if !m.is_empty() && rng.random_bool(0.7) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            mutate(rng, m.get_mut(k).unwrap());
        }
        Value::Array(a) if !a.is_empty() && rng.random_bool(0.7) => {
            let i = rng.random_range(0..a.len());
            mutate(rng, &mut a[i]);
        }
        _ => *v = random_value(rng, 3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_bodies_never_get_a_server_error() {
    let api = Api::start().await;
    let (tenant_id, token) = api.tenant("fuzz", json!({})).await;
    let sub = api.subscription(&token, "http://127.0.0.1:9/hook").await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let doc = api
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .json;
    let targets: Vec<(Method, String, &str)> = operations(&doc)
        .into_iter()
        .filter(|op| op.4)
        .map(|(m, p, _, access, _)| {
            let path = p
                .replace("{tenant_id}", &tenant_id)
                .replace("{sub_id}", &sub_id);
            let who = if access == "admin" {
                ADMIN
            } else {
                token.as_str()
            };
            (method_of(&m), path, who)
        })
        .collect();
    assert!(targets.len() >= 6, "{targets:?}");
    let seeds = [
        sub_spec("http://127.0.0.1:9/hook"),
        json!({"name": "x", "quotas": {"max_subscriptions": 5}}),
        json!({"filter": {"collections": ["app.bsky.*"], "predicate": "length(commit.record.text) > `3`"}}),
        json!({"overlap_secs": 10}),
        json!({"filter": {"predicate": "did"}, "transform": "{d: did}", "scan": 10, "limit": 5}),
    ];
    let mut rng = StdRng::seed_from_u64(0x5eed_f00d);
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for i in 0..1_500 {
        let (method, path, who) = &targets[i % targets.len()];
        let body: Vec<u8> = match rng.random_range(0..10) {
            0 => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
            1..=3 => serde_json::to_vec(&random_value(&mut rng, 4)).unwrap(),
            _ => {
                let mut v = seeds[rng.random_range(0..seeds.len())].clone();
                for _ in 0..rng.random_range(1..4) {
                    mutate(&mut rng, &mut v);
                }
                serde_json::to_vec(&v).unwrap()
            }
        };
        let a = api
            .raw(method.clone(), path, Some(who), Some(body.clone()))
            .await;
        *by_status.entry(a.status).or_default() += 1;
        assert!(
            a.status < 500,
            "{method} {path} with {} → {} {}",
            String::from_utf8_lossy(&body),
            a.status,
            a.json
        );
        if a.status >= 400 {
            let code = a.json["error"]
                .as_str()
                .unwrap_or_else(|| panic!("error shape: {}", a.json));
            assert!(
                ERROR_CODES.contains(&(code, a.status)),
                "{code} with {} is documented",
                a.status
            );
        }
    }
    // Both successes and refusals happened (the generator is not trivially wrong), and the server answers.
    assert!(by_status.keys().any(|s| *s < 300), "{by_status:?}");
    assert!(by_status.keys().any(|s| *s >= 400), "{by_status:?}");
    assert_eq!(
        api.call(Method::GET, "/openapi.json", None, None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_is_listed_replayed_with_its_id_and_removed() {
    let api = Api::start().await;
    let receiver = WebhookReceiver::start().await;
    receiver.respond_with(|_| Reply::status(500));
    api.firehose().await;
    let events = corpus_events(60);
    publish_events(&api.client, &events).await;
    let (_, token) = api.tenant("t", json!({})).await;
    let t = Some(token.as_str());
    let sub = api.subscription(&token, &receiver.url("/hook")).await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let secret =
        fpaas_webhook::Secret::parse(sub["secrets"][0]["secret"].as_str().unwrap()).unwrap();
    // A real worker: three attempts (schedule [50, 50]), then the dead letter.
    let cancel = CancellationToken::new();
    let mut cfg = fpaas_pipeline::WorkerConfig {
        nats_url: api.nats_url.clone(),
        metrics_listen: None,
        partitions: 2,
        lease_ttl_secs: 2,
        ..Default::default()
    };
    cfg.webhook_addresses.allow_loopback = true;
    let worker = {
        let (client, cancel) = (api.client.clone(), cancel.clone());
        tokio::spawn(async move { fpaas_pipeline::run(client, cfg, cancel).await })
    };
    let path = format!("/v1/subscriptions/{id}/dead-letters");
    let listed = eventually_some(Duration::from_secs(30), || async {
        let listed = api.call(Method::GET, &path, t, None).await.json;
        listed["dead_letters"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
            .then_some(listed)
    })
    .await
    .expect("a dead letter");
    let letter = listed["dead_letters"][0].clone();
    let seq = letter["seq"].as_u64().unwrap();
    let attempts = receiver.received();
    assert_eq!(attempts.len(), 3, "three attempts before the dead letter");
    let first_id = attempts[0].header("webhook-id").unwrap().to_owned();
    assert_eq!(letter["batch_id"], first_id.as_str());
    assert_eq!(letter["attempts"], 3);
    let likes = events
        .iter()
        .filter(|e| {
            e.commit
                .as_ref()
                .is_some_and(|c| c.collection == "app.bsky.feed.like")
        })
        .count();
    assert_eq!(letter["events"], likes as u64);
    let stored = api
        .raw(Method::GET, &format!("{path}/{seq}"), t, None)
        .await;
    assert_eq!(stored.status, 200);
    assert_eq!(
        stored.raw, attempts[0].body,
        "the stored body is the attempted body"
    );

    // Replay while the receiver still fails: 502, kept.
    let replay = format!("{path}/{seq}/replay");
    let a = api.call(Method::POST, &replay, t, None).await;
    assert_error(&a, 502, "delivery_failed");
    assert_eq!(
        api.raw(Method::GET, &format!("{path}/{seq}"), t, None)
            .await
            .status,
        200
    );
    // The receiver recovers: delivered with the first id, signed, then gone from the dead letters.
    receiver.respond_with(|_| Reply::ok());
    let a = api.call(Method::POST, &replay, t, None).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["batch_id"], first_id.as_str());
    assert_eq!(a.json["status"], 200);
    let all = receiver.received();
    let last = all.last().unwrap();
    assert_eq!(last.header("webhook-id"), Some(first_id.as_str()));
    assert_eq!(last.body, attempts[0].body, "the same body");
    let mut headers = BTreeMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, last.header(name).unwrap().to_owned());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    fpaas_webhook::sign::verify(
        &headers["webhook-id"],
        &headers["webhook-timestamp"],
        &headers["webhook-signature"],
        &last.body,
        &[secret],
        now,
        Duration::from_secs(300),
    )
    .expect("the replay is signed with the subscription's secret");
    assert_error(
        &api.raw(Method::GET, &format!("{path}/{seq}"), t, None)
            .await,
        404,
        "not_found",
    );
    let after = api.call(Method::GET, &path, t, None).await;
    assert_eq!(after.json["dead_letters"].as_array().unwrap().len(), 0);
    // A second replay of the same letter: not found (nothing delivered twice by the API).
    let count = receiver.count();
    assert_error(
        &api.call(Method::POST, &replay, t, None).await,
        404,
        "not_found",
    );
    assert_eq!(receiver.count(), count);
    cancel.cancel();
    let _ = worker.await;
}

#[test]
fn docs_api_md_lists_every_operation_and_error_code() {
    let text = std::fs::read_to_string(fpaas_testkit::workspace_root().join("docs/api.md"))
        .expect("docs/api.md");
    for op in fpaas_api::routes::operations() {
        let row = format!("| {} | `{}` |", op.method.to_uppercase(), op.path);
        assert!(text.contains(&row), "docs/api.md lacks the row {row}");
    }
    for (code, status) in ERROR_CODES {
        let row = format!("| `{code}` | {status} |");
        assert!(text.contains(&row), "docs/api.md lacks the error row {row}");
    }
}

/// Topics: a tenant's own stream with the asked retention, readable and countable; names unique per tenant
/// (the same name in another tenant is another stream); bad names and retentions refused with their codes;
/// the count and bytes quotas; delete removes the stream, and deleting the tenant removes its topics' streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_streams_of_their_own_within_the_quotas() {
    let api = Api::start().await;
    let js = async_nats::jetstream::new(api.client.clone());
    let (a_id, a) = api
        .tenant(
            "alice",
            json!({"max_topics": 2, "max_topic_bytes": 3_145_728}),
        )
        .await;
    let (b_id, b) = api.tenant("bob", json!({})).await;
    let create = |token: &str, body: Value| {
        let token = token.to_owned();
        let api = &api;
        async move {
            api.call(Method::POST, "/v1/topics", Some(&token), Some(body))
                .await
        }
    };

    let made = create(
        &a,
        json!({"name": "likes-per-post", "max_age_secs": 3600, "max_bytes": 2_097_152}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.json);
    let stream = made.json["stream"].as_str().expect("stream").to_owned();
    let subject = made.json["subject"].as_str().expect("subject").to_owned();
    assert!(
        stream.contains(&a_id) && subject.contains(&a_id),
        "{}",
        made.json
    );
    let info = js
        .get_stream(&stream)
        .await
        .expect("the topic's stream exists")
        .cached_info()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.max_bytes, 2_097_152);
    assert_eq!(info.config.subjects, vec![subject.clone()]);

    // What is published to it shows in GET.
    for i in 0..3 {
        js.publish(subject.clone(), format!("{{\"n\":{i}}}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let got = api
        .call(Method::GET, "/v1/topics/likes-per-post", Some(&a), None)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json["messages"], 3, "{}", got.json);
    assert_eq!(got.json["last_seq"], 3);

    // The same name twice: 409; in another tenant: its own stream.
    let again = create(
        &a,
        json!({"name": "likes-per-post", "max_bytes": 1_048_576}),
    )
    .await;
    assert_eq!(
        (again.status, again.json["error"].as_str()),
        (409, Some("conflict"))
    );
    let bobs = create(
        &b,
        json!({"name": "likes-per-post", "max_bytes": 1_048_576}),
    )
    .await;
    assert_eq!(bobs.status, 201, "{}", bobs.json);
    assert_ne!(bobs.json["stream"], made.json["stream"]);
    let bob_sees = api
        .call(Method::GET, "/v1/topics/likes-per-post", Some(&b), None)
        .await;
    assert_eq!(bob_sees.json["messages"], 0, "bob's topic is his own");

    // Refusals, each with its code; nothing created by them.
    for (body, status, code) in [
        (json!({"name": "Caps"}), 422, "bad_value"),
        (json!({"name": "-dash-first"}), 422, "bad_value"),
        (json!({"name": "a.b"}), 422, "bad_value"),
        (json!({"name": "x".repeat(65)}), 422, "bad_value"),
        (
            json!({"name": "ok", "max_age_secs": 10}),
            422,
            "limit_exceeded",
        ),
        (
            json!({"name": "ok", "max_bytes": 1000}),
            422,
            "limit_exceeded",
        ),
        (
            json!({"name": "ok", "max_bytes": 4_194_304}),
            429,
            "quota_exceeded",
        ),
        // 2 MiB held + 2 MiB > the 3 MiB of topic bytes.
        (
            json!({"name": "ok", "max_bytes": 2_097_152}),
            429,
            "quota_exceeded",
        ),
        (
            json!({"name": "ok", "retention": "forever"}),
            400,
            "unknown_field",
        ),
    ] {
        let r = create(&a, body.clone()).await;
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (status, Some(code)),
            "{body}: {}",
            r.json
        );
    }
    let second = create(&a, json!({"name": "top-10", "max_bytes": 1_048_576})).await;
    assert_eq!(second.status, 201, "{}", second.json);
    let third = create(&a, json!({"name": "third", "max_bytes": 1_048_576})).await;
    assert_eq!(
        (third.status, third.json["error"].as_str()),
        (429, Some("quota_exceeded")),
        "max_topics is 2"
    );
    let list = api.call(Method::GET, "/v1/topics", Some(&a), None).await;
    let names: Vec<&str> = list.json["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["likes-per-post", "top-10"]);

    // A subscription may deliver into its tenant's topic, not into a missing one (nor another tenant's).
    let into = |topic: &str| {
        json!({"filter": {"collections": ["app.bsky.feed.like"]},
               "delivery": {"type": "topic", "topic": topic}})
    };
    let sub = api
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(&a),
            Some(into("top-10")),
        )
        .await;
    assert_eq!(sub.status, 201, "{}", sub.json);
    assert_eq!(sub.json["delivery"]["topic"], "top-10");
    for (token, topic) in [(&a, "no-such-topic"), (&b, "top-10")] {
        let r = api
            .call(
                Method::POST,
                "/v1/subscriptions",
                Some(token),
                Some(into(topic)),
            )
            .await;
        assert_eq!(
            (r.status, r.json["error"].as_str(), r.json["field"].as_str()),
            (422, Some("bad_value"), Some("delivery.topic")),
            "{topic}: {}",
            r.json
        );
    }

    // A subscription of a topic: the tenant's existing topic, a predicate-only filter, not into itself.
    let of = |source: &str, filter: Value, into: Value| json!({"source": {"topic": source}, "filter": filter, "delivery": into});
    let hook = json!({"type": "webhook", "url": "https://example.com/hook"});
    let reader = api
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(&a),
            Some(of(
                "likes-per-post",
                json!({"predicate": "n > `0`"}),
                hook.clone(),
            )),
        )
        .await;
    assert_eq!(reader.status, 201, "{}", reader.json);
    assert_eq!(reader.json["source"]["topic"], "likes-per-post");
    for (body, code, field) in [
        (
            of("nope", json!({}), hook.clone()),
            "bad_value",
            "source.topic",
        ),
        (
            of(
                "likes-per-post",
                json!({"collections": ["app.bsky.feed.like"]}),
                hook.clone(),
            ),
            "bad_filter",
            "filter.collections",
        ),
        (
            of(
                "likes-per-post",
                json!({}),
                json!({"type": "topic", "topic": "likes-per-post"}),
            ),
            "bad_value",
            "delivery.topic",
        ),
        (
            of(
                "likes-per-post",
                json!({}),
                json!({"type": "webhook", "url": "https://example.com/hook", "output_topic": "nope"}),
            ),
            "bad_value",
            "delivery.output_topic",
        ),
        (
            of(
                "likes-per-post",
                json!({}),
                json!({"type": "webhook", "url": "https://example.com/hook", "output_topic": "likes-per-post"}),
            ),
            "bad_value",
            "delivery.output_topic",
        ),
    ] {
        let r = api
            .call(
                Method::POST,
                "/v1/subscriptions",
                Some(&a),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (r.status, r.json["error"].as_str(), r.json["field"].as_str()),
            (422, Some(code), Some(field)),
            "{body}: {}",
            r.json
        );
    }
    let busy_source = api
        .call(Method::DELETE, "/v1/topics/likes-per-post", Some(&a), None)
        .await;
    assert_eq!(
        busy_source.status, 409,
        "a source in use: {}",
        busy_source.json
    );

    // Not while a subscription delivers into it; then the stream goes.
    let busy = api
        .call(Method::DELETE, "/v1/topics/top-10", Some(&a), None)
        .await;
    assert_eq!(
        (busy.status, busy.json["error"].as_str()),
        (409, Some("conflict")),
        "{}",
        busy.json
    );
    let sub_id = sub.json["id"].as_str().expect("id");
    let del_sub = api
        .call(
            Method::DELETE,
            &format!("/v1/subscriptions/{sub_id}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(del_sub.status, 204);
    let del = api
        .call(Method::DELETE, "/v1/topics/top-10", Some(&a), None)
        .await;
    assert_eq!(del.status, 204);
    let top10_stream = layout::topic_stream(&a_id, "top-10");
    assert!(
        js.get_stream(&top10_stream).await.is_err(),
        "stream deleted"
    );
    let gone = api
        .call(Method::GET, "/v1/topics/top-10", Some(&a), None)
        .await;
    assert_eq!(gone.status, 404);

    // Deleting the tenant deletes its topics' streams, not another tenant's.
    let del_tenant = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{a_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(del_tenant.status, 204, "{}", del_tenant.json);
    assert!(
        js.get_stream(&stream).await.is_err(),
        "alice's topic stream deleted"
    );
    assert!(
        js.get_stream(&layout::topic_stream(&b_id, "likes-per-post"))
            .await
            .is_ok(),
        "bob's topic untouched"
    );
}

/// Percent-encodes everything but `[A-Za-z0-9-_.~]` (a path segment or a query value).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The next Server-Sent Event of `resp` (event name, data), reading chunks into `buf`; `None` at the end.
async fn next_sse(resp: &mut reqwest::Response, buf: &mut String) -> Option<(String, String)> {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = (String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            return Some((event, data));
        }
        let chunk = resp.chunk().await.ok()??;
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The state API over what a real worker writes: a subscription's `kv` delivery creates its bucket (quota,
/// kind and JMESPath checked first, nothing created by a refused request); a watch opened before the worker
/// runs sees the counters arrive as Server-Sent Events; a key reads back as the model's number, keys list by
/// prefix page by page; the bucket cannot be deleted while written; the watch's consumer goes when the
/// client does; deleting the tenant deletes its buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_buckets_are_read_listed_and_watched_as_a_worker_writes_them() {
    let api = Api::start().await;
    let js = api.firehose().await;
    let (a_id, a) = api.tenant("alice", json!({"max_state_buckets": 2})).await;
    let t = Some(a.as_str());
    let kv_spec = |delivery: Value| {
        json!({
            "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.like"], "operations": ["create"]},
            "transform": "{post: commit.record.subject.uri, did: did}",
            "batching": {"max_events": 100, "max_wait_ms": 50},
            "start": {"at": "retention_start"},
            "delivery": delivery,
        })
    };
    let create = |delivery: Value| {
        let api = &api;
        let body = kv_spec(delivery);
        async move {
            api.call(Method::POST, "/v1/subscriptions", t, Some(body))
                .await
        }
    };
    // Refused: a bad key expression, `by` on a put; nothing created.
    let bad = create(json!({"type": "kv", "bucket": "likes", "key": "post.[", "op": "incr"})).await;
    assert_error(&bad, 422, "bad_jmespath");
    assert_eq!(bad.json["field"], "delivery.key");
    assert!(bad.json["position"].is_u64(), "{}", bad.json);
    let bad = create(json!({"type": "kv", "bucket": "likes", "key": "post", "by": "`1`"})).await;
    assert_error(&bad, 422, "bad_value");
    let listed = api.call(Method::GET, "/v1/state", t, None).await;
    assert_eq!(listed.json, json!({"buckets": []}));

    let counts =
        create(json!({"type": "kv", "bucket": "likes", "key": "post", "op": "incr"})).await;
    assert_eq!(counts.status, 201, "{}", counts.json);
    let counts_id = counts.json["id"].as_str().unwrap().to_owned();
    let last = create(json!({"type": "kv", "bucket": "last", "key": "did", "value": "post"})).await;
    assert_eq!(last.status, 201, "{}", last.json);
    // A put into the counters bucket, and a third bucket: refused.
    let wrong = create(json!({"type": "kv", "bucket": "likes", "key": "post"})).await;
    assert_error(&wrong, 422, "bad_value");
    assert_eq!(wrong.json["field"], "delivery.op");
    let over = create(json!({"type": "kv", "bucket": "third", "key": "post"})).await;
    assert_error(&over, 429, "quota_exceeded");
    let listed = api.call(Method::GET, "/v1/state", t, None).await;
    let names: Vec<&str> = listed.json["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["last", "likes"], "{}", listed.json);
    assert_eq!(listed.json["buckets"][1]["kind"], "counters");
    assert_eq!(
        api.call(Method::GET, "/v1/subscriptions", t, None)
            .await
            .json["subscriptions"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "refused requests created no subscription"
    );

    // The watch, open before anything is written.
    let mut watch = api
        .http
        .get(format!(
            "{}/v1/state/likes/watch?prefix={}",
            api.base,
            pct("at://")
        ))
        .bearer_auth(&a)
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), 200);
    assert_eq!(
        watch.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let events = corpus_events(600);
    publish_events(&api.client, &events).await;
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for e in &events {
        if let Some(c) = &e.commit
            && c.collection == "app.bsky.feed.like"
            && c.operation == fpaas_event::Operation::Create
        {
            let v: Value =
                serde_json::from_slice(&fpaas_event::WireMessage::from_event(e).payload).unwrap();
            let post = v["commit"]["record"]["subject"]["uri"].as_str().unwrap();
            *want.entry(post.to_owned()).or_insert(0) += 1;
        }
    }
    assert!(want.len() > 5, "the corpus has likes");
    let cancel = CancellationToken::new();
    let cfg = fpaas_pipeline::WorkerConfig {
        nats_url: api.nats_url.clone(),
        metrics_listen: None,
        partitions: 2,
        lease_ttl_secs: 2,
        ..Default::default()
    };
    let worker = {
        let (client, cancel) = (api.client.clone(), cancel.clone());
        tokio::spawn(async move { fpaas_pipeline::run(client, cfg, cancel).await })
    };
    let mut buf = String::new();
    let (event, data) =
        tokio::time::timeout(Duration::from_secs(30), next_sse(&mut watch, &mut buf))
            .await
            .expect("a change arrives")
            .expect("an event");
    assert_eq!(event, "put");
    let change: Value = serde_json::from_str(&data).unwrap();
    let key = change["key"].as_str().unwrap().to_owned();
    assert!(want.contains_key(&key), "{change}");
    assert!(change["value"].as_i64().unwrap() >= 1, "{change}");
    assert!(change["revision"].as_u64().unwrap() >= 1);

    // Every key, page by page (3 a page), equals the model.
    let all = eventually_some(Duration::from_secs(30), || async {
        let mut got = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/v1/state/likes/keys?limit=3&prefix={}", pct("at://"));
            if let Some(a) = &after {
                path.push_str(&format!("&after={}", pct(a)));
            }
            let page = api.call(Method::GET, &path, t, None).await;
            assert_eq!(page.status, 200, "{}", page.json);
            let entries = page.json["entries"].as_array().unwrap();
            assert!(entries.len() <= 3);
            for e in entries {
                got.insert(
                    e["key"].as_str().unwrap().to_owned(),
                    e["value"].as_i64().unwrap(),
                );
            }
            match page.json["next_after"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
        }
        (got == want).then_some(got)
    })
    .await
    .expect("the listed counters equal the model");
    let (key, n) = all.iter().next().unwrap();
    let one = api
        .call(
            Method::GET,
            &format!("/v1/state/likes/keys/{}", pct(key)),
            t,
            None,
        )
        .await;
    assert_eq!(one.status, 200, "{}", one.json);
    assert_eq!(one.json["key"], key.as_str());
    assert_eq!(one.json["value"], *n);
    assert!(one.json["updated_at"].as_str().unwrap().ends_with('Z'));
    let info = api.call(Method::GET, "/v1/state/likes", t, None).await;
    assert_eq!(info.json["keys"], want.len());
    let missing = api
        .call(Method::GET, "/v1/state/likes/keys/nope", t, None)
        .await;
    assert_error(&missing, 404, "not_found");
    let too_long = api
        .call(
            Method::GET,
            &format!("/v1/state/likes/keys/{}", "a".repeat(1025)),
            t,
            None,
        )
        .await;
    assert_error(&too_long, 400, "bad_request");
    let bad_query = api
        .call(Method::GET, "/v1/state/likes/keys?limit=0", t, None)
        .await;
    assert_error(&bad_query, 400, "bad_request");
    let last_values = api
        .call(Method::GET, "/v1/state/last/keys?limit=1000", t, None)
        .await;
    assert!(
        last_values.json["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["key"].as_str().unwrap().starts_with("did:")
                && want.contains_key(e["value"].as_str().unwrap())),
        "{}",
        last_values.json
    );

    // The watch's consumer is gone once the client is.
    let stream = format!("KV_{}", layout::state_kv_bucket(&a_id, "likes"));
    let consumers = || async {
        async_nats::jetstream::new(api.client.clone())
            .get_stream(&stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .consumer_count
    };
    assert_eq!(consumers().await, 1, "the watch's consumer");
    drop(watch);
    fpaas_testkit::eventually(Duration::from_secs(10), || async { consumers().await == 0 })
        .await
        .expect("the watch's consumer is removed when the client goes");

    // Not while written; then gone with its KV bucket.
    let busy = api.call(Method::DELETE, "/v1/state/likes", t, None).await;
    assert_error(&busy, 409, "conflict");
    let del = api
        .call(
            Method::DELETE,
            &format!("/v1/subscriptions/{counts_id}"),
            t,
            None,
        )
        .await;
    assert_eq!(del.status, 204);
    let gone = api.call(Method::DELETE, "/v1/state/likes", t, None).await;
    assert_eq!(gone.status, 204, "{}", gone.json);
    assert_error(
        &api.call(Method::GET, "/v1/state/likes", t, None).await,
        404,
        "not_found",
    );
    cancel.cancel();
    worker.await.unwrap().unwrap();
    let del = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{a_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(del.status, 204);
    for name in ["likes", "last"] {
        assert!(
            fpaas_bus::StateBucket::open(&js, &layout::state_kv_bucket(&a_id, name))
                .await
                .unwrap()
                .is_none(),
            "{name} deleted with its tenant"
        );
    }
}

/// (stream sequence, `data`) of every event in the `events` of pulled batches.
fn pulled_events(batches: &[Value]) -> Vec<(u64, Value)> {
    batches
        .iter()
        .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
        .map(|e| (e["seq"].as_u64().unwrap(), e["data"].clone()))
        .collect()
}

fn ids_of(batches: &[Value]) -> Vec<String> {
    batches
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_delivery_fetches_acks_redelivers_after_the_visibility_timeout_and_stays_bounded() {
    let api = Api::start().await;
    let js = api.firehose().await;
    let events = corpus_events(70);
    let seqs = publish_events(&api.client, &events[..60]).await;
    let (tenant_id, token) = api.tenant("puller", json!({})).await;
    let t = Some(token.as_str());
    let created = api
        .call(
            Method::POST,
            "/v1/subscriptions",
            t,
            Some(json!({
                "batching": {"max_events": 10, "max_wait_ms": 50},
                "start": {"at": "retention_start"},
                "delivery": {"type": "pull", "visibility_timeout_ms": 1000, "max_waiting_batches": 3}
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.json);
    assert_eq!(created.json["delivery"]["max_waiting_batches"], 3);
    let id = created.json["id"].as_str().unwrap().to_owned();
    let pull_path = format!("/v1/subscriptions/{id}/pull");
    let ack_path = format!("/v1/subscriptions/{id}/ack");
    let pull = |body: Value| {
        let (api, path) = (&api, &pull_path);
        async move {
            let a = api.call(Method::POST, path, t, Some(body)).await;
            assert_eq!(a.status, 200, "pull: {}", a.json);
            a.json["batches"].as_array().cloned().unwrap()
        }
    };
    // Bounds and the wrong kind of subscription.
    assert_error(
        &api.call(Method::POST, &pull_path, t, Some(json!({"max_events": 0})))
            .await,
        422,
        "limit_exceeded",
    );
    assert_error(
        &api.call(
            Method::POST,
            &pull_path,
            t,
            Some(json!({"max_wait_ms": 30_001})),
        )
        .await,
        422,
        "limit_exceeded",
    );
    assert_error(
        &api.call(Method::POST, &ack_path, t, Some(json!({"ids": []})))
            .await,
        422,
        "limit_exceeded",
    );
    let hook = api.subscription(&token, "http://127.0.0.1:9/hook").await;
    let hook_pull = format!("/v1/subscriptions/{}/pull", hook["id"].as_str().unwrap());
    assert_error(
        &api.call(Method::POST, &hook_pull, t, Some(json!({}))).await,
        409,
        "conflict",
    );

    let cancel = CancellationToken::new();
    let cfg = fpaas_pipeline::WorkerConfig {
        nats_url: api.nats_url.clone(),
        metrics_listen: None,
        partitions: 2,
        lease_ttl_secs: 2,
        ..Default::default()
    };
    let worker = {
        let (client, cancel) = (api.client.clone(), cancel.clone());
        tokio::spawn(async move { fpaas_pipeline::run(client, cfg, cancel).await })
    };
    // Backpressure: 60 events make 6 batches, but only 3 may wait.
    let log = fpaas_bus::ensure_msglog(&js, &fpaas_control::pull_log_settings(1))
        .await
        .expect("pull stream");
    let subject = layout::pull_subject(&tenant_id, &id);
    fpaas_testkit::eventually(Duration::from_secs(30), || async {
        log.count(&subject).await.unwrap_or(0) == 3
    })
    .await
    .expect("three batches wait");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(log.count(&subject).await.unwrap(), 3, "the bound holds");

    // max_events and max_bytes: one batch of 10 events each (the first batch always comes); two concurrent
    // pulls lease different batches.
    let (b1, b2) = tokio::join!(
        pull(json!({"max_events": 15})),
        pull(json!({"max_bytes": 1024}))
    );
    assert_eq!(b1.len(), 1, "{b1:?}");
    assert_eq!(b1[0]["events"].as_array().unwrap().len(), 10);
    assert_eq!(b1[0]["deliveries"], 1);
    assert!(b1[0]["id"].as_str().unwrap().starts_with(&format!("{id}.")));
    assert_eq!(b2.len(), 1, "{b2:?}");
    assert!(b2[0]["bytes"].as_u64().unwrap() > 1024);
    assert_ne!(
        b1[0]["id"], b2[0]["id"],
        "concurrent pulls lease different batches"
    );
    let b3 = pull(json!({})).await;
    assert_eq!(b3.len(), 1, "only three were stored: {b3:?}");
    assert!(pull(json!({})).await.is_empty(), "all three are leased");
    // Ack two (and an id that is not waiting): the runner stores more.
    let acked = api
        .call(
            Method::POST,
            &ack_path,
            t,
            Some(json!({"ids": [ids_of(&b1)[0], ids_of(&b2)[0], "s_nope.1-2.g1"]})),
        )
        .await;
    assert_eq!(acked.status, 200, "{}", acked.json);
    // b1 and b2 were pulled concurrently, so which batch each got (and the answer's order) is not fixed.
    let mut got: Vec<String> = acked.json["acked"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut want = vec![ids_of(&b1)[0].clone(), ids_of(&b2)[0].clone()];
    got.sort();
    want.sort();
    assert_eq!(got, want, "{}", acked.json);
    assert_eq!(acked.json["unknown"], json!(["s_nope.1-2.g1"]));
    let again = api
        .call(
            Method::POST,
            &ack_path,
            t,
            Some(json!({"ids": ids_of(&b1)})),
        )
        .await;
    assert_eq!(again.json["unknown"], json!(ids_of(&b1)), "an ack repeated");
    // B3 is not acknowledged: after its visibility timeout it comes back first, delivered twice.
    let mut got: Vec<Value> = [b1.clone(), b2.clone()].concat();
    let redelivered = eventually_some(Duration::from_secs(10), || async {
        let batches = pull(json!({"max_events": 10})).await;
        batches.into_iter().find(|b| b["id"] == b3[0]["id"])
    })
    .await
    .expect("B3 comes back");
    assert_eq!(redelivered["deliveries"], 2);
    assert_eq!(redelivered["events"], b3[0]["events"]);
    got.push(redelivered.clone());
    api.call(
        Method::POST,
        &ack_path,
        t,
        Some(json!({"ids": ids_of(&[redelivered])})),
    )
    .await;
    // The rest, pulled and acknowledged until the 60 events are in.
    let model: Vec<(u64, Value)> = events[..60]
        .iter()
        .zip(&seqs)
        .map(|(e, s)| {
            (
                *s,
                serde_json::from_slice(&fpaas_event::WireMessage::from_event(e).payload).unwrap(),
            )
        })
        .collect();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while pulled_events(&got).len() < model.len() {
        assert!(
            std::time::Instant::now() < until,
            "every event pulled in time"
        );
        let batches = pull(json!({"max_events": 10_000, "max_wait_ms": 500})).await;
        if !batches.is_empty() {
            let a = api
                .call(
                    Method::POST,
                    &ack_path,
                    t,
                    Some(json!({"ids": ids_of(&batches)})),
                )
                .await;
            assert_eq!(a.json["acked"].as_array().unwrap().len(), batches.len());
            got.extend(batches);
        }
    }
    // In stream order (the two concurrent pulls may have taken the first two batches either way round).
    let mut rest = got;
    rest.sort_by_key(|b| b["from_seq"].as_u64());
    assert_eq!(
        pulled_events(&rest),
        model,
        "the pulled events are the model"
    );
    let mut distinct = ids_of(&rest);
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), rest.len(), "each batch acknowledged once");

    // Long poll: a pull waiting for batches is woken by the next one stored.
    let started = std::time::Instant::now();
    let waiting = tokio::spawn({
        let (http, url, token) = (
            api.http.clone(),
            format!("{}{pull_path}", api.base),
            token.clone(),
        );
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"max_wait_ms": 20_000}))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late_seqs = publish_events(&api.client, &events[60..]).await;
    let woke = waiting.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );
    let late = woke["batches"].as_array().cloned().unwrap();
    assert_eq!(
        pulled_events(&late).first().map(|e| e.0),
        Some(late_seqs[0]),
        "{woke}"
    );
    let stats = eventually_some(Duration::from_secs(10), || async {
        let s = api
            .call(
                Method::GET,
                &format!("/v1/subscriptions/{id}/stats"),
                t,
                None,
            )
            .await
            .json;
        (s["stats"]["delivered_events"].as_u64() >= Some(61)).then_some(s)
    })
    .await
    .expect("stored batches count as delivered");
    assert!(
        stats["stats"]["failed_attempts"].as_u64() == Some(0),
        "{stats}"
    );

    // Deleting the subscription removes what waits and its lease record.
    let d = api
        .call(Method::DELETE, &format!("/v1/subscriptions/{id}"), t, None)
        .await;
    assert_eq!(d.status, 204);
    fpaas_testkit::eventually(Duration::from_secs(10), || async {
        log.count(&subject).await.unwrap_or(1) == 0
    })
    .await
    .expect("the pull subject is purged");
    let store = fpaas_bus::ensure_kv_on(
        &api.client,
        &fpaas_bus::KvSettings::bucket(layout::PULL_BUCKET),
    )
    .await
    .unwrap();
    assert_eq!(store.get(&layout::pull_key(&id)).await.unwrap(), None);
    cancel.cancel();
    let _ = worker.await;
}

/// The console's endpoints over real events: the playground validates like a subscription (a bad predicate or
/// transform is `422 bad_jmespath` with field and position), matches the recent events exactly as the filter
/// says and transforms them; the live tail streams the subscription's matches published after it opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_playground_runs_filters_on_recent_events_and_the_tail_streams_matches() {
    let api = Api::start().await;
    let (_, token) = api.tenant("console", json!({})).await;
    let t = Some(token.as_str());
    // No firehose stream yet: nothing to scan, not an error.
    let empty = api
        .call(Method::POST, "/v1/playground", t, Some(json!({})))
        .await;
    assert_eq!(empty.status, 200, "{}", empty.json);
    assert_eq!(empty.json["scanned"], 0);
    api.firehose().await;
    let events = corpus_events(300);
    let seqs = publish_events(&api.client, &events).await;
    let last = *seqs.iter().max().unwrap();

    for (body, field, position) in [
        (
            json!({"filter": {"predicate": "commit.record.text =="}}),
            "filter.predicate",
            true,
        ),
        (json!({"transform": "{a: }"}), "transform", true),
    ] {
        let a = api
            .call(Method::POST, "/v1/playground", t, Some(body))
            .await;
        assert_error(&a, 422, "bad_jmespath");
        assert_eq!(a.json["field"], field, "{}", a.json);
        assert_eq!(a.json["position"].is_u64(), position, "{}", a.json);
    }
    for (body, status, code) in [
        (json!({"limit": 501}), 422, "limit_exceeded"),
        (json!({"scan": 0}), 422, "limit_exceeded"),
        (json!({"source": {"topic": "nope"}}), 404, "not_found"),
        (
            json!({"filter": {"collections": ["nope"]}}),
            422,
            "bad_filter",
        ),
        (json!({"filters": {}}), 400, "unknown_field"),
    ] {
        let a = api
            .call(Method::POST, "/v1/playground", t, Some(body))
            .await;
        assert_error(&a, status, code);
    }

    // Likes of the last 200 events, transformed; the model: the same filter over the same events.
    let a = api
        .call(
            Method::POST,
            "/v1/playground",
            t,
            Some(json!({
                "filter": {"collections": ["app.bsky.feed.like"], "operations": ["create"]},
                "transform": "{did: did, uri: commit.record.subject.uri}",
                "scan": 200, "limit": 500,
            })),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    // The window: the stream's last 200 sequences (a repeated event id was stored once).
    let mut window: Vec<(u64, Value)> = seqs
        .iter()
        .zip(&events)
        .filter(|(seq, _)| **seq + 200 > last)
        .map(|(seq, e)| (*seq, serde_json::to_value(e).unwrap()))
        .collect();
    window.sort_by_key(|(seq, _)| *seq);
    window.dedup_by_key(|(seq, _)| *seq);
    let window: Vec<Value> = window.into_iter().map(|(_, e)| e).collect();
    let want: Vec<Value> = window
        .iter()
        // Collections and operations do not exclude events without them (identity, account), as in Jetstream.
        .filter(|e| {
            e["kind"] != "commit"
                || (e["commit"]["collection"] == "app.bsky.feed.like"
                    && e["commit"]["operation"] == "create")
        })
        .map(|e| json!({"did": e["did"], "uri": e["commit"]["record"]["subject"]["uri"]}))
        .collect();
    assert!(!want.is_empty());
    let got: Vec<Value> = a.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["output"].clone())
        .collect();
    assert_eq!(got.len(), want.len(), "{}", a.json["from_seq"]);
    assert!(got == want, "the transform's outputs, in order");
    assert_eq!(a.json["matched"], want.len());
    assert_eq!(a.json["scanned"], want.len(), "server-side subject filters");
    assert_eq!(a.json["truncated"], false);
    // A predicate only, with a small limit: the newest matches are kept.
    let a = api
        .call(
            Method::POST,
            "/v1/playground",
            t,
            Some(json!({"filter": {"predicate": "kind == 'commit'"}, "scan": 300, "limit": 3})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["scanned"], 300);
    let results = a.json["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2]["seq"], a.json["to_seq"]);

    // The live tail: a subscription of posts; events published after it opened arrive as matches.
    let sub = api
        .call(
            Method::POST,
            "/v1/subscriptions",
            t,
            Some(json!({
                "filter": {"collections": ["app.bsky.feed.post"]},
                "transform": "{did: did, text: commit.record.text}",
                "delivery": {"type": "pull"},
            })),
        )
        .await;
    assert_eq!(sub.status, 201, "{}", sub.json);
    let sub_id = sub.json["id"].as_str().unwrap();
    let mut resp = api
        .http
        .get(format!("{}/v1/subscriptions/{sub_id}/tail", api.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let more = corpus_events(400);
    let fresh = &more[300..];
    let want: Vec<Value> = fresh
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|e| e["kind"] != "commit" || e["commit"]["collection"] == "app.bsky.feed.post")
        .map(|e| json!({"did": e["did"], "text": e["commit"]["record"]["text"]}))
        .collect();
    assert!(!want.is_empty());
    // The reader opens with the first poll: publish until the first match shows up, then the rest.
    let mut buf = String::new();
    let mut got = Vec::new();
    let publisher = {
        let client = api.client.clone();
        let fresh = fresh.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            publish_events(&client, &fresh).await;
        })
    };
    while got.len() < want.len() {
        let (event, data) =
            tokio::time::timeout(Duration::from_secs(20), next_sse(&mut resp, &mut buf))
                .await
                .expect("a match within 20 s")
                .expect("the tail goes on");
        assert_eq!(event, "match", "{data}");
        let m: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(m["skipped"], 0);
        got.push(m["output"].clone());
    }
    publisher.await.unwrap();
    assert_eq!(got, want);
    // Another tenant's subscription: 404.
    let (_, other) = api.tenant("other", json!({})).await;
    let a = api
        .call(
            Method::GET,
            &format!("/v1/subscriptions/{sub_id}/tail"),
            Some(&other),
            None,
        )
        .await;
    assert_error(&a, 404, "not_found");
}
