//! How every long-running command runs (`crates/fpaas/src/cmd/service.rs`, `fpaas_ops::config`), through the
//! real binary: configuration layered defaults → file (JSON or TOML) → `FPAAS_*` environment → flags, shown by
//! `--print-config`; `/ready` of a running `record-kv` follows the real NATS connection (false while nats-server
//! is down, true again after it is back). (A one-shot query printing nothing but its answer: `cli_record_kv`.)

use std::process::{Command, Stdio};
use std::time::Duration;

use fpaas_testkit::{NatsServer, eventually, free_port, workspace_root};

fn fpaas() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fpaas"));
    c.current_dir(workspace_root())
        .env_remove("RUST_LOG")
        .env_remove("FPAAS_NATS_URL")
        .env_remove("FPAAS_METRICS_LISTEN");
    c
}

fn print_config(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.arg("--print-config").output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("config JSON")
}

#[test]
fn configuration_is_defaults_then_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml_file = dir.path().join("shuffler.toml");
    std::fs::write(
        &toml_file,
        "max_acks_in_flight = 64\ninstance = \"from-file\"\n[stream]\nmax_age_secs = 7200\n",
    )
    .expect("write");
    let file = toml_file.to_str().expect("utf-8");

    let defaults = print_config(fpaas().arg("shuffler"));
    assert_eq!(defaults["max_acks_in_flight"], 1024);
    let from_file = print_config(fpaas().args(["shuffler", "--config", file]));
    assert_eq!(from_file["max_acks_in_flight"], 64);
    assert_eq!(from_file["stream"]["max_age_secs"], 7200);
    assert_eq!(from_file["instance"], "from-file");
    let from_env = print_config(
        fpaas()
            .args(["shuffler", "--config", file])
            .env("FPAAS_MAX_ACKS_IN_FLIGHT", "32")
            .env("FPAAS_STREAM_MAX_AGE_SECS", "3600")
            .env("FPAAS_CURSOR_KV_REPLICAS", "3"),
    );
    assert_eq!(from_env["max_acks_in_flight"], 32, "environment over file");
    assert_eq!(
        from_env["stream"]["max_age_secs"], 3600,
        "nested fields too"
    );
    assert_eq!(from_env["cursor_kv"]["replicas"], 3);
    assert_eq!(from_env["instance"], "from-file");
    let from_flag = print_config(
        fpaas()
            .args(["shuffler", "--config", file, "--max-acks-in-flight", "16"])
            .env("FPAAS_MAX_ACKS_IN_FLIGHT", "32"),
    );
    assert_eq!(
        from_flag["max_acks_in_flight"], 16,
        "flags over environment"
    );

    // The same for the record-KV builder, with a JSON file.
    let json_file = dir.path().join("record-kv.json");
    std::fs::write(&json_file, r#"{"batch_size": 50}"#).expect("write");
    let rkv = print_config(
        fpaas()
            .args(["record-kv", "--config", json_file.to_str().expect("utf-8")])
            .env("FPAAS_CONCURRENCY", "8")
            .env("FPAAS_COLLECTIONS", "app.bsky.feed.like,app.bsky.graph.*"),
    );
    assert_eq!(rkv["batch_size"], 50);
    assert_eq!(rkv["concurrency"], 8);
    assert_eq!(
        rkv["collections"],
        serde_json::json!(["app.bsky.feed.like", "app.bsky.graph.*"])
    );

    // A bad value names its variable; an unknown field in a file is refused.
    let out = fpaas()
        .args(["shuffler", "--print-config"])
        .env("FPAAS_MAX_ACKS_IN_FLIGHT", "lots")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FPAAS_MAX_ACKS_IN_FLIGHT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&toml_file, "max_acks_in_fligth = 64\n").expect("write");
    let out = fpaas()
        .args(["shuffler", "--print-config", "--config", file])
        .output()
        .expect("run");
    assert!(!out.status.success(), "unknown field refused");
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn ready(ops: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://{ops}/ready")).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_kv_readiness_follows_the_nats_connection() {
    let mut nats = NatsServer::new();
    let client = fpaas_bus::connect(&nats.url(), "test")
        .await
        .expect("connect");
    let js = fpaas_bus::jetstream(client.clone(), 64);
    fpaas_bus::ensure_stream(&js, &fpaas_bus::StreamSettings::default())
        .await
        .expect("stream");
    let ops = format!("127.0.0.1:{}", free_port());
    let _proc = Child(
        fpaas()
            .args([
                "record-kv",
                "--nats-url",
                &nats.url(),
                "--metrics-listen",
                &ops,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn record-kv"),
    );
    eventually(Duration::from_secs(20), || async {
        ready(&ops).await.is_some_and(|(s, _)| s == 200)
    })
    .await
    .expect("ready with NATS up");
    tokio::task::block_in_place(|| nats.stop());
    eventually(Duration::from_secs(20), || async {
        ready(&ops)
            .await
            .is_some_and(|(s, body)| s == 503 && body.contains("nats"))
    })
    .await
    .expect("not ready while NATS is down");
    tokio::task::block_in_place(|| nats.start());
    eventually(Duration::from_secs(30), || async {
        ready(&ops).await.is_some_and(|(s, _)| s == 200)
    })
    .await
    .expect("ready again after NATS is back");
}
