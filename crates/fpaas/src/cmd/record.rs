//! `fpaas record --relay URL --out FILE`: writes a relay's frames, as they arrive, in the corpus capture format
//! so a user with internet access can capture the real firehose once and develop offline.

use anyhow::Context;
use fpaas_ingest::relay::RelayConnection;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Relay base URL (ws:// or wss://), e.g. wss://bsky.network.
    #[arg(long)]
    relay: String,
    /// Output file; zstd-compressed when the name ends in .zst.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Start after this relay seq.
    #[arg(long)]
    cursor: Option<i64>,
    /// Stop after this many frames.
    #[arg(long)]
    limit: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<u64>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut writer = fpaas_sim::capture::CaptureWriter::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut conn =
        RelayConnection::connect(&args.relay, args.cursor, Duration::from_secs(30)).await?;
    tracing::info!(url = conn.url(), out = %args.out.display(), "recording");
    let deadline = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut n = 0u64;
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        if args.limit.is_some_and(|l| n >= l) {
            break;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = sleep => break,
            frame = conn.next_frame() => match frame? {
                Some(bytes) => {
                    writer.write_frame(&bytes)?;
                    n += 1;
                }
                None => {
                    tracing::warn!("relay closed the connection");
                    break;
                }
            },
        }
    }
    writer.finish()?;
    conn.close().await;
    tracing::info!(frames = n, out = %args.out.display(), "recording finished");
    Ok(())
}
