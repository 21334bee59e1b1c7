//! `fpaas tail --relay URL`: a live relay's normalized events as NDJSON on stdout, filtered by collection
//! (exact NSID or `prefix.*`) and DID; reconnects from the last seen seq when the relay drops the connection.

use fpaas_event::subject::{SubjectFilter, subject_matches};
use fpaas_ingest::relay::RelayConnection;
use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Relay base URL (ws:// or wss://).
    #[arg(long, default_value = "wss://bsky.network")]
    relay: String,
    /// Only commit events of these collections (exact NSID, or a prefix like app.bsky.feed.*). Repeatable.
    #[arg(long = "collection")]
    collections: Vec<String>,
    /// Only events of these DIDs. Repeatable.
    #[arg(long = "did")]
    dids: Vec<String>,
    /// Start after this relay seq.
    #[arg(long)]
    cursor: Option<i64>,
    /// Stop after printing this many events.
    #[arg(long)]
    limit: Option<u64>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let filters = args
        .collections
        .iter()
        .map(|c| SubjectFilter::collection(None, c).map(|f| f.to_subject()))
        .collect::<Result<Vec<_>, _>>()?;
    let dids: HashSet<String> = args.dids.iter().cloned().collect();
    let mut cursor = args.cursor;
    let mut printed = 0u64;
    let mut backoff = fpaas_bus::Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let stdout = std::io::stdout();
    // One signal listener for the whole run: a Ctrl-C between two frames (or while connecting) is not lost.
    let stop = tokio_util::sync::CancellationToken::new();
    super::cancel_on_signal(&stop, "stopping");
    loop {
        let connect = RelayConnection::connect(&args.relay, cursor, Duration::from_secs(30));
        let conn = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            c = connect => c,
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                let pause = backoff.next_delay();
                tracing::warn!(error = %e, ?pause, "connect failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            let bytes = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                f = conn.next_frame() => match f {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => { tracing::warn!(error = %e, "relay read failed; reconnecting"); break; }
                },
            };
            let frame = match fpaas_proto::frame::decode_frame(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(kind = e.kind().as_str(), error = %e, "undecodable frame skipped");
                    continue;
                }
            };
            if let Some(seq) = frame.seq() {
                cursor = Some(seq);
            }
            let n = fpaas_event::normalize(&frame);
            for d in &n.dropped {
                tracing::warn!(reason = d.reason.0, what = %d.what, "op dropped");
            }
            let mut out = stdout.lock();
            for e in n.events {
                if !dids.is_empty() && !dids.contains(&e.did) {
                    continue;
                }
                if !filters.is_empty() {
                    let s = fpaas_event::subject(&e);
                    if !filters.iter().any(|f| subject_matches(f, &s)) {
                        continue;
                    }
                }
                out.write_all(&e.to_json_vec())?;
                out.write_all(b"\n")?;
                printed += 1;
                if args.limit.is_some_and(|l| printed >= l) {
                    out.flush()?;
                    return Ok(());
                }
            }
            out.flush()?;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
