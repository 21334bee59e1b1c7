//! `fpaas dev` — what the README's run command (`scripts/dev.sh`) starts — as a process, on one nats-server and
//! with `--cluster` on three nodes in one JetStream cluster: the ops server turns ready, the shuffler fills the
//! stream (at R=3 on the cluster, every node current), the demo subscription's batches of likes reach a
//! receiver signed with the secret `dev` saved in `demo.json`, and SIGTERM stops the stack with its nats-server
//! children (their ports free again, no process left holding the state directory).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fpaas_testkit::stream::stream_info;
use fpaas_testkit::{
    Proc, WebhookReceiver, eventually, eventually_some, free_port_block, nats_server_bin,
    workspace_root,
};
use serde_json::Value;

/// `fpaas dev` and its state directory; dropping it stops the stack with SIGTERM and then makes sure that no
/// process started with that directory in its arguments (a nats-server child) outlives the test.
pub(crate) struct Dev {
    pub(crate) proc: Proc,
    pub(crate) dir: tempfile::TempDir,
}

impl Dev {
    /// Starts `fpaas dev` on the port block at `base` (11 ports: NATS client, monitoring and route ports, three
    /// each, then the ops server at `base + 9` and the API at `base + 10`), with the demo subscription delivering
    /// to `receiver` and `extra` flags (e.g. relay-sim's `--rate`, `--limit`).
    pub(crate) fn spawn(base: u16, receiver: &str, cluster: bool, extra: &[&str]) -> Dev {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let out = std::fs::File::create(dir.path().join("dev.out")).expect("stdout file");
        let err = std::fs::File::create(dir.path().join("dev.err")).expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fpaas"));
        cmd.current_dir(workspace_root())
            .env("FPAAS_NATS_SERVER", nats_server_bin())
            .env("RUST_LOG", "info")
            .arg("dev")
            .arg("--nats-port")
            .arg(base.to_string())
            .arg("--nats-monitor-port")
            .arg((base + 3).to_string())
            .arg("--cluster-port")
            .arg((base + 6).to_string())
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", base + 9))
            .arg("--api-listen")
            .arg(format!("127.0.0.1:{}", base + 10))
            .arg("--demo-receiver")
            .arg(receiver)
            .arg("--state-dir")
            .arg(&state)
            // Small enough that three nodes reserve it on any test machine's disk.
            .args(["--stream-max-bytes", "268435456"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if cluster {
            cmd.arg("--cluster");
        }
        if !extra.contains(&"--listen") {
            // relay-sim on any free port
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        Dev {
            proc: Proc::spawn(&mut cmd),
            dir,
        }
    }

    /// The stack's state directory.
    pub(crate) fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// Waits (up to 90 s) until the ops server at `base + 9` answers `/ready`.
    pub(crate) async fn wait_ready(&self, base: u16) {
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{}/ready", base + 9);
        eventually(Duration::from_secs(90), || async {
            http.get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await
        .unwrap_or_else(|e| panic!("/ready: {e}\n{}", self.log()));
    }

    pub(crate) fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{}", read("dev.out"), read("dev.err"))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.proc.terminate(Duration::from_secs(20));
        for pid in processes_mentioning(self.dir.path()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Pids of running processes whose command line contains `path`.
fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
        .collect()
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

async fn dev_stack(cluster: bool) {
    let nodes: u16 = if cluster { 3 } else { 1 };
    // One block: client ports, monitoring ports, route ports (three each), the ops server, the API.
    let base = free_port_block(11);
    let receiver = WebhookReceiver::start().await;
    let dev = Dev::spawn(base, &receiver.addr().to_string(), cluster, &[]);
    let state = dev.state();
    dev.wait_ready(base).await;

    // The stream fills, replicated on every node.
    let urls: Vec<String> = (0..nodes)
        .map(|i| format!("nats://127.0.0.1:{}", base + i))
        .collect();
    let client = fpaas_bus::connect(&urls.join(","), "cli-dev-test")
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);
    let info = eventually_some(Duration::from_secs(60), || async {
        stream_info(&js, "FIREHOSE").await.filter(|i| {
            i.state.messages > 0
                && i.cluster.as_ref().is_none_or(|c| {
                    c.replicas.len() + 1 == usize::from(nodes)
                        && c.replicas.iter().all(|r| r.current && !r.offline)
                })
        })
    })
    .await
    .unwrap_or_else(|e| panic!("stream filled on {nodes} node(s): {e}\n{}", dev.log()));
    assert_eq!(info.config.num_replicas, usize::from(nodes));
    if cluster {
        let c = info.cluster.as_ref().expect("cluster info");
        assert!(c.leader.is_some(), "a leader: {c:?}");
    }

    // The demo subscription's batches arrive, signed with the secret saved in demo.json.
    let got = receiver
        .wait_for(1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|_| panic!("no demo batch within 60 s\n{}", dev.log()));
    let demo: Value =
        serde_json::from_slice(&std::fs::read(state.join("demo.json")).expect("demo.json written"))
            .expect("demo.json");
    let secret = fpaas_webhook::Secret::parse(demo["secret"].as_str().expect("secret"))
        .expect("a valid secret");
    let batch = &got[0];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    fpaas_webhook::sign::verify(
        batch.header("webhook-id").unwrap_or_default(),
        batch.header("webhook-timestamp").unwrap_or_default(),
        batch.header("webhook-signature").unwrap_or_default(),
        &batch.body,
        &[secret],
        now,
        Duration::from_secs(300),
    )
    .expect("the batch verifies under the demo secret");
    let body: Value = serde_json::from_slice(&batch.body).expect("batch JSON");
    let events = body["events"].as_array().expect("events");
    assert!(!events.is_empty());
    for e in events {
        assert_eq!(
            e["data"]["commit"]["collection"], "app.bsky.feed.like",
            "{e}"
        );
        assert_eq!(e["data"]["commit"]["operation"], "create", "{e}");
    }

    // SIGTERM: the stack stops cleanly, nats-server children included.
    let mut dev = dev;
    let code = dev.proc.terminate(Duration::from_secs(40));
    assert_eq!(code, Some(Some(0)), "exit after SIGTERM\n{}", dev.log());
    let client_ports: Vec<u16> = (0..nodes).map(|i| base + i).collect();
    eventually(Duration::from_secs(10), || async {
        client_ports.iter().all(|p| port_free(*p))
            && processes_mentioning(dev.dir.path()).is_empty()
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "nats-server children outlived dev: {e}; pids {:?}",
            processes_mentioning(dev.dir.path())
        )
    });
    for i in 0..nodes {
        let name = if cluster {
            format!("nats-n{i}.log")
        } else {
            "nats.log".to_owned()
        };
        let log = std::fs::read_to_string(state.join(&name)).unwrap_or_default();
        assert!(log.contains("Server is ready"), "{name}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_stack_on_one_nats_server() {
    dev_stack(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_runs_the_stack_on_three_nodes_at_r3() {
    dev_stack(true).await;
}
