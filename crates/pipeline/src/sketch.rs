//! The aggregates of a collector that are not a single number: [`Distinct`] (exact set of value hashes up to
//! [`EXACT_DISTINCT`], then a HyperLogLog with 2^14 registers: ~0.8 % standard error) and [`TopK`] (exact
//! counts while the values fit its capacity, then the space-saving algorithm). Both merge (sliding windows
//! merge their panes) and serialize (a collector's open windows are saved with its position). Hashes are our
//! own (FNV-1a then a 64-bit finalizer) so that a saved sketch means the same after an upgrade.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// Distinct values counted exactly (as 64-bit hashes) before switching to HyperLogLog.
pub const EXACT_DISTINCT: usize = 1_024;
/// HyperLogLog precision: 2^14 = 16,384 registers.
const HLL_P: u32 = 14;
const HLL_M: usize = 1 << HLL_P;

/// A stable 64-bit hash of `bytes`.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // murmur3's fmix64: spreads FNV's weak high bits, which HyperLogLog reads.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A distinct count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Distinct {
    /// The hashes of the values seen (at most [`EXACT_DISTINCT`]).
    Exact(BTreeSet<u64>),
    /// HyperLogLog registers, hex in JSON.
    Hll(#[serde(with = "hex_bytes")] Vec<u8>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(BTreeSet::new())
    }
}

impl Distinct {
    /// Counts a value given by its hash ([`hash64`]).
    pub fn add_hash(&mut self, h: u64) {
        match self {
            Distinct::Exact(set) => {
                set.insert(h);
                if set.len() > EXACT_DISTINCT {
                    let mut regs = vec![0u8; HLL_M];
                    for h in set.iter() {
                        hll_add(&mut regs, *h);
                    }
                    *self = Distinct::Hll(regs);
                }
            }
            Distinct::Hll(regs) => hll_add(regs, h),
        }
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: &Distinct) {
        match other {
            Distinct::Exact(set) => {
                for h in set {
                    self.add_hash(*h);
                }
            }
            Distinct::Hll(theirs) => {
                if let Distinct::Exact(set) = self {
                    let mut regs = vec![0u8; HLL_M];
                    for h in set.iter() {
                        hll_add(&mut regs, *h);
                    }
                    *self = Distinct::Hll(regs);
                }
                if let Distinct::Hll(mine) = self {
                    for (m, t) in mine.iter_mut().zip(theirs) {
                        *m = (*m).max(*t);
                    }
                }
            }
        }
    }

    /// The count (exact, or the HyperLogLog estimate rounded).
    pub fn count(&self) -> u64 {
        match self {
            Distinct::Exact(set) => set.len() as u64,
            Distinct::Hll(regs) => hll_estimate(regs),
        }
    }
}

fn hll_add(regs: &mut [u8], h: u64) {
    if regs.len() != HLL_M {
        return;
    }
    let idx = (h >> (64 - HLL_P)) as usize;
    // The remaining bits, with a guard bit so the rank is at most 64 - P + 1.
    let w = (h << HLL_P) | (1 << (HLL_P - 1));
    let rank = (w.leading_zeros() + 1) as u8;
    if regs[idx] < rank {
        regs[idx] = rank;
    }
}

fn hll_estimate(regs: &[u8]) -> u64 {
    let m = HLL_M as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let mut sum = 0.0;
    let mut zeros = 0usize;
    for r in regs {
        sum += 2f64.powi(-i32::from(*r));
        if *r == 0 {
            zeros += 1;
        }
    }
    let raw = alpha * m * m / sum;
    let estimate = if raw <= 2.5 * m && zeros > 0 {
        // Linear counting is more accurate while many registers are empty.
        m * (m / zeros as f64).ln()
    } else {
        raw
    };
    estimate.round() as u64
}

/// The most frequent values (by their JSON text) and their counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    /// How many are reported.
    pub k: usize,
    /// Most values tracked.
    pub capacity: usize,
    /// Value → (count, overestimate bound).
    pub counts: HashMap<String, (u64, u64)>,
}

impl TopK {
    /// Tracks enough values that a group with at most `max(16 k, 256)` distinct values is counted exactly.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            capacity: (k * 16).max(256),
            counts: HashMap::new(),
        }
    }

    /// Counts `value` (JSON text) `n` times.
    pub fn add(&mut self, value: &str, n: u64) {
        if let Some(c) = self.counts.get_mut(value) {
            c.0 += n;
            return;
        }
        if self.counts.len() < self.capacity {
            self.counts.insert(value.to_owned(), (n, 0));
            return;
        }
        // Space-saving: the new value replaces the least counted one and inherits its count as error.
        let Some((victim, (min, _))) = self
            .counts
            .iter()
            .min_by(|a, b| a.1.0.cmp(&b.1.0).then_with(|| b.0.cmp(a.0)))
            .map(|(v, c)| (v.clone(), *c))
        else {
            return;
        };
        self.counts.remove(&victim);
        self.counts.insert(value.to_owned(), (min + n, min));
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: &TopK) {
        for (v, (n, err)) in &other.counts {
            let entry = self.counts.entry(v.clone()).or_insert((0, 0));
            entry.0 += n;
            entry.1 += err;
        }
        if self.counts.len() > self.capacity {
            let keep: HashMap<String, (u64, u64)> = self
                .sorted()
                .into_iter()
                .take(self.capacity)
                .map(|(v, c)| (v.to_owned(), c))
                .collect();
            self.counts = keep;
        }
    }

    fn sorted(&self) -> Vec<(&str, (u64, u64))> {
        let mut all: Vec<(&str, (u64, u64))> =
            self.counts.iter().map(|(v, c)| (v.as_str(), *c)).collect();
        all.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(b.0)));
        all
    }

    /// The top `k` as `(value JSON text, count)`, most frequent first, ties by value.
    pub fn top(&self) -> Vec<(&str, u64)> {
        self.sorted()
            .into_iter()
            .take(self.k)
            .map(|(v, (n, _))| (v, n))
            .collect()
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd hex length"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&text[i..i + 2], 16)
                    .map_err(|_| serde::de::Error::custom("not hex"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_is_exact_up_to_the_threshold_and_close_beyond() {
        let mut d = Distinct::default();
        for i in 0..EXACT_DISTINCT as u64 {
            d.add_hash(hash64(format!("v{i}").as_bytes()));
            d.add_hash(hash64(format!("v{i}").as_bytes()));
        }
        assert_eq!(d.count(), EXACT_DISTINCT as u64);
        assert!(matches!(d, Distinct::Exact(_)));
        for n in [5_000u64, 100_000] {
            let mut d = Distinct::default();
            for i in 0..n {
                d.add_hash(hash64(format!("did:plc:{i}").as_bytes()));
            }
            let err = (d.count() as f64 - n as f64).abs() / n as f64;
            assert!(err < 0.03, "{n}: estimate {} ({err})", d.count());
        }
    }

    #[test]
    fn merged_distincts_count_the_union() {
        let (mut a, mut b) = (Distinct::default(), Distinct::default());
        for i in 0..3_000u64 {
            a.add_hash(hash64(&i.to_le_bytes()));
        }
        for i in 2_000..2_500u64 {
            b.add_hash(hash64(&i.to_le_bytes()));
        }
        for i in 10_000..10_100u64 {
            b.add_hash(hash64(&i.to_le_bytes()));
        }
        let mut small = b.clone();
        a.merge(&b);
        let err = (a.count() as f64 - 3_100.0).abs() / 3_100.0;
        assert!(err < 0.03, "{}", a.count());
        small.merge(&Distinct::default());
        assert_eq!(small.count(), 600);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Distinct>(&json).unwrap(), a);
    }

    #[test]
    fn top_k_is_exact_within_capacity_and_finds_heavy_hitters_beyond() {
        let mut t = TopK::new(3);
        for (v, n) in [("a", 5), ("b", 9), ("c", 5), ("d", 1)] {
            for _ in 0..n {
                t.add(v, 1);
            }
        }
        assert_eq!(t.top(), vec![("b", 9), ("a", 5), ("c", 5)]);
        // 10,000 singletons and three heavy values: the heavy ones are found, counts may be high by ≤ error.
        let mut t = TopK::new(3);
        for i in 0..10_000 {
            t.add(&format!("x{i}"), 1);
            if i % 10 == 0 {
                t.add("h1", 1);
            }
            if i % 20 == 0 {
                t.add("h2", 1);
            }
        }
        let top: Vec<&str> = t.top().iter().map(|(v, _)| *v).collect();
        assert_eq!(&top[..2], &["h1", "h2"]);
        let mut merged = TopK::new(3);
        merged.merge(&t);
        merged.merge(&t);
        assert_eq!(merged.top()[0].0, "h1");
        assert!(merged.counts.len() <= merged.capacity);
    }
}
