//! The errors of the record KV builder, the like indexer, the queries and the CAR import.
//! [`Error::is_retryable`] says which ones a retry can fix (the consume loops retry those and
//! stop on the others); bus failures carry the bus's [`fpaas_bus::BusErrorKind`].

use fpaas_bus::BusError;

/// A boxed source error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can fail in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// User or upstream input that cannot be a key, URI or record (never a panic).
    #[error("invalid {what}: {value:?}")]
    InvalidInput {
        /// What was expected.
        what: &'static str,
        /// What was given (truncated to 200 characters).
        value: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A bus operation failed (connection, timeout, server error); its kind says whether a retry
    /// can help.
    #[error("bus {op} failed")]
    Bus {
        /// Which operation, e.g. `kv put`, `fetch`.
        op: &'static str,
        /// The bus error.
        #[source]
        source: BusError,
    },
    /// A compare-and-set write kept conflicting with concurrent writers.
    #[error("key {key} kept changing under {attempts} compare-and-set attempts")]
    Contended {
        /// The KV key.
        key: String,
        /// How often it was tried.
        attempts: u32,
    },
    /// Delete markers are to expire but the bucket's stream cannot accept per-message TTLs.
    #[error(
        "bucket {bucket} cannot expire delete markers: its stream does not accept per-message TTLs \
         (nats-server 2.11+ needed); upgrade nats-server, or set delete_marker_ttl_secs to 0 \
         (`--delete-marker-ttl-secs 0`) to keep markers forever as before"
    )]
    MarkerTtlUnsupported {
        /// The KV bucket.
        bucket: String,
        /// The bus error (kind `message_ttl`).
        #[source]
        source: BusError,
    },
    /// A repository export could not be read.
    #[error("repository export: {0}")]
    Car(String),
    /// Reading a local file failed.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::InvalidInput`], with the value truncated for logs.
    pub fn invalid(what: &'static str, value: &str) -> Self {
        let value = match value.char_indices().nth(200) {
            Some((i, _)) => format!("{}…", &value[..i]),
            None => value.to_string(),
        };
        Error::InvalidInput { what, value }
    }

    /// An [`Error::Bus`].
    pub fn bus(op: &'static str, source: BusError) -> Self {
        Error::Bus { op, source }
    }

    /// Whether retrying the same operation later can succeed: bus errors of a retryable kind and
    /// compare-and-set contention; not invalid input, configuration, or a refused bucket setting.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Bus { source, .. } => source.kind().is_retryable(),
            Error::Contended { .. } => true,
            Error::InvalidInput { .. }
            | Error::Config(_)
            | Error::MarkerTtlUnsupported { .. }
            | Error::Car(_)
            | Error::Io { .. } => false,
        }
    }

    /// This error as a consume-loop [`fpaas_bus::ApplyError`]: retryable or fatal.
    pub fn into_apply(self) -> fpaas_bus::ApplyError<Self> {
        if self.is_retryable() {
            fpaas_bus::ApplyError::Retryable(self)
        } else {
            fpaas_bus::ApplyError::Fatal(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpaas_bus::BusErrorKind;

    #[test]
    fn bus_kinds_decide_retries() {
        let timeout = Error::bus("kv put", BusError::new(BusErrorKind::Timeout, "slow"));
        assert!(timeout.is_retryable());
        let bad_key = Error::bus("kv put", BusError::new(BusErrorKind::InvalidKey, "a b"));
        assert!(!bad_key.is_retryable());
        assert!(matches!(
            Error::Config("x".into()).into_apply(),
            fpaas_bus::ApplyError::Fatal(_)
        ));
        let contended = Error::Contended {
            key: "k".into(),
            attempts: 3,
        };
        assert!(matches!(
            contended.into_apply(),
            fpaas_bus::ApplyError::Retryable(_)
        ));
    }
}
