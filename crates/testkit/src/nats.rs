//! Real `nats-server` processes for tests: a single JetStream server ([`NatsServer`]) and a
//! clustered one ([`NatsCluster`]), both restartable on the same ports and store directories so
//! outage tests can stop a server and bring it back.
//!
//! Every server binds to 127.0.0.1 only, gets its own client, monitor (and cluster) port and its own
//! JetStream store directory inside a temp dir. Processes are killed and temp dirs removed on drop.
//! Configuration goes through a generated config file (`server.conf` next to the store), which also
//! carries [`NatsServerOptions::max_payload`] (4 MiB by default: above the stream's default
//! `max_msg_size` of 1 MiB, so tests can raise that; `max_payload: None` is a default server, what
//! `fpaas dev` runs) and any extra config text.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::paths::nats_server_bin;
use crate::wait::{eventually, free_port, poll_blocking};

/// How long a started server may take to accept connections (and, single node, report healthy).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The `max_payload` of test servers unless overridden: large enough for the JSON of a max-size
/// (1,000,000 bytes of CBOR) record plus headers.
pub const TEST_MAX_PAYLOAD: u64 = 4 * 1024 * 1024;

/// JetStream `max_file_store` of test servers. Explicit, so that a stream's `max_bytes` reservation
/// (the shuffler's default is 32 GiB) never depends on the free disk of the machine running the tests:
/// unset, the server takes 75% of free disk and refuses to create such a stream on a small disk
/// (JetStream error 10047). Tests write far less than this.
pub const TEST_MAX_FILE_STORE: &str = "1TB";

/// Options of a test server.
#[derive(Debug, Clone)]
pub struct NatsServerOptions {
    /// `max_payload` in bytes; `None` keeps the server default (1 MiB).
    pub max_payload: Option<u64>,
    /// JetStream `max_file_store` (nats-server size syntax, e.g. `"64MB"`); default
    /// [`TEST_MAX_FILE_STORE`].
    pub max_file_store: String,
    /// Extra nats-server config text appended verbatim to the generated config file.
    pub extra_config: String,
    /// The `nats-server` binary; `None` finds it with [`nats_server_bin`] (env `FPAAS_NATS_SERVER`,
    /// `.tools/`, `PATH`). The benchmarks set it from their `--nats-server` flag.
    pub binary: Option<PathBuf>,
}

impl Default for NatsServerOptions {
    fn default() -> Self {
        Self {
            max_payload: Some(TEST_MAX_PAYLOAD),
            max_file_store: TEST_MAX_FILE_STORE.to_owned(),
            extra_config: String::new(),
            binary: None,
        }
    }
}

/// One nats-server process: its ports, config file and (while running) its child process.
#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    monitor_port: u16,
    dir: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(name: String, dir: PathBuf, options: &NatsServerOptions) -> Self {
        Self {
            name,
            port: free_port(),
            monitor_port: free_port(),
            dir,
            binary: options.binary.clone().unwrap_or_else(nats_server_bin),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.join("jetstream")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("server.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Writes the config file: identity, loopback ports, JetStream store, payload limit, extras.
    fn write_config(&self, options: &NatsServerOptions, cluster: Option<&str>) {
        let mut conf = String::new();
        let _ = writeln!(conf, "server_name: \"{}\"", self.name);
        let _ = writeln!(conf, "listen: \"127.0.0.1:{}\"", self.port);
        let _ = writeln!(conf, "http: \"127.0.0.1:{}\"", self.monitor_port);
        if let Some(max_payload) = options.max_payload {
            let _ = writeln!(conf, "max_payload: {max_payload}");
        }
        let _ = writeln!(
            conf,
            "jetstream {{\n  store_dir: \"{}\"\n  max_file_store: {}\n}}",
            self.store_dir().display(),
            options.max_file_store
        );
        if let Some(cluster) = cluster {
            conf.push_str(cluster);
            conf.push('\n');
        }
        conf.push_str(&options.extra_config);
        conf.push('\n');
        fs::create_dir_all(&self.dir).expect("create nats-server directory");
        fs::write(self.config_path(), conf).expect("write nats-server config");
    }

    /// Spawns the process (no-op when already running); output goes to `server.log`.
    fn spawn(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open nats-server log file");
        let log_err = log.try_clone().expect("clone nats-server log handle");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|err| panic!("spawn nats-server {}: {err}", self.name));
        self.child = Some(child);
    }

    /// Blocks until the client port accepts connections and the monitor answers `path` with 200.
    ///
    /// # Panics
    /// When the process exits or the deadline passes, with the tail of the server log.
    fn wait_up(&mut self, health_path: &str) {
        let ready = poll_blocking(START_TIMEOUT, || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server {} exited during start ({status}):\n{}",
                    self.name,
                    log_tail(&self.log_path())
                );
            }
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && http_ok(self.monitor_port, health_path)
        });
        assert!(
            ready,
            "nats-server {} not ready within {START_TIMEOUT:?}:\n{}",
            self.name,
            log_tail(&self.log_path())
        );
    }

    /// Graceful stop: SIGTERM (JetStream flushes its stores), SIGKILL after [`STOP_TIMEOUT`].
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let terminated = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .is_ok_and(|status| status.success());
        if !terminated || !poll_blocking(STOP_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_)))) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Crash stop: SIGKILL, no flush.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` on the monitor port answered `200`.
fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

fn log_tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A single nats-server with JetStream on 127.0.0.1, restartable on the same port and store.
///
/// ```ignore
/// let mut server = NatsServer::new();
/// let client = async_nats::connect(server.url()).await?;
/// server.stop();   // outage
/// server.start();  // same port, same JetStream store
/// ```
#[derive(Debug)]
pub struct NatsServer {
    node: Node,
    options: NatsServerOptions,
    // Declared last: removed after the process is killed.
    tmp: TempDir,
}

impl NatsServer {
    /// Starts a server with [`NatsServerOptions::default`] and waits until JetStream is healthy.
    ///
    /// # Panics
    /// When the binary is missing (install hint), or the server does not come up.
    pub fn new() -> Self {
        Self::with_options(NatsServerOptions::default())
    }

    /// Starts a server with the given options and waits until JetStream is healthy.
    pub fn with_options(options: NatsServerOptions) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("fpaas-nats-")
            .tempdir()
            .expect("create temp dir for nats-server");
        let mut node = Node::new(String::new(), tmp.path().to_path_buf(), &options);
        node.name = format!("fpaas-test-{}", node.port);
        node.write_config(&options, None);
        let mut server = Self { node, options, tmp };
        server.start();
        server
    }

    /// (Re)starts the process on the same port and store; no-op when running. Blocks until
    /// `/healthz` reports JetStream healthy.
    pub fn start(&mut self) {
        self.node.spawn();
        self.node.wait_up("/healthz");
    }

    /// Stops the process gracefully (SIGTERM); ports, config and JetStream store are kept.
    pub fn stop(&mut self) {
        self.node.stop();
    }

    /// Kills the process (SIGKILL, a crash); the store is kept.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Whether the process was started and not stopped.
    pub fn is_running(&self) -> bool {
        self.node.child.is_some()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// The HTTP monitoring port (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_port(&self) -> u16 {
        self.node.monitor_port
    }

    /// The JetStream store directory (kept across stop/start).
    pub fn store_dir(&self) -> PathBuf {
        self.node.store_dir()
    }

    /// The options the server was started with.
    pub fn options(&self) -> &NatsServerOptions {
        &self.options
    }

    /// The server's temp directory (config, log and JetStream store inside), removed on drop: room for
    /// a test's or bench's own scratch files that should go with the server.
    pub fn scratch_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The process id while running (the benchmarks read its memory from `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.node.child.as_ref().map(Child::id)
    }
}

impl Default for NatsServer {
    fn default() -> Self {
        Self::new()
    }
}

/// A nats-server cluster on 127.0.0.1 with JetStream: every node has its own client, cluster and
/// monitor port, server name (`n0`, `n1`, …) and store directory, and routes to all the others.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    _tmp: TempDir,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until each accepts client connections. Call
    /// [`wait_ready`](Self::wait_ready) before using JetStream (meta leader election).
    ///
    /// # Panics
    /// When `size` is 0, the binary is missing, or a node does not come up.
    pub fn start(size: usize) -> Self {
        Self::start_with_options(size, NatsServerOptions::default())
    }

    /// Like [`start`](Self::start) with options applied to every node.
    pub fn start_with_options(size: usize, options: NatsServerOptions) -> Self {
        assert!(size > 0, "a cluster needs at least one node");
        let tmp = tempfile::Builder::new()
            .prefix("fpaas-nats-cluster-")
            .tempdir()
            .expect("create temp dir for nats cluster");
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes: Vec<Node> = (0..size)
            .map(|i| Node::new(format!("n{i}"), tmp.path().join(format!("n{i}")), &options))
            .collect();
        for (i, node) in nodes.iter().enumerate() {
            let routes: Vec<String> = cluster_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                .collect();
            let cluster = format!(
                "cluster {{\n  name: \"fpaas-test\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}",
                cluster_ports[i],
                routes.join(", ")
            );
            node.write_config(&options, Some(&cluster));
        }
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_up("/healthz?js-enabled-only=true");
        }
        Self { nodes, _tmp: tmp }
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Client URLs of all nodes, in node order (`async_nats::connect(cluster.urls())` takes them).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.node(i).url()
    }

    /// Gracefully stops node `i` (store kept).
    pub fn stop_node(&mut self, i: usize) {
        self.node_mut(i).stop();
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill_node(&mut self, i: usize) {
        self.node_mut(i).kill();
    }

    /// Restarts node `i` on its ports and store; blocks until it accepts connections.
    pub fn start_node(&mut self, i: usize) {
        let node = self.node_mut(i);
        node.spawn();
        node.wait_up("/healthz?js-enabled-only=true");
    }

    /// Whether node `i` is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.node(i).child.is_some()
    }

    /// Waits (up to 30 s) until every running node answers a JetStream account info request,
    /// which needs an elected meta leader.
    ///
    /// # Panics
    /// On timeout, naming the node that did not become ready.
    pub async fn wait_ready(&self) {
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let url = node.url();
            let result = eventually(Duration::from_secs(30), || {
                let url = url.clone();
                async move { jetstream_ready(&url).await }
            })
            .await;
            if let Err(err) = result {
                panic!(
                    "cluster node {} ({url}) JetStream not ready: {err}",
                    node.name
                );
            }
        }
        // A meta leader alone is not enough: until it has heard from every peer, an R=n stream fails
        // with "no suitable peers for placement". Ready means an R=n probe stream can be placed.
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        if running == self.nodes.len() && running > 1 {
            let urls = self.urls();
            let result = eventually(Duration::from_secs(30), || {
                let urls = urls.clone();
                async move { replicated_stream_placeable(&urls, running).await }
            })
            .await;
            if let Err(err) = result {
                panic!("cluster cannot place an R{running} stream: {err}");
            }
        }
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("no node {i} in a {}-node cluster", self.nodes.len()))
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .unwrap_or_else(|| panic!("no node {i} in a {len}-node cluster"))
    }
}

/// Create and delete an R=`replicas` file stream; true when the placement succeeded.
async fn replicated_stream_placeable(urls: &[String], replicas: usize) -> bool {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(urls.first().map(String::as_str).unwrap_or_default());
    let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(3), connect).await else {
        return false;
    };
    let js = async_nats::jetstream::new(client.clone());
    let name = "TESTKIT_PLACEMENT_PROBE";
    let created = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: vec!["testkit.placement.probe".to_string()],
            num_replicas: replicas,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await;
    let created = created.is_ok();
    let deleted = created && js.delete_stream(name).await.is_ok();
    let _ = client.drain().await;
    deleted
}

/// One connection attempt plus `$JS.API.INFO`; true when JetStream answered successfully.
async fn jetstream_ready(url: &str) -> bool {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .request_timeout(Some(Duration::from_secs(1)))
        .connect(url);
    let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), connect).await else {
        return false;
    };
    let js = async_nats::jetstream::new(client.clone());
    let ok = js.query_account().await.is_ok();
    drop(js);
    let _ = client.drain().await;
    ok
}
