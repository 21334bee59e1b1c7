//! The `kv` delivery: a batch's events written into a tenant's state bucket (`docs/mapreduce.md`, State).
//!
//! [`KvTarget`] is a subscription's `kv` delivery compiled (its JMESPath expressions); [`plan`] turns a batch
//! into the writes it makes (pure: keys from the key expression, encoded with
//! [`fpaas_control::layout::encode_state_key`]; for `put` the last value per key, for `incr` the sum per key);
//! [`write`] stores them. Every write carries the id `<batch id>:<key>`, so a batch written again after a
//! crash or a failed attempt (the same batch id, the same events) changes nothing the bucket already took:
//! a put is dropped as a duplicate (and would be idempotent anyway), an increment is dropped by the counter
//! bucket's duplicate window and **not counted twice**. `fpaas bench collect` measures [`write`] against a
//! real bucket.

use std::collections::BTreeMap;

use bytes::Bytes;
use fpaas_bus::{BusError, StateBucket, StateOp, StateWrite, WriteReport};
use fpaas_control::{KvDelivery, KvOp, layout};
use fpaas_filter::{Data, Expr, ExprError};

/// A `kv` delivery compiled for the worker.
#[derive(Debug)]
pub struct KvTarget {
    /// The NATS KV bucket (`fpaas_state_<tenant>_<name>`).
    pub kv_bucket: String,
    /// Put or incr.
    pub op: KvOp,
    /// Retry waits (ms) of a batch whose writes failed.
    pub retry_schedule_ms: Vec<u64>,
    key: Expr,
    value: Option<Expr>,
    by: Option<Expr>,
}

impl KvTarget {
    /// Compiles the delivery of a subscription of `tenant_id`.
    ///
    /// # Errors
    /// When an expression does not compile (the API validated them; a stored one could still be older).
    pub fn new(tenant_id: &str, kv: &KvDelivery) -> Result<Self, ExprError> {
        Ok(Self {
            kv_bucket: layout::state_kv_bucket(tenant_id, &kv.bucket),
            op: kv.op,
            retry_schedule_ms: kv.retry.schedule_ms.clone(),
            key: Expr::compile(&kv.key)?,
            value: kv.value.as_deref().map(Expr::compile).transpose()?,
            by: kv.by.as_deref().map(Expr::compile).transpose()?,
        })
    }
}

/// Why an event wrote nothing (the label of `fpaas_pipeline_state_skipped_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// The event is not JSON.
    NotJson,
    /// The key expression gave no string (or failed).
    NoKey,
    /// The key is empty or longer than 1,024 bytes once encoded.
    BadKey,
    /// The value expression failed, or `by` gave no integer.
    BadValue,
}

impl Skip {
    /// Every reason, for exporting the counters from zero.
    pub const ALL: [Skip; 4] = [Skip::NotJson, Skip::NoKey, Skip::BadKey, Skip::BadValue];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Skip::NotJson => "not_json",
            Skip::NoKey => "no_key",
            Skip::BadKey => "bad_key",
            Skip::BadValue => "bad_value",
        }
    }
}

/// The writes of one batch and what was skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// One write per key, in key order.
    pub writes: Vec<StateWrite>,
    /// Events skipped, by reason.
    pub skipped: BTreeMap<Skip, u64>,
}

/// An integer from a JMESPath result: an integral number within `i64` (JMESPath arithmetic gives floats).
fn integer(v: &serde_json::Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // The casts are exact: f is integral and inside the range.
    #[allow(clippy::cast_possible_truncation)]
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// The writes `target` makes of the events `data` (each event's delivered JSON, in batch order) of the batch
/// `batch_id`: never panics on any input; what cannot be written is counted in [`Plan::skipped`].
pub fn plan<'a>(
    target: &KvTarget,
    batch_id: &str,
    data: impl IntoIterator<Item = &'a [u8]>,
) -> Plan {
    let mut puts: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut incrs: BTreeMap<String, i64> = BTreeMap::new();
    let mut skipped: BTreeMap<Skip, u64> = BTreeMap::new();
    for raw in data {
        let outcome = (|| {
            let event = Data::from_json_bytes(raw).map_err(|_| Skip::NotJson)?;
            let key = match target.key.search_data(&event) {
                Ok(serde_json::Value::String(k)) => k,
                _ => return Err(Skip::NoKey),
            };
            let key = layout::encode_state_key(&key).ok_or(Skip::BadKey)?;
            match target.op {
                KvOp::Put => {
                    let value = match &target.value {
                        None => Bytes::copy_from_slice(raw),
                        Some(expr) => {
                            let v = expr.search_data(&event).map_err(|_| Skip::BadValue)?;
                            Bytes::from(serde_json::to_vec(&v).map_err(|_| Skip::BadValue)?)
                        }
                    };
                    puts.insert(key, value);
                }
                KvOp::Incr => {
                    let by = match &target.by {
                        None => 1,
                        Some(expr) => expr
                            .search_data(&event)
                            .ok()
                            .as_ref()
                            .and_then(integer)
                            .ok_or(Skip::BadValue)?,
                    };
                    let sum = incrs.entry(key).or_insert(0);
                    *sum = sum.saturating_add(by);
                }
            }
            Ok(())
        })();
        if let Err(reason) = outcome {
            *skipped.entry(reason).or_insert(0) += 1;
        }
    }
    let msg_id = |key: &str| format!("{batch_id}:{key}");
    let writes = match target.op {
        KvOp::Put => puts
            .into_iter()
            .map(|(key, v)| StateWrite {
                msg_id: msg_id(&key),
                key,
                op: StateOp::Put(v),
            })
            .collect(),
        KvOp::Incr => incrs
            .into_iter()
            .map(|(key, by)| StateWrite {
                msg_id: msg_id(&key),
                key,
                op: StateOp::Incr(by),
            })
            .collect(),
    };
    Plan { writes, skipped }
}

/// Stores a plan's writes in `bucket` and counts them (`fpaas_pipeline_state_writes_total{op}`,
/// `fpaas_pipeline_state_skipped_total{reason}`; a value larger than the server takes is skipped as
/// `too_large`).
///
/// # Errors
/// The bucket's failure: the caller writes the whole plan again later (same ids, so nothing counts twice).
pub async fn write(bucket: &StateBucket, op: KvOp, plan: &Plan) -> Result<WriteReport, BusError> {
    let report = bucket.write(&plan.writes).await?;
    metrics::counter!("fpaas_pipeline_state_writes_total", "op" => op.as_str())
        .increment(report.written);
    metrics::counter!("fpaas_pipeline_state_duplicate_writes_total").increment(report.duplicates);
    for (reason, n) in &plan.skipped {
        metrics::counter!("fpaas_pipeline_state_skipped_total", "reason" => reason.label())
            .increment(*n);
    }
    if report.too_large > 0 {
        metrics::counter!("fpaas_pipeline_state_skipped_total", "reason" => "too_large")
            .increment(report.too_large);
    }
    Ok(report)
}

/// Registers the state metrics at zero (rare series are exported from zero).
pub fn register_metrics() {
    for op in [KvOp::Put, KvOp::Incr] {
        metrics::counter!("fpaas_pipeline_state_writes_total", "op" => op.as_str()).increment(0);
    }
    metrics::counter!("fpaas_pipeline_state_duplicate_writes_total").increment(0);
    for reason in Skip::ALL
        .iter()
        .map(|s| s.label())
        .chain(std::iter::once("too_large"))
    {
        metrics::counter!("fpaas_pipeline_state_skipped_total", "reason" => reason).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(v: serde_json::Value) -> KvTarget {
        let kv: KvDelivery = serde_json::from_value(v).unwrap();
        KvTarget::new("t_aaaaaaaaaaaaaaaa", &kv).unwrap()
    }

    fn events(vs: &[serde_json::Value]) -> Vec<Vec<u8>> {
        vs.iter().map(|v| serde_json::to_vec(v).unwrap()).collect()
    }

    #[test]
    fn incr_sums_per_key_and_skips_what_it_cannot_count() {
        let t = target(json!({"bucket": "b", "key": "k", "op": "incr", "by": "n"}));
        let evs = events(&[
            json!({"k": "a", "n": 2}),
            json!({"k": "b", "n": -1}),
            json!({"k": "a", "n": 3.0}),
            json!({"k": "did:plc:x", "n": 1}),
            json!({"k": 5, "n": 1}),
            json!({"k": "a", "n": "x"}),
            json!({"k": "a", "n": 1.5}),
            json!({"n": 1}),
            json!({"k": "", "n": 1}),
        ]);
        let mut raw: Vec<&[u8]> = evs.iter().map(Vec::as_slice).collect();
        raw.push(b"not json");
        let p = plan(&t, "s_x.1-9.g1", raw);
        let writes: Vec<(&str, &StateOp, &str)> = p
            .writes
            .iter()
            .map(|w| (w.key.as_str(), &w.op, w.msg_id.as_str()))
            .collect();
        assert_eq!(
            writes,
            [
                ("a", &StateOp::Incr(5), "s_x.1-9.g1:a"),
                ("b", &StateOp::Incr(-1), "s_x.1-9.g1:b"),
                (
                    "did=3Aplc=3Ax",
                    &StateOp::Incr(1),
                    "s_x.1-9.g1:did=3Aplc=3Ax"
                ),
            ]
        );
        let skipped: Vec<(&str, u64)> = p.skipped.iter().map(|(s, n)| (s.label(), *n)).collect();
        assert_eq!(
            skipped,
            [
                ("not_json", 1),
                ("no_key", 2),
                ("bad_key", 1),
                ("bad_value", 2)
            ]
        );
    }

    #[test]
    fn put_keeps_the_last_value_per_key() {
        let t = target(json!({"bucket": "b", "key": "key", "value": "{c: count}"}));
        let evs = events(&[
            json!({"key": "x", "count": 1}),
            json!({"key": "y", "count": 7}),
            json!({"key": "x", "count": 2}),
        ]);
        let p = plan(&t, "id", evs.iter().map(Vec::as_slice));
        assert_eq!(p.writes.len(), 2);
        assert_eq!(
            p.writes[0].op,
            StateOp::Put(Bytes::from_static(b"{\"c\":2}"))
        );
        assert_eq!(
            p.writes[1].op,
            StateOp::Put(Bytes::from_static(b"{\"c\":7}"))
        );
        let whole = target(json!({"bucket": "b", "key": "key"}));
        let p = plan(&whole, "id", [&evs[1][..]]);
        assert_eq!(p.writes[0].op, StateOp::Put(Bytes::from(evs[1].clone())));
    }
}
