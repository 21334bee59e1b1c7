//! The edges of delivery: a stored [`Subscription`] compiled into a [`SubConfig`] ([`compile`]), one signed
//! POST of a batch and what its outcome means for the runner ([`send`]: accepted, gone, or retry after a
//! wait from the subscription's schedule) — or a publish into a topic, writes into a state bucket, storing a
//! batch for pull (`store_for_pull`) — and the dead-letter stream ([`DeadLetters`]).

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use fpaas_bus::BusError;
use fpaas_bus::{MsgLog, MsgLogSettings, ensure_msglog};
use fpaas_control::{Delivery, Start as CtlStart, Subscription, layout};
use fpaas_webhook::{AddrPolicy, BatchRequest, Outcome, RetrySchedule, Secret};

use crate::batch::{Batch, Limits};
use crate::sub::{Start, SubConfig, SubConfigError, Target, WebhookTarget};

/// The HTTP side of a worker: one guarded client for every subscription.
#[derive(Debug, Clone)]
pub struct Sender {
    inner: fpaas_webhook::Sender,
}

impl Sender {
    /// A sender whose targets must pass `policy`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(policy: &AddrPolicy) -> Result<Self, fpaas_webhook::SenderError> {
        Ok(Self {
            inner: fpaas_webhook::Sender::new(policy.clone())?,
        })
    }
}

/// What an attempt came to, for the runner.
pub(crate) enum Sent {
    Accepted,
    Gone,
    Retry {
        error: String,
        /// The wait before the next attempt after `attempt` attempts, or `None` when the schedule is over.
        delay: Box<dyn Fn(u32) -> Option<Duration> + Send>,
    },
}

/// One attempt of `batch` for `sub`.
pub(crate) async fn send(shared: &crate::worker::Shared, sub: &SubConfig, batch: &Batch) -> Sent {
    let webhook = match &sub.target {
        Target::Webhook(w) => w,
        Target::Topic {
            subject,
            retry_schedule_ms,
        } => return publish_to_topic(shared, sub, batch, subject, retry_schedule_ms).await,
        Target::Pull { subject, .. } => return store_for_pull(shared, batch, subject).await,
        Target::Kv(kv) => return write_state(shared, sub, batch, kv).await,
    };
    let now = Utc::now().timestamp();
    let secrets: Vec<Secret> = webhook
        .secrets
        .iter()
        .filter(|(_, expires)| expires.is_none_or(|e| e > now))
        .filter_map(|(s, _)| Secret::parse(s).ok())
        .collect();
    let request = BatchRequest {
        url: webhook.url.clone(),
        batch_id: batch.id.clone(),
        body: Bytes::from(batch.body.clone()),
        secrets,
        timeout: webhook.timeout,
    };
    let started = std::time::Instant::now();
    let outcome = shared.sender.inner.deliver(&request).await;
    metrics::histogram!("fpaas_pipeline_attempt_seconds").record(started.elapsed().as_secs_f64());
    match outcome {
        Outcome::Accepted { body, .. } => {
            if let Some(subject) = &webhook.output_subject
                && let Err(error) = publish_answer(shared, batch, subject, &body).await
            {
                // The batch is sent again (same id); its answer's events get the same ids, which the topic
                // drops if they were stored before.
                metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => "topic_failed")
                    .increment(1);
                let schedule = RetrySchedule {
                    schedule_ms: webhook.retry_schedule_ms.clone(),
                };
                return Sent::Retry {
                    error,
                    delay: Box::new(move |attempt| schedule.delay(attempt, None)),
                };
            }
            metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => "accepted")
                .increment(1);
            Sent::Accepted
        }
        Outcome::Gone => {
            metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => "gone").increment(1);
            Sent::Gone
        }
        Outcome::Retry {
            reason,
            retry_after,
            detail,
        } => {
            metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => reason.label())
                .increment(1);
            let schedule = RetrySchedule {
                schedule_ms: webhook.retry_schedule_ms.clone(),
            };
            Sent::Retry {
                error: detail,
                delay: Box::new(move |attempt| schedule.delay(attempt, retry_after)),
            }
        }
    }
}

/// The id of an event published into a topic by `subscription`: derived from the source event's id, so a
/// redelivered batch (same events) is deduplicated by the topic's stream.
pub fn topic_msg_id(subscription: &str, event_id: &str) -> String {
    format!("{subscription}:{event_id}")
}

/// One event of a batch body, as published into a topic.
#[derive(serde::Deserialize)]
struct BodyEvent {
    id: String,
    time_us: i64,
    data: Box<serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct Body {
    events: Vec<BodyEvent>,
}

/// One attempt of a topic delivery: every event of the batch published (its `data` as the message, with a
/// derived id and its event time), accepted once JetStream acknowledged all of them.
async fn publish_to_topic(
    shared: &crate::worker::Shared,
    sub: &SubConfig,
    batch: &Batch,
    subject: &str,
    retry_schedule_ms: &[u64],
) -> Sent {
    let retry = |error: String| {
        metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => "topic_failed")
            .increment(1);
        let schedule = RetrySchedule {
            schedule_ms: retry_schedule_ms.to_vec(),
        };
        Sent::Retry {
            error,
            delay: Box::new(move |attempt| schedule.delay(attempt, None)),
        }
    };
    let body: Body = match serde_json::from_slice(&batch.body) {
        Ok(b) => b,
        // Our own batch body: not reachable unless a bug.
        Err(e) => return retry(format!("batch body: {e}")),
    };
    let started = std::time::Instant::now();
    let msgs = body
        .events
        .into_iter()
        .map(|e| {
            (
                topic_msg_id(&sub.id, &e.id),
                e.time_us,
                Bytes::from(e.data.get().as_bytes().to_vec()),
            )
        })
        .collect();
    let failure = publish_all(shared, subject, msgs).await.err();
    metrics::histogram!("fpaas_pipeline_attempt_seconds").record(started.elapsed().as_secs_f64());
    match failure {
        None => {
            metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => "accepted")
                .increment(1);
            Sent::Accepted
        }
        Some(error) => retry(error),
    }
}

/// One attempt of a `kv` delivery: the batch's writes ([`crate::state::plan`]) stored in the state bucket (opened
/// once per worker, created when missing — the API creates it with the subscription), accepted once the bucket
/// acknowledged all of them.
async fn write_state(
    shared: &crate::worker::Shared,
    sub: &SubConfig,
    batch: &Batch,
    kv: &crate::state::KvTarget,
) -> Sent {
    let retry = |error: String| {
        metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => "state_failed")
            .increment(1);
        let schedule = RetrySchedule {
            schedule_ms: kv.retry_schedule_ms.clone(),
        };
        Sent::Retry {
            error,
            delay: Box::new(move |attempt| schedule.delay(attempt, None)),
        }
    };
    let body: Body = match serde_json::from_slice(&batch.body) {
        Ok(b) => b,
        // Our own batch body: not reachable unless a bug.
        Err(e) => return retry(format!("batch body: {e}")),
    };
    let started = std::time::Instant::now();
    let bucket = {
        let mut states = shared.states.lock().await;
        match states.get(&kv.kv_bucket) {
            Some(b) => b.clone(),
            None => {
                let js = fpaas_bus::jetstream(shared.client.clone(), 256);
                match fpaas_bus::StateBucket::ensure(
                    &js,
                    &kv.kv_bucket,
                    kv.op.kind().bus(),
                    shared.state_replicas,
                    fpaas_bus::Storage::File,
                )
                .await
                {
                    Ok(b) => {
                        states.insert(kv.kv_bucket.clone(), b.clone());
                        b
                    }
                    Err(e) => return retry(format!("state bucket {}: {e}", kv.kv_bucket)),
                }
            }
        }
    };
    let plan = crate::state::plan(
        kv,
        &batch.id,
        body.events.iter().map(|e| e.data.get().as_bytes()),
    );
    let result = crate::state::write(&bucket, kv.op, &plan).await;
    metrics::histogram!("fpaas_pipeline_attempt_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(report) => {
            tracing::debug!(subscription = %sub.id, batch = %batch.id, bucket = %kv.kv_bucket, op = kv.op.as_str(),
                written = report.written, duplicates = report.duplicates, skipped = plan.skipped.values().sum::<u64>(),
                "batch written to state");
            metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => "accepted")
                .increment(1);
            Sent::Accepted
        }
        // The handle stays cached: writes go by subject, so a bucket created again under the same name is
        // written through it, and a bucket deleted with its tenant is not created again by a late retry.
        Err(e) => retry(format!("state bucket {}: {e}", kv.kv_bucket)),
    }
}

/// Longest wait between two attempts to store a pull batch (it is retried until stored, never dead-lettered:
/// the stream is ours, so a failure is NATS being unavailable).
const PULL_RETRY_MAX: Duration = Duration::from_secs(30);

/// One attempt of a pull delivery: the batch body stored as one message of the pull stream, its id the batch
/// id (`Nats-Msg-Id`: a batch formed again is not stored twice), accepted once JetStream acknowledged it.
async fn store_for_pull(shared: &crate::worker::Shared, batch: &Batch, subject: &str) -> Sent {
    let from = batch.from_seq.to_string();
    let to = batch.to_seq.to_string();
    let events = batch.events.to_string();
    let headers = [
        ("Nats-Msg-Id", batch.id.as_str()),
        (layout::HDR_BATCH_ID, batch.id.as_str()),
        (layout::HDR_FROM_SEQ, from.as_str()),
        (layout::HDR_TO_SEQ, to.as_str()),
        (layout::HDR_EVENTS, events.as_str()),
    ];
    let started = std::time::Instant::now();
    let result = shared
        .pull
        .publish(subject, &headers, Bytes::from(batch.body.clone()))
        .await;
    metrics::histogram!("fpaas_pipeline_attempt_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(_) => {
            metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => "accepted")
                .increment(1);
            Sent::Accepted
        }
        Err(e) => {
            metrics::counter!("fpaas_pipeline_attempts_total", "outcome" => "pull_failed")
                .increment(1);
            Sent::Retry {
                error: format!("storing the batch for pull: {e}"),
                delay: Box::new(|attempt| {
                    Some(fpaas_bus::Backoff::ceiling_at(
                        Duration::from_millis(200),
                        PULL_RETRY_MAX,
                        attempt,
                    ))
                }),
            }
        }
    }
}

/// How many batches wait in a pull subscription's subject.
pub(crate) async fn pull_waiting(
    shared: &crate::worker::Shared,
    subject: &str,
) -> Result<u64, BusError> {
    shared.pull.count(subject).await
}

/// Publishes `(id, event time, payload)` messages into `subject`; `Err` with the first failure.
async fn publish_all(
    shared: &crate::worker::Shared,
    subject: &str,
    msgs: Vec<(String, i64, Bytes)>,
) -> Result<(), String> {
    let js = fpaas_bus::jetstream(shared.client.clone(), msgs.len());
    let mut publisher = fpaas_bus::Publisher::new(js, msgs.len().max(1));
    for (n, (msg_id, time_us, payload)) in msgs.into_iter().enumerate() {
        let msg = fpaas_bus::OutMsg {
            subject: subject.to_owned(),
            msg_id,
            headers: vec![(fpaas_event::wire::HEADER_TIME_US, time_us.to_string())],
            payload,
            token: n as u64,
        };
        publisher.publish(msg).await;
    }
    let mut failure = None;
    while let Some(done) = publisher.next_completion().await {
        if let Err(f) = done {
            failure.get_or_insert_with(|| format!("publish into the topic: {}", f.error));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Most events one answer may carry into the output topic.
pub const MAX_ANSWER_EVENTS: usize = 10_000;

/// The receiver's answer to `batch`, published into the output topic: `{"events": [v, …]}` → one message per
/// value, id `<batch id>:<index>`. An answer that is not of that shape (untrusted input) publishes nothing and
/// is counted (`fpaas_pipeline_invalid_answers_total`); an empty body or `{"events": []}` is simply no output.
async fn publish_answer(
    shared: &crate::worker::Shared,
    batch: &Batch,
    subject: &str,
    body: &[u8],
) -> Result<(), String> {
    // Parsed, not skipped as raw values: a raw value is not held to the parser's nesting limit, and what
    // goes into a topic must be JSON its readers can parse.
    #[derive(serde::Deserialize)]
    struct Answer {
        events: Vec<serde_json::Value>,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let answer = match serde_json::from_slice::<Answer>(body) {
        Ok(a) if a.events.len() <= MAX_ANSWER_EVENTS => a,
        Ok(a) => {
            metrics::counter!("fpaas_pipeline_invalid_answers_total").increment(1);
            tracing::debug!(batch = %batch.id, events = a.events.len(), "answer with too many events ignored");
            return Ok(());
        }
        Err(e) => {
            metrics::counter!("fpaas_pipeline_invalid_answers_total").increment(1);
            tracing::debug!(batch = %batch.id, error = %e, "answer is not {{\"events\": [...]}}; ignored");
            return Ok(());
        }
    };
    let n = answer.events.len();
    let msgs = answer
        .events
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            (
                format!("{}:{i}", batch.id),
                batch.first_time_us,
                Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
            )
        })
        .collect();
    publish_all(shared, subject, msgs).await?;
    metrics::counter!("fpaas_pipeline_answer_events_total").increment(n as u64);
    Ok(())
}

/// The dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    log: MsgLog,
}

impl DeadLetters {
    /// Creates or updates the stream.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn ensure(
        client: &fpaas_bus::Client,
        replicas: usize,
        max_age_secs: u64,
    ) -> Result<Self, BusError> {
        let settings = MsgLogSettings {
            name: layout::DLQ_STREAM.to_owned(),
            subjects: vec![layout::DLQ_SUBJECTS.to_owned()],
            max_age_secs,
            replicas,
            ..MsgLogSettings::default()
        };
        let js = fpaas_bus::jetstream(client.clone(), 256);
        Ok(Self {
            log: ensure_msglog(&js, &settings).await?,
        })
    }
}

/// Stores `batch` as a dead letter of `sub` (retried until stored or cancelled by the caller's timeout).
pub(crate) async fn dead_letter(
    shared: &crate::worker::Shared,
    sub: &SubConfig,
    batch: &Batch,
    attempts: u32,
    last_error: &str,
) -> Result<u64, BusError> {
    let subject = layout::dlq_subject(&sub.tenant, &sub.id);
    let attempts = attempts.to_string();
    let from = batch.from_seq.to_string();
    let to = batch.to_seq.to_string();
    let events = batch.events.to_string();
    // Header values are one line.
    let error: String = last_error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    let headers = [
        (layout::HDR_BATCH_ID, batch.id.as_str()),
        (layout::HDR_ATTEMPTS, attempts.as_str()),
        (layout::HDR_LAST_ERROR, error.as_str()),
        (layout::HDR_FROM_SEQ, from.as_str()),
        (layout::HDR_TO_SEQ, to.as_str()),
        (layout::HDR_EVENTS, events.as_str()),
    ];
    let mut backoff = fpaas_bus::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match shared
            .dlq
            .log
            .publish(&subject, &headers, Bytes::from(batch.body.clone()))
            .await
        {
            Ok(seq) => return Ok(seq),
            Err(e) if e.kind().is_retryable() => {
                tracing::warn!(subscription = %sub.id, error = %e, "storing a dead letter failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A stored subscription compiled for the worker, with its tenant's delivery-rate quota (events/s, 0 = none).
///
/// # Errors
/// [`SubConfigError`] when its filter or transform no longer compiles.
pub fn compile(sub: &Subscription, max_events_per_s: u32) -> Result<SubConfig, SubConfigError> {
    let target = match &sub.delivery {
        Delivery::Webhook(webhook) => Target::Webhook(WebhookTarget {
            url: webhook.url.clone(),
            timeout: Duration::from_millis(webhook.timeout_ms),
            retry_schedule_ms: webhook.retry.schedule_ms.clone(),
            secrets: sub
                .secrets
                .iter()
                .map(|s| (s.secret.clone(), s.expires_at.map(|e| e.timestamp())))
                .collect(),
            output_subject: webhook
                .output_topic
                .as_deref()
                .map(|t| layout::topic_subject(&sub.tenant_id, t)),
        }),
        Delivery::Topic(t) => Target::Topic {
            subject: layout::topic_subject(&sub.tenant_id, &t.topic),
            retry_schedule_ms: t.retry.schedule_ms.clone(),
        },
        Delivery::Kv(kv) => Target::Kv(std::sync::Arc::new(
            crate::state::KvTarget::new(&sub.tenant_id, kv).map_err(|e| SubConfigError {
                id: sub.id.clone(),
                message: format!("delivery: {e}"),
            })?,
        )),
        Delivery::Pull(p) => Target::Pull {
            subject: layout::pull_subject(&sub.tenant_id, &sub.id),
            max_waiting: p.max_waiting_batches,
        },
    };
    let start = match &sub.start {
        CtlStart::Live {} => Start::Live,
        CtlStart::RetentionStart {} => Start::RetentionStart,
        CtlStart::Time { time } => Start::Time(time.to_rfc3339()),
        CtlStart::Seq { seq } => Start::Seq(*seq),
    };
    SubConfig::new(
        &sub.id,
        &sub.tenant_id,
        sub.generation,
        sub.filter.clone(),
        sub.transform.as_deref(),
        Limits {
            max_events: sub.batching.max_events.max(1) as usize,
            max_bytes: usize::try_from(sub.batching.max_bytes).unwrap_or(usize::MAX),
            max_wait: Duration::from_millis(sub.batching.max_wait_ms),
        },
        start,
        target,
        max_events_per_s,
    )
    .map(|mut cfg| {
        cfg.source_stream = sub
            .source
            .topic()
            .map(|t| layout::topic_stream(&sub.tenant_id, t));
        cfg.collect.clone_from(&sub.collect);
        cfg
    })
}
