//! `fpaas receive --listen ADDR --secret whsec_… [--secret …]`: a webhook receiver for demos and debugging. It
//! verifies each request's Standard Webhooks signature (`fpaas_webhook::sign::verify`; 401 with the reason when
//! it fails), prints one line per batch (`batch <id> events=N seq=<from>-<to> bytes=<n>`) and, with
//! `--print-events`, each event as a JSON line. `--fail-first N` answers 500 to the first N correctly signed
//! requests, to watch the sender retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use fpaas_webhook::Secret;
use fpaas_webhook::sign::verify;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Largest request body accepted: a batch's `max_bytes` limit (8 MiB) with room for the envelope.
const MAX_BODY: usize = 16 << 20;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: String,
    /// A signing secret (`whsec_…`); repeat for several (a request passes when any of them verifies it, as
    /// during a secret rotation).
    #[arg(long = "secret", required = true, value_parser = parse_secret)]
    pub secrets: Vec<Secret>,
    /// Print each event of a batch as one JSON line after the batch line.
    #[arg(long)]
    pub print_events: bool,
    /// Answer 500 to the first N correctly signed requests (to watch the sender retry).
    #[arg(long, default_value_t = 0)]
    pub fail_first: u64,
    /// How far `webhook-timestamp` may be from this machine's clock, in seconds.
    #[arg(long, default_value_t = 300)]
    pub tolerance_secs: u64,
}

fn parse_secret(text: &str) -> Result<Secret, String> {
    Secret::parse(text).map_err(|e| e.to_string())
}

struct Receiver {
    secrets: Vec<Secret>,
    print_events: bool,
    fail_first: u64,
    tolerance: Duration,
    /// Correctly signed requests so far.
    signed: AtomicU64,
}

/// The part of a batch body this command reads.
#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch_id: Option<&'a str>,
    from_seq: u64,
    to_seq: u64,
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listening address")?;
    let state = Arc::new(Receiver {
        secrets: args.secrets,
        print_events: args.print_events,
        fail_first: args.fail_first,
        tolerance: Duration::from_secs(args.tolerance_secs),
        signed: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    tracing::info!(%addr, "receiving webhooks on http://{addr}/");
    axum::serve(listener, app)
        .with_graceful_shutdown(super::shutdown_signal())
        .await
        .context("webhook receiver")
}

async fn handle(
    State(rx): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signature)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        println!(
            "rejected reason=missing_headers (webhook-id, webhook-timestamp and webhook-signature are required)"
        );
        return (StatusCode::UNAUTHORIZED, "missing_headers\n".to_owned());
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Err(e) = verify(
        id,
        timestamp,
        signature,
        &body,
        &rx.secrets,
        now,
        rx.tolerance,
    ) {
        println!("rejected {id} reason={} ({e})", e.reason());
        return (StatusCode::UNAUTHORIZED, format!("{}\n", e.reason()));
    }
    let n = rx.signed.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= rx.fail_first {
        println!("failing {id} with 500 (--fail-first {n}/{})", rx.fail_first);
        return (StatusCode::INTERNAL_SERVER_ERROR, "fail_first\n".to_owned());
    }
    let batch: Batch<'_> = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => {
            println!("invalid {id} bytes={} (not a batch: {e})", body.len());
            return (StatusCode::BAD_REQUEST, "not_a_batch\n".to_owned());
        }
    };
    if batch.batch_id.is_some_and(|b| b != id) {
        println!(
            "note {id}: body batch_id {:?} differs from webhook-id",
            batch.batch_id
        );
    }
    let mut out = format!(
        "batch {id} events={} seq={}-{} bytes={}",
        batch.events.len(),
        batch.from_seq,
        batch.to_seq,
        body.len()
    );
    if rx.print_events {
        for event in &batch.events {
            out.push('\n');
            let text = event.get();
            if text.contains('\n') {
                // Pretty-printed by the sender: one line per event all the same.
                let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                out.push_str(&value.to_string());
            } else {
                out.push_str(text);
            }
        }
    }
    // One write per batch, so the lines of concurrent batches do not interleave.
    println!("{out}");
    (StatusCode::OK, "ok\n".to_owned())
}
