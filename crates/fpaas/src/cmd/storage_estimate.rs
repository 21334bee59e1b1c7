//! `fpaas storage-estimate`: the disk the firehose stream needs for its retention, per node and for the cluster,
//! with replication and S2 compression — from a running shuffler's metrics (rate from
//! `fpaas_shuffler_published_total`, mean payload from `fpaas_shuffler_message_size_bytes_sum / _count`, two
//! scrapes `--sample-seconds` apart) or from flags. The model and its measured defaults are
//! `fpaas_bus::storage`; this command gathers its inputs and prints the result (docs/storage.md).

use anyhow::{Context, bail};
use fpaas_bus::storage::{
    CORPUS_MEAN_PAYLOAD_BYTES, Inputs, MEASURED_OVERHEAD_BYTES, MEASURED_S2_RATIO,
    TYPICAL_EVENTS_PER_S, estimate,
};
use fpaas_ops::prom::sum;
use std::time::{Duration, Instant};

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

/// `GET url` (a metrics endpoint; `http://host:port` alone means `/metrics`), returning the body.
async fn http_get(url: &str) -> anyhow::Result<String> {
    let url = match url.strip_prefix("http://") {
        Some(rest) if !rest.contains('/') => format!("{url}/metrics"),
        _ => url.to_owned(),
    };
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client")?
        .get(&url)
        .header(reqwest::header::ACCEPT, "text/plain")
        .send()
        .await
        .with_context(|| format!("fetching {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url}: {status}");
    }
    response
        .text()
        .await
        .with_context(|| format!("reading {url}"))
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
    let get = |t: &str, n: &str| sum(t, n, &[]).unwrap_or(0.0);
    if sum(&second, PUBLISHED, &[]).is_none() {
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
