//! The shipped monitoring files against the real tools: Debian's `promtool` checks `deploy/prometheus`'s
//! configuration and rules and runs the alert unit tests; the Grafana dashboards are provisionable JSON whose
//! panels query the provisioned datasource (`metrics_docs` checks that every metric they query is exported);
//! and a real Prometheus scrapes a running `fpaas` process, whose metrics then answer in Prometheus's query API.
//! The tools come from `scripts/setup-tools.sh` (Debian's `prometheus` package, unpacked into `.tools/`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fpaas_testkit::{Proc, eventually_some, free_port, workspace_root};

fn tool(name: &str) -> PathBuf {
    let path = workspace_root()
        .join(".tools/prometheus/usr/bin")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `bash scripts/setup-tools.sh` (the test command does)",
        path.display()
    );
    path
}

fn promtool(args: &[&str], dir: &std::path::Path) {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_config_and_rules_and_the_alert_tests_pass() {
    let dir = workspace_root().join("deploy/prometheus");
    promtool(&["check", "config", "prometheus.yml"], &dir);
    promtool(&["check", "rules", "alerts.yml"], &dir);
    promtool(&["test", "rules", "alerts_test.yml"], &dir);
    // The check can fail: a broken rule file is refused.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("bad.yml"),
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(\n",
    )
    .unwrap();
    let out = Command::new(tool("promtool"))
        .args(["check", "rules", "bad.yml"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "promtool refuses a broken rule");
}

#[test]
fn dashboards_are_provisionable_and_query_the_provisioned_datasource() {
    let root = workspace_root().join("deploy/grafana");
    let datasources =
        std::fs::read_to_string(root.join("provisioning/datasources/prometheus.yml")).unwrap();
    assert!(datasources.contains("uid: prometheus"), "{datasources}");
    let mut uids = std::collections::BTreeSet::new();
    let mut panels_seen = 0;
    for entry in std::fs::read_dir(root.join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let uid = dash["uid"].as_str().expect("uid").to_owned();
        assert!(uids.insert(uid.clone()), "duplicate uid {uid}");
        assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(dash["schemaVersion"].as_u64().is_some());
        let mut ids = std::collections::BTreeSet::new();
        for panel in dash["panels"].as_array().expect("panels") {
            panels_seen += 1;
            assert!(
                ids.insert(panel["id"].as_u64().expect("panel id")),
                "{uid}: duplicate panel id"
            );
            assert!(panel["gridPos"]["w"].as_u64().is_some(), "{uid}: gridPos");
            assert_eq!(
                panel["datasource"]["uid"], "prometheus",
                "{uid}: {}",
                panel["title"]
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty(),
                "{uid}: {} has no query",
                panel["title"]
            );
            for t in targets {
                assert!(
                    t["refId"].as_str().is_some()
                        && t["expr"].as_str().is_some_and(|e| !e.is_empty())
                );
            }
        }
    }
    assert!(uids.contains("fpaas"), "{uids:?}");
    assert!(panels_seen >= 10, "{panels_seen}");
}

/// Grafana's URL slug of a title (lowercase, runs of other characters as one `-`).
fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

#[test]
fn the_nats_dashboards_are_at_the_seeds_addresses_and_use_the_exporters_names() {
    let ops = std::fs::read_to_string(workspace_root().join("docs/operations.md")).unwrap();
    // The exporter metrics documented in docs/operations.md (from the exporter's sources).
    let documented: std::collections::BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("gnatsd_") || n.starts_with("jetstream_"))
        .map(str::to_owned)
        .collect();
    assert!(documented.len() >= 15, "{documented:?}");
    let mut addresses = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for file in ["nats-server.json", "nats-jetstream.json"] {
        let path = workspace_root()
            .join("deploy/grafana/dashboards")
            .join(file);
        let dash: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        addresses.push(format!(
            "/d/{}/{}",
            dash["uid"].as_str().unwrap(),
            slug(dash["title"].as_str().unwrap())
        ));
        for panel in dash["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let names: Vec<String> = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("gnatsd_") || w.starts_with("jetstream_"))
                    .map(str::to_owned)
                    .collect();
                assert!(
                    !names.is_empty(),
                    "{file}: {expr} queries no exporter metric"
                );
                used.extend(names);
            }
        }
    }
    assert_eq!(
        addresses,
        [
            "/d/nats-server/nats-server-dashboard",
            "/d/nats-jetstream/nats-jetstream-dashboard"
        ]
    );
    let unknown: Vec<_> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "not exporter metrics (docs/operations.md): {unknown:?}"
    );
    for needed in [
        "gnatsd_varz_cpu",
        "gnatsd_varz_slow_consumers",
        "jetstream_server_total_streams",
    ] {
        assert!(used.contains(needed), "{needed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_running_fpaas_and_answers_queries_on_its_metrics() {
    let ops = format!("127.0.0.1:{}", free_port());
    let relay = format!("127.0.0.1:{}", free_port());
    let _sim = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_fpaas"))
            .args([
                "relay-sim",
                "--listen",
                &relay,
                "--rate",
                "200",
                "--metrics-listen",
                &ops,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    );
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fpaas-relay-sim\n    static_configs:\n      - targets: [\"{ops}\"]\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = Proc::spawn(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let http = reqwest::Client::new();
    let query = |q: &'static str| {
        let (http, web) = (http.clone(), web.clone());
        async move {
            let encoded: String = q
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b == b'_' {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let v: serde_json::Value = http
                .get(format!("http://{web}/api/v1/query?query={encoded}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let result = v["data"]["result"].as_array()?.first()?.clone();
            result["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
                .map(|x| (x, result))
        }
    };
    let (generated, series) = eventually_some(Duration::from_secs(60), || async {
        query("fpaas_sim_events_generated_total")
            .await
            .filter(|(x, _)| *x > 0.0)
    })
    .await
    .expect("Prometheus scraped fpaas_sim_events_generated_total");
    assert_eq!(series["metric"]["job"], "fpaas-relay-sim", "{series}");
    assert!(generated > 0.0);
    // The target is up, and a rate over the scraped counter answers.
    let (up, _) = eventually_some(Duration::from_secs(30), || async {
        query("up{job=\"fpaas-relay-sim\"}").await
    })
    .await
    .expect("up");
    assert_eq!(up, 1.0);
    let (rate, _) = eventually_some(Duration::from_secs(30), || async {
        query("rate(fpaas_sim_events_generated_total[10s])")
            .await
            .filter(|(x, _)| *x > 0.0)
    })
    .await
    .expect("a rate over the scraped counter");
    assert!(rate > 10.0 && rate < 2_000.0, "relay-sim at 200/s: {rate}");
}
