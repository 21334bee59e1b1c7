//! The instance-name lease: at most one running shuffler per `instance` name, because the name is the key of
//! its cursor and two writers of one key overwrite each other (with different relays the survivor may then
//! find no cursor for its relay and start live: a gap).
//!
//! The lease is one key (the instance name) in the bucket `<cursor bucket>_leases`, value
//! `{"instance", "token", "host", "pid", "node", "started_at"}` (JSON; `token` is random per process run,
//! `node` identifies the machine boot and PID namespace). Protocol, all by compare-and-set on the key's
//! revision, so no clock is compared across machines:
//! - **acquire**: create the key. If it exists, watch it for `lease_ttl`: a holder that renews it (the
//!   revision changes) is alive → refuse with [`IngestError::Lease`] naming it. A key nobody renewed for
//!   `lease_ttl` belongs to a crashed process → take it over (CAS on the revision seen). When the holder was a
//!   process on this very node (same boot and PID namespace) that no longer runs, take over at once: a
//!   `kill -9` and restart on the same machine does not wait.
//! - **renew** every `lease_ttl / 3` (CAS). A NATS outage only delays renewals; a CAS that fails because
//!   another process took the lease over (we were cut off longer than `lease_ttl`) means the lease is lost:
//!   the shuffler stops, with the error.
//! - **release** on graceful shutdown: delete the key if it is still ours.

use std::time::Duration;

use bytes::Bytes;
use fpaas_bus::{BusError, BusErrorKind, KvBucket, KvEntry, KvState, KvWrite};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::IngestError;

/// The value stored under the lease key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The instance name.
    pub instance: String,
    /// Random per process run: tells our own writes from another holder's.
    pub token: String,
    /// Host name of the holder (for the error message).
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Machine boot id and PID namespace of the holder: `pid` is only meaningful on the same `node`.
    pub node: String,
    /// When the holder started (RFC 3339).
    pub started_at: String,
}

impl LeaseValue {
    fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            token: format!("{:016x}", rand::rng().random::<u64>()),
            host: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
            pid: std::process::id(),
            node: node_id(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    fn parse(value: &[u8]) -> Option<Self> {
        serde_json::from_slice(value).ok()
    }

    fn describe(&self) -> String {
        format!(
            "pid {} on host {:?}, started {}",
            self.pid, self.host, self.started_at
        )
    }

    /// Whether this holder was a process on our node that no longer runs.
    fn is_dead_local_process(&self) -> bool {
        if self.node.is_empty() || self.node != node_id() || self.pid == std::process::id() {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(_) => true,
            // A zombie (killed, not yet reaped) is dead too: the state follows the ")" of the name.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Boot id + PID namespace of this process (empty where `/proc` does not tell).
fn node_id() -> String {
    let boot = read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if boot.is_empty() || ns.is_empty() {
        String::new()
    } else {
        format!("{boot}/{ns}")
    }
}

/// The lease bucket of a cursor bucket.
pub fn lease_bucket(cursor_bucket: &str) -> String {
    format!("{cursor_bucket}_leases")
}

fn lease_err(what: String, source: BusError) -> IngestError {
    IngestError::Cursor { what, source }
}

/// A write that neither succeeded nor conflicted (the value exceeds `max_payload`).
fn too_large(what: String) -> IngestError {
    let source = BusError::new(BusErrorKind::MaxPayload, "lease value too large");
    lease_err(what, source)
}

/// The holder recorded in `entry`, if it is a readable lease value (not a delete marker).
fn holder_of(entry: &KvEntry) -> Option<LeaseValue> {
    match &entry.state {
        KvState::Value(value) => LeaseValue::parse(value),
        KvState::Deleted { .. } => None,
    }
}

/// A lease this process holds.
#[derive(Debug)]
pub struct HeldLease {
    bucket: KvBucket,
    value: LeaseValue,
    revision: u64,
}

/// Acquires the lease of `instance` in `store`, watching an existing holder for up to `ttl`. `Ok(None)` on
/// shutdown.
///
/// # Errors
/// [`IngestError::Lease`] when a live process holds it; [`IngestError::Cursor`] when NATS fails (retry).
pub async fn acquire(
    bucket: &KvBucket,
    instance: &str,
    ttl: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<HeldLease>, IngestError> {
    let me = LeaseValue::new(instance);
    let held = |revision| {
        Some(HeldLease {
            bucket: bucket.clone(),
            value: me.clone(),
            revision,
        })
    };
    let poll = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        match bucket.create(instance, me.to_bytes()).await {
            Ok(KvWrite::Written(revision)) => return Ok(held(revision)),
            Ok(KvWrite::Conflict) => {}
            Ok(KvWrite::TooLarge) => return Err(too_large(format!("create lease {instance}"))),
            Err(e) => return Err(lease_err(format!("create lease {instance}"), e)),
        }
        let entry = bucket
            .entry(instance)
            .await
            .map_err(|e| lease_err(format!("read lease {instance}"), e))?;
        let Some(seen) = entry else { continue };
        let holder = holder_of(&seen);
        let free = !matches!(seen.state, KvState::Value(_))
            || holder
                .as_ref()
                .is_none_or(LeaseValue::is_dead_local_process);
        if !free {
            let holder_text = holder
                .as_ref()
                .map(LeaseValue::describe)
                .unwrap_or_default();
            tracing::warn!(instance, holder = %holder_text, ttl_ms = ttl.as_millis() as u64,
                "instance name lease held; waiting to see whether its holder renews it");
            let deadline = tokio::time::Instant::now() + ttl;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(poll) => {}
                }
                let now = bucket
                    .entry(instance)
                    .await
                    .map_err(|e| lease_err(format!("read lease {instance}"), e))?;
                match now {
                    Some(e)
                        if e.revision != seen.revision && matches!(e.state, KvState::Value(_)) =>
                    {
                        let by = holder_of(&e).map(|v| v.describe()).unwrap_or(holder_text);
                        return Err(IngestError::Lease {
                            instance: instance.to_owned(),
                            detail: format!("held by a live process ({by}) that renewed its lease"),
                        });
                    }
                    Some(e) if e.revision == seen.revision => {}
                    _ => break, // released or deleted meanwhile: try to create it again
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(instance, holder = %holder_text, "lease not renewed for lease_ttl: its holder is gone; taking it over");
                    break;
                }
            }
        }
        match bucket.update(instance, me.to_bytes(), seen.revision).await {
            Ok(KvWrite::Written(revision)) => return Ok(held(revision)),
            // Someone else was faster (or the holder renewed at the last moment): look again.
            Ok(KvWrite::Conflict) => continue,
            Ok(KvWrite::TooLarge) => return Err(too_large(format!("take over lease {instance}"))),
            Err(e) => return Err(lease_err(format!("take over lease {instance}"), e)),
        }
    }
}

impl HeldLease {
    /// Renews the lease every `ttl / 3` until `stop` is cancelled, then releases it. Returns `Err` (and cancels
    /// `lost`) when another process took it over.
    pub async fn keep(
        mut self,
        ttl: Duration,
        stop: CancellationToken,
        lost: CancellationToken,
    ) -> Result<(), IngestError> {
        let every = ttl / 3;
        let key = self.value.instance.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            match tokio::time::timeout(
                every,
                self.bucket
                    .update(key.as_str(), self.value.to_bytes(), self.revision),
            )
            .await
            {
                Ok(Ok(KvWrite::Written(revision))) => self.revision = revision,
                Ok(Ok(KvWrite::Conflict)) => {
                    // Our own renewal may have landed with its ack lost: then the value is still ours.
                    match self.bucket.entry(key.as_str()).await {
                        Ok(Some(entry))
                            if holder_of(&entry).is_some_and(|v| v.token == self.value.token) =>
                        {
                            self.revision = entry.revision;
                        }
                        Ok(entry) => {
                            let by = entry
                                .as_ref()
                                .and_then(holder_of)
                                .map(|v| v.describe())
                                .unwrap_or_else(|| "nobody (deleted)".to_owned());
                            tracing::error!(instance = %key, by = %by, "instance name lease lost; stopping");
                            lost.cancel();
                            return Err(IngestError::Lease {
                                instance: key,
                                detail: format!(
                                    "the lease was taken over by {by} while this process could not renew it"
                                ),
                            });
                        }
                        Err(e) => {
                            tracing::warn!(instance = %key, error = %e, "lease check failed; retrying")
                        }
                    }
                }
                Ok(Ok(KvWrite::TooLarge)) => {
                    tracing::warn!(instance = %key, "lease renewal refused (too large); retrying")
                }
                Ok(Err(e)) => {
                    tracing::warn!(instance = %key, error = %e, "lease renewal failed; retrying")
                }
                Err(_) => tracing::warn!(instance = %key, "lease renewal timed out; retrying"),
            }
        }
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.bucket.delete(key.as_str(), Some(self.revision), None),
        )
        .await
        {
            Ok(Ok(KvWrite::Written(_))) => tracing::debug!(instance = %key, "lease released"),
            other => {
                tracing::warn!(instance = %key, result = ?other.map(|r| r.map_err(|e| e.to_string())), "lease not released; it expires after lease_ttl")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_of_local_holders() {
        let me = LeaseValue::new("x");
        assert!(!me.is_dead_local_process(), "we are alive");
        let gone = LeaseValue {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert!(gone.is_dead_local_process(), "no such pid on this node");
        let elsewhere = LeaseValue {
            node: "other-boot/pid:[1]".to_owned(),
            ..gone
        };
        assert!(
            !elsewhere.is_dead_local_process(),
            "a pid on another node says nothing"
        );
        assert_eq!(LeaseValue::parse(&me.to_bytes()), Some(me));
    }
}
