//! Pull delivery, the reading side: a `pull` subscription's batches wait in the stream
//! [`layout::PULL_STREAM`] (one message per batch, stored by the worker), and a client fetches them
//! ([`Store::pull`]) and acknowledges them ([`Store::ack`]). There is no consumer per subscription: a pull reads
//! by subject from the stream leader (consistent with the deletes of acks just made), and what was fetched is
//! recorded in one KV record per subscription ([`PullState`] in [`layout::PULL_BUCKET`]), written by
//! compare-and-set so concurrent pulls never lease the same batch twice.
//!
//! The record holds the batches fetched and not acknowledged, each with its sequence, id, how often it was
//! delivered and when it becomes visible again, and `high_water`: the highest sequence ever fetched. Every
//! waiting batch at or below it is in the record (batches are stored in order and fetched in order), so a pull
//! reads (1) the recorded batches whose lease expired, by sequence, then (2) the batches after `high_water`,
//! and never reads the body of a batch under lease. An idle pull is one KV get and one message get that finds
//! nothing; an empty pull writes nothing.
//!
//! An ack deletes the batch's message and drops it from the record: a batch leaves the stream only by an
//! ack (or by the stream's 7-day retention, or the subscription's deletion).

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use fpaas_bus::{KvState, KvWrite, LoggedMsg};
use serde::{Deserialize, Serialize};

use crate::error::{StoreError, StoreErrorKind};
use crate::layout;
use crate::model::PullDelivery;
use crate::store::Store;
use crate::validate::{ValidationCode, ValidationError};

/// Bounds of a pull request's `max_events`.
pub const PULL_MAX_EVENTS_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;
/// Bounds of a pull request's `max_bytes`.
pub const PULL_MAX_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1_024..=16 * 1024 * 1024;
/// Longest long-poll of a pull request, in ms.
pub const PULL_MAX_WAIT_MS: u64 = 30_000;
/// Most ids in one ack.
pub const MAX_ACK_IDS: usize = 1_000;
/// Longest id in an ack (a batch id is far shorter).
pub const MAX_ACK_ID_BYTES: usize = 256;
/// Compare-and-set attempts of one pull or ack before it answers 409.
const CAS_ATTEMPTS: usize = 8;

/// What a client asks a pull for. At least one batch is returned when one is visible, even if it alone
/// exceeds `max_events` or `max_bytes` (batches are never split; keep the subscription's `batching` within
/// the pull's limits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PullRequest {
    /// Most events in the answer, over all its batches (1..=10,000; default 1,000).
    pub max_events: u32,
    /// Most bytes of batch bodies in the answer (1 KiB..=16 MiB; default 1 MiB).
    pub max_bytes: u64,
    /// When nothing is visible, wait up to this long for a batch (long poll), in ms (0..=30,000; default 0:
    /// answer at once).
    pub max_wait_ms: u64,
}

impl Default for PullRequest {
    fn default() -> Self {
        Self {
            max_events: 1_000,
            max_bytes: 1024 * 1024,
            max_wait_ms: 0,
        }
    }
}

impl PullRequest {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`ValidationCode::LimitExceeded`] naming the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let limit = |field: &str, message: String| {
            ValidationError::new(ValidationCode::LimitExceeded, field, message)
        };
        if !PULL_MAX_EVENTS_RANGE.contains(&self.max_events) {
            return Err(limit(
                "max_events",
                format!("{} is outside {PULL_MAX_EVENTS_RANGE:?}", self.max_events),
            ));
        }
        if !PULL_MAX_BYTES_RANGE.contains(&self.max_bytes) {
            return Err(limit(
                "max_bytes",
                format!("{} is outside {PULL_MAX_BYTES_RANGE:?}", self.max_bytes),
            ));
        }
        if self.max_wait_ms > PULL_MAX_WAIT_MS {
            return Err(limit(
                "max_wait_ms",
                format!("{} is more than {PULL_MAX_WAIT_MS}", self.max_wait_ms),
            ));
        }
        Ok(())
    }
}

/// One fetched batch.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PulledBatch {
    /// The batch id (`<sub_id>.<from_seq>-<to_seq>.g<generation>`, the `webhook-id` a webhook would get); pass
    /// it to `ack`.
    pub id: String,
    /// How many times this batch was handed out, this time included (2 and more: a redelivery after an
    /// expired visibility timeout).
    pub deliveries: u32,
    /// When it becomes visible to pulls again unless acknowledged (RFC 3339).
    pub visible_again_at: String,
    /// Stream sequence of its first event.
    pub from_seq: u64,
    /// Stream sequence of its last event.
    pub to_seq: u64,
    /// Size of the stored batch body in bytes.
    pub bytes: u64,
    /// The events, exactly as a webhook body carries them (`{id, seq, time_us, data}` each).
    #[schemars(with = "Vec<serde_json::Value>")]
    pub events: Box<serde_json::value::RawValue>,
}

/// What a pull returns.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PullResponse {
    /// Oldest first; empty when nothing was visible (within `max_wait_ms`).
    pub batches: Vec<PulledBatch>,
}

/// What a client acknowledges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Batch ids from pulls of this subscription (1..=1,000).
    pub ids: Vec<String>,
}

/// What an ack did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AckResponse {
    /// Ids removed now (also when their lease had expired: the batch was processed).
    pub acked: Vec<String>,
    /// Ids that are not waiting: already acknowledged, never fetched, or not of this subscription. Not an error
    /// (an ack repeated after a lost answer lands here).
    pub unknown: Vec<String>,
}

/// A fetched, unacknowledged batch in a [`PullState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leased {
    /// Stream sequence of its message.
    pub seq: u64,
    /// Batch id.
    pub id: String,
    /// Times handed out.
    pub deliveries: u32,
    /// Unix ms when it becomes visible again.
    pub visible_at_ms: i64,
}

/// The lease record of a pull subscription (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PullState {
    /// Highest stream sequence ever fetched.
    pub high_water: u64,
    /// Fetched, not acknowledged, by sequence.
    pub batches: Vec<Leased>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn rfc3339_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Events and `events` array of a stored batch.
fn parts(m: &LoggedMsg) -> Option<(u64, Box<serde_json::value::RawValue>)> {
    #[derive(Deserialize)]
    struct Body {
        events: Box<serde_json::value::RawValue>,
    }
    let events = m
        .header(layout::HDR_EVENTS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body: Body = serde_json::from_slice(&m.payload).ok()?;
    Some((events, body.events))
}

/// What one pass over the waiting batches found.
struct Pass {
    batches: Vec<PulledBatch>,
    /// The earliest time a leased batch becomes visible again (unix ms).
    next_visible_ms: Option<i64>,
}

impl Store {
    /// The pull settings of a subscription of the tenant: 404 when it is not the tenant's, 409 when it does
    /// not deliver by pull.
    async fn pull_delivery(
        &self,
        tenant_id: &str,
        sub_id: &str,
    ) -> Result<PullDelivery, StoreError> {
        let (sub, _) = self.subscription(tenant_id, sub_id).await?;
        sub.delivery.pull().cloned().ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Conflict,
                format!(
                    "subscription {sub_id} does not deliver by pull (its delivery is not \"type\": \"pull\")"
                ),
            )
        })
    }

    async fn pull_state(&self, sub_id: &str) -> Result<(PullState, Option<u64>), StoreError> {
        let key = layout::pull_key(sub_id);
        match self.pull_bucket().entry(&key).await? {
            Some(entry) => match entry.state {
                KvState::Value(bytes) => {
                    let state = serde_json::from_slice(&bytes).map_err(|e| {
                        StoreError::with_source(
                            StoreErrorKind::Corrupt,
                            format!("pull record {key} cannot be decoded"),
                            e,
                        )
                    })?;
                    Ok((state, Some(entry.revision)))
                }
                KvState::Deleted { .. } => Ok((PullState::default(), Some(entry.revision))),
            },
            None => Ok((PullState::default(), None)),
        }
    }

    /// Writes the record if it is still at `revision`; `false` on a concurrent change.
    async fn put_pull_state(
        &self,
        sub_id: &str,
        state: &PullState,
        revision: Option<u64>,
    ) -> Result<bool, StoreError> {
        let key = layout::pull_key(sub_id);
        let bytes = Bytes::from(serde_json::to_vec(state).unwrap_or_default());
        let written = match revision {
            None => self.pull_bucket().create(&key, bytes).await?,
            Some(r) => self.pull_bucket().update(&key, bytes, r).await?,
        };
        match written {
            KvWrite::Written(_) => Ok(true),
            KvWrite::Conflict => Ok(false),
            KvWrite::TooLarge => Err(StoreError::new(
                StoreErrorKind::TooLarge,
                format!("pull record of {sub_id} is larger than the server accepts"),
            )),
        }
    }

    /// Fetches the next visible batches of a `pull` subscription of the tenant and leases them for its
    /// visibility timeout; with `max_wait_ms`, waits for one when none is visible.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] (not the tenant's), [`StoreErrorKind::Conflict`] (not a pull
    /// subscription, or the record kept changing), [`StoreErrorKind::Invalid`] (bounds),
    /// [`StoreErrorKind::Unavailable`].
    pub async fn pull(
        &self,
        tenant_id: &str,
        sub_id: &str,
        request: &PullRequest,
    ) -> Result<PullResponse, StoreError> {
        let delivery = self.pull_delivery(tenant_id, sub_id).await?;
        request.validate()?;
        let subject = layout::pull_subject(tenant_id, sub_id);
        let deadline = deadline_after(request.max_wait_ms);
        let mut watch = None;
        loop {
            let pass = self.pull_pass(sub_id, &subject, &delivery, request).await?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !pass.batches.is_empty() || left.is_zero() {
                return Ok(PullResponse {
                    batches: pass.batches,
                });
            }
            // Subscribe first, then look again: a batch stored in between is seen by the second pass.
            let Some(w) = watch.as_mut() else {
                watch = Some(self.pull_log().watch(&subject).await?);
                continue;
            };
            let until_visible = pass.next_visible_ms.map_or(left, |at| {
                Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0).max(10))
            });
            w.wait(left.min(until_visible)).await;
        }
    }

    /// One pass: expired leases first, then batches never fetched; leases what it takes by compare-and-set.
    async fn pull_pass(
        &self,
        sub_id: &str,
        subject: &str,
        delivery: &PullDelivery,
        request: &PullRequest,
    ) -> Result<Pass, StoreError> {
        let visibility = i64::try_from(delivery.visibility_timeout_ms).unwrap_or(i64::MAX / 2);
        for _ in 0..CAS_ATTEMPTS {
            let (state, revision) = self.pull_state(sub_id).await?;
            let now = now_ms();
            let visible_at = now.saturating_add(visibility);
            let (mut events, mut bytes) = (0u64, 0u64);
            let mut full = false;
            let mut taken: Vec<PulledBatch> = Vec::new();
            let mut next = PullState {
                high_water: state.high_water,
                batches: Vec::with_capacity(state.batches.len()),
            };
            // Takes `m` when it fits (the first always does).
            let mut take = |m: &LoggedMsg, entry: &mut Leased| -> bool {
                let Some((n, list)) = parts(m) else {
                    // Not one of ours (cannot happen: the worker writes these); skipped, left for its ack.
                    return true;
                };
                let size = m.payload.len() as u64;
                if !taken.is_empty()
                    && (events + n > u64::from(request.max_events)
                        || bytes + size > request.max_bytes)
                {
                    return false;
                }
                events += n;
                bytes += size;
                entry.deliveries = entry.deliveries.saturating_add(1);
                entry.visible_at_ms = visible_at;
                let num = |h: &str| m.header(h).and_then(|v| v.parse().ok()).unwrap_or(0);
                taken.push(PulledBatch {
                    id: entry.id.clone(),
                    deliveries: entry.deliveries,
                    visible_again_at: rfc3339_ms(visible_at),
                    from_seq: num(layout::HDR_FROM_SEQ),
                    to_seq: num(layout::HDR_TO_SEQ),
                    bytes: size,
                    events: list,
                });
                true
            };
            let mut sorted = state.batches.clone();
            sorted.sort_by_key(|b| b.seq);
            for mut entry in sorted {
                if full || entry.visible_at_ms > now {
                    next.batches.push(entry);
                    continue;
                }
                match self.pull_log().get(entry.seq).await? {
                    // Gone (acknowledged by a racing ack, or expired by retention): forgotten.
                    None => {}
                    Some(m) if m.subject != subject => {}
                    Some(m) => {
                        full = !take(&m, &mut entry);
                        next.batches.push(entry);
                    }
                }
            }
            while !full {
                let Some(m) = self
                    .pull_log()
                    .list(subject, next.high_water + 1, 1)
                    .await?
                    .into_iter()
                    .next()
                else {
                    break;
                };
                let mut entry = Leased {
                    seq: m.seq,
                    id: m
                        .header(layout::HDR_BATCH_ID)
                        .map_or_else(|| format!("{sub_id}.seq{}", m.seq), str::to_owned),
                    deliveries: 0,
                    visible_at_ms: 0,
                };
                if take(&m, &mut entry) {
                    next.high_water = m.seq;
                    next.batches.push(entry);
                } else {
                    full = true;
                }
            }
            if taken.is_empty() {
                if next.batches.len() != state.batches.len() {
                    // Leases of batches that are gone: forgotten (a lost race only delays that).
                    self.put_pull_state(sub_id, &next, revision).await?;
                }
                return Ok(Pass {
                    batches: taken,
                    next_visible_ms: next
                        .batches
                        .iter()
                        .map(|b| b.visible_at_ms)
                        .filter(|at| *at > now)
                        .min(),
                });
            }
            if self.put_pull_state(sub_id, &next, revision).await? {
                return Ok(Pass {
                    batches: taken,
                    next_visible_ms: None,
                });
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Conflict,
            format!("subscription {sub_id} was pulled concurrently; retry"),
        ))
    }

    /// Acknowledges fetched batches of a `pull` subscription of the tenant: their messages are deleted and
    /// their leases dropped. Ids not waiting are listed as `unknown`.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`], [`StoreErrorKind::Conflict`] (not a pull subscription, or the record kept
    /// changing), [`StoreErrorKind::Invalid`] (no ids, too many, too long), [`StoreErrorKind::Unavailable`].
    pub async fn ack(
        &self,
        tenant_id: &str,
        sub_id: &str,
        request: &AckRequest,
    ) -> Result<AckResponse, StoreError> {
        self.pull_delivery(tenant_id, sub_id).await?;
        if request.ids.is_empty() || request.ids.len() > MAX_ACK_IDS {
            return Err(ValidationError::new(
                ValidationCode::LimitExceeded,
                "ids",
                format!("{} ids; 1..={MAX_ACK_IDS}", request.ids.len()),
            )
            .into());
        }
        if request.ids.iter().any(|id| id.len() > MAX_ACK_ID_BYTES) {
            return Err(ValidationError::new(
                ValidationCode::LimitExceeded,
                "ids",
                format!("an id longer than {MAX_ACK_ID_BYTES} bytes"),
            )
            .into());
        }
        for _ in 0..CAS_ATTEMPTS {
            let (state, revision) = self.pull_state(sub_id).await?;
            let mut out = AckResponse::default();
            let mut next = PullState {
                high_water: state.high_water,
                batches: Vec::with_capacity(state.batches.len()),
            };
            for entry in state.batches {
                if request.ids.contains(&entry.id) {
                    // Deleted before the record says so: a failed write below leaves a lease on nothing,
                    // which the next pull forgets.
                    self.pull_log().delete(entry.seq).await?;
                    out.acked.push(entry.id);
                } else {
                    next.batches.push(entry);
                }
            }
            for id in &request.ids {
                if !out.acked.contains(id) && !out.unknown.contains(id) {
                    out.unknown.push(id.clone());
                }
            }
            if out.acked.is_empty() || self.put_pull_state(sub_id, &next, revision).await? {
                return Ok(out);
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Conflict,
            format!("subscription {sub_id} was acknowledged concurrently; retry"),
        ))
    }

    /// Removes a subscription's waiting batches and its lease record.
    pub(crate) async fn purge_pull(&self, tenant_id: &str, sub_id: &str) -> Result<(), StoreError> {
        self.pull_log()
            .purge(&layout::pull_subject(tenant_id, sub_id))
            .await?;
        self.pull_bucket().remove(&layout::pull_key(sub_id)).await?;
        Ok(())
    }
}

/// The instant `max_wait_ms` from now.
fn deadline_after(max_wait_ms: u64) -> std::time::Instant {
    std::time::Instant::now() + Duration::from_millis(max_wait_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_take_defaults_refuse_unknown_fields_and_check_bounds() {
        let r: PullRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!(r, PullRequest::default());
        r.validate().unwrap();
        assert!(serde_json::from_value::<PullRequest>(json!({"max_event": 1})).is_err());
        assert!(serde_json::from_value::<AckRequest>(json!({"ids": [], "x": 1})).is_err());
        let field = |r: PullRequest| r.validate().unwrap_err().field;
        let d = PullRequest::default;
        assert_eq!(
            field(PullRequest {
                max_events: 0,
                ..d()
            }),
            "max_events"
        );
        assert_eq!(
            field(PullRequest {
                max_events: 10_001,
                ..d()
            }),
            "max_events"
        );
        assert_eq!(
            field(PullRequest {
                max_bytes: 1_023,
                ..d()
            }),
            "max_bytes"
        );
        assert_eq!(
            field(PullRequest {
                max_wait_ms: 30_001,
                ..d()
            }),
            "max_wait_ms"
        );
        PullRequest {
            max_events: 10_000,
            max_bytes: 16 * 1024 * 1024,
            max_wait_ms: 30_000,
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn the_lease_record_tolerates_missing_fields() {
        let s: PullState = serde_json::from_value(json!({"high_water": 7})).unwrap();
        assert_eq!(s.high_water, 7);
        assert!(s.batches.is_empty());
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
