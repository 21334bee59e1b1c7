//! The benches' error: which step of a measurement failed, and why.

/// Boxed source error (async-nats errors are generic over their kinds).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can end a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step failed: `what` names it (reading a file, a publish, starting a child), `source` says why.
    #[error("{what}")]
    Step {
        /// The step, e.g. `reading testdata/corpus/frames.bin.zst`.
        what: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// A measurement could not be taken: a missing tool, a child that exited early, a stalled stream.
    #[error("{0}")]
    Failed(String),
    /// A blocking part of a bench (workload generation, a nats-server start) failed or panicked.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    /// The record KV builder, indexer or queries under measurement failed.
    #[error(transparent)]
    RecordKv(#[from] fpaas_recordkv::Error),
    /// Stream provisioning or connecting failed.
    #[error(transparent)]
    Bus(#[from] fpaas_bus::BusError),
    /// A capture file could not be read or written.
    #[error(transparent)]
    Capture(#[from] fpaas_sim::CaptureError),
    /// The relay simulator failed.
    #[error(transparent)]
    Sim(#[from] fpaas_sim::SimError),
    /// The frame generator failed to encode a frame.
    #[error(transparent)]
    Encode(#[from] fpaas_sim::encode::EncodeError),
    /// An event did not round-trip through JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A file or process operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names the step of a fallible result, like `anyhow::Context` does in binaries.
pub trait Context<T> {
    /// On error, an [`Error::Step`] named `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// Like [`Context::context`] with the name built only on error.
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<BoxError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Step {
            what: what.into(),
            source: source.into(),
        })
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Step {
            what: what(),
            source: source.into(),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| Error::Failed(what.into()))
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| Error::Failed(what()))
    }
}

/// `Err(Error::Failed(format!(…)))` unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::Failed(format!($($fmt)+)));
        }
    };
}

/// `return Err(Error::Failed(format!(…)))`.
macro_rules! bail {
    ($($fmt:tt)+) => {
        return Err($crate::error::Error::Failed(format!($($fmt)+)))
    };
}

pub(crate) use {bail, ensure};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_the_step_and_keeps_the_source() {
        let err = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing frames.bin")
            .unwrap_err();
        assert_eq!(err.to_string(), "writing frames.bin");
        let source = std::error::Error::source(&err).expect("source kept");
        assert_eq!(source.to_string(), "disk full");
        let none: Result<u32> = None.context("no pid");
        assert_eq!(none.unwrap_err().to_string(), "no pid");
    }
}
