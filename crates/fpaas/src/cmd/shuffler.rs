//! `fpaas shuffler`: flags (and an optional JSON `--config` file, flags win) → [`ShufflerConfig`], the ops HTTP
//! server (`/metrics`, `/health`, `/ready`, `/health/detailed`) on `--metrics-listen`, and the shuffler run loop
//! from `fpaas-ingest` until SIGTERM / Ctrl-C, which drains in-flight publishes and saves the cursor.

use fpaas_ingest::ShufflerConfig;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// JSON file with `ShufflerConfig` fields (see docs/shuffler.md); flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Relay base URL.
    #[arg(long, env = "FPAAS_RELAY")]
    pub relay: Option<String>,
    /// Instance name: this shuffler's key in the cursor bucket; unique per running shuffler.
    #[arg(long, env = "FPAAS_INSTANCE")]
    pub instance: Option<String>,
    /// NATS URL(s), comma separated.
    #[arg(long, env = "FPAAS_NATS_URL")]
    pub nats_url: Option<String>,
    /// Stream name.
    #[arg(long)]
    pub stream: Option<String>,
    /// Replicas of the stream and of the cursor bucket (1 single server, 3 cluster): a replicated stream
    /// with an unreplicated cursor would stop saving cursors when that one node is down.
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Stream retention in seconds.
    #[arg(long)]
    pub max_age_secs: Option<u64>,
    /// Stream dedup window in seconds.
    #[arg(long)]
    pub duplicate_window_secs: Option<u64>,
    /// Largest stored message in bytes; larger events are dropped as payload_too_large.
    #[arg(long)]
    pub max_msg_size: Option<i32>,
    /// Stream disk guard in bytes, -1 unlimited.
    #[arg(long)]
    pub max_bytes: Option<i64>,
    /// Cursor KV bucket.
    #[arg(long)]
    pub cursor_bucket: Option<String>,
    /// Most publishes awaiting an ack at once.
    #[arg(long)]
    pub max_acks_in_flight: Option<usize>,
    /// Most frames read but not yet acked.
    #[arg(long)]
    pub max_pending_frames: Option<usize>,
    /// Save the cursor every N published events.
    #[arg(long)]
    pub cursor_save_every: Option<u64>,
    /// Save the cursor at least every T ms.
    #[arg(long)]
    pub cursor_save_interval_ms: Option<u64>,
    /// Reconnect when the relay is silent this long, ms.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Relay connect timeout, ms.
    #[arg(long)]
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for publish capacity / a JetStream answer before treating NATS as down, ms.
    #[arg(long)]
    pub publish_timeout_ms: Option<u64>,
    /// On shutdown, longest wait for in-flight acks, ms.
    #[arg(long)]
    pub drain_timeout_ms: Option<u64>,
    /// First retry delay, ms.
    #[arg(long)]
    pub backoff_min_ms: Option<u64>,
    /// Largest retry delay, ms.
    #[arg(long)]
    pub backoff_max_ms: Option<u64>,
    /// Longest wait for one publish ack / JetStream answer, ms.
    #[arg(long)]
    pub ack_timeout_ms: Option<u64>,
    /// While waiting for NATS: longest wait for one probe and for re-reading the cursors, ms.
    #[arg(long)]
    pub probe_timeout_ms: Option<u64>,
    /// A relay connection open this long resets the reconnect backoff, ms.
    #[arg(long)]
    pub relay_stable_ms: Option<u64>,
    /// Most payload bytes awaiting an ack at once.
    #[arg(long)]
    pub max_bytes_in_flight: Option<usize>,
    /// Instance-name lease lifetime, ms: a crashed holder's name is free after this.
    #[arg(long)]
    pub lease_ttl_ms: Option<u64>,
    /// Relay seq to start after when no cursor is stored for this relay (default: live).
    #[arg(long)]
    pub start_cursor: Option<i64>,
    /// Ops HTTP address (/metrics, /health, /ready, /health/detailed); `none` disables.
    #[arg(long, env = "FPAAS_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl Args {
    /// The configuration: defaults, then the file, then the flags.
    pub fn to_config(&self) -> anyhow::Result<ShufflerConfig> {
        let mut cfg: ShufflerConfig = super::load_config(self.config.as_deref(), "ShufflerConfig")?;
        super::set(&mut cfg.relay, &self.relay);
        super::set(&mut cfg.instance, &self.instance);
        super::set(&mut cfg.nats_url, &self.nats_url);
        super::set(&mut cfg.stream.name, &self.stream);
        super::set(&mut cfg.stream.replicas, &self.replicas);
        super::set(&mut cfg.cursor_kv.replicas, &self.replicas);
        super::set(&mut cfg.stream.max_age_secs, &self.max_age_secs);
        super::set(
            &mut cfg.stream.duplicate_window_secs,
            &self.duplicate_window_secs,
        );
        super::set(&mut cfg.stream.max_msg_size, &self.max_msg_size);
        super::set(&mut cfg.stream.max_bytes, &self.max_bytes);
        super::set(&mut cfg.cursor_kv.bucket, &self.cursor_bucket);
        super::set(&mut cfg.max_acks_in_flight, &self.max_acks_in_flight);
        super::set(&mut cfg.max_pending_frames, &self.max_pending_frames);
        super::set(&mut cfg.cursor_save_every_events, &self.cursor_save_every);
        super::set(
            &mut cfg.cursor_save_interval_ms,
            &self.cursor_save_interval_ms,
        );
        super::set(&mut cfg.idle_timeout_ms, &self.idle_timeout_ms);
        super::set(&mut cfg.connect_timeout_ms, &self.connect_timeout_ms);
        super::set(&mut cfg.publish_timeout_ms, &self.publish_timeout_ms);
        super::set(&mut cfg.drain_timeout_ms, &self.drain_timeout_ms);
        super::set(&mut cfg.backoff_min_ms, &self.backoff_min_ms);
        super::set(&mut cfg.backoff_max_ms, &self.backoff_max_ms);
        super::set(&mut cfg.ack_timeout_ms, &self.ack_timeout_ms);
        super::set(&mut cfg.probe_timeout_ms, &self.probe_timeout_ms);
        super::set(&mut cfg.relay_stable_ms, &self.relay_stable_ms);
        super::set(&mut cfg.max_bytes_in_flight, &self.max_bytes_in_flight);
        super::set(&mut cfg.lease_ttl_ms, &self.lease_ttl_ms);
        if self.start_cursor.is_some() {
            cfg.start_cursor = self.start_cursor;
        }
        if let Some(addr) = &self.metrics_listen {
            cfg.metrics_listen = match addr.as_str() {
                "" | "none" | "off" => None,
                a => Some(a.to_owned()),
            };
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = a.to_config()?;
    if super::service::print_config(a.print_config, &cfg)? {
        return Ok(());
    }
    let service = super::service::Service::start(
        cfg.metrics_listen.as_deref(),
        "draining in-flight publishes and saving the cursor",
    )
    .await?;
    // The shuffler mirrors its own NATS connection into the `nats` component.
    let result = fpaas_ingest::run(cfg, service.health.clone(), service.shutdown.clone()).await;
    service.stop().await;
    let stats = result?;
    tracing::info!(
        frames = stats.frames,
        events = stats.events,
        published = stats.published,
        duplicates = stats.duplicates,
        drops = stats.drops,
        cursor = ?stats.cursor_seq,
        "shuffler finished"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_then_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shuffler.json");
        std::fs::write(
            &path,
            r#"{"instance": "from-file", "max_acks_in_flight": 64, "stream": {"replicas": 3}}"#,
        )
        .expect("write");
        let args = Args {
            config: Some(path.clone()),
            instance: Some("from-flag".into()),
            metrics_listen: Some("none".into()),
            ..Default::default()
        };
        let cfg = args.to_config().expect("valid");
        assert_eq!(cfg.instance, "from-flag", "flags override the file");
        assert_eq!(cfg.max_acks_in_flight, 64, "file overrides the defaults");
        assert_eq!(cfg.stream.replicas, 3);
        // The file set only the stream's replicas; the flag sets both.
        let flagged = Args {
            replicas: Some(3),
            ..Default::default()
        }
        .to_config()
        .expect("valid");
        assert_eq!(flagged.cursor_kv.replicas, 3);
        assert_eq!(cfg.metrics_listen, None);
        assert_eq!(cfg.relay, fpaas_ingest::DEFAULT_RELAY);

        std::fs::write(&path, r#"{"instanse": "typo"}"#).expect("write");
        assert!(args.to_config().is_err(), "unknown fields are rejected");
        let bad = Args {
            max_acks_in_flight: Some(0),
            ..Default::default()
        };
        assert!(bad.to_config().is_err(), "validated");
    }
}
