//! `docs/metrics.md` lists exactly the metrics the processes export: this test runs relay-sim, the shuffler,
//! record-kv, like-indexer, the API and a subscription worker as real processes against a real nats-server (with a NATS outage in the middle,
//! so failure paths report too), scrapes each `/metrics`, and compares the names with the documented ones in
//! both directions. It also checks the naming convention of `docs/metrics.md` on every exported name, and that
//! every metric the shipped Grafana dashboards and Prometheus alert rules (`deploy/`) query is exported.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use fpaas_testkit::{NatsServer, eventually, eventually_some, free_port, workspace_root};

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Child {
    Child(
        Command::new(env!("CARGO_BIN_EXE_fpaas"))
            .args(args)
            .current_dir(workspace_root())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fpaas"),
    )
}

async fn page(ops: &str) -> Option<String> {
    let resp = reqwest::get(format!("http://{ops}/metrics")).await.ok()?;
    resp.status().is_success().then_some(())?;
    resp.text().await.ok()
}

/// Metric names on a page (histogram series folded into their metric).
fn names(page: &str) -> BTreeSet<String> {
    fpaas_ops::prom::samples(page)
        .map(|s| {
            let n = s.name;
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| n.strip_suffix(suffix))
                .unwrap_or(n)
                .to_owned()
        })
        .collect()
}

/// The `fpaas_*` metric names the shipped Grafana dashboards' queries and Prometheus alert rules use
/// (histogram suffixes folded into their metric).
fn shipped_queries() -> BTreeSet<String> {
    let root = workspace_root().join("deploy");
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(root.join("grafana/dashboards")).expect("dashboards") {
        let path = entry.expect("entry").path();
        let dash: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("dashboard JSON");
        for panel in dash["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                texts.push(target["expr"].as_str().expect("expr").to_owned());
            }
        }
    }
    texts.push(std::fs::read_to_string(root.join("prometheus/alerts.yml")).expect("alerts"));
    let mut out = BTreeSet::new();
    for text in texts {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("fpaas_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name)
                .to_owned();
            out.insert(name);
        }
    }
    out
}

fn documented() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(workspace_root().join("docs/metrics.md")).expect("docs/metrics.md");
    text.lines()
        .filter_map(|l| l.strip_prefix("| `fpaas_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("fpaas_{n}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_and_every_exported_one_is_documented() {
    let mut nats = NatsServer::new();
    let url = nats.url();
    let sim_ws = format!("127.0.0.1:{}", free_port());
    let ops: Vec<String> = (0..6)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let _sim = spawn(&[
        "relay-sim",
        "--listen",
        &sim_ws,
        "--rate",
        "500",
        "--limit",
        "3000",
        "--repos",
        "50",
        "--inject-malformed-every",
        "97",
        "--inject-unknown-every",
        "89",
        "--metrics-listen",
        &ops[0],
    ]);
    let relay = format!("ws://{sim_ws}");
    let _shuffler = spawn(&[
        "shuffler",
        "--relay",
        &relay,
        "--nats-url",
        &url,
        "--instance",
        "m",
        "--metrics-listen",
        &ops[1],
        "--start-cursor",
        "0",
        "--max-bytes",
        "268435456",
        "--backoff-min-ms",
        "20",
        "--backoff-max-ms",
        "200",
    ]);
    let client = fpaas_bus::connect(&url, "metrics-test")
        .await
        .expect("connect");
    let js = fpaas_bus::jetstream(client.clone(), 64);
    eventually(Duration::from_secs(30), || async {
        js.get_stream("FIREHOSE").await.is_ok()
    })
    .await
    .expect("the shuffler created the stream");
    let _record_kv = spawn(&["record-kv", "--nats-url", &url, "--metrics-listen", &ops[2]]);
    eventually(Duration::from_secs(30), || async {
        page(&ops[2])
            .await
            .is_some_and(|p| p.contains("fpaas_recordkv_changes_total"))
    })
    .await
    .expect("record-kv is writing");
    let _likes = spawn(&[
        "like-indexer",
        "--nats-url",
        &url,
        "--metrics-listen",
        &ops[3],
    ]);
    eventually(Duration::from_secs(30), || async {
        page(&ops[3])
            .await
            .is_some_and(|p| p.contains("fpaas_likeindex_likes_indexed_total"))
    })
    .await
    .expect("like-indexer is indexing");
    // The subscription service: the API and a worker, one subscription delivering, one failing into the dead
    // letters, and a tenant whose delivery-rate quota makes batches wait.
    let api_listen = format!("127.0.0.1:{}", free_port());
    let _serve = Child(
        Command::new(env!("CARGO_BIN_EXE_fpaas"))
            .args([
                "serve",
                "--listen",
                &api_listen,
                "--nats-url",
                &url,
                "--metrics-listen",
                &ops[4],
                "--allow-loopback",
            ])
            .env("FPAAS_ADMIN_TOKEN", "metrics-admin-token-123")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fpaas serve"),
    );
    let _worker = spawn(&[
        "worker",
        "--nats-url",
        &url,
        "--allow-loopback",
        "--lease-ttl-secs",
        "2",
        "--metrics-listen",
        &ops[5],
    ]);
    let receiver = fpaas_testkit::WebhookReceiver::start().await;
    receiver.respond_with(|r| {
        if r.path == "/fail" {
            fpaas_testkit::Reply::status(500)
        } else {
            fpaas_testkit::Reply::ok()
        }
    });
    let http = reqwest::Client::new();
    let api = format!("http://{api_listen}");
    let tenant: serde_json::Value = eventually_some(Duration::from_secs(30), || async {
        let r = http
            .post(format!("{api}/v1/tenants"))
            .bearer_auth("metrics-admin-token-123")
            .json(&serde_json::json!({"name": "m", "quotas": {"max_delivery_events_per_s": 5}}))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())?;
        r.json().await.ok()
    })
    .await
    .expect("tenant created");
    let token = tenant["token"].as_str().expect("token").to_owned();
    for path in ["/ok", "/fail"] {
        let status = http
            .post(format!("{api}/v1/subscriptions"))
            .bearer_auth(&token)
            .json(&serde_json::json!({
                "filter": {"collections": ["app.bsky.feed.like"]},
                "batching": {"max_events": 20, "max_wait_ms": 100},
                "start": {"at": "retention_start"},
                "delivery": {"type": "webhook", "url": receiver.url(path), "timeout_ms": 1000,
                             "retry": {"schedule_ms": [10, 10]}}
            }))
            .send()
            .await
            .expect("create subscription")
            .status();
        assert_eq!(status.as_u16(), 201);
    }
    // A NATS outage while the relay keeps sending: publish failures, reconnects, connection events.
    tokio::task::block_in_place(|| nats.stop());
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| nats.start());
    eventually(Duration::from_secs(30), || async {
        page(&ops[1]).await.is_some_and(|p| {
            fpaas_testkit::prom_value(&p, "fpaas_shuffler_nats_outages_total", "") >= 1.0
        })
    })
    .await
    .expect("the shuffler recovered from the outage");

    let docs = documented();
    assert!(docs.len() >= 40, "{docs:?}");
    // Event-driven series appear when their first event happens: scrape until every documented one is there
    // (or time runs out and the assertions below name the missing ones).
    let scrape = || async {
        let mut exported = BTreeSet::new();
        for o in &ops {
            if let Some(p) = page(o).await {
                exported.extend(names(&p));
            }
        }
        exported
    };
    let _ = eventually(Duration::from_secs(30), || async {
        docs.is_subset(&scrape().await)
    })
    .await;
    let exported = scrape().await;
    let undocumented: Vec<_> = exported.difference(&docs).collect();
    let missing: Vec<_> = docs.difference(&exported).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "in docs/metrics.md but not exported: {missing:?}"
    );
    // Every FPaaS metric a shipped dashboard panel or alert rule queries is exported by a running process.
    let queried = shipped_queries();
    assert!(queried.len() >= 15, "{queried:?}");
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "deploy/ dashboards or alerts query metrics no process exports: {unknown:?}"
    );
    // The convention: a subsystem prefix, counters end in _total, no unit other than seconds and bytes.
    let subsystems = [
        "shuffler",
        "bus",
        "recordkv",
        "likeindex",
        "sim",
        "ops",
        "pipeline",
        "subscribe",
        "api",
    ];
    for name in &exported {
        let rest = name.strip_prefix("fpaas_").expect("fpaas_ prefix");
        assert!(
            subsystems
                .iter()
                .any(|s| rest.starts_with(&format!("{s}_"))),
            "{name}: subsystem"
        );
        for bad in ["_ms", "_millis", "_kb", "_mb", "_dropped", "_drop_"] {
            assert!(!name.contains(bad), "{name}: unit or drop naming");
        }
    }
}
