//! How the builder and the like indexer run: each is a [`Stage`] (apply one batch of deliveries,
//! say how to settle each message), driven by the bus's consume loop ([`fpaas_bus::consume`]:
//! fetch → apply → ack after success, backoff, shutdown) with this crate's errors sorted into
//! retryable and fatal by [`Error::is_retryable`]. Stats of the applied batches are summed.

use std::future::Future;

use fpaas_bus::{
    ApplyError, BatchApply, ConsumeError, ConsumeOptions, Delivery, DurableReader, Settle, Stopped,
};
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// Per-batch counts that add up over a run.
pub(crate) trait Stats: Default + std::fmt::Debug + Send {
    /// Adds `other` into `self`.
    fn add(&mut self, other: &Self);
}

/// One consumer of the stream: the builder or the like indexer.
pub(crate) trait Stage: Sync {
    /// Its counts.
    type Stats: Stats;
    /// Counter incremented before each retry of a failed batch.
    const RETRY_METRIC: &'static str;

    /// Applies `batch` (all writes acknowledged by the server) without acking it; returns the
    /// counts and how to settle each message.
    fn apply_batch(
        &self,
        batch: &[Delivery],
    ) -> impl Future<Output = Result<(Self::Stats, Vec<Settle>), Error>> + Send;
}

struct Run<'a, S: Stage> {
    stage: &'a S,
    total: S::Stats,
}

impl<S: Stage> BatchApply for Run<'_, S> {
    type Error = Error;

    async fn apply(&mut self, batch: &[Delivery]) -> Result<Vec<Settle>, ApplyError<Error>> {
        let (stats, settle) = self
            .stage
            .apply_batch(batch)
            .await
            .map_err(Error::into_apply)?;
        self.total.add(&stats);
        Ok(settle)
    }

    fn retrying(&mut self, _error: &Error) {
        metrics::counter!(S::RETRY_METRIC).increment(1);
    }
}

/// Runs `stage` on `reader` until `shutdown` (the batch in progress is finished and acked first,
/// or, while waiting for a retry, left unacked for redelivery) or a fatal error. Returns the summed
/// stats and whether a failed batch was left unacked.
///
/// # Errors
/// The first error retrying cannot fix.
pub(crate) async fn run<S: Stage>(
    stage: &S,
    reader: &DurableReader,
    batch_size: usize,
    shutdown: &CancellationToken,
) -> Result<(S::Stats, Stopped), Error> {
    let mut run = Run {
        stage,
        total: S::Stats::default(),
    };
    let options = ConsumeOptions::new(batch_size);
    match fpaas_bus::consume(reader, &options, shutdown, &mut run).await {
        Ok(stopped) => Ok((run.total, stopped)),
        Err(ConsumeError::Apply(err)) => Err(err),
        Err(ConsumeError::Fetch(err)) => Err(Error::bus("fetch", err)),
    }
}

/// Fetches one batch (waiting up to `wait`), applies and settles it. Returns its stats.
///
/// # Errors
/// [`Error::Bus`] when fetching or writing fails (the batch is then not acked).
pub(crate) async fn step<S: Stage>(
    stage: &S,
    reader: &DurableReader,
    batch_size: usize,
    wait: std::time::Duration,
) -> Result<S::Stats, Error> {
    let batch = reader
        .next_batch(batch_size, wait)
        .await
        .map_err(|e| Error::bus("fetch", e))?;
    if batch.is_empty() {
        return Ok(S::Stats::default());
    }
    let (stats, settle) = stage.apply_batch(&batch).await?;
    fpaas_bus::settle_batch(&batch, &settle).await;
    Ok(stats)
}
