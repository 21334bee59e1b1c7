//! Checking what a tenant or the admin writes, completely, before anything is stored (nothing is ever
//! half-created). Every problem is a [`ValidationError`]: a stable [`ValidationCode`] (the API's `error`
//! field), the field it concerns, a message, and for JMESPath the position of the mistake.

use fpaas_filter::{ExprError, FilterError, FilterSpec};

use crate::model::{Batching, Delivery, Quotas, Subscription, SubscriptionSpec, TenantSpec};

/// Longest name of a tenant or subscription, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest webhook URL, in bytes.
pub const MAX_URL_BYTES: usize = 2_048;
/// Batch size limits.
pub const MAX_EVENTS_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;
/// Batch body limits in bytes.
pub const MAX_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1_024..=8 * 1024 * 1024;
/// Batch wait limits in ms.
pub const MAX_WAIT_RANGE: std::ops::RangeInclusive<u64> = 0..=60_000;
/// Webhook timeout limits in ms.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 100..=60_000;
/// Visibility timeout of a pull delivery, in ms (1 s ..= 12 h).
pub const VISIBILITY_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1_000..=43_200_000;
/// Waiting batches of a pull delivery.
pub const MAX_WAITING_BATCHES_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000;
/// Most retries in a schedule.
pub const MAX_RETRIES: usize = 20;
/// Longest wait of one retry, in ms (24 h).
pub const MAX_RETRY_WAIT_MS: u64 = 24 * 60 * 60 * 1_000;

/// The kind of a validation problem; [`ValidationCode::as_str`] is the API's stable `error` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValidationCode {
    /// A JMESPath expression (predicate or transform) does not compile.
    BadJmespath,
    /// The webhook URL is not acceptable.
    BadUrl,
    /// A collection pattern, DID or combination in the filter is invalid.
    BadFilter,
    /// A value is outside its allowed range (batch limits, timeouts, list lengths, name length).
    LimitExceeded,
    /// A value is not allowed here (e.g. setting `state: disabled`).
    BadValue,
    /// A per-tenant quota would be exceeded (the API answers 429).
    QuotaExceeded,
}

impl ValidationCode {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJmespath => "bad_jmespath",
            Self::BadUrl => "bad_url",
            Self::BadFilter => "bad_filter",
            Self::LimitExceeded => "limit_exceeded",
            Self::BadValue => "bad_value",
            Self::QuotaExceeded => "quota_exceeded",
        }
    }
}

/// One problem with a document, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// What kind of problem.
    pub code: ValidationCode,
    /// The field, as a dotted path (`filter.predicate`, `delivery.url`).
    pub field: String,
    /// What is wrong, for people.
    pub message: String,
    /// For JMESPath errors: the character offset in the expression where parsing failed.
    pub position: Option<usize>,
}

impl ValidationError {
    /// A problem of `code` with `field`.
    pub fn new(code: ValidationCode, field: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            field: field.to_owned(),
            message: message.into(),
            position: None,
        }
    }
}

fn limit(field: &str, message: String) -> ValidationError {
    ValidationError::new(ValidationCode::LimitExceeded, field, message)
}

/// Topic retention by age, in seconds (1 minute to 30 days).
pub const TOPIC_MAX_AGE_RANGE: std::ops::RangeInclusive<u64> = 60..=30 * 24 * 60 * 60;
/// Smallest topic size limit, in bytes (1 MiB).
pub const TOPIC_MIN_BYTES: i64 = 1024 * 1024;

/// Whether `name` is a valid topic name: 1-64 of `a-z 0-9 - _`, starting with a letter or digit.
pub fn topic_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks a topic spec against the tenant's quotas (the count and total-bytes quotas need the stored topics:
/// the store checks those).
///
/// # Errors
/// [`ValidationCode::BadValue`] for a bad name, [`ValidationCode::LimitExceeded`] for a retention out of range,
/// [`ValidationCode::QuotaExceeded`] for a size above the tenant's `max_topic_bytes`.
pub fn topic(spec: &crate::model::TopicSpec, quotas: &Quotas) -> Result<(), ValidationError> {
    if !topic_name_ok(&spec.name) {
        return Err(ValidationError::new(
            ValidationCode::BadValue,
            "name",
            "1-64 of a-z, 0-9, '-', '_', starting with a letter or digit",
        ));
    }
    if !TOPIC_MAX_AGE_RANGE.contains(&spec.max_age_secs) {
        return Err(limit(
            "max_age_secs",
            format!(
                "{} s; allowed {}-{}",
                spec.max_age_secs,
                TOPIC_MAX_AGE_RANGE.start(),
                TOPIC_MAX_AGE_RANGE.end()
            ),
        ));
    }
    if spec.max_bytes < TOPIC_MIN_BYTES {
        return Err(limit(
            "max_bytes",
            format!("{} bytes; at least {TOPIC_MIN_BYTES}", spec.max_bytes),
        ));
    }
    if spec.max_bytes > quotas.max_topic_bytes {
        return Err(ValidationError::new(
            ValidationCode::QuotaExceeded,
            "max_bytes",
            format!(
                "{} bytes; this tenant's topics may hold {} bytes together",
                spec.max_bytes, quotas.max_topic_bytes
            ),
        ));
    }
    Ok(())
}

/// Checks a name.
///
/// # Errors
/// [`ValidationCode::LimitExceeded`] when longer than [`MAX_NAME_CHARS`].
pub fn name(field: &str, name: &str) -> Result<(), ValidationError> {
    let n = name.chars().count();
    if n > MAX_NAME_CHARS {
        return Err(limit(
            field,
            format!("{n} characters; at most {MAX_NAME_CHARS}"),
        ));
    }
    Ok(())
}

/// Checks a webhook URL's syntax: absolute `http` or `https` with a host, no credentials, at most
/// [`MAX_URL_BYTES`]. (The address policy — private, loopback, metadata — is applied after DNS resolution
/// by the webhook sender; this is the one place to call a stricter check from.)
///
/// # Errors
/// [`ValidationCode::BadUrl`].
pub fn validate_webhook_url(raw: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| ValidationError::new(ValidationCode::BadUrl, "delivery.url", why);
    if raw.len() > MAX_URL_BYTES {
        return Err(bad(&format!(
            "{} bytes; at most {MAX_URL_BYTES}",
            raw.len()
        )));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(&format!(
            "scheme {:?}; use https (or http)",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials in the URL are not allowed; put them in the path",
        ));
    }
    if url.fragment().is_some() {
        return Err(bad("a fragment (#…) is never sent; remove it"));
    }
    Ok(())
}

/// Maps a JMESPath compile error of `field` to a [`ValidationError`] with the position.
pub(crate) fn expr_error(field: &str, text: &str, err: &ExprError) -> ValidationError {
    match err {
        ExprError::TooLong(_) => limit(field, err.to_string()),
        ExprError::Syntax { message, .. } | ExprError::Runtime { message, .. } => {
            // The jmespath crate's message: "<reason> (line L, column C)\n<expression>\n<caret>".
            let first = message.lines().next().unwrap_or(message);
            let position = parse_line_column(first).map(|(line, column)| {
                text.split_inclusive('\n')
                    .take(line)
                    .map(|l| l.chars().count())
                    .sum::<usize>()
                    + column
            });
            let reason = first
                .rsplit_once(" (line ")
                .map_or(first, |(reason, _)| reason);
            let message = match position {
                Some(p) => format!("invalid JMESPath at position {p}: {reason}"),
                None => format!("invalid JMESPath: {reason}"),
            };
            ValidationError {
                code: ValidationCode::BadJmespath,
                field: field.to_owned(),
                message,
                position,
            }
        }
    }
}

fn parse_line_column(message: &str) -> Option<(usize, usize)> {
    let (_, tail) = message.rsplit_once("(line ")?;
    let (line, rest) = tail.split_once(", column ")?;
    let column = rest.strip_suffix(')')?;
    Some((line.parse().ok()?, column.parse().ok()?))
}

/// Checks a filter against the hard limits and the tenant's quotas, compiling its predicate.
///
/// # Errors
/// The first problem: [`ValidationCode::BadFilter`], [`ValidationCode::LimitExceeded`],
/// [`ValidationCode::BadJmespath`] (with the position) or [`ValidationCode::QuotaExceeded`] (more DIDs
/// than [`Quotas::max_dids_per_filter`]).
pub fn filter(spec: &FilterSpec, quotas: &Quotas) -> Result<(), ValidationError> {
    if let Err(err) = spec.compile() {
        return Err(match &err {
            FilterError::TooManyCollections(_) => limit("filter.collections", err.to_string()),
            FilterError::TooManyDids(_) => limit("filter.dids", err.to_string()),
            FilterError::Collection(_) => ValidationError::new(
                ValidationCode::BadFilter,
                "filter.collections",
                err.to_string(),
            ),
            FilterError::Did(_) => {
                ValidationError::new(ValidationCode::BadFilter, "filter.dids", err.to_string())
            }
            FilterError::OperationsWithoutCommits => ValidationError::new(
                ValidationCode::BadFilter,
                "filter.operations",
                err.to_string(),
            ),
            FilterError::Predicate(e) => expr_error(
                "filter.predicate",
                spec.predicate.as_deref().unwrap_or_default(),
                e,
            ),
        });
    }
    if spec.dids.len() as u64 > u64::from(quotas.max_dids_per_filter) {
        return Err(ValidationError::new(
            ValidationCode::QuotaExceeded,
            "filter.dids",
            format!(
                "{} DIDs; this tenant's quota is {} per filter",
                spec.dids.len(),
                quotas.max_dids_per_filter
            ),
        ));
    }
    Ok(())
}

/// Checks a transform expression.
///
/// # Errors
/// [`ValidationCode::BadJmespath`] with the position, or [`ValidationCode::LimitExceeded`] when too long.
pub fn transform(text: &str) -> Result<(), ValidationError> {
    fpaas_filter::Expr::compile(text)
        .map(|_| ())
        .map_err(|e| expr_error("transform", text, &e))
}

/// Checks batch limits.
///
/// # Errors
/// [`ValidationCode::LimitExceeded`] naming the limit.
pub fn batching(b: &Batching) -> Result<(), ValidationError> {
    if !MAX_EVENTS_RANGE.contains(&b.max_events) {
        return Err(limit(
            "batching.max_events",
            format!("{} is outside {MAX_EVENTS_RANGE:?}", b.max_events),
        ));
    }
    if !MAX_BYTES_RANGE.contains(&b.max_bytes) {
        return Err(limit(
            "batching.max_bytes",
            format!("{} is outside {MAX_BYTES_RANGE:?}", b.max_bytes),
        ));
    }
    if !MAX_WAIT_RANGE.contains(&b.max_wait_ms) {
        return Err(limit(
            "batching.max_wait_ms",
            format!("{} is outside {MAX_WAIT_RANGE:?}", b.max_wait_ms),
        ));
    }
    Ok(())
}

/// Checks a delivery: the URL ([`validate_webhook_url`]), the timeout and the retry schedule.
///
/// # Errors
/// [`ValidationCode::BadUrl`] or [`ValidationCode::LimitExceeded`].
pub fn delivery(d: &Delivery) -> Result<(), ValidationError> {
    let w = match d {
        Delivery::Webhook(w) => w,
        Delivery::Kv(k) => return kv_delivery(k),
        Delivery::Topic(t) => {
            if !topic_name_ok(&t.topic) {
                return Err(ValidationError::new(
                    ValidationCode::BadValue,
                    "delivery.topic",
                    "not a topic name (1-64 of a-z, 0-9, '-', '_')",
                ));
            }
            return retry_schedule(&t.retry.schedule_ms);
        }
        Delivery::Pull(p) => {
            if !VISIBILITY_TIMEOUT_RANGE.contains(&p.visibility_timeout_ms) {
                return Err(limit(
                    "delivery.visibility_timeout_ms",
                    format!(
                        "{} is outside {VISIBILITY_TIMEOUT_RANGE:?}",
                        p.visibility_timeout_ms
                    ),
                ));
            }
            if !MAX_WAITING_BATCHES_RANGE.contains(&p.max_waiting_batches) {
                return Err(limit(
                    "delivery.max_waiting_batches",
                    format!(
                        "{} is outside {MAX_WAITING_BATCHES_RANGE:?}",
                        p.max_waiting_batches
                    ),
                ));
            }
            return Ok(());
        }
    };
    validate_webhook_url(&w.url)?;
    if let Some(t) = &w.output_topic
        && !topic_name_ok(t)
    {
        return Err(ValidationError::new(
            ValidationCode::BadValue,
            "delivery.output_topic",
            "not a topic name (1-64 of a-z, 0-9, '-', '_')",
        ));
    }
    if !TIMEOUT_RANGE.contains(&w.timeout_ms) {
        return Err(limit(
            "delivery.timeout_ms",
            format!("{} is outside {TIMEOUT_RANGE:?}", w.timeout_ms),
        ));
    }
    retry_schedule(&w.retry.schedule_ms)
}

/// Longest sum of the retry waits of an `incr` delivery, in ms (10 minutes): a resent increment must reach the
/// counter bucket inside its duplicate window (`fpaas_bus::COUNTER_DUPLICATE_WINDOW`, 15 minutes).
pub const MAX_INCR_RETRY_TOTAL_MS: u64 = 10 * 60 * 1_000;

fn jmespath(field: &str, text: &str) -> Result<(), ValidationError> {
    fpaas_filter::Expr::compile(text)
        .map(|_| ())
        .map_err(|e| expr_error(field, text, &e))
}

/// Checks a `kv` delivery: the bucket name, its JMESPath expressions (`value` only with `put`, `by` only with
/// `incr`) and its retry schedule (for `incr` at most [`MAX_INCR_RETRY_TOTAL_MS`] in all).
///
/// # Errors
/// [`ValidationCode::BadValue`], [`ValidationCode::BadJmespath`] or [`ValidationCode::LimitExceeded`].
pub fn kv_delivery(k: &crate::model::KvDelivery) -> Result<(), ValidationError> {
    use crate::model::KvOp;
    if !topic_name_ok(&k.bucket) {
        return Err(ValidationError::new(
            ValidationCode::BadValue,
            "delivery.bucket",
            "not a bucket name (1-64 of a-z, 0-9, '-', '_', starting with a letter or digit)",
        ));
    }
    jmespath("delivery.key", &k.key)?;
    match k.op {
        KvOp::Put => {
            if k.by.is_some() {
                return Err(ValidationError::new(
                    ValidationCode::BadValue,
                    "delivery.by",
                    "`by` belongs to op incr; op put stores `value`",
                ));
            }
            if let Some(v) = &k.value {
                jmespath("delivery.value", v)?;
            }
        }
        KvOp::Incr => {
            if k.value.is_some() {
                return Err(ValidationError::new(
                    ValidationCode::BadValue,
                    "delivery.value",
                    "`value` belongs to op put; op incr adds `by`",
                ));
            }
            if let Some(b) = &k.by {
                jmespath("delivery.by", b)?;
            }
            let total: u64 = k
                .retry
                .schedule_ms
                .iter()
                .fold(0, |a, b| a.saturating_add(*b));
            if total > MAX_INCR_RETRY_TOTAL_MS {
                return Err(limit(
                    "delivery.retry.schedule_ms",
                    format!(
                        "the waits of an incr delivery add up to {total} ms; at most {MAX_INCR_RETRY_TOTAL_MS} \
                         (a resent increment must stay inside the counter bucket's duplicate window)"
                    ),
                ));
            }
        }
    }
    retry_schedule(&k.retry.schedule_ms)
}

fn retry_schedule(schedule_ms: &[u64]) -> Result<(), ValidationError> {
    if schedule_ms.len() > MAX_RETRIES {
        return Err(limit(
            "delivery.retry.schedule_ms",
            format!("{} retries; at most {MAX_RETRIES}", schedule_ms.len()),
        ));
    }
    if let Some(wait) = schedule_ms.iter().find(|&&w| w > MAX_RETRY_WAIT_MS) {
        return Err(limit(
            "delivery.retry.schedule_ms",
            format!("a wait of {wait} ms; at most {MAX_RETRY_WAIT_MS}"),
        ));
    }
    Ok(())
}

/// Checks everything of a new subscription's spec against the hard limits and `quotas`.
///
/// # Errors
/// The first problem found.
pub fn spec(s: &SubscriptionSpec, quotas: &Quotas) -> Result<(), ValidationError> {
    if let Some(n) = &s.name {
        name("name", n)?;
    }
    filter(&s.filter, quotas)?;
    if let Some(t) = &s.transform {
        transform(t)?;
    }
    batching(&s.batching)?;
    delivery(&s.delivery)?;
    if let Some(c) = &s.collect {
        crate::collect::validate(c)?;
    }
    source(&s.source, &s.filter, &s.delivery)
}

/// Checks a topic source: a valid name, a filter of a predicate only (a topic's messages are whatever was
/// published into it: no kinds, operations, collections or DIDs to match), and not delivering into itself.
///
/// # Errors
/// [`ValidationCode::BadValue`] or [`ValidationCode::BadFilter`].
pub fn source(
    source: &crate::model::Source,
    f: &FilterSpec,
    delivery: &Delivery,
) -> Result<(), ValidationError> {
    let Some(topic) = source.topic() else {
        return Ok(());
    };
    if !topic_name_ok(topic) {
        return Err(ValidationError::new(
            ValidationCode::BadValue,
            "source.topic",
            "not a topic name (1-64 of a-z, 0-9, '-', '_')",
        ));
    }
    for (field, empty) in [
        ("filter.kinds", f.kinds.is_empty()),
        ("filter.operations", f.operations.is_empty()),
        ("filter.collections", f.collections.is_empty()),
        ("filter.dids", f.dids.is_empty()),
    ] {
        if !empty {
            return Err(ValidationError::new(
                ValidationCode::BadFilter,
                field,
                "a subscription of a topic filters with `predicate` only",
            ));
        }
    }
    if matches!(delivery, Delivery::Topic(t) if t.topic == topic) {
        return Err(ValidationError::new(
            ValidationCode::BadValue,
            "delivery.topic",
            "a subscription cannot deliver into the topic it reads",
        ));
    }
    if delivery.webhook().and_then(|w| w.output_topic.as_deref()) == Some(topic) {
        return Err(ValidationError::new(
            ValidationCode::BadValue,
            "delivery.output_topic",
            "a subscription cannot publish answers into the topic it reads",
        ));
    }
    Ok(())
}

/// Checks a whole subscription after a change (the patched result, so combinations are checked too).
///
/// # Errors
/// The first problem found.
pub fn subscription(s: &Subscription, quotas: &Quotas) -> Result<(), ValidationError> {
    if let Some(n) = &s.name {
        name("name", n)?;
    }
    filter(&s.filter, quotas)?;
    if let Some(t) = &s.transform {
        transform(t)?;
    }
    batching(&s.batching)?;
    delivery(&s.delivery)?;
    if let Some(c) = &s.collect {
        crate::collect::validate(c)?;
    }
    source(&s.source, &s.filter, &s.delivery)
}

/// Checks a new tenant.
///
/// # Errors
/// [`ValidationCode::LimitExceeded`] for a long name, [`ValidationCode::BadValue`] for an empty one.
pub fn tenant(t: &TenantSpec) -> Result<(), ValidationError> {
    if t.name.trim().is_empty() {
        return Err(ValidationError::new(
            ValidationCode::BadValue,
            "name",
            "a tenant needs a name",
        ));
    }
    name("name", &t.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RetryPolicy, WebhookDelivery};

    fn spec() -> SubscriptionSpec {
        serde_json::from_value(serde_json::json!({
            "delivery": {"type": "webhook", "url": "https://example.com/hook"}
        }))
        .unwrap()
    }

    fn code(r: Result<(), ValidationError>) -> ValidationCode {
        r.expect_err("should be refused").code
    }

    #[test]
    fn a_default_spec_is_valid() {
        spec_ok(&spec());
    }

    fn spec_ok(s: &SubscriptionSpec) {
        super::spec(s, &Quotas::default()).unwrap();
    }

    #[test]
    fn urls() {
        for ok in [
            "https://example.com/hook",
            "http://127.0.0.1:8080/x?y=1",
            "https://[::1]:9/",
        ] {
            validate_webhook_url(ok).unwrap();
        }
        for bad in [
            "",
            "example.com",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "file:///etc/passwd",
            "https://",
            "javascript:alert(1)",
        ] {
            let e = validate_webhook_url(bad).expect_err(bad);
            assert_eq!(e.code, ValidationCode::BadUrl, "{bad}");
            assert_eq!(e.field, "delivery.url");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(code(validate_webhook_url(&long)), ValidationCode::BadUrl);
    }

    #[test]
    fn jmespath_errors_carry_the_position() {
        let mut s = spec();
        s.filter.predicate = Some("commit.record.[".into());
        let e = super::spec(&s, &Quotas::default()).unwrap_err();
        assert_eq!(e.code, ValidationCode::BadJmespath);
        assert_eq!(e.field, "filter.predicate");
        let p = e.position.expect("position");
        assert!(p <= "commit.record.[".len(), "{p}");
        assert!(
            e.message.contains(&format!("position {p}")),
            "{}",
            e.message
        );

        let mut s = spec();
        s.transform = Some("{a: did".into());
        let e = super::spec(&s, &Quotas::default()).unwrap_err();
        assert_eq!(e.code, ValidationCode::BadJmespath);
        assert_eq!(e.field, "transform");
        assert!(e.position.is_some());

        let mut s = spec();
        s.transform = Some("a".repeat(fpaas_filter::expr::MAX_EXPRESSION_BYTES + 1));
        assert_eq!(
            code(super::spec(&s, &Quotas::default())),
            ValidationCode::LimitExceeded
        );
    }

    #[test]
    fn limits_and_filters() {
        let q = Quotas::default();
        let with = |f: &dyn Fn(&mut SubscriptionSpec)| {
            let mut s = spec();
            f(&mut s);
            super::spec(&s, &q)
        };
        assert_eq!(
            code(with(&|s| s.batching.max_events = 0)),
            ValidationCode::LimitExceeded
        );
        assert_eq!(
            code(with(&|s| s.batching.max_events = 10_001)),
            ValidationCode::LimitExceeded
        );
        assert_eq!(
            code(with(&|s| s.batching.max_bytes = 1_023)),
            ValidationCode::LimitExceeded
        );
        assert_eq!(
            code(with(&|s| s.batching.max_wait_ms = 60_001)),
            ValidationCode::LimitExceeded
        );
        with(&|s| s.batching.max_wait_ms = 0).unwrap();
        with(&|s| s.batching.max_bytes = 8 * 1024 * 1024).unwrap();
        assert_eq!(
            code(with(&|s| s.name = Some("x".repeat(201)))),
            ValidationCode::LimitExceeded
        );
        assert_eq!(
            code(with(
                &|s| s.filter.collections = vec!["no spaces allowed".into()]
            )),
            ValidationCode::BadFilter
        );
        assert_eq!(
            code(with(&|s| s.filter.dids = vec!["did:plc:x".into(); 10_001])),
            ValidationCode::LimitExceeded
        );
        assert_eq!(
            code(with(&|s| s.filter.dids = vec!["bob".into()])),
            ValidationCode::BadFilter
        );
        let pull = |visibility_timeout_ms: u64, max_waiting_batches: u32| {
            with(&|s| {
                s.delivery = Delivery::Pull(crate::model::PullDelivery {
                    visibility_timeout_ms,
                    max_waiting_batches,
                });
            })
        };
        pull(1_000, 1).unwrap();
        pull(43_200_000, 1_000).unwrap();
        assert_eq!(code(pull(999, 100)), ValidationCode::LimitExceeded);
        assert_eq!(code(pull(30_000, 0)), ValidationCode::LimitExceeded);
        assert_eq!(code(pull(30_000, 1_001)), ValidationCode::LimitExceeded);
        let webhook = |f: &dyn Fn(&mut WebhookDelivery)| {
            with(&|s| {
                let mut w = s.delivery.webhook().expect("a webhook").clone();
                f(&mut w);
                s.delivery = Delivery::Webhook(w);
            })
        };
        assert_eq!(
            code(webhook(&|w| w.timeout_ms = 99)),
            ValidationCode::LimitExceeded
        );
        assert_eq!(
            code(webhook(&|w| w.retry = RetryPolicy {
                schedule_ms: vec![1; 21]
            })),
            ValidationCode::LimitExceeded
        );
        assert_eq!(
            code(webhook(&|w| w.retry = RetryPolicy {
                schedule_ms: vec![MAX_RETRY_WAIT_MS + 1]
            })),
            ValidationCode::LimitExceeded
        );
        webhook(&|w| {
            w.retry = RetryPolicy {
                schedule_ms: vec![],
            }
        })
        .unwrap();
        assert_eq!(
            code(webhook(&|w| w.url = "nope".into())),
            ValidationCode::BadUrl
        );
    }

    #[test]
    fn kv_deliveries() {
        let kv = |v: serde_json::Value| {
            let mut s = spec();
            s.delivery = serde_json::from_value(v).unwrap();
            super::spec(&s, &Quotas::default())
        };
        kv(serde_json::json!({"type": "kv", "bucket": "likes", "key": "subject.uri"})).unwrap();
        kv(serde_json::json!({"type": "kv", "bucket": "likes", "key": "k", "op": "incr", "by": "n"}))
            .unwrap();
        let e = kv(serde_json::json!({"type": "kv", "bucket": "likes", "key": "a.["})).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ValidationCode::BadJmespath, "delivery.key")
        );
        assert!(e.position.is_some());
        let e = kv(serde_json::json!({"type": "kv", "bucket": "b", "key": "k", "value": "{"}))
            .unwrap_err();
        assert_eq!(e.field, "delivery.value");
        let e = kv(
            serde_json::json!({"type": "kv", "bucket": "b", "key": "k", "op": "incr", "by": "]"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "delivery.by");
        for bad in ["", "Bad", "a.b", "-x"] {
            let e = kv(serde_json::json!({"type": "kv", "bucket": bad, "key": "k"})).unwrap_err();
            assert_eq!(e.code, ValidationCode::BadValue, "{bad}");
        }
        let e = kv(serde_json::json!({"type": "kv", "bucket": "b", "key": "k", "by": "n"}))
            .unwrap_err();
        assert_eq!(e.field, "delivery.by");
        let e = kv(
            serde_json::json!({"type": "kv", "bucket": "b", "key": "k", "op": "incr",
            "retry": {"schedule_ms": [600_000, 1]}}),
        )
        .unwrap_err();
        assert_eq!(e.code, ValidationCode::LimitExceeded);
    }

    #[test]
    fn did_quota() {
        let quotas = Quotas {
            max_dids_per_filter: 2,
            ..Quotas::default()
        };
        let mut s = spec();
        s.filter.dids = vec!["did:plc:a".into(), "did:plc:b".into()];
        super::spec(&s, &quotas).unwrap();
        s.filter.dids.push("did:plc:c".into());
        assert_eq!(
            code(super::spec(&s, &quotas)),
            ValidationCode::QuotaExceeded
        );
    }

    #[test]
    fn tenants() {
        tenant(&TenantSpec {
            name: "acme".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            code(tenant(&TenantSpec {
                name: " ".into(),
                ..Default::default()
            })),
            ValidationCode::BadValue
        );
    }
}
