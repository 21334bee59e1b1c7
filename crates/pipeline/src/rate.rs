//! The tenant delivery-rate quota: a token bucket per tenant in each worker (so with N workers a tenant
//! can reach N times its quota; the quota is a guard against one tenant taking a worker, not billing).
//! A batch waits until the tenant has tokens for its events; a batch larger than one second's quota
//! waits for a whole second of tokens, then goes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by tenant.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// How long to wait before `events` may go for `tenant` at `per_s` events per second (0 = no limit);
    /// takes the tokens when the answer is zero.
    pub fn wait_for(&self, tenant: &str, per_s: u32, events: usize, now: Instant) -> Duration {
        if per_s == 0 {
            return Duration::ZERO;
        }
        let rate = f64::from(per_s);
        let need = (events as f64).min(rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(tenant.to_owned()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= need {
            b.tokens -= need;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - b.tokens) / rate)
        }
    }

    /// Waits until `events` may go.
    pub async fn acquire(&self, tenant: &str, per_s: u32, events: usize) {
        loop {
            let wait = self.wait_for(tenant, per_s, events, Instant::now());
            if wait.is_zero() {
                return;
            }
            metrics::counter!("fpaas_pipeline_rate_limited_total", "tenant" => tenant.to_owned())
                .increment(1);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_rate_and_no_more() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        assert_eq!(r.wait_for("a", 100, 60, t0), Duration::ZERO);
        assert_eq!(r.wait_for("a", 100, 40, t0), Duration::ZERO);
        let w = r.wait_for("a", 100, 50, t0);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-9, "{w:?}");
        // Another tenant is not affected.
        assert_eq!(r.wait_for("b", 100, 100, t0), Duration::ZERO);
        // Half a second later there are 50 tokens.
        assert_eq!(
            r.wait_for("a", 100, 50, t0 + Duration::from_millis(500)),
            Duration::ZERO
        );
        // No limit.
        assert_eq!(r.wait_for("c", 0, 1_000_000, t0), Duration::ZERO);
        // A batch larger than a second's quota waits for a full bucket, not forever.
        assert!(
            r.wait_for("a", 100, 10_000, t0 + Duration::from_millis(500)) <= Duration::from_secs(1)
        );
    }
}
