//! `fpaas bench record-kv`: starts a throwaway nats-server (JetStream in a temp dir, loopback only), publishes a
//! firehose-shaped mix, and reports records/s written by the record KV builder, likes/s indexed, like-index
//! queries/s, the initial-read time of the common watches under both key orders, and server memory per record
//! (while writing and at rest after a restart). The logic lives in `fpaas_recordkv::bench`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use fpaas_recordkv::bench::{BenchOptions, fill_bucket, run as run_bench};

use super::{Report, r2};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Events published and applied by the builder (firehose mix: 69% likes).
    #[arg(long, default_value_t = 50_000)]
    records: usize,
    /// Like-index queries per query kind.
    #[arg(long, default_value_t = 1_000)]
    queries: usize,
    /// Keys per key-order layout.
    #[arg(long, default_value_t = 100_000)]
    layout_keys: usize,
    /// Records written for the memory-per-record measurement (0 skips it).
    #[arg(long, default_value_t = 200_000)]
    mem_records: usize,
    /// nats-server binary (default .tools/venv/bin/nats-server, else PATH).
    #[arg(long, env = "FPAAS_NATS_SERVER")]
    nats_server: Option<PathBuf>,
}

/// A nats-server child process with its own store; killed and removed on drop.
struct Server {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    monitor: u16,
    child: Option<Child>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    fn start(bin: PathBuf) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("fpaas-bench-rkv-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            bin,
            dir,
            port: free_port()?,
            monitor: free_port()?,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run `bash scripts/setup-tools.sh`)",
                    self.bin.display()
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.rss().is_none() {
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        self.spawn()
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Resident memory from `/varz`.
    fn rss(&self) -> Option<u64> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.monitor)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        let json: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1)?).ok()?;
        json["mem"].as_u64()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server_bin(flag: &Option<PathBuf>) -> PathBuf {
    if let Some(path) = flag {
        return path.clone();
    }
    let local = PathBuf::from(".tools/venv/bin/nats-server");
    if local.is_file() {
        local
    } else {
        PathBuf::from("nats-server")
    }
}

pub async fn run(a: Args) -> anyhow::Result<Report> {
    let mut report = Report::new("record-kv");
    let bin = server_bin(&a.nats_server);
    {
        let server = Server::start(bin.clone())?;
        let client = async_nats::connect(server.url()).await?;
        let options = BenchOptions {
            records: a.records,
            queries: a.queries,
            layout_keys: a.layout_keys,
            ..Default::default()
        };
        let figures = run_bench(&client, &options).await?;
        for (key, value) in figures.figures {
            report.add(&key, r2(value));
        }
    }
    if a.mem_records > 0 {
        // A fresh server: restart it empty, fill a bucket, read RSS, restart, read RSS again.
        let mut server = Server::start(bin)?;
        let client = async_nats::connect(server.url()).await?;
        fill_bucket(&client, "empty", 1, 450).await?;
        drop(client);
        server.restart()?;
        let empty = server.rss().unwrap_or(0);
        let client = async_nats::connect(server.url()).await?;
        fill_bucket(&client, "mem", a.mem_records, 450).await?;
        let writing = server.rss().unwrap_or(0);
        drop(client);
        server.restart()?;
        let rest = server.rss().unwrap_or(0);
        let per = |rss: u64| r2(rss.saturating_sub(empty) as f64 / a.mem_records as f64);
        report.add("mem_records", a.mem_records as u64);
        report.add("server_rss_bytes_per_record_while_writing", per(writing));
        report.add("server_rss_bytes_per_record_at_rest", per(rest));
        report.add("server_rss_mb_per_million_records_at_rest", per(rest));
    }
    Ok(report)
}
