//! The generic consume loop: fetch a batch from a [`DurableReader`] → hand it to the caller's
//! [`BatchApply`] → settle (ack or terminate) its messages only after the apply succeeded → fetch
//! the next. A failed fetch or a [retryable](ApplyError::Retryable) apply failure is retried after a
//! [`Backoff`] pause (the same batch is applied again: appliers must be idempotent); a
//! [fatal](ApplyError::Fatal) one ends the loop with the batch unacked (it is redelivered to the
//! next run). Shutdown through the [`CancellationToken`] finishes or abandons (unacked) the batch
//! in progress and returns.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::BusError;
use crate::reader::{Delivery, DurableReader, Settle, settle_batch};

/// How an apply failed: whether the same batch may be applied again.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError<E> {
    /// Retrying later can succeed (an outage, a timeout, contention).
    #[error(transparent)]
    Retryable(E),
    /// Retrying cannot help: the loop stops.
    #[error(transparent)]
    Fatal(E),
}

/// What the caller does with each batch.
pub trait BatchApply {
    /// The caller's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies `batch` and says how to settle each message (index by index; a shorter list acks
    /// the rest). Called again with the same batch after a retryable failure.
    fn apply(
        &mut self,
        batch: &[Delivery],
    ) -> impl Future<Output = Result<Vec<Settle>, ApplyError<Self::Error>>> + Send;

    /// Called before each retry of a failed batch (for the caller's metrics).
    fn retrying(&mut self, _error: &Self::Error) {}
}

/// Settings of [`consume`].
#[derive(Clone, Debug)]
pub struct ConsumeOptions {
    /// Most messages per batch.
    pub batch_size: usize,
    /// How long one fetch waits for the first message.
    pub fetch_wait: Duration,
    /// Smallest pause after a failure.
    pub backoff_min: Duration,
    /// Largest pause after repeated failures.
    pub backoff_max: Duration,
}

impl ConsumeOptions {
    /// Batches of `batch_size`, 500 ms fetch wait, pauses from 100 ms to 5 s.
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            fetch_wait: Duration::from_millis(500),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// How [`consume`] ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown between batches: everything applied is acked.
    Clean,
    /// Shutdown while a failed batch waited for its retry: that batch is not acked.
    BatchUnacked,
}

/// Why [`consume`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError<E: std::error::Error + 'static> {
    /// A fetch failed in a way retrying cannot fix.
    #[error("fetch failed")]
    Fetch(#[source] BusError),
    /// The apply failed fatally; its batch stays unacked.
    #[error("apply failed")]
    Apply(#[source] E),
}

/// Runs the consume loop on `reader` until `shutdown` is cancelled or a fatal error.
///
/// # Errors
/// [`ConsumeError::Fetch`] for a fetch error whose kind is not retryable, [`ConsumeError::Apply`]
/// for an [`ApplyError::Fatal`].
pub async fn consume<A: BatchApply>(
    reader: &DurableReader,
    options: &ConsumeOptions,
    shutdown: &CancellationToken,
    applier: &mut A,
) -> Result<Stopped, ConsumeError<A::Error>> {
    let mut backoff = Backoff::new(options.backoff_min, options.backoff_max);
    let durable = reader.durable();
    while !shutdown.is_cancelled() {
        let fetched = tokio::select! {
            () = shutdown.cancelled() => break,
            fetched = reader.next_batch(options.batch_size, options.fetch_wait) => fetched,
        };
        let batch = match fetched {
            Ok(batch) => batch,
            Err(err) if err.kind().is_retryable() => {
                let pause = backoff.next_delay();
                tracing::warn!(durable, error = %err, ?pause, "fetch failed; retrying");
                if pause_or_cancel(shutdown, pause).await {
                    break;
                }
                continue;
            }
            Err(err) => return Err(ConsumeError::Fetch(err)),
        };
        if batch.is_empty() {
            continue;
        }
        // A fetched batch is applied until it succeeds (or shutdown: then it stays unacked and is
        // redelivered to the next run).
        loop {
            match applier.apply(&batch).await {
                Ok(settle) => {
                    settle_batch(&batch, &settle).await;
                    backoff.reset();
                    break;
                }
                Err(ApplyError::Retryable(err)) => {
                    let pause = backoff.next_delay();
                    tracing::warn!(durable, error = %err, messages = batch.len(), ?pause,
                        "batch failed; retrying");
                    applier.retrying(&err);
                    if pause_or_cancel(shutdown, pause).await {
                        return Ok(Stopped::BatchUnacked);
                    }
                }
                Err(ApplyError::Fatal(err)) => {
                    tracing::error!(durable, error = %err, messages = batch.len(),
                        "batch failed; retrying cannot help: stopping (batch not acked)");
                    return Err(ConsumeError::Apply(err));
                }
            }
        }
    }
    Ok(Stopped::Clean)
}

/// Sleeps `pause`; true when shutdown came first.
async fn pause_or_cancel(shutdown: &CancellationToken, pause: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(pause) => false,
    }
}
