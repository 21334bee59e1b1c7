//! The sender: one signed POST of one batch and the classification of what happened ([`Outcome`]), and the retry
//! schedule ([`RetrySchedule`]) that says when to try again.
//!
//! The [`Sender`]'s HTTP client resolves names through the guard ([`crate::guard::GuardedResolver`]), checks
//! every URL (literal IP hosts included) before its request, follows no redirects and uses no proxy, so it only
//! ever connects to an address the [`AddrPolicy`] allows. It reads at most [`MAX_RESPONSE_BODY`] bytes of a
//! response, and the whole exchange — connect, send, read the answer — is bounded by the batch's timeout.
//!
//! Outcomes (the design contract): 2xx = accepted; 410 = gone (the subscription is disabled, no more attempts,
//! not dead-lettered); every other status, a timeout or a connection error = retry, honouring `Retry-After`
//! (seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`]) until the schedule ends.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::guard::{AddrPolicy, guard_error_of};
use crate::sign::{Secret, sign};

/// Most response-body bytes read; the rest is not read (the connection is dropped).
pub const MAX_RESPONSE_BODY: usize = 1 << 20;
/// Longest `Retry-After` honoured; a longer one counts as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Most characters of a failure's detail (the response body's start is quoted in it).
const MAX_DETAIL: usize = 300;
/// The `user-agent` of every request: `fpaas/<version>`.
pub const USER_AGENT: &str = concat!("fpaas/", env!("CARGO_PKG_VERSION"));

/// One batch to POST.
#[derive(Clone, Debug)]
pub struct BatchRequest {
    /// The subscription's webhook URL.
    pub url: String,
    /// The batch id (`<sub_id>.<from_seq>-<to_seq>.g<generation>`), sent as `webhook-id`.
    pub batch_id: String,
    /// The JSON body, exactly as it is signed and sent.
    pub body: Bytes,
    /// Every unexpired secret, newest first; each adds one `v1,` entry to `webhook-signature`.
    pub secrets: Vec<Secret>,
    /// Bound of the whole exchange (the subscription's `timeout_ms`).
    pub timeout: Duration,
}

/// What one delivery attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer: the receiver has the batch.
    Accepted {
        /// The status code.
        status: u16,
        /// From the start of the attempt to the end of the (capped) response body.
        elapsed: Duration,
        /// The response body, at most [`MAX_RESPONSE_BODY`] bytes.
        body: Bytes,
    },
    /// `410 Gone`: the receiver does not want this subscription any more; disable it, no more attempts.
    Gone,
    /// Anything else: try again later, or dead-letter when the schedule is over.
    Retry {
        /// Why.
        reason: RetryReason,
        /// The receiver's `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
        /// A human-readable description for logs and the subscription's `last_error`.
        detail: String,
    },
}

/// Why an attempt is to be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The receiver answered with this (non-2xx, non-410) status.
    Status(u16),
    /// No complete answer within the timeout.
    Timeout,
    /// No connection: refused, unreachable, the name did not resolve.
    Connect,
    /// The URL or every address of its host is refused by the SSRF guard.
    NotAllowed,
    /// Anything else (e.g. the connection closed before an answer).
    Other,
}

impl RetryReason {
    /// A short label for metrics and logs: `status`, `timeout`, `connect`, `not_allowed` or `other`.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::Status(_) => "status",
            RetryReason::Timeout => "timeout",
            RetryReason::Connect => "connect",
            RetryReason::NotAllowed => "not_allowed",
            RetryReason::Other => "other",
        }
    }
}

/// The sender could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct SenderError(#[source] reqwest::Error);

/// Posts batches to webhook URLs through the SSRF guard. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct Sender {
    client: reqwest::Client,
    policy: AddrPolicy,
}

impl Sender {
    /// A sender whose connections obey `policy`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no usable TLS or resolver backend).
    pub fn new(policy: AddrPolicy) -> Result<Self, SenderError> {
        // HTTPS targets: rustls with the ring provider (the one async-nats already brings); installing it
        // is a no-op when the process has done so.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = policy
            .client_builder()
            .user_agent(USER_AGENT)
            .build()
            .map_err(SenderError)?;
        Ok(Sender { client, policy })
    }

    /// The sender's address policy.
    pub fn policy(&self) -> &AddrPolicy {
        &self.policy
    }

    /// POSTs one batch, signed now, and classifies the result. Never fails: every problem is an [`Outcome`].
    #[tracing::instrument(skip(self, req), fields(batch_id = %req.batch_id, bytes = req.body.len()))]
    pub async fn deliver(&self, req: &BatchRequest) -> Outcome {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.deliver_at(req, timestamp).await
    }

    /// [`Sender::deliver`] with a given `webhook-timestamp` (unix seconds).
    pub async fn deliver_at(&self, req: &BatchRequest, timestamp: u64) -> Outcome {
        let url = match self.policy.check_url(&req.url) {
            Ok(url) => url,
            Err(e) => {
                return Outcome::Retry {
                    reason: RetryReason::NotAllowed,
                    retry_after: None,
                    detail: format!("{}: {e}", e.code()),
                };
            }
        };
        let started = Instant::now();
        let signature = sign(&req.batch_id, timestamp, &req.body, &req.secrets);
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &req.batch_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(req.body.clone())
            .send();
        let exchange = async {
            let response = request.await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = read_capped(response, MAX_RESPONSE_BODY).await?;
            Ok::<_, reqwest::Error>((status, retry_after, body))
        };
        let outcome = match tokio::time::timeout(req.timeout, exchange).await {
            Err(_) => Outcome::Retry {
                reason: RetryReason::Timeout,
                retry_after: None,
                detail: format!("no complete answer within {} ms", req.timeout.as_millis()),
            },
            Ok(Err(e)) => classify_error(&e, req.timeout),
            Ok(Ok((status, retry_after, body))) => {
                classify_status(status, retry_after, body, started.elapsed())
            }
        };
        match &outcome {
            Outcome::Accepted {
                status, elapsed, ..
            } => {
                tracing::debug!(status, elapsed_ms = elapsed.as_millis(), "batch accepted");
            }
            Outcome::Gone => tracing::info!("receiver answered 410 Gone"),
            Outcome::Retry { reason, detail, .. } => {
                tracing::debug!(reason = reason.label(), detail, "delivery attempt failed");
            }
        }
        outcome
    }
}

/// Reads at most `cap` bytes of the body; the rest is left unread.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Bytes, reqwest::Error> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() >= room {
            body.extend_from_slice(&chunk[..room]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn classify_status(
    status: u16,
    retry_after: Option<Duration>,
    body: Bytes,
    elapsed: Duration,
) -> Outcome {
    match status {
        200..=299 => Outcome::Accepted {
            status,
            elapsed,
            body,
        },
        410 => Outcome::Gone,
        _ => {
            let mut detail = format!("HTTP {status}");
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if !text.is_empty() {
                detail.push_str(": ");
                detail.extend(text.chars().take(MAX_DETAIL));
            }
            Outcome::Retry {
                reason: RetryReason::Status(status),
                retry_after,
                detail,
            }
        }
    }
}

fn classify_error(error: &reqwest::Error, timeout: Duration) -> Outcome {
    let detail = error_chain(error);
    let reason = if let Some(guard) = guard_error_of(error) {
        if guard.code() == "url_not_allowed" {
            RetryReason::NotAllowed
        } else {
            RetryReason::Connect
        }
    } else if error.is_timeout() {
        return Outcome::Retry {
            reason: RetryReason::Timeout,
            retry_after: None,
            detail: format!("no complete answer within {} ms", timeout.as_millis()),
        };
    } else if error.is_connect() {
        RetryReason::Connect
    } else {
        RetryReason::Other
    };
    Outcome::Retry {
        reason,
        retry_after: None,
        detail,
    }
}

/// `error: cause: cause…`, shortened.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.chars().take(MAX_DETAIL).collect()
}

/// A `Retry-After` value — whole seconds or an HTTP date (a date in the past is zero) — capped at
/// [`MAX_RETRY_AFTER`]; `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to parse is "very long": the cap.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// When to try again after a failed attempt: one entry per retry, so a subscription makes at most
/// `1 + schedule_ms.len()` attempts; after the last the batch is dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySchedule {
    /// Wait before each retry, in milliseconds: the first entry after the first failed attempt, and so on. Each
    /// wait is varied by up to ±20 % (jitter, so many subscriptions of one failing receiver do not retry in
    /// lockstep) and is never shorter than the receiver's `Retry-After`.
    pub schedule_ms: Vec<u64>,
}

/// The default schedule: 1 s, 5 s, 30 s, 2 min, 10 min, 30 min, 1 h (8 attempts over about 2 h 43 min).
pub const DEFAULT_SCHEDULE_MS: [u64; 7] =
    [1_000, 5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000];
/// Largest jitter, as a fraction of the scheduled wait.
pub const JITTER: f64 = 0.2;

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule {
            schedule_ms: DEFAULT_SCHEDULE_MS.to_vec(),
        }
    }
}

impl RetrySchedule {
    /// Most attempts of one batch: the first one and one per entry.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.schedule_ms.len()).map_or(u32::MAX, |n| n.saturating_add(1))
    }

    /// The wait after `attempt` failed attempts (1 after the first failure), with random jitter; `None` when
    /// the schedule is over (dead-letter the batch). `attempt` 0 is treated as 1.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let jitter = rand::Rng::random_range(&mut rand::rng(), -1.0..=1.0);
        self.delay_with_jitter(attempt, retry_after, jitter)
    }

    /// [`RetrySchedule::delay`] with the jitter given: `jitter` in `-1.0..=1.0` scales the wait by
    /// `1 + jitter × 20 %` (values outside are clamped); the result is at least `retry_after` (capped at
    /// [`MAX_RETRY_AFTER`]).
    pub fn delay_with_jitter(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        let index = usize::try_from(attempt.max(1) - 1).ok()?;
        let base = *self.schedule_ms.get(index)?;
        let jitter = if jitter.is_finite() {
            jitter.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let millis = (base as f64) * (1.0 + jitter * JITTER);
        let wait = Duration::from_secs_f64((millis / 1000.0).max(0.0));
        let floor = retry_after.unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER);
        Some(wait.max(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_caps_at_an_hour() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("3600", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&in_90s, now),
            Some(Duration::from_secs(90))
        );
        let tomorrow = httpdate::fmt_http_date(now + Duration::from_secs(86_400));
        assert_eq!(parse_retry_after(&tomorrow, now), Some(MAX_RETRY_AFTER));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "soon", "Mon, 99 Foo 2024 00:00:00 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn schedule_entries_with_jitter_bounds_then_dead_letter() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 8);
        assert_eq!(
            schedule.delay_with_jitter(1, None, 0.0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            schedule.delay_with_jitter(0, None, 0.0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            schedule.delay_with_jitter(2, None, 1.0),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            schedule.delay_with_jitter(2, None, -1.0),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            schedule.delay_with_jitter(2, None, 7.0),
            Some(Duration::from_secs(6)),
            "clamped"
        );
        assert_eq!(
            schedule.delay_with_jitter(2, None, f64::NAN),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            schedule.delay_with_jitter(7, None, 0.0),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(schedule.delay_with_jitter(8, None, 0.0), None);
        assert_eq!(schedule.delay(8, Some(Duration::from_secs(1))), None);
        assert_eq!(schedule.delay(u32::MAX, None), None);
        let empty = RetrySchedule {
            schedule_ms: vec![],
        };
        assert_eq!(empty.max_attempts(), 1);
        assert_eq!(empty.delay(1, None), None);

        // Random jitter stays within ±20 % and is not constant.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let wait = schedule.delay(3, None).expect("third entry");
            assert!(
                wait >= Duration::from_secs(24) && wait <= Duration::from_secs(36),
                "{wait:?}"
            );
            seen.insert(wait.as_millis());
        }
        assert!(seen.len() > 10, "jitter varies: {seen:?}");
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_an_hour() {
        let schedule = RetrySchedule::default();
        let wait = schedule
            .delay(1, Some(Duration::from_secs(30)))
            .expect("entry");
        assert_eq!(wait, Duration::from_secs(30));
        // A shorter Retry-After does not shorten the schedule.
        let wait = schedule.delay_with_jitter(3, Some(Duration::from_secs(1)), 0.0);
        assert_eq!(wait, Some(Duration::from_secs(30)));
        let wait = schedule.delay_with_jitter(1, Some(Duration::from_secs(100_000)), 0.0);
        assert_eq!(wait, Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn schedule_config_is_strict() {
        let parsed: RetrySchedule =
            serde_json::from_str(r#"{"schedule_ms": [10, 20]}"#).expect("parses");
        assert_eq!(parsed.schedule_ms, vec![10, 20]);
        assert!(
            serde_json::from_str::<RetrySchedule>(r#"{"schedule_ms": [1], "max": 3}"#).is_err()
        );
        assert!(serde_json::from_str::<RetrySchedule>(r#"{"schedule_ms": [-1]}"#).is_err());
    }
}
