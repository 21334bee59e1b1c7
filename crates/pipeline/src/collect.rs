//! The collector stage (pure; the runner feeds it and saves it): groups a subscription's (transformed)
//! events by a JMESPath key, cuts them into windows and aggregates ([`Collector`]). Its whole state
//! ([`CollectState`]) is plain data that serializes, so the runner saves it together with the stream position
//! it reflects: a restart resumes from a state that counted exactly the events up to that position.
//!
//! Time windows follow event time. The watermark is the newest event time seen minus the lateness bound; a
//! window closes (is emitted) once the watermark reaches its end. An event whose first window already closed
//! is late: dropped and counted. Sliding windows are kept as panes of `slide_s` and merged when a window
//! closes. A count window belongs to one group and closes with its `events`-th event. On an idle source the
//! watermark moves on with the wall clock from the newest event ([`Collector::idle`]).
//!
//! Every closed window gives one [`Output`] per group, in key order, with a deterministic id
//! (`<window>:<hash of the key>`), so the same events give the same outputs with the same ids after a replay.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use fpaas_control::collect::{AggOp, Collect, Window};
use fpaas_filter::{Data, Expr, ExprError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::sketch::{Distinct, TopK, hash64};

/// A collector compiled from its spec.
#[derive(Debug)]
pub struct Collector {
    key: Expr,
    window: Window,
    lateness_ms: i64,
    aggs: Vec<CompiledAgg>,
    /// The state, saved with the subscription's position.
    pub state: CollectState,
}

#[derive(Debug)]
struct CompiledAgg {
    name: String,
    op: AggOp,
    field: Option<Expr>,
    k: usize,
}

/// Everything a collector has counted and not emitted yet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectState {
    /// A fingerprint of the spec the state was made with (a changed collector starts empty).
    pub spec_hash: u64,
    /// Newest event time seen (ms).
    pub max_time_ms: i64,
    /// Every time window ending at or before this (ms) was emitted; `None` before the first close.
    pub closed_to_ms: Option<i64>,
    /// Time panes: pane start (ms) → group key (JSON text) → accumulators.
    pub panes: BTreeMap<i64, HashMap<String, GroupAcc>>,
    /// Count windows: group key → its open window.
    pub counts: HashMap<String, CountAcc>,
    /// Late events dropped so far.
    pub late_events: u64,
    /// Events skipped because their key was `null` or failed.
    pub skipped_events: u64,
}

/// One group's accumulators.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupAcc {
    /// Events counted.
    pub events: u64,
    /// One per aggregation, in the spec's (name) order.
    pub accs: Vec<Acc>,
}

/// An open count window of one group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CountAcc {
    /// Windows of this group closed before.
    pub index: u64,
    /// Event time of its first and last event (µs).
    pub first_us: i64,
    /// See `first_us`.
    pub last_us: i64,
    /// The accumulators.
    pub acc: GroupAcc,
}

/// One aggregate's accumulator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Acc {
    /// count
    Count(u64),
    /// sum
    Sum(f64),
    /// min
    Min(Option<f64>),
    /// max
    Max(Option<f64>),
    /// distinct
    Distinct(Distinct),
    /// top_k
    TopK(TopK),
}

/// One emitted group of a closed window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Deterministic id: `<window>:<16 hex of the key's hash>`.
    pub id: String,
    /// The window's end (time windows) or its last event (count windows), unix µs.
    pub time_us: i64,
    /// The JSON delivered: `{"key", "window", "events", <aggregations>…}`.
    pub data: Vec<u8>,
}

/// What became of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// Counted.
    Counted,
    /// Its window had closed (dropped, counted in `late_events`).
    Late,
    /// Its key was `null` or failed (dropped, counted in `skipped_events`).
    Skipped,
}

impl Collector {
    /// Compiles `spec` with an empty state.
    ///
    /// # Errors
    /// When an expression does not compile (the API validated it; a stored spec that no longer compiles).
    pub fn new(spec: &Collect) -> Result<Self, ExprError> {
        let aggs = spec
            .aggregations
            .iter()
            .map(|(name, a)| {
                Ok(CompiledAgg {
                    name: name.clone(),
                    op: a.op,
                    field: a.field.as_deref().map(Expr::compile).transpose()?,
                    k: a.k.unwrap_or(10) as usize,
                })
            })
            .collect::<Result<Vec<_>, ExprError>>()?;
        let spec_hash = hash64(&serde_json::to_vec(spec).unwrap_or_default());
        Ok(Self {
            key: Expr::compile(&spec.key)?,
            window: spec.window.clone(),
            lateness_ms: i64::try_from(spec.window.lateness_ms()).unwrap_or(i64::MAX),
            aggs,
            state: CollectState {
                spec_hash,
                ..CollectState::default()
            },
        })
    }

    /// Takes over a saved state, unless it was made by a different spec (then it stays empty and `false`).
    pub fn restore(&mut self, state: CollectState) -> bool {
        if state.spec_hash != self.state.spec_hash {
            return false;
        }
        self.state = state;
        true
    }

    /// Whether nothing is counted and not emitted.
    pub fn is_empty(&self) -> bool {
        self.state.panes.is_empty() && self.state.counts.is_empty()
    }

    /// Groups counted and not emitted (for metrics).
    pub fn open_groups(&self) -> usize {
        self.state.panes.values().map(HashMap::len).sum::<usize>() + self.state.counts.len()
    }

    /// `(size, slide)` in ms for time windows.
    fn geometry(&self) -> Option<(i64, i64)> {
        match &self.window {
            Window::Tumbling { size_s, .. } => {
                let size = i64::try_from(size_s * 1_000).unwrap_or(i64::MAX);
                Some((size, size))
            }
            Window::Sliding {
                size_s, slide_s, ..
            } => Some((
                i64::try_from(size_s * 1_000).unwrap_or(i64::MAX),
                i64::try_from(slide_s * 1_000).unwrap_or(i64::MAX).max(1),
            )),
            Window::Count { .. } => None,
        }
    }

    /// Counts one event (its parsed, transformed JSON and its event time), after emitting the windows its
    /// time closes (appended to `out`).
    pub fn add(&mut self, data: &Data, time_us: i64, out: &mut Vec<Output>) -> Added {
        let key = match self.key.eval_data(data) {
            Ok(k) if !k.is_null() => k.to_json(),
            _ => {
                self.state.skipped_events += 1;
                return Added::Skipped;
            }
        };
        let time_ms = time_us.div_euclid(1_000);
        if let Some((_, slide)) = self.geometry() {
            if time_ms > self.state.max_time_ms {
                self.state.max_time_ms = time_ms;
            }
            self.close_through(self.state.max_time_ms.saturating_sub(self.lateness_ms), out);
            let pane = time_ms.div_euclid(slide) * slide;
            if self
                .state
                .closed_to_ms
                .is_some_and(|closed| pane.saturating_add(slide) <= closed)
            {
                self.state.late_events += 1;
                return Added::Late;
            }
            let aggs = &self.aggs;
            let group = self
                .state
                .panes
                .entry(pane)
                .or_default()
                .entry(key)
                .or_insert_with(|| GroupAcc {
                    events: 0,
                    accs: new_accs(aggs),
                });
            add_to(&self.aggs, group, data);
            return Added::Counted;
        }
        let Window::Count { events } = self.window else {
            return Added::Skipped;
        };
        let aggs = &self.aggs;
        let open = self
            .state
            .counts
            .entry(key.clone())
            .or_insert_with(|| CountAcc {
                index: 0,
                first_us: time_us,
                last_us: time_us,
                acc: GroupAcc {
                    events: 0,
                    accs: new_accs(aggs),
                },
            });
        if open.acc.events == 0 {
            open.first_us = time_us;
        }
        open.last_us = time_us;
        add_to(&self.aggs, &mut open.acc, data);
        if open.acc.events >= events {
            let done = std::mem::take(open);
            open.index = done.index + 1;
            open.acc.accs = new_accs(aggs);
            let window = serde_json::json!({
                "index": done.index,
                "first": rfc3339_us(done.first_us),
                "last": rfc3339_us(done.last_us),
            });
            out.push(self.output(
                format!("c{}", done.index),
                done.last_us,
                &key,
                window,
                &done.acc,
            ));
        }
        Added::Counted
    }

    /// An idle source: `quiet_ms` after the newest event, the watermark moves on as if event time had gone on
    /// with the wall clock (newest event time + quiet − lateness), so the last windows close without a later
    /// event. Relative to the newest event, so a replay of old events behaves like a live stream.
    pub fn idle(&mut self, quiet_ms: i64, out: &mut Vec<Output>) {
        if self.geometry().is_none() || self.state.panes.is_empty() {
            return;
        }
        let watermark = self
            .state
            .max_time_ms
            .saturating_add(quiet_ms)
            .saturating_sub(self.lateness_ms);
        self.close_through(watermark, out);
    }

    /// Emits every window ending at or before `watermark` (ms) that was not emitted, oldest first.
    fn close_through(&mut self, watermark: i64, out: &mut Vec<Output>) {
        let Some((size, slide)) = self.geometry() else {
            return;
        };
        let closed = self.state.closed_to_ms;
        if closed.is_some_and(|c| c >= watermark) {
            return;
        }
        // The window ends that hold data: each pane is in the windows ending at pane + slide … pane + size.
        let mut ends: Vec<i64> = Vec::new();
        for pane in self.state.panes.keys() {
            let mut end = pane.saturating_add(slide);
            while end <= pane.saturating_add(size) && end <= watermark {
                if closed.is_none_or(|c| end > c) {
                    ends.push(end);
                }
                end = end.saturating_add(slide);
            }
        }
        ends.sort_unstable();
        ends.dedup();
        for end in ends {
            self.emit_window(end - size, end, out);
        }
        // Every window up to the watermark (aligned) is closed now, whether it held data or not.
        let aligned = watermark.div_euclid(slide) * slide;
        self.state.closed_to_ms = Some(closed.map_or(aligned, |c| c.max(aligned)));
        let closed = self.state.closed_to_ms.unwrap_or(i64::MIN);
        // A pane is no longer needed once the last window holding it closed.
        self.state
            .panes
            .retain(|pane, _| pane.saturating_add(size) > closed);
    }

    fn emit_window(&mut self, start: i64, end: i64, out: &mut Vec<Output>) {
        let mut groups: BTreeMap<&str, GroupAcc> = BTreeMap::new();
        for (_, pane) in self.state.panes.range(start..end) {
            for (key, acc) in pane {
                match groups.get_mut(key.as_str()) {
                    Some(merged) => merge(merged, acc),
                    None => {
                        groups.insert(key, acc.clone());
                    }
                }
            }
        }
        let window = serde_json::json!({
            "start": rfc3339_us(start * 1_000),
            "end": rfc3339_us(end * 1_000),
        });
        let mut emitted = Vec::with_capacity(groups.len());
        for (key, acc) in &groups {
            emitted.push(self.output(
                format!("w{start}-{end}"),
                end * 1_000,
                key,
                window.clone(),
                acc,
            ));
        }
        out.extend(emitted);
    }

    fn output(
        &self,
        window_id: String,
        time_us: i64,
        key: &str,
        window: Value,
        acc: &GroupAcc,
    ) -> Output {
        let mut map = Map::new();
        map.insert(
            "key".into(),
            serde_json::from_str(key).unwrap_or(Value::Null),
        );
        map.insert("window".into(), window);
        map.insert("events".into(), Value::from(acc.events));
        for (agg, a) in self.aggs.iter().zip(&acc.accs) {
            map.insert(agg.name.clone(), result(a));
        }
        Output {
            id: format!("{window_id}:{:016x}", hash64(key.as_bytes())),
            time_us,
            data: serde_json::to_vec(&Value::Object(map)).unwrap_or_default(),
        }
    }
}

fn new_accs(aggs: &[CompiledAgg]) -> Vec<Acc> {
    aggs.iter()
        .map(|a| match a.op {
            AggOp::Count => Acc::Count(0),
            AggOp::Sum => Acc::Sum(0.0),
            AggOp::Min => Acc::Min(None),
            AggOp::Max => Acc::Max(None),
            AggOp::Distinct => Acc::Distinct(Distinct::default()),
            AggOp::TopK => Acc::TopK(TopK::new(a.k)),
        })
        .collect()
}

fn add_to(aggs: &[CompiledAgg], group: &mut GroupAcc, data: &Data) {
    group.events += 1;
    for (agg, acc) in aggs.iter().zip(group.accs.iter_mut()) {
        let value = match &agg.field {
            None => None,
            Some(f) => match f.eval_data(data) {
                Ok(v) if !v.is_null() => Some(v),
                _ => {
                    if agg.op != AggOp::Count {
                        metrics::counter!("fpaas_pipeline_collect_skipped_values_total")
                            .increment(1);
                    }
                    continue;
                }
            },
        };
        match acc {
            Acc::Count(n) => *n += 1,
            Acc::Sum(s) => {
                if let Some(x) = value.as_ref().and_then(Data::as_f64) {
                    *s += x;
                }
            }
            Acc::Min(m) => {
                if let Some(x) = value.as_ref().and_then(Data::as_f64) {
                    *m = Some(m.map_or(x, |m| m.min(x)));
                }
            }
            Acc::Max(m) => {
                if let Some(x) = value.as_ref().and_then(Data::as_f64) {
                    *m = Some(m.map_or(x, |m| m.max(x)));
                }
            }
            Acc::Distinct(d) => {
                if let Some(v) = &value {
                    d.add_hash(hash64(v.to_json().as_bytes()));
                }
            }
            Acc::TopK(t) => {
                if let Some(v) = &value {
                    t.add(&v.to_json(), 1);
                }
            }
        }
    }
}

fn merge(into: &mut GroupAcc, from: &GroupAcc) {
    into.events += from.events;
    for (a, b) in into.accs.iter_mut().zip(&from.accs) {
        match (a, b) {
            (Acc::Count(x), Acc::Count(y)) => *x += y,
            (Acc::Sum(x), Acc::Sum(y)) => *x += y,
            (Acc::Min(x), Acc::Min(y)) => {
                *x = match (*x, *y) {
                    (Some(p), Some(q)) => Some(p.min(q)),
                    (p, q) => p.or(q),
                }
            }
            (Acc::Max(x), Acc::Max(y)) => {
                *x = match (*x, *y) {
                    (Some(p), Some(q)) => Some(p.max(q)),
                    (p, q) => p.or(q),
                }
            }
            (Acc::Distinct(x), Acc::Distinct(y)) => x.merge(y),
            (Acc::TopK(x), Acc::TopK(y)) => x.merge(y),
            _ => {}
        }
    }
}

/// A number as JSON: an integer when it is one (and fits), else a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

fn result(acc: &Acc) -> Value {
    match acc {
        Acc::Count(n) => Value::from(*n),
        Acc::Sum(s) => number(*s),
        Acc::Min(m) | Acc::Max(m) => m.map_or(Value::Null, number),
        Acc::Distinct(d) => Value::from(d.count()),
        Acc::TopK(t) => Value::Array(
            t.top()
                .into_iter()
                .map(|(v, n)| {
                    serde_json::json!({
                        "value": serde_json::from_str::<Value>(v).unwrap_or(Value::Null),
                        "count": n,
                    })
                })
                .collect(),
        ),
    }
}

fn rfc3339_us(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collector(spec: Value) -> Collector {
        Collector::new(&serde_json::from_value(spec).unwrap()).unwrap()
    }

    fn data(v: Value) -> Data {
        Data::from_json_bytes(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn outputs(out: &[Output]) -> Vec<Value> {
        out.iter()
            .map(|o| serde_json::from_slice(&o.data).unwrap())
            .collect()
    }

    /// A deterministic pseudo-random sequence of (post, did, n, time) events, times mostly increasing with
    /// some jitter below the lateness bound.
    fn events(n: usize, seed: u64) -> Vec<(Value, i64)> {
        let mut x = seed;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        (0..n)
            .map(|i| {
                let post = format!("p{}", next() % 7);
                let did = format!("d{}", next() % 5);
                let t = 1_700_000_000_000_000 + i as i64 * 50_000 - (next() % 2_000_000) as i64;
                (
                    serde_json::json!({"post": post, "did": did, "n": (next() % 10) as i64}),
                    t,
                )
            })
            .collect()
    }

    const TUMBLING: &str = r#"{"key": "post", "window": {"type": "tumbling", "size_s": 10, "lateness_s": 3},
        "aggregations": {"likes": {"op": "count"}, "total": {"op": "sum", "field": "n"}, "lo": {"op": "min", "field": "n"},
        "hi": {"op": "max", "field": "n"}, "likers": {"op": "distinct", "field": "did"}, "top": {"op": "top_k", "field": "did", "k": 2}}}"#;

    /// The model: what every window/group should hold, recounted from the events with plain code.
    fn recount(evs: &[(Value, i64)], size_ms: i64) -> BTreeMap<(i64, String), Value> {
        let mut groups: BTreeMap<(i64, String), Vec<&Value>> = BTreeMap::new();
        for (v, t) in evs {
            let start = (t / 1_000).div_euclid(size_ms) * size_ms;
            groups
                .entry((start, v["post"].as_str().unwrap().to_owned()))
                .or_default()
                .push(v);
        }
        groups
            .into_iter()
            .map(|(k, vs)| {
                let ns: Vec<i64> = vs.iter().map(|v| v["n"].as_i64().unwrap()).collect();
                let mut dids: BTreeMap<&str, u64> = BTreeMap::new();
                for v in &vs {
                    *dids.entry(v["did"].as_str().unwrap()).or_default() += 1;
                }
                let mut top: Vec<(&str, u64)> = dids.iter().map(|(d, n)| (*d, *n)).collect();
                top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                let top: Vec<Value> = top
                    .iter()
                    .take(2)
                    .map(|(d, n)| serde_json::json!({"value": d, "count": n}))
                    .collect();
                (
                    k,
                    serde_json::json!({"likes": vs.len(), "total": ns.iter().sum::<i64>(),
                        "lo": ns.iter().min(), "hi": ns.iter().max(), "likers": dids.len(), "top": top}),
                )
            })
            .collect()
    }

    fn run(c: &mut Collector, evs: &[(Value, i64)], out: &mut Vec<Output>) {
        for (v, t) in evs {
            assert_ne!(c.add(&data(v.clone()), *t, out), Added::Late);
        }
    }

    #[test]
    fn tumbling_windows_equal_a_recount_and_survive_a_save_and_restore() {
        let spec: Value = serde_json::from_str(TUMBLING).unwrap();
        let evs = events(2_000, 7);
        let mut c = collector(spec.clone());
        let mut out = Vec::new();
        run(&mut c, &evs, &mut out);
        c.idle(i64::MAX / 4, &mut out);
        assert!(c.is_empty());
        let model = recount(&evs, 10_000);
        assert_eq!(out.len(), model.len());
        for (o, ((start, post), want)) in outputs(&out).iter().zip(&model) {
            assert_eq!(o["key"], Value::from(post.clone()));
            assert_eq!(o["window"]["start"], rfc3339_us(start * 1_000));
            for field in ["likes", "total", "lo", "hi", "likers", "top"] {
                assert_eq!(o[field], want[field], "{field} of {post} at {start}");
            }
            assert_eq!(o["events"], want["likes"]);
        }
        // Saved mid-way (serialized) and restored in a new collector: the same outputs, the same ids.
        for cut in [1, 777, 1_999] {
            let mut first = collector(spec.clone());
            let mut again = Vec::new();
            run(&mut first, &evs[..cut], &mut again);
            let saved = serde_json::to_vec(&first.state).unwrap();
            let mut second = collector(spec.clone());
            assert!(second.restore(serde_json::from_slice(&saved).unwrap()));
            run(&mut second, &evs[cut..], &mut again);
            second.idle(i64::MAX / 4, &mut again);
            assert_eq!(again, out, "cut at {cut}");
        }
    }

    #[test]
    fn sliding_windows_count_each_event_in_every_window_covering_it() {
        let mut c = collector(serde_json::json!({"key": "'all'",
            "window": {"type": "sliding", "size_s": 30, "slide_s": 10, "lateness_s": 0},
            "aggregations": {"n": {"op": "count"}, "s": {"op": "sum", "field": "x"}}}));
        let mut out = Vec::new();
        let base = 1_700_000_000_000i64; // a multiple of 10 s
        for i in 0..60 {
            c.add(
                &data(serde_json::json!({"x": 1.5})),
                (base + i * 1_000) * 1_000,
                &mut out,
            );
        }
        c.idle(1_000_000, &mut out);
        let got: Vec<(String, u64, f64)> = outputs(&out)
            .iter()
            .map(|o| {
                (
                    o["window"]["start"].as_str().unwrap().to_owned(),
                    o["n"].as_u64().unwrap(),
                    o["s"].as_f64().unwrap(),
                )
            })
            .collect();
        // Windows ending every 10 s from base+10 to base+90: 10, 20, 30, 30, 30, 30, 20, 10 events.
        let counts: Vec<u64> = got.iter().map(|g| g.1).collect();
        assert_eq!(counts, vec![10, 20, 30, 30, 30, 30, 20, 10]);
        assert_eq!(got[2].2, 45.0);
        assert_eq!(got[0].0, rfc3339_us((base - 20_000) * 1_000));
    }

    #[test]
    fn late_events_are_dropped_and_counted_and_null_keys_skipped() {
        let mut c = collector(serde_json::json!({"key": "k",
            "window": {"type": "tumbling", "size_s": 10, "lateness_s": 2},
            "aggregations": {"n": {"op": "count"}}}));
        let mut out = Vec::new();
        let base = 1_700_000_000_000i64;
        let ev = |k: &str| data(serde_json::json!({"k": k}));
        assert_eq!(c.add(&ev("a"), base * 1_000, &mut out), Added::Counted);
        // 11 s later: watermark base+9 s — the first window is still open (lateness 2 s).
        assert_eq!(
            c.add(&ev("a"), (base + 11_000) * 1_000, &mut out),
            Added::Counted
        );
        assert_eq!(
            c.add(&ev("a"), (base + 5_000) * 1_000, &mut out),
            Added::Counted
        );
        assert!(out.is_empty());
        // 12.5 s: watermark 10.5 s closes [0, 10) with 2 events; an event at 3 s is late now.
        c.add(&ev("b"), (base + 12_500) * 1_000, &mut out);
        assert_eq!(outputs(&out)[0]["n"], 2);
        assert_eq!(
            c.add(&ev("a"), (base + 3_000) * 1_000, &mut out),
            Added::Late
        );
        assert_eq!(
            c.add(&data(serde_json::json!({})), base * 1_000, &mut out),
            Added::Skipped
        );
        assert_eq!((c.state.late_events, c.state.skipped_events), (1, 1));
        // A collector with another spec does not take this state.
        let mut other = collector(serde_json::json!({"key": "k",
            "window": {"type": "tumbling", "size_s": 20}, "aggregations": {"n": {"op": "count"}}}));
        assert!(!other.restore(c.state.clone()));
    }

    #[test]
    fn count_windows_close_per_group_with_their_last_event() {
        let mut c = collector(
            serde_json::json!({"key": "k", "window": {"type": "count", "events": 3},
            "aggregations": {"hi": {"op": "max", "field": "x"}}}),
        );
        let mut out = Vec::new();
        for (i, k) in ["a", "b", "a", "a", "b", "a", "a", "a"].iter().enumerate() {
            c.add(
                &data(serde_json::json!({"k": k, "x": i})),
                i as i64 * 1_000_000,
                &mut out,
            );
        }
        let got = outputs(&out);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (
                got[0]["key"].as_str(),
                got[0]["hi"].as_i64(),
                got[0]["window"]["index"].as_u64()
            ),
            (Some("a"), Some(3), Some(0))
        );
        assert_eq!(
            (
                got[1]["key"].as_str(),
                got[1]["hi"].as_i64(),
                got[1]["window"]["index"].as_u64()
            ),
            (Some("a"), Some(7), Some(1))
        );
        assert_ne!(out[0].id, out[1].id);
        assert_eq!(c.state.counts["\"b\""].acc.events, 2);
    }
}
