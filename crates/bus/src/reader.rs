//! Durable stream readers: a [`DurableReader`] is a durable pull consumer on a stream (or on a KV
//! bucket's stream), read in bounded batches of [`Delivery`]s that are acked (or terminated)
//! explicitly. Its position survives restarts; whatever was delivered and not acked comes back
//! after the ack wait. The [`consume`](crate::consume()) loop drives one.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt;

use crate::bucket::is_marker;
use crate::error::{BusError, BusErrorKind};

/// Settings of a [`DurableReader`].
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    /// Stream to read.
    pub stream: String,
    /// Durable consumer name.
    pub durable: String,
    /// Description stored with the consumer.
    pub description: String,
    /// Filter subjects (empty = everything).
    pub filters: Vec<String>,
    /// Ack wait.
    pub ack_wait: Duration,
    /// Most unacknowledged messages the server hands out.
    pub max_ack_pending: i64,
}

/// A durable pull consumer read in bounded batches with explicit acks.
#[derive(Debug)]
pub struct DurableReader {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    durable: String,
    /// `max_age` of the stream read (0 = no age limit).
    stream_max_age: Duration,
}

impl DurableReader {
    /// Creates the durable consumer, or updates its filters and ack wait when it exists (its
    /// position is kept).
    ///
    /// # Errors
    /// [`BusErrorKind::Consumer`] when the stream does not exist or the server refuses the
    /// consumer.
    pub async fn ensure(
        client: &async_nats::Client,
        options: &ReaderOptions,
    ) -> Result<Self, BusError> {
        let js = jetstream::new(client.clone());
        let stream = js.get_stream(&options.stream).await.map_err(|e| {
            BusError::during(BusErrorKind::Consumer, "get stream", &options.durable, e)
        })?;
        let stream_max_age = stream.cached_info().config.max_age;
        let (filter_subject, filter_subjects) = match options.filters.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(options.durable.clone()),
                description: Some(options.description.clone()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                max_deliver: -1,
                filter_subject,
                filter_subjects,
                max_ack_pending: options.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                BusError::during(
                    BusErrorKind::Consumer,
                    "create durable consumer",
                    &options.durable,
                    e,
                )
            })?;
        Ok(Self {
            consumer,
            durable: options.durable.clone(),
            stream_max_age,
        })
    }

    /// The retention (`max_age`) of the stream read, as it was when the reader was created;
    /// zero when the stream has no age limit.
    pub fn stream_max_age(&self) -> Duration {
        self.stream_max_age
    }

    /// The durable consumer's name.
    pub fn durable(&self) -> &str {
        &self.durable
    }

    /// Fetches up to `max` messages, waiting at most `wait` for the first.
    ///
    /// # Errors
    /// [`BusErrorKind::Consumer`] on a server or connection failure.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| BusError::during(BusErrorKind::Consumer, "fetch", &self.durable, e))?;
        let mut out = Vec::with_capacity(max);
        while let Some(message) = batch.next().await {
            let message = message
                .map_err(|e| BusError::during(BusErrorKind::Consumer, "fetch", &self.durable, e))?;
            let info = message.info().ok();
            out.push(Delivery {
                redelivered: info.as_ref().is_some_and(|i| i.delivered > 1),
                stream_seq: info.as_ref().map(|i| i.stream_sequence).unwrap_or(0),
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
                kv_deleted: message.headers.as_ref().is_some_and(is_marker),
                message,
            });
        }
        Ok(out)
    }

    /// Messages not yet delivered plus delivered and not acked, from the server.
    ///
    /// # Errors
    /// [`BusErrorKind::Consumer`] on a server or connection failure.
    pub async fn backlog(&mut self) -> Result<u64, BusError> {
        let info = self.consumer.info().await.map_err(|e| {
            BusError::during(BusErrorKind::Consumer, "consumer info", &self.durable, e)
        })?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}

/// One delivered message.
#[derive(Debug)]
pub struct Delivery {
    /// Its subject.
    pub subject: String,
    /// Its payload.
    pub payload: Bytes,
    /// A KV delete or purge marker (KV streams).
    pub kv_deleted: bool,
    /// Stream sequence.
    pub stream_seq: u64,
    /// Delivered before (not acked in time, e.g. by a killed instance): it may arrive after
    /// messages that followed it in the stream.
    pub redelivered: bool,
    message: jetstream::Message,
}

/// What to tell the server about one applied [`Delivery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Done: it will not be delivered again.
    Ack,
    /// Poison: it will never be delivered again (and is not counted as processed).
    Term,
}

impl Delivery {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    /// Acknowledges: the message will not be delivered again.
    ///
    /// # Errors
    /// [`BusErrorKind::Consumer`] when the ack cannot be sent (it is then redelivered).
    pub async fn ack(&self) -> Result<(), BusError> {
        self.settle(Settle::Ack).await
    }

    /// Acks or terminates the message.
    ///
    /// # Errors
    /// [`BusErrorKind::Consumer`] when the ack cannot be sent (it is then redelivered).
    pub async fn settle(&self, how: Settle) -> Result<(), BusError> {
        let kind = match how {
            Settle::Ack => AckKind::Ack,
            Settle::Term => AckKind::Term,
        };
        self.message
            .ack_with(kind)
            .await
            .map_err(|e| BusError::during(BusErrorKind::Consumer, "ack", &self.subject, e))
    }
}

/// Acks or terminates every delivery of `batch` as `settle` says (a missing entry acks). A failed
/// ack is only logged: the message comes back and is applied again, which callers must tolerate.
pub async fn settle_batch(batch: &[Delivery], settle: &[Settle]) {
    for (i, delivery) in batch.iter().enumerate() {
        let how = settle.get(i).copied().unwrap_or(Settle::Ack);
        if let Err(err) = delivery.settle(how).await {
            tracing::debug!(error = %err, stream_seq = delivery.stream_seq, "ack failed");
        }
    }
}
