//! The `fpaas` binary: parses the command line, sets up logging and TLS, and hands each subcommand to its module
//! in [`cmd`] (benchmarks: to `fpaas_bench`). Logic worth testing lives in the library crates; this crate only
//! wires it.

mod cmd;

/// mimalloc instead of glibc malloc: the shuffler allocates a few small buffers per event (JSON, subject, id,
/// headers) and glibc malloc/free was the largest item in its profile (`fpaas bench ingest`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};

/// FPaaS — Firehose Processor-as-a-Service.
#[derive(Parser, Debug)]
#[command(name = "fpaas", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FPAAS_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a local relay simulator serving com.atproto.sync.subscribeRepos over WebSocket.
    RelaySim(cmd::relay_sim::RunArgs),
    /// Record a relay's frames into a capture file ([u32 LE length][frame]…, zstd when the name ends in .zst).
    Record(cmd::record::Args),
    /// Print a capture file's normalized events as NDJSON on stdout (errors on stderr, counted).
    Decode(cmd::decode::Args),
    /// Print a live relay's normalized events as NDJSON, with collection / DID filters.
    Tail(cmd::tail::Args),
    /// Run the whole stack locally: nats-server (JetStream), relay-sim and the shuffler.
    Dev(cmd::dev::Args),
    /// Run a benchmark and print a table (or one JSON object with --json).
    Bench(fpaas_bench::Args),
    /// Read a relay firehose and publish one message per event into the JetStream stream.
    Shuffler(Box<cmd::shuffler::Args>),
    /// Storage needed for the stream's retention, from a running shuffler's metrics or from flags.
    StorageEstimate(cmd::storage_estimate::Args),
    /// Run a subscription worker: match the firehose stream against subscriptions and deliver signed batches.
    Worker(cmd::worker::Args),
    /// Build the record KV bucket (DID / collection / rkey -> record) from the firehose stream.
    RecordKv(cmd::record_kv::Args),
    /// Maintain likes-by-subject and likes-by-actor indexes from the record KV.
    LikeIndexer(cmd::like_indexer::Args),
    /// Print the posts a DID liked (DIDs as arguments, or one per line on stdin).
    GetLikesBy(cmd::likes::GetLikesByArgs),
    /// Print the DIDs that liked a post (by AT-URI) and the count.
    GetLikers(cmd::likes::GetLikersArgs),
    /// Write a mock record straight into the record KV (local development).
    PutRecord(cmd::kv_admin::PutRecordArgs),
    /// Load every record of a repository export (getRepo CAR) into the record KV.
    ImportCar(cmd::kv_admin::ImportCarArgs),
    /// Remove the project's streams, KV buckets and consumers.
    Reset(cmd::kv_admin::ResetArgs),
    /// Receive webhooks: verify each request's signature and print one line per batch (demos, debugging).
    Receive(cmd::receive::Args),
    /// Run the HTTP API (tenants, subscriptions, stats, dead letters; /openapi.json).
    Serve(cmd::serve::Args),
    /// Manage tenants and their API keys through the API (admin token).
    Tenant(cmd::client::TenantArgs),
    /// Manage subscriptions through the API (a tenant's API key).
    Sub(cmd::client::SubArgs),
    /// List, inspect, replay and purge a subscription's dead letters through the API.
    Dlq(cmd::client::DlqArgs),
    /// Manage the tenant's topics (streams of its own) through the API.
    Topic(cmd::client::TopicArgs),
    /// Read the tenant's state buckets (written by `kv` deliveries) through the API: buckets, keys, a watch.
    State(cmd::client::StateArgs),
}

/// The log filter when `RUST_LOG` is unset: one-shot queries and tools print their answer and only warnings
/// (no connection chatter around a one-line answer); services log at info, the NATS client's own events at
/// warn (the bus logs and counts connection events itself).
fn default_filter(command: &Command) -> &'static str {
    match command {
        Command::Decode(_)
        | Command::GetLikesBy(_)
        | Command::GetLikers(_)
        | Command::PutRecord(_)
        | Command::ImportCar(_)
        | Command::Reset(_)
        | Command::StorageEstimate(_)
        | Command::Tenant(_)
        | Command::Sub(_)
        | Command::Dlq(_)
        | Command::Topic(_)
        | Command::State(_) => "warn",
        _ => "info,async_nats=warn",
    }
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, default_filter(&cli.command));
    // async-nats brings rustls's `ring` provider and other crates may bring `aws-lc-rs`; with two providers the
    // first wss:// connect panics unless one is installed explicitly (docs/measurements.md, "Client-library pitfalls").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fpaas: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::RelaySim(a) => cmd::relay_sim::run(a).await,
            Command::Record(a) => cmd::record::run(a).await,
            Command::Decode(a) => cmd::decode::run(a),
            Command::Tail(a) => cmd::tail::run(a).await,
            Command::Dev(a) => cmd::dev::run(a).await,
            Command::Bench(a) => cmd::bench(a).await,
            Command::Shuffler(a) => cmd::shuffler::run(*a).await,
            Command::StorageEstimate(a) => cmd::storage_estimate::run(a).await,
            Command::RecordKv(a) => cmd::record_kv::run(a).await,
            Command::Worker(a) => cmd::worker::run(a).await,
            Command::LikeIndexer(a) => cmd::like_indexer::run(a).await,
            Command::GetLikesBy(a) => cmd::likes::get_likes_by(a).await,
            Command::GetLikers(a) => cmd::likes::get_likers(a).await,
            Command::PutRecord(a) => cmd::kv_admin::put_record(a).await,
            Command::ImportCar(a) => cmd::kv_admin::import_car(a).await,
            Command::Reset(a) => cmd::kv_admin::reset(a).await,
            Command::Receive(a) => cmd::receive::run(a).await,
            Command::Serve(a) => cmd::serve::run(a).await,
            Command::Tenant(a) => cmd::client::tenant(a).await,
            Command::Sub(a) => cmd::client::sub(a).await,
            Command::Dlq(a) => cmd::client::dlq(a).await,
            Command::Topic(a) => cmd::client::topic(a).await,
            Command::State(a) => cmd::client::state(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fpaas: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
