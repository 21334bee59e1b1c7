//! The subscription service end to end, every piece a real process: relay-sim (in process, a real WebSocket
//! relay) → `fpaas shuffler` → nats-server → `fpaas serve` (the API) and `fpaas worker` → receivers on
//! 127.0.0.1. The first test's receiver is the Python `standardwebhooks` library (an independent
//! implementation), which must verify every request; what arrives must be exactly what a model computes from
//! the stream's content. The second kills workers with SIGKILL and stops NATS during delivery: every matching
//! event still arrives, and every repeat carries the batch id of its first delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fpaas_sim::{Sim, SimConfig};
use fpaas_testkit::stream::{expected_len, read_stream, stream_len};
use fpaas_testkit::{NatsServer, Proc, WebhookReceiver, eventually, free_port};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret-for-tests";

fn fpaas(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fpaas"));
    c.args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

fn shuffler(nats: &str, relay: &str) -> Proc {
    Proc::spawn(&mut fpaas(&[
        "shuffler",
        "--relay",
        relay,
        "--instance",
        "e2e",
        "--nats-url",
        nats,
        "--metrics-listen",
        "none",
        "--start-cursor",
        "0",
        "--max-bytes",
        "268435456",
        "--backoff-min-ms",
        "20",
        "--backoff-max-ms",
        "300",
    ]))
}

fn worker(nats: &str, id: &str) -> Proc {
    Proc::spawn(&mut fpaas(&[
        "worker",
        "--nats-url",
        nats,
        "--worker-id",
        id,
        "--lease-ttl-secs",
        "2",
        "--allow-loopback",
        "--metrics-listen",
        "none",
    ]))
}

struct Api {
    _proc: Proc,
    url: String,
    http: reqwest::Client,
}

impl Api {
    async fn start(nats: &str) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let proc = Proc::spawn(
            fpaas(&[
                "serve",
                "--listen",
                &listen,
                "--nats-url",
                nats,
                "--metrics-listen",
                "none",
                "--allow-loopback",
            ])
            .env("FPAAS_ADMIN_TOKEN", ADMIN),
        );
        let api = Self {
            _proc: proc,
            url: format!("http://{listen}"),
            http: reqwest::Client::new(),
        };
        eventually(Duration::from_secs(30), || async {
            api.http
                .get(format!("{}/openapi.json", api.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await
        .expect("the API answers");
        api
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("API request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A new tenant's token.
    async fn tenant(&self, name: &str) -> String {
        let (status, body) = self
            .call("POST", "/v1/tenants", ADMIN, Some(json!({"name": name})))
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }
}

/// The Python `standardwebhooks` receiver: verifies every request with the library; its JSON lines.
struct PyReceiver {
    proc: Proc,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl PyReceiver {
    fn start() -> Self {
        let script = fpaas_testkit::workspace_root().join("scripts/py/standardwebhooks_peer.py");
        let mut proc = Proc::spawn(
            Command::new(fpaas_testkit::python())
                .arg(script)
                .args(["receive", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdout = proc.child_mut().stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        reader.read_line(&mut first).expect("listening line");
        let port: u16 = first
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("python receiver said {first:?}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Self { proc, port, lines }
    }

    fn set_secret(&mut self, secret: &str) {
        let stdin = self.proc.child_mut().stdin.as_mut().expect("stdin");
        writeln!(stdin, "{secret}").expect("secret to the receiver");
        stdin.flush().unwrap();
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }
}

/// Each event of each verified batch: (batch id, event).
fn events_of(bodies: impl IntoIterator<Item = (String, Value)>) -> Vec<(String, Value)> {
    bodies
        .into_iter()
        .flat_map(|(id, b)| {
            b["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |e| (id.clone(), e))
        })
        .collect()
}

fn like_creates(stored: &[fpaas_testkit::stream::Stored]) -> Vec<(u64, Value)> {
    stored
        .iter()
        .filter(|s| s.subject == "atproto.firehose.commit.create.app.bsky.feed.like")
        .map(|s| (s.seq, serde_json::from_slice(&s.payload).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_signed_batches_that_the_python_standardwebhooks_library_verifies() {
    const EVENTS: u64 = 1_500;
    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 91,
        rate: Some(600.0),
        limit: Some(EVENTS),
        ..Default::default()
    })
    .await
    .expect("sim");
    let _shuffler = shuffler(&nats.url(), &sim.url());
    let api = Api::start(&nats.url()).await;
    let _worker = worker(&nats.url(), "w_e2e");
    let token = api.tenant("e2e").await;
    let mut py = PyReceiver::start();
    let (status, sub) = api
        .call(
            "POST",
            "/v1/subscriptions",
            &token,
            Some(json!({
                "name": "likes to python",
                "filter": {"kinds": ["commit"], "collections": ["app.bsky.feed.like"], "operations": ["create"]},
                "transform": "{actor: did, subject: commit.record.subject.uri, rkey: commit.rkey}",
                "batching": {"max_events": 100, "max_wait_ms": 300},
                "start": {"at": "retention_start"},
                "delivery": {"type": "webhook", "url": format!("http://127.0.0.1:{}/hook", py.port)}
            })),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    py.set_secret(
        sub["secrets"][0]["secret"]
            .as_str()
            .expect("secret shown on create"),
    );
    let sub_id = sub["id"].as_str().unwrap().to_owned();

    // Everything the relay sends is in the stream; the model is computed from what is there.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    eventually(Duration::from_secs(60), || async {
        sim.produced() >= EVENTS
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .expect("the shuffler stored every event");
    let want: Vec<(u64, Value)> = like_creates(&read_stream(&js, "FIREHOSE").await)
        .into_iter()
        .map(|(seq, v)| {
            (
                seq,
                json!({"actor": v["did"], "subject": v["commit"]["record"]["subject"]["uri"], "rkey": v["commit"]["rkey"]}),
            )
        })
        .collect();
    assert!(want.len() > 100, "the model has {} likes", want.len());
    let delivered = || {
        let bodies = py.lines().into_iter().filter(|l| l["ok"] == true).map(|l| {
            let body: Value = serde_json::from_str(l["body"].as_str().unwrap()).unwrap();
            (l["id"].as_str().unwrap().to_owned(), body)
        });
        events_of(bodies)
    };
    let want_n = want.len();
    eventually(Duration::from_secs(60), || {
        let n = delivered().len();
        async move { n >= want_n }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {} delivered", delivered().len(), want.len()));

    // Every request verified by the independent library; batches within limits; ids as documented.
    let lines = py.lines();
    assert!(
        lines.iter().all(|l| l["ok"] == true),
        "a request failed verification: {:?}",
        lines.iter().find(|l| l["ok"] != true)
    );
    for l in &lines {
        let body: Value = serde_json::from_str(l["body"].as_str().unwrap()).unwrap();
        let n = body["events"].as_array().unwrap().len();
        assert!((1..=100).contains(&n), "batch of {n}");
        assert_eq!(body["batch_id"], l["id"]);
        assert_eq!(body["subscription_id"], sub_id.as_str());
    }
    // Exactly the model, in stream order, no repeats (nothing failed, so nothing was retried).
    let got: Vec<(u64, Value)> = delivered()
        .into_iter()
        .map(|(_, e)| (e["seq"].as_u64().unwrap(), e["data"].clone()))
        .collect();
    if got != want {
        let gs: BTreeSet<u64> = got.iter().map(|x| x.0).collect();
        let ws: BTreeSet<u64> = want.iter().map(|x| x.0).collect();
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "got {} want {}; extra {:?}; missing {:?}; first difference at {first:?}: {:?} vs {:?}",
            got.len(),
            want.len(),
            gs.difference(&ws).take(10).collect::<Vec<_>>(),
            ws.difference(&gs).take(10).collect::<Vec<_>>(),
            first.map(|i| &got[i]),
            first.map(|i| &want[i]),
        );
    }

    // The API reports it: stats and the tenant's usage.
    eventually(Duration::from_secs(10), || async {
        let (s, stats) = api
            .call(
                "GET",
                &format!("/v1/subscriptions/{sub_id}/stats"),
                &token,
                None,
            )
            .await;
        s == 200
            && stats
                .to_string()
                .contains(&format!("\"delivered_events\":{}", want.len()))
    })
    .await
    .expect("stats show every delivered event");
    let (s, usage) = api.call("GET", "/v1/usage", &token, None).await;
    assert_eq!(s, 200);
    assert_eq!(usage["delivered_events"], want.len(), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_workers_and_a_nats_outage_lose_nothing_and_repeats_keep_their_batch_ids() {
    const EVENTS: u64 = 3_000;
    let mut nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 92,
        rate: Some(300.0),
        limit: Some(EVENTS),
        ..Default::default()
    })
    .await
    .expect("sim");
    let url = nats.url();
    let _shuffler = shuffler(&url, &sim.url());
    let api = Api::start(&url).await;
    let mut w1 = worker(&url, "w_1");
    let _w2 = worker(&url, "w_2");
    let token = api.tenant("faults").await;
    let receiver = WebhookReceiver::start().await;
    // Slow answers keep batches in flight when the faults hit.
    receiver.respond_with(|_| fpaas_testkit::Reply::ok().delay(Duration::from_millis(60)));
    let mut subs = Vec::new();
    for (i, collections) in [
        vec!["app.bsky.feed.like"],
        vec!["app.bsky.feed.*"],
        vec!["app.bsky.graph.follow", "app.bsky.feed.post"],
    ]
    .into_iter()
    .enumerate()
    {
        let (status, sub) = api
            .call(
                "POST",
                "/v1/subscriptions",
                &token,
                Some(json!({
                    "filter": {"kinds": ["commit"], "collections": collections},
                    "batching": {"max_events": 20, "max_wait_ms": 100},
                    "start": {"at": "retention_start"},
                    "delivery": {"type": "webhook", "url": receiver.url(&format!("/s{i}"))}
                })),
            )
            .await;
        assert_eq!(status, 201, "{sub}");
        subs.push((format!("/s{i}"), sub));
    }
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let progress = |n: u64| {
        let js = js.clone();
        async move { stream_len(&js, "FIREHOSE").await.unwrap_or(0) >= n }
    };
    // kill -9 of one worker of two, mid-stream; it comes back.
    eventually(Duration::from_secs(60), || progress(EVENTS / 4))
        .await
        .expect("a quarter");
    tokio::task::block_in_place(|| w1.kill_9());
    eventually(Duration::from_secs(60), || progress(EVENTS / 2))
        .await
        .expect("half");
    let _w1b = worker(&url, "w_1b");
    // A NATS outage during delivery.
    tokio::task::block_in_place(|| nats.stop());
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| nats.start());
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    eventually(Duration::from_secs(90), || async {
        sim.produced() >= EVENTS
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .expect("every event stored");
    let stored = read_stream(&js, "FIREHOSE").await;
    let want_of = |collections: &[&str]| -> BTreeSet<u64> {
        stored
            .iter()
            .filter(|s| {
                let c = s.subject.splitn(5, '.').nth(4).unwrap_or("");
                s.subject.starts_with("atproto.firehose.commit.")
                    && collections.iter().any(|p| match p.strip_suffix(".*") {
                        Some(prefix) => c.starts_with(&format!("{prefix}.")),
                        None => c == *p,
                    })
            })
            .map(|s| s.seq)
            .collect()
    };
    let wants = [
        want_of(&["app.bsky.feed.like"]),
        want_of(&["app.bsky.feed.*"]),
        want_of(&["app.bsky.graph.follow", "app.bsky.feed.post"]),
    ];
    let per_path = || {
        let mut m: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for r in receiver.received() {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let id = r.header("webhook-id").unwrap().to_owned();
            m.entry(r.path.clone())
                .or_default()
                .extend(events_of([(id, body)]));
        }
        m
    };
    eventually(Duration::from_secs(90), || {
        let m = per_path();
        let done = subs.iter().zip(&wants).all(|((path, _), want)| {
            let got: BTreeSet<u64> = m
                .get(path)
                .map(|v| v.iter().map(|(_, e)| e["seq"].as_u64().unwrap()).collect())
                .unwrap_or_default();
            want.is_subset(&got)
        });
        async move { done }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "not everything arrived: {:?}",
            per_path()
                .iter()
                .map(|(k, v)| (k.clone(), v.len()))
                .collect::<Vec<_>>()
        )
    });
    let m = per_path();
    for ((path, _), want) in subs.iter().zip(&wants) {
        let events = &m[path];
        let got: BTreeSet<u64> = events
            .iter()
            .map(|(_, e)| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(&got, want, "{path}: exactly the matching events, none lost");
        let mut first: BTreeMap<String, String> = BTreeMap::new();
        for (batch, e) in events {
            let id = e["id"].as_str().unwrap().to_owned();
            let f = first.entry(id.clone()).or_insert_with(|| batch.clone());
            assert_eq!(
                f, batch,
                "{path}: event {id} repeated under another batch id"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_example_subscriptions_are_accepted_and_deliver() {
    const EVENTS: u64 = 1_500;
    let nats = NatsServer::new();
    let (sim, _) = Sim::start(SimConfig {
        seed: 93,
        rate: Some(1_000.0),
        limit: Some(EVENTS),
        ..Default::default()
    })
    .await
    .expect("sim");
    let _shuffler = shuffler(&nats.url(), &sim.url());
    let api = Api::start(&nats.url()).await;
    let _worker = worker(&nats.url(), "w_examples");
    let token = api.tenant("examples").await;
    let receiver = WebhookReceiver::start().await;
    let dir = fpaas_testkit::workspace_root().join("examples/subscriptions");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/subscriptions") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        spec["delivery"]["url"] = json!(receiver.url(&format!("/{name}")));
        spec["start"] = json!({"at": "retention_start"});
        let (status, body) = api
            .call("POST", "/v1/subscriptions", &token, Some(spec))
            .await;
        assert_eq!(status, 201, "{name}: {body}");
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["likes", "posts"]);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    eventually(Duration::from_secs(60), || async {
        sim.produced() >= EVENTS
            && stream_len(&js, "FIREHOSE").await == Some(expected_len(&sim.truth()))
    })
    .await
    .expect("the shuffler stored every event");
    let likes: Vec<u64> = like_creates(&read_stream(&js, "FIREHOSE").await)
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    let events_at = |path: &str| -> Vec<Value> {
        receiver
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .flat_map(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    };
    eventually(Duration::from_secs(60), || {
        let n = events_at("/likes").len();
        let want = likes.len();
        async move { n >= want }
    })
    .await
    .expect("the likes example delivers every like");
    let got: Vec<u64> = events_at("/likes")
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, likes);
    assert!(events_at("/likes").iter().all(|e| {
        e["data"]["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("at://"))
    }));
    // Whatever the posts example delivered obeys its filter and transform.
    for e in events_at("/posts") {
        let d = &e["data"];
        assert!(
            d["uri"].as_str().unwrap().contains("/app.bsky.feed.post/"),
            "{d}"
        );
        let langs: Vec<&str> = d["langs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l.as_str())
            .collect();
        assert!(langs.contains(&"en") || langs.contains(&"pt"), "{d}");
        let chars = d["text"].as_str().unwrap().chars().count();
        // text_length counts graphemes, never more than chars: at least 10 of them means at least 10 chars.
        assert!(chars >= 10, "{d}");
    }
}
