//! `fpaas storage-estimate`: the disk the firehose stream needs for its retention, per node and for the cluster,
//! with replication and S2 compression — from a running shuffler's metrics (rate from
//! `fpaas_shuffler_published_total`, mean payload from `fpaas_shuffler_message_size_bytes_sum / _count`, two
//! scrapes `--sample-seconds` apart) or from flags. The defaults for what the metrics cannot tell (per-message
//! overhead, compression ratio) were measured with `fpaas bench storage` on the corpus; see docs/storage.md.
//!
//! The model ([`estimate`]): every message is stored as a record of `payload + overhead` bytes (subject,
//! `Nats-Msg-Id` and the DID / seq / time headers, record header, checksum). JetStream counts these
//! uncompressed "logical" bytes against the stream's `max_bytes` (measured: `state.bytes` is identical with and
//! without S2), while the disk holds them divided by the compression ratio, once per replica.

use anyhow::{Context, bail};
use std::time::{Duration, Instant};

/// Stored bytes per message beyond the JSON payload (subject, headers, record header, checksum), measured by
/// `fpaas bench storage` on the corpus (docs/storage.md).
pub const MEASURED_OVERHEAD_BYTES: f64 = 293.0;
/// Uncompressed / S2 bytes of the stream's message blocks, measured by `fpaas bench storage` (docs/storage.md).
pub const MEASURED_S2_RATIO: f64 = 2.79;
/// Mean JSON payload of the corpus's normalized events, bytes (`fpaas bench storage`).
pub const CORPUS_MEAN_PAYLOAD_BYTES: f64 = 604.0;
/// Average firehose rate in 2026 (docs/measurements.md), events/s.
pub const TYPICAL_EVENTS_PER_S: f64 = 350.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A running shuffler's metrics endpoint, e.g. http://127.0.0.1:9100/metrics (scraped twice).
    #[arg(long)]
    metrics_url: Option<String>,
    /// Seconds between the two scrapes.
    #[arg(long, default_value_t = 10.0)]
    sample_seconds: f64,
    /// Events (messages) per second; overrides the scraped rate (default without metrics: 350).
    #[arg(long)]
    events_per_s: Option<f64>,
    /// Mean JSON payload per message in bytes; overrides the scraped mean (default without metrics: the
    /// corpus's 604).
    #[arg(long)]
    mean_message_bytes: Option<f64>,
    /// Stored bytes per message beyond the payload (subject, headers, record header).
    #[arg(long, default_value_t = MEASURED_OVERHEAD_BYTES)]
    overhead_bytes: f64,
    /// Uncompressed / stored bytes; 1 for a stream without compression.
    #[arg(long, default_value_t = MEASURED_S2_RATIO)]
    compression_ratio: f64,
    /// Retention (the stream's max_age), hours.
    #[arg(long, default_value_t = 24.0)]
    retention_hours: f64,
    /// Stream replicas.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Nodes the replicas are spread over (default: as many as replicas).
    #[arg(long)]
    nodes: Option<u32>,
    /// The stream's max_bytes (logical bytes); -1 = unlimited. Default: the shuffler's 32 GiB.
    #[arg(long, default_value_t = fpaas_bus::DEFAULT_STREAM_MAX_BYTES, allow_negative_numbers = true)]
    max_bytes: i64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What the estimate is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// Messages per second.
    pub events_per_s: f64,
    /// Mean JSON payload, bytes.
    pub mean_message_bytes: f64,
    /// Stored bytes per message beyond the payload.
    pub overhead_bytes: f64,
    /// Uncompressed / stored bytes (≥ 1 in practice).
    pub compression_ratio: f64,
    /// Retention, hours.
    pub retention_hours: f64,
    /// Stream replicas.
    pub replicas: u32,
    /// Nodes holding the replicas.
    pub nodes: u32,
    /// The stream's max_bytes (logical), if limited.
    pub max_bytes: Option<u64>,
}

/// The storage the inputs need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// JSON payload bytes per day (what the shuffler publishes, before any overhead).
    pub raw_bytes_per_day: f64,
    /// Logical bytes (payload + overhead) held for the retention: what counts against max_bytes.
    pub logical_bytes_retained: f64,
    /// Disk bytes of one replica after compression.
    pub stored_bytes_per_replica: f64,
    /// Disk bytes per node.
    pub stored_bytes_per_node: f64,
    /// Disk bytes over all replicas.
    pub cluster_total_bytes: f64,
    /// max_bytes / logical bytes retained (> 1: the retention fits; < 1: max_bytes cuts it short).
    pub max_bytes_headroom: Option<f64>,
    /// Hours of data max_bytes holds at this rate.
    pub retention_hours_at_max_bytes: Option<f64>,
}

/// The pure storage calculation.
pub fn estimate(i: &Inputs) -> Estimate {
    let record = i.mean_message_bytes + i.overhead_bytes;
    let logical_per_s = i.events_per_s * record;
    let logical = logical_per_s * i.retention_hours * 3600.0;
    let per_replica = logical / i.compression_ratio.max(f64::MIN_POSITIVE);
    let total = per_replica * f64::from(i.replicas);
    let nodes = f64::from(i.nodes.max(1));
    Estimate {
        raw_bytes_per_day: i.events_per_s * i.mean_message_bytes * 86_400.0,
        logical_bytes_retained: logical,
        stored_bytes_per_replica: per_replica,
        stored_bytes_per_node: total / nodes,
        cluster_total_bytes: total,
        max_bytes_headroom: i
            .max_bytes
            .filter(|_| logical > 0.0)
            .map(|m| m as f64 / logical),
        retention_hours_at_max_bytes: i
            .max_bytes
            .filter(|_| logical_per_s > 0.0)
            .map(|m| m as f64 / logical_per_s / 3600.0),
    }
}

/// A plain `http://host:port/path` GET (loopback metrics endpoints; no TLS), returning the body.
async fn http_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// metrics URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(host).await?;
        conn.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/plain\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        conn.take(64 * 1024 * 1024).read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .with_context(|| format!("{url}: timed out"))?
        .with_context(|| format!("fetching {url}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url}: malformed HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{url}: {status}");
    }
    Ok(body.to_owned())
}

/// Sum of every series of metric `name` (any labels) in a Prometheus text exposition; `None` when absent.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest
            .rsplit_once('}')
            .map_or(rest, |(_, v)| v)
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Rate and mean payload from two scrapes of a shuffler.
struct Scraped {
    events_per_s: f64,
    mean_message_bytes: Option<f64>,
}

async fn scrape(url: &str, sample: Duration) -> anyhow::Result<Scraped> {
    const PUBLISHED: &str = "fpaas_shuffler_published_total";
    const SIZE_SUM: &str = "fpaas_shuffler_message_size_bytes_sum";
    const SIZE_COUNT: &str = "fpaas_shuffler_message_size_bytes_count";
    let first = http_get(url).await?;
    let t0 = Instant::now();
    tokio::time::sleep(sample).await;
    let second = http_get(url).await?;
    let dt = t0.elapsed().as_secs_f64();
    let get = |t: &str, n: &str| metric_sum(t, n).unwrap_or(0.0);
    if metric_sum(&second, PUBLISHED).is_none() {
        bail!("{url} has no {PUBLISHED}: is it a shuffler's /metrics?");
    }
    let published = get(&second, PUBLISHED) - get(&first, PUBLISHED);
    let (dsum, dcount) = (
        get(&second, SIZE_SUM) - get(&first, SIZE_SUM),
        get(&second, SIZE_COUNT) - get(&first, SIZE_COUNT),
    );
    // The mean over the sample; the lifetime mean when nothing was published in between.
    let mean = if dcount > 0.0 {
        Some(dsum / dcount)
    } else {
        let count = get(&second, SIZE_COUNT);
        (count > 0.0).then(|| get(&second, SIZE_SUM) / count)
    };
    Ok(Scraped {
        events_per_s: published / dt,
        mean_message_bytes: mean,
    })
}

/// A byte figure as a whole number for JSON.
fn bytes(x: f64) -> serde_json::Value {
    (x.round().max(0.0) as u64).into()
}

fn gb(bytes: f64) -> f64 {
    fpaas_bench::r2(bytes / 1e9)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(a.compression_ratio > 0.0, "--compression-ratio must be > 0");
    let (source, scraped) = match &a.metrics_url {
        Some(url) => {
            let s = scrape(url, Duration::from_secs_f64(a.sample_seconds.max(0.1))).await?;
            ("metrics", Some(s))
        }
        None => ("flags", None),
    };
    let events_per_s = a
        .events_per_s
        .or(scraped.as_ref().map(|s| s.events_per_s))
        .unwrap_or(TYPICAL_EVENTS_PER_S);
    let mean_message_bytes = a
        .mean_message_bytes
        .or(scraped.as_ref().and_then(|s| s.mean_message_bytes))
        .unwrap_or(CORPUS_MEAN_PAYLOAD_BYTES);
    let inputs = Inputs {
        events_per_s,
        mean_message_bytes,
        overhead_bytes: a.overhead_bytes,
        compression_ratio: a.compression_ratio,
        retention_hours: a.retention_hours,
        replicas: a.replicas,
        nodes: a.nodes.unwrap_or(a.replicas),
        max_bytes: u64::try_from(a.max_bytes).ok(),
    };
    let e = estimate(&inputs);
    let r2 = fpaas_bench::r2;
    let mut fig: Vec<(&str, serde_json::Value)> = vec![
        ("source", source.into()),
        ("events_per_s", r2(inputs.events_per_s).into()),
        ("mean_message_bytes", r2(inputs.mean_message_bytes).into()),
        ("overhead_bytes_per_msg", r2(inputs.overhead_bytes).into()),
        ("compression_ratio", r2(inputs.compression_ratio).into()),
        ("retention_hours", r2(inputs.retention_hours).into()),
        ("replicas", inputs.replicas.into()),
        ("nodes", inputs.nodes.into()),
        ("raw_bytes_per_day", bytes(e.raw_bytes_per_day)),
        ("raw_gb_per_day", gb(e.raw_bytes_per_day).into()),
        ("logical_bytes_retained", bytes(e.logical_bytes_retained)),
        ("stored_bytes_per_node", bytes(e.stored_bytes_per_node)),
        ("stored_gb_per_node", gb(e.stored_bytes_per_node).into()),
        ("cluster_total_bytes", bytes(e.cluster_total_bytes)),
        ("cluster_total_gb", gb(e.cluster_total_bytes).into()),
    ];
    if let Some(m) = inputs.max_bytes {
        fig.push(("max_bytes", m.into()));
    }
    if let Some(h) = e.max_bytes_headroom {
        fig.push(("max_bytes_headroom_ratio", r2(h).into()));
    }
    if let Some(h) = e.retention_hours_at_max_bytes {
        fig.push(("retention_hours_at_max_bytes", r2(h).into()));
    }
    if a.json {
        let map: serde_json::Map<String, serde_json::Value> =
            fig.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        println!("{}", serde_json::Value::Object(map));
        return Ok(());
    }
    println!("storage estimate");
    println!("{:-<50}", "");
    for (k, v) in &fig {
        let shown = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{k:<30}  {shown:>18}");
    }
    if e.max_bytes_headroom.is_some_and(|h| h < 1.0) {
        println!(
            "warning: max_bytes holds only {:.1} h at this rate; raise --max-bytes on the stream or the retention \
             is cut short",
            e.retention_hours_at_max_bytes.unwrap_or(0.0)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            events_per_s: 350.0,
            mean_message_bytes: 600.0,
            overhead_bytes: 300.0,
            compression_ratio: 3.0,
            retention_hours: 24.0,
            replicas: 1,
            nodes: 1,
            max_bytes: Some(32 * 1024 * 1024 * 1024),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn single_replica_worked_example() {
        let e = estimate(&inputs());
        // 350/s × 86,400 s × 600 B.
        assert!(close(e.raw_bytes_per_day, 18_144_000_000.0));
        // 350 × 86,400 × 900 B = 27.216 GB logical, / 3 on disk.
        assert!(close(e.logical_bytes_retained, 27_216_000_000.0));
        assert!(close(e.stored_bytes_per_replica, 9_072_000_000.0));
        assert!(close(e.stored_bytes_per_node, 9_072_000_000.0));
        assert!(close(e.cluster_total_bytes, 9_072_000_000.0));
        let headroom = e.max_bytes_headroom.expect("limited");
        assert!(close(headroom, 34_359_738_368.0 / 27_216_000_000.0));
        let hours = e.retention_hours_at_max_bytes.expect("limited");
        assert!(close(hours, 24.0 * headroom));
    }

    #[test]
    fn replicas_multiply_the_cluster_not_the_node() {
        let one = estimate(&inputs());
        let three = estimate(&Inputs {
            replicas: 3,
            nodes: 3,
            ..inputs()
        });
        assert!(close(
            three.stored_bytes_per_node,
            one.stored_bytes_per_node
        ));
        assert!(close(
            three.cluster_total_bytes,
            3.0 * one.cluster_total_bytes
        ));
        // max_bytes is per stream (logical), unaffected by replication.
        assert_eq!(three.max_bytes_headroom, one.max_bytes_headroom);
        // Three replicas packed on one node.
        let packed = estimate(&Inputs {
            replicas: 3,
            nodes: 1,
            ..inputs()
        });
        assert!(close(
            packed.stored_bytes_per_node,
            3.0 * one.stored_bytes_per_node
        ));
    }

    #[test]
    fn scales_linearly_and_handles_edges() {
        let base = estimate(&inputs());
        let double = estimate(&Inputs {
            retention_hours: 48.0,
            ..inputs()
        });
        assert!(close(
            double.stored_bytes_per_node,
            2.0 * base.stored_bytes_per_node
        ));
        let uncompressed = estimate(&Inputs {
            compression_ratio: 1.0,
            ..inputs()
        });
        assert!(close(
            uncompressed.stored_bytes_per_node,
            base.logical_bytes_retained
        ));
        let idle = estimate(&Inputs {
            events_per_s: 0.0,
            ..inputs()
        });
        assert_eq!(idle.cluster_total_bytes, 0.0);
        assert_eq!(idle.max_bytes_headroom, None);
        assert_eq!(idle.retention_hours_at_max_bytes, None);
        let unlimited = estimate(&Inputs {
            max_bytes: None,
            ..inputs()
        });
        assert_eq!(unlimited.max_bytes_headroom, None);
    }

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP fpaas_shuffler_published_total x\n\
                    # TYPE fpaas_shuffler_published_total counter\n\
                    fpaas_shuffler_published_total 1200\n\
                    fpaas_shuffler_published_total_other 5\n\
                    fpaas_shuffler_message_size_bytes_bucket{le=\"256\"} 3\n\
                    fpaas_shuffler_message_size_bytes_sum 61234.5\n\
                    fpaas_shuffler_message_size_bytes_count 100\n\
                    fpaas_shuffler_events_total{kind=\"commit\"} 90\n\
                    fpaas_shuffler_events_total{kind=\"sync\"} 10\n";
        assert_eq!(
            metric_sum(text, "fpaas_shuffler_published_total"),
            Some(1200.0)
        );
        assert_eq!(
            metric_sum(text, "fpaas_shuffler_message_size_bytes_sum"),
            Some(61234.5)
        );
        assert_eq!(metric_sum(text, "fpaas_shuffler_events_total"), Some(100.0));
        assert_eq!(metric_sum(text, "fpaas_missing"), None);
    }
}
