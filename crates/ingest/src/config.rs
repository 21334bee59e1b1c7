//! [`ShufflerConfig`]: every setting of one shuffler instance, with defaults and validation in one place. The
//! doc comments are the user documentation (`fpaas shuffler` flags map onto these fields; a JSON or TOML file
//! with the same field names can be given with `--config`).

use fpaas_bus::{KvSettings, StreamSettings};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::error::IngestError;

/// Default relay.
pub const DEFAULT_RELAY: &str = "wss://bsky.network";

/// Settings of one shuffler instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShufflerConfig {
    /// Relay base URL (`wss://bsky.network`) or full `…/xrpc/com.atproto.sync.subscribeRepos` URL.
    pub relay: String,
    /// Name of this instance: its key in the cursor bucket (`[-_=.a-zA-Z0-9]`). Two shufflers running at once
    /// must have different names.
    pub instance: String,
    /// NATS URL(s), comma separated.
    pub nats_url: String,
    /// The JetStream stream the events go to (created or updated at start).
    pub stream: StreamSettings,
    /// The KV bucket holding the cursors (one key per instance).
    pub cursor_kv: KvSettings,
    /// Most publishes awaiting their JetStream ack at once. Reading from the relay pauses at this bound, so
    /// it (with the frame bound below) is what bounds the shuffler's memory.
    pub max_acks_in_flight: usize,
    /// Most frames read but not yet behind the watermark (frames with no events count too).
    pub max_pending_frames: usize,
    /// Save the cursor after this many published events (if it moved).
    pub cursor_save_every_events: u64,
    /// Save the cursor at least this often in milliseconds (if it moved).
    pub cursor_save_interval_ms: u64,
    /// Reconnect when the relay sends no frame for this long, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Relay connect (TCP + TLS + WebSocket handshake) timeout in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest wait for publish capacity or a JetStream answer before treating NATS as unreachable, in
    /// milliseconds.
    pub publish_timeout_ms: u64,
    /// On shutdown, longest wait for in-flight acks before the final cursor save, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Longest wait for one publish's JetStream ack (and for one JetStream API answer) before it counts as
    /// failed, in milliseconds. Default 2000: acks normally take milliseconds, and a stream leader lost with
    /// SIGKILL never answers, so this is how long such a publish delays the recovery.
    pub ack_timeout_ms: u64,
    /// While waiting for NATS after a publish failure: the longest wait for one probe (stream info), and for
    /// re-reading the cursor bucket before a reconnect, in milliseconds. Probes are at most 250 ms apart.
    /// Default 1000, so publishing resumes within about a second of the stream answering again (e.g. a new
    /// stream leader elected).
    pub probe_timeout_ms: u64,
    /// First retry delay (relay reconnects, waiting for NATS), in milliseconds.
    pub backoff_min_ms: u64,
    /// Largest retry delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// A relay connection that stayed open at least this long resets the relay reconnect backoff, in
    /// milliseconds. Shorter sessions (an error frame on every connect, a close after one frame) keep the
    /// delay growing from `backoff_min_ms` to `backoff_max_ms`, whatever they delivered.
    pub relay_stable_ms: u64,
    /// Most payload bytes of publishes awaiting their ack at once (with `max_acks_in_flight`, whichever
    /// bound is reached first pauses reading); a single message larger than this is still sent, alone.
    ///
    pub max_bytes_in_flight: usize,
    /// Lifetime of this instance's name lease in the `<cursor bucket>_leases` bucket, in milliseconds. The
    /// holder renews it every third of this; a second process with the same `instance` refuses to start
    /// while the holder renews, and takes over a lease nobody renewed for this long (a crashed holder), or at
    /// once when the holder was a dead process on the same host.
    pub lease_ttl_ms: u64,
    /// Cursor to start from when no instance has saved one for this relay; absent = live.
    pub start_cursor: Option<i64>,
    /// Address of the ops HTTP server (`/metrics`, `/health`, `/ready`, `/health/detailed`) when run as
    /// `fpaas shuffler`; absent = no server.
    pub metrics_listen: Option<String>,
}

impl Default for ShufflerConfig {
    fn default() -> Self {
        Self {
            relay: DEFAULT_RELAY.to_owned(),
            instance: "shuffler-0".to_owned(),
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            stream: StreamSettings::default(),
            cursor_kv: KvSettings::default(),
            max_acks_in_flight: 1024,
            max_pending_frames: 8192,
            cursor_save_every_events: 1000,
            cursor_save_interval_ms: 1000,
            idle_timeout_ms: 60_000,
            connect_timeout_ms: 10_000,
            publish_timeout_ms: 10_000,
            drain_timeout_ms: 10_000,
            ack_timeout_ms: 2_000,
            probe_timeout_ms: 1_000,
            backoff_min_ms: 100,
            backoff_max_ms: 30_000,
            relay_stable_ms: 10_000,
            max_bytes_in_flight: 64 * 1024 * 1024,
            lease_ttl_ms: 10_000,
            start_cursor: None,
            metrics_listen: Some("127.0.0.1:9100".to_owned()),
        }
    }
}

impl ShufflerConfig {
    /// Checks every field; the run loop relies on these bounds.
    ///
    /// # Errors
    /// [`IngestError::Config`] naming the field.
    pub fn validate(&self) -> Result<(), IngestError> {
        let bad = |msg: String| Err(IngestError::Config(msg));
        crate::relay::subscribe_url(&self.relay, None)
            .map_err(|e| IngestError::Config(e.to_string()))?;
        if !fpaas_bus::is_valid_kv_key(&self.instance) {
            return bad(format!(
                "instance {:?} must be a valid KV key ([-/_=.a-zA-Z0-9], no leading/trailing '.')",
                self.instance
            ));
        }
        if self.nats_url.trim().is_empty() {
            return bad("nats_url must not be empty".to_owned());
        }
        self.stream
            .validate()
            .map_err(|e| IngestError::Config(format!("stream: {e}")))?;
        let positive = [
            ("max_acks_in_flight", self.max_acks_in_flight as u64),
            ("max_pending_frames", self.max_pending_frames as u64),
            ("cursor_save_every_events", self.cursor_save_every_events),
            ("cursor_save_interval_ms", self.cursor_save_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("publish_timeout_ms", self.publish_timeout_ms),
            ("backoff_min_ms", self.backoff_min_ms),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("probe_timeout_ms", self.probe_timeout_ms),
            ("max_bytes_in_flight", self.max_bytes_in_flight as u64),
            ("lease_ttl_ms", self.lease_ttl_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be > 0"));
        }
        if self.backoff_max_ms < self.backoff_min_ms {
            return bad(format!(
                "backoff_max_ms ({}) must be >= backoff_min_ms ({})",
                self.backoff_max_ms, self.backoff_min_ms
            ));
        }
        if self.max_acks_in_flight > 65_536 {
            return bad(format!(
                "max_acks_in_flight ({}) must be <= 65536",
                self.max_acks_in_flight
            ));
        }
        Ok(())
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub(crate) fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    pub(crate) fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
    pub(crate) fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }
    pub(crate) fn relay_stable(&self) -> Duration {
        Duration::from_millis(self.relay_stable_ms)
    }
    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
    /// Backoff of the probes while waiting for NATS: from `backoff_min_ms`, capped at 250 ms (or
    /// `probe_timeout_ms`, if shorter).
    pub(crate) fn probe_backoff(&self) -> fpaas_bus::Backoff {
        let cap = self.probe_timeout_ms.min(250);
        fpaas_bus::Backoff::new(
            Duration::from_millis(self.backoff_min_ms.min(cap)),
            Duration::from_millis(cap),
        )
    }
    pub(crate) fn save_interval(&self) -> Duration {
        Duration::from_millis(self.cursor_save_interval_ms)
    }
    pub(crate) fn backoff(&self) -> fpaas_bus::Backoff {
        fpaas_bus::Backoff::new(
            Duration::from_millis(self.backoff_min_ms),
            Duration::from_millis(self.backoff_max_ms),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ShufflerConfig::default()
            .validate()
            .expect("defaults valid");
    }

    #[test]
    fn rejects_bad_fields_and_unknown_keys() {
        let cases = [
            ShufflerConfig {
                relay: "http://x".into(),
                ..Default::default()
            },
            ShufflerConfig {
                instance: "a b".into(),
                ..Default::default()
            },
            ShufflerConfig {
                max_acks_in_flight: 0,
                ..Default::default()
            },
            ShufflerConfig {
                backoff_max_ms: 1,
                ..Default::default()
            },
        ];
        for c in cases {
            assert!(matches!(c.validate(), Err(IngestError::Config(_))), "{c:?}");
        }
        let parsed: ShufflerConfig =
            serde_json::from_str(r#"{"instance": "b", "stream": {"replicas": 3}}"#).expect("parse");
        assert_eq!(parsed.instance, "b");
        assert_eq!(parsed.stream.replicas, 3);
        assert_eq!(parsed.max_acks_in_flight, 1024);
        assert!(serde_json::from_str::<ShufflerConfig>(r#"{"instanse": "b"}"#).is_err());
    }
}
