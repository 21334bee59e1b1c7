//! A subscription's collector stage, as a tenant writes it ([`Collect`]) and its checks ([`validate`]): group
//! the (transformed) events by a JMESPath key, cut them into windows (tumbling or sliding by event time, or by
//! count per group) and aggregate each group of each window (count, sum, min, max, distinct count, top-k).
//! Every closed window is emitted as one event per group to the subscription's delivery. The pipeline runs it
//! (`fpaas_pipeline::collect`); `docs/mapreduce.md` explains the semantics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{ValidationCode, ValidationError};

/// Most aggregations of one collector.
pub const MAX_AGGREGATIONS: usize = 16;
/// Longest time window: 24 h.
pub const MAX_WINDOW_SECS: u64 = 24 * 60 * 60;
/// Most sliding panes per window (`size_s / slide_s`).
pub const MAX_PANES: u64 = 60;
/// Longest lateness bound: 1 h.
pub const MAX_LATENESS_SECS: u64 = 60 * 60;
/// Largest count window.
pub const MAX_COUNT_WINDOW: u64 = 1_000_000;
/// Largest `k` of a top-k.
pub const MAX_TOP_K: u32 = 1_000;

/// The collector of a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Collect {
    /// JMESPath on the (transformed) event giving its group; any JSON value but `null` (an event whose key is
    /// `null` or fails is skipped and counted). `"'all'"` puts every event in one group.
    pub key: String,
    /// How events are cut into windows.
    pub window: Window,
    /// The aggregates of each group, by output field name (1..=16 names of `a-z`, `0-9`, `_`, not starting
    /// with a digit; `key`, `window` and `events` are the collector's own fields).
    pub aggregations: BTreeMap<String, Aggregation>,
}

/// A window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Window {
    /// Back-to-back windows of `size_s` seconds of event time, aligned to the unix epoch.
    Tumbling {
        /// Length in seconds (1..=86,400).
        size_s: u64,
        /// How long after a window's end (in event time: the newest event's time) it waits for late events
        /// before it closes, in seconds (0..=3,600; default 5). Later events are dropped and counted.
        #[serde(default = "default_lateness_s")]
        lateness_s: u64,
    },
    /// Overlapping windows of `size_s` seconds starting every `slide_s` seconds (`size_s` a multiple of
    /// `slide_s`, at most 60 slides per window); each event counts in every window that covers it.
    Sliding {
        /// Length in seconds (1..=86,400).
        size_s: u64,
        /// Step in seconds.
        slide_s: u64,
        /// As for tumbling windows.
        #[serde(default = "default_lateness_s")]
        lateness_s: u64,
    },
    /// A group's window closes when it has counted `events` events (1..=1,000,000).
    Count {
        /// Events per window and group.
        events: u64,
    },
}

fn default_lateness_s() -> u64 {
    5
}

/// One aggregate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Aggregation {
    /// What to compute.
    pub op: AggOp,
    /// JMESPath on the (transformed) event giving the value aggregated; required by every op but `count`.
    /// `sum`, `min` and `max` take numbers (other values are skipped); `distinct` and `top_k` any value.
    #[serde(default)]
    pub field: Option<String>,
    /// For `top_k`: how many (1..=1,000; default 10).
    #[serde(default)]
    pub k: Option<u32>,
}

/// An aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AggOp {
    /// Events in the group (`field` given: events where it is not `null`).
    Count,
    /// Sum of the numbers.
    Sum,
    /// Smallest number.
    Min,
    /// Largest number.
    Max,
    /// Distinct values: exact up to 1,024, then a HyperLogLog estimate (16,384 registers, ~0.8 % standard
    /// error).
    Distinct,
    /// The `k` most frequent values with their counts (exact while the group has at most `16 × k` (at least
    /// 256) distinct values, else a space-saving estimate whose counts may be too high by at most the
    /// smallest count it tracks).
    TopK,
}

impl Window {
    /// The lateness bound in ms (0 for count windows).
    pub fn lateness_ms(&self) -> u64 {
        match self {
            Window::Tumbling { lateness_s, .. } | Window::Sliding { lateness_s, .. } => {
                lateness_s * 1_000
            }
            Window::Count { .. } => 0,
        }
    }
}

fn bad(code: ValidationCode, field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError::new(code, field, message)
}

fn expr(field: &str, text: &str) -> Result<(), ValidationError> {
    fpaas_filter::Expr::compile(text)
        .map(|_| ())
        .map_err(|e| crate::validate::expr_error(field, text, &e))
}

/// Whether `name` may name an aggregation's output field.
pub fn field_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !matches!(name, "key" | "window" | "events")
}

/// Checks a collector completely.
///
/// # Errors
/// [`ValidationCode::BadJmespath`] for an expression, [`ValidationCode::LimitExceeded`] for a size out of
/// range, [`ValidationCode::BadValue`] otherwise, naming the field (`collect.…`).
pub fn validate(c: &Collect) -> Result<(), ValidationError> {
    expr("collect.key", &c.key)?;
    match &c.window {
        Window::Tumbling { size_s, lateness_s } => {
            window_size(*size_s)?;
            lateness(*lateness_s)?;
        }
        Window::Sliding {
            size_s,
            slide_s,
            lateness_s,
        } => {
            window_size(*size_s)?;
            lateness(*lateness_s)?;
            if *slide_s == 0 || size_s % slide_s != 0 {
                return Err(bad(
                    ValidationCode::BadValue,
                    "collect.window.slide_s",
                    "must be > 0 and divide size_s",
                ));
            }
            if size_s / slide_s > MAX_PANES {
                return Err(bad(
                    ValidationCode::LimitExceeded,
                    "collect.window.slide_s",
                    format!("at most {MAX_PANES} slides per window"),
                ));
            }
        }
        Window::Count { events } => {
            if !(1..=MAX_COUNT_WINDOW).contains(events) {
                return Err(bad(
                    ValidationCode::LimitExceeded,
                    "collect.window.events",
                    format!("{events} is outside 1..={MAX_COUNT_WINDOW}"),
                ));
            }
        }
    }
    if c.aggregations.is_empty() || c.aggregations.len() > MAX_AGGREGATIONS {
        return Err(bad(
            ValidationCode::LimitExceeded,
            "collect.aggregations",
            format!("1..={MAX_AGGREGATIONS} aggregations"),
        ));
    }
    for (name, agg) in &c.aggregations {
        let field = format!("collect.aggregations.{name}");
        if !field_name_ok(name) {
            return Err(bad(
                ValidationCode::BadValue,
                &field,
                "not an output name (1-64 of a-z, 0-9, '_', not starting with a digit; not key, window or events)",
            ));
        }
        match (&agg.field, agg.op) {
            (Some(f), _) => expr(&format!("{field}.field"), f)?,
            (None, AggOp::Count) => {}
            (None, _) => {
                return Err(bad(
                    ValidationCode::BadValue,
                    &format!("{field}.field"),
                    "this aggregation needs a field",
                ));
            }
        }
        match (agg.k, agg.op) {
            (Some(k), AggOp::TopK) if !(1..=MAX_TOP_K).contains(&k) => {
                return Err(bad(
                    ValidationCode::LimitExceeded,
                    &format!("{field}.k"),
                    format!("{k} is outside 1..={MAX_TOP_K}"),
                ));
            }
            (Some(_), op) if op != AggOp::TopK => {
                return Err(bad(
                    ValidationCode::BadValue,
                    &format!("{field}.k"),
                    "only top_k takes k",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn window_size(size_s: u64) -> Result<(), ValidationError> {
    if !(1..=MAX_WINDOW_SECS).contains(&size_s) {
        return Err(bad(
            ValidationCode::LimitExceeded,
            "collect.window.size_s",
            format!("{size_s} is outside 1..={MAX_WINDOW_SECS}"),
        ));
    }
    Ok(())
}

fn lateness(s: u64) -> Result<(), ValidationError> {
    if s > MAX_LATENESS_SECS {
        return Err(bad(
            ValidationCode::LimitExceeded,
            "collect.window.lateness_s",
            format!("{s} is outside 0..={MAX_LATENESS_SECS}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<Collect, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn a_complete_collector_parses_and_passes() {
        let c = parse(serde_json::json!({
            "key": "post",
            "window": {"type": "sliding", "size_s": 60, "slide_s": 10},
            "aggregations": {
                "likes": {"op": "count"},
                "likers": {"op": "distinct", "field": "did"},
                "top": {"op": "top_k", "field": "did", "k": 3},
            }
        }))
        .unwrap();
        assert_eq!(c.window.lateness_ms(), 5_000);
        validate(&c).unwrap();
    }

    #[test]
    fn mistakes_name_their_field() {
        let cases = [
            (
                serde_json::json!({"key": "post(", "window": {"type": "count", "events": 3}, "aggregations": {"n": {"op": "count"}}}),
                "collect.key",
                ValidationCode::BadJmespath,
            ),
            (
                serde_json::json!({"key": "post", "window": {"type": "sliding", "size_s": 60, "slide_s": 7}, "aggregations": {"n": {"op": "count"}}}),
                "collect.window.slide_s",
                ValidationCode::BadValue,
            ),
            (
                serde_json::json!({"key": "post", "window": {"type": "tumbling", "size_s": 0}, "aggregations": {"n": {"op": "count"}}}),
                "collect.window.size_s",
                ValidationCode::LimitExceeded,
            ),
            (
                serde_json::json!({"key": "post", "window": {"type": "count", "events": 3}, "aggregations": {}}),
                "collect.aggregations",
                ValidationCode::LimitExceeded,
            ),
            (
                serde_json::json!({"key": "post", "window": {"type": "count", "events": 3}, "aggregations": {"s": {"op": "sum"}}}),
                "collect.aggregations.s.field",
                ValidationCode::BadValue,
            ),
            (
                serde_json::json!({"key": "post", "window": {"type": "count", "events": 3}, "aggregations": {"key": {"op": "count"}}}),
                "collect.aggregations.key",
                ValidationCode::BadValue,
            ),
            (
                serde_json::json!({"key": "post", "window": {"type": "count", "events": 3}, "aggregations": {"t": {"op": "top_k", "field": "a", "k": 0}}}),
                "collect.aggregations.t.k",
                ValidationCode::LimitExceeded,
            ),
            (
                serde_json::json!({"key": "post", "window": {"type": "count", "events": 3}, "aggregations": {"m": {"op": "max", "field": "a", "k": 2}}}),
                "collect.aggregations.m.k",
                ValidationCode::BadValue,
            ),
        ];
        for (json, field, code) in cases {
            let e = validate(&parse(json.clone()).unwrap()).unwrap_err();
            assert_eq!((e.field.as_str(), e.code), (field, code), "{json}");
        }
        assert!(
            parse(serde_json::json!({"key": "a", "window": {"type": "daily"}, "aggregations": {}}))
                .is_err()
        );
    }
}
