//! `fpaas bench storage`: measures, on a real nats-server file store, what one firehose message costs on disk —
//! the defaults of `fpaas storage-estimate`. The corpus's normalized events (real frames) are published exactly
//! as the shuffler publishes them (subject, `Nats-Msg-Id`, DID / seq / time headers, JSON payload), repeated
//! with varied identifiers until there are `--messages` of them, into the production stream settings twice:
//! without compression and with S2. Reported:
//!
//! - `overhead_bytes_per_msg`: stored record bytes beyond the JSON payload (subject, headers, record header,
//!   checksum), from the uncompressed blocks;
//! - `logical_*_bytes`: what JetStream counts (`state.bytes`, the figure `max_bytes` limits) — the same with and
//!   without compression;
//! - `compression_ratio`: uncompressed / S2 bytes over the sealed message blocks (the last, still-open block of a
//!   stream is written uncompressed and compressed only when it is sealed, so it is left out), and the
//!   whole-directory ratio beside it.
//!
//! Identifier variation: in repetition `r > 0` every DID, CID and TID (rkey, rev) — also inside AT URIs and
//! record references — is replaced by a deterministic pseudo-random one, so ids do not repeat as they would not
//! in production. Record text does repeat every corpus length, which makes the S2 ratio slightly optimistic for
//! posts (12% of events); likes, reposts and follows are nothing but identifiers and structure.

use crate::error::{Context, Result, ensure};
use crate::publish::{ACKS_IN_FLIGHT, Prepared, publish_all};
use crate::server::{NatsServerFlag, dir_size, find_path, start_nats, wait_for_messages};
use crate::{Report, r2};
use fpaas_event::Event;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const STREAM: &str = "FIREHOSE";

// `fpaas bench storage`'s flags (doc comments here would become clap help).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Capture file whose events are published (default: the committed corpus).
    #[arg(long, default_value = "testdata/corpus/frames.bin.zst")]
    corpus: PathBuf,
    /// Messages per stream (the corpus repeated with varied ids). Several 8 MB blocks' worth by default.
    #[arg(long, default_value_t = 150_000)]
    messages: usize,
    #[command(flatten)]
    nats: NatsServerFlag,
    /// Also replace the letters of record `text` fields in repetitions (random letters barely compress: a
    /// pessimistic bound for posts, where repeated corpus text is an optimistic one).
    #[arg(long)]
    scramble_text: bool,
}

/// splitmix64: a fast deterministic mixer for the identifier variation.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` pseudo-random characters of `alphabet`, a function of (`seed`, `rep`).
fn chars(seed: &str, rep: u64, n: usize, alphabet: &[u8]) -> String {
    let mut state = mix(fnv(seed) ^ mix(rep));
    (0..n)
        .map(|_| {
            state = mix(state);
            alphabet[(state % alphabet.len() as u64) as usize] as char
        })
        .collect()
}

const B32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
const TID_CHARS: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";

/// One path segment with its identifier replaced (DID, CID, TID); anything else unchanged.
fn vary_segment(seg: &str, rep: u64) -> String {
    if let Some(rest) = seg.strip_prefix("did:plc:") {
        return format!("did:plc:{}", chars(seg, rep, rest.len(), B32));
    }
    if seg.starts_with("bafy") && seg.len() >= 50 {
        return format!("bafy{}", chars(seg, rep, seg.len() - 4, B32));
    }
    if seg.len() == 13 && seg.bytes().all(|b| TID_CHARS.contains(&b)) {
        return format!("3{}", chars(seg, rep, 12, TID_CHARS));
    }
    seg.to_owned()
}

fn vary_string(s: &str, rep: u64) -> String {
    if !s.contains("did:") && !s.contains("bafy") && s.len() != 13 {
        return s.to_owned();
    }
    s.split('/')
        .map(|seg| vary_segment(seg, rep))
        .collect::<Vec<_>>()
        .join("/")
}

/// `s` with every ASCII letter replaced by a pseudo-random lowercase one (spaces, digits, emoji kept).
fn scramble(s: &str, rep: u64) -> String {
    let mut state = mix(fnv(s) ^ mix(rep));
    s.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                state = mix(state);
                (b'a' + (state % 26) as u8) as char
            } else {
                c
            }
        })
        .collect()
}

fn vary_value(v: &mut Value, rep: u64, scramble_text: bool) {
    match v {
        Value::String(s) => *s = vary_string(s, rep),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| vary_value(i, rep, scramble_text)),
        Value::Object(map) => {
            for (k, i) in map.iter_mut() {
                match i {
                    Value::String(s) if scramble_text && k == "text" => *s = scramble(s, rep),
                    _ => vary_value(i, rep, scramble_text),
                }
            }
        }
        _ => {}
    }
}

/// `ev` with every identifier replaced for repetition `rep` (0 = unchanged).
fn vary(ev: &Event, rep: u64, scramble_text: bool) -> Result<Event> {
    if rep == 0 {
        return Ok(ev.clone());
    }
    let mut v = serde_json::to_value(ev)?;
    vary_value(&mut v, rep, scramble_text);
    Ok(serde_json::from_value(v)?)
}

/// The corpus's events, then varied repetitions, `n` in total.
fn workload(corpus: &Path, n: usize, scramble_text: bool) -> Result<(Vec<Prepared>, u64)> {
    let frames =
        fpaas_sim::read_capture(corpus).with_context(|| format!("reading {}", corpus.display()))?;
    let base: Vec<Event> = frames
        .iter()
        .filter_map(|f| fpaas_proto::decode_frame(f).ok())
        .flat_map(|f| fpaas_event::normalize(&f).events)
        .collect();
    ensure!(!base.is_empty(), "no events in {}", corpus.display());
    let mut out = Vec::with_capacity(n);
    let mut payload = 0u64;
    for i in 0..n {
        let ev = vary(
            &base[i % base.len()],
            (i / base.len()) as u64,
            scramble_text,
        )?;
        let p = Prepared::event(&ev);
        payload += p.payload.len() as u64;
        out.push(p);
    }
    Ok((out, payload))
}

/// What one stream occupies.
#[derive(Debug, Default, Clone, Copy)]
struct Footprint {
    messages: u64,
    logical: u64,
    dir_apparent: u64,
    dir_allocated: u64,
    blocks: usize,
    sealed_blk_bytes: u64,
}

/// Sizes of the stream's `.blk` files ordered by block index: (count, bytes of all but the last).
fn sealed_blocks(stream_dir: &Path) -> (usize, u64) {
    let mut blks: Vec<(u64, u64)> = std::fs::read_dir(stream_dir.join("msgs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let idx: u64 = name.strip_suffix(".blk")?.parse().ok()?;
            Some((idx, e.metadata().ok()?.len()))
        })
        .collect();
    blks.sort_unstable();
    let sealed = blks.iter().rev().skip(1).map(|(_, len)| len).sum();
    (blks.len(), sealed)
}

async fn measure(
    bin: &Path,
    compression: fpaas_bus::Compression,
    msgs: &[Prepared],
) -> Result<Footprint> {
    let nats = start_nats(bin).await?;
    let client = fpaas_bus::connect(&nats.url(), "fpaas-bench-storage").await?;
    let js = fpaas_bus::jetstream(client.clone(), ACKS_IN_FLIGHT);
    let settings = fpaas_bus::StreamSettings {
        compression,
        ..Default::default()
    };
    fpaas_bus::ensure_stream(&js, &settings).await?;
    publish_all(&js, msgs.iter().cloned(), ACKS_IN_FLIGHT).await?;
    let progress = wait_for_messages(
        &js,
        STREAM,
        Some(msgs.len() as u64),
        Duration::ZERO,
        Duration::from_secs(120),
        || Ok(()),
    )
    .await?;
    let stream_dir = nats.store_dir().join("jetstream/$G/streams").join(STREAM);
    // Blocks are written from the server's buffers shortly after the ack, and a full block is compressed when
    // it is sealed: wait until the directory stops changing (bounded) before measuring.
    let mut last = dir_size(&stream_dir);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = dir_size(&stream_dir);
        if now == last {
            break;
        }
        last = now;
    }
    let (blocks, sealed_blk_bytes) = sealed_blocks(&stream_dir);
    drop(js);
    let _ = client.drain().await;
    Ok(Footprint {
        messages: progress.messages,
        logical: progress.bytes,
        dir_apparent: last.0,
        dir_allocated: last.1,
        blocks,
        sealed_blk_bytes,
    })
}

/// Runs the bench: the workload into an uncompressed stream, then into an S2 one, each on a fresh server.
///
/// # Errors
/// A missing tool or corpus, a nats-server failure, a stream that stalls.
pub async fn run(args: &Args) -> Result<Report> {
    let bin = args.nats.binary();
    let corpus = find_path(&args.corpus);
    let n = args.messages.max(1);
    let scramble_text = args.scramble_text;
    let (msgs, payload) =
        tokio::task::spawn_blocking(move || workload(&corpus, n, scramble_text)).await??;
    let none = measure(&bin, fpaas_bus::Compression::None, &msgs).await?;
    let s2 = measure(&bin, fpaas_bus::Compression::S2, &msgs).await?;
    let count = msgs.len() as f64;
    let mean_payload = payload as f64 / count;
    let mut r = Report::new("storage");
    r.add("messages", none.messages);
    r.add("mean_payload_bytes", r2(mean_payload));
    r.add("logical_bytes_per_msg", r2(none.logical as f64 / count));
    r.add(
        "overhead_bytes_per_msg",
        r2(none.logical as f64 / count - mean_payload),
    );
    r.add("logical_none_bytes", none.logical);
    r.add("logical_s2_bytes", s2.logical);
    r.add("disk_none_bytes", none.dir_allocated);
    r.add("disk_s2_bytes", s2.dir_allocated);
    r.add(
        "disk_none_bytes_per_msg",
        r2(none.dir_apparent as f64 / count),
    );
    r.add("disk_s2_bytes_per_msg", r2(s2.dir_apparent as f64 / count));
    r.add("blocks_none", none.blocks as u64);
    r.add("blocks_s2", s2.blocks as u64);
    if none.blocks == s2.blocks && none.blocks > 1 && s2.sealed_blk_bytes > 0 {
        r.add(
            "compression_ratio",
            r2(none.sealed_blk_bytes as f64 / s2.sealed_blk_bytes as f64),
        );
    }
    r.add(
        "compression_ratio_whole_dir",
        r2(none.dir_apparent as f64 / s2.dir_apparent.max(1) as f64),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variation_replaces_identifiers_only() {
        let uri = "at://did:plc:abcdefghijklmnopqrstuvwx/app.bsky.feed.post/3kabcdefghijk";
        let v1 = vary_string(uri, 1);
        let v2 = vary_string(uri, 2);
        assert_ne!(v1, uri);
        assert_ne!(v1, v2);
        assert_eq!(v1.len(), uri.len());
        assert!(v1.starts_with("at://did:plc:"));
        assert!(v1.contains("/app.bsky.feed.post/3"));
        assert_eq!(vary_string(uri, 1), v1, "deterministic");
        assert_eq!(vary_string("hello world", 3), "hello world");
        let cid = "bafyreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        assert_ne!(vary_string(cid, 1), cid);
        assert_eq!(vary_string(cid, 1).len(), cid.len());
        let text = scramble("Hello, world 🦋 42", 1);
        assert_eq!(text.chars().count(), "Hello, world 🦋 42".chars().count());
        assert!(text.ends_with(" 🦋 42"));
        assert_ne!(text, "Hello, world 🦋 42");
    }
}
