//! The errors of the record KV builder, the like indexer, the queries and the CAR import.

/// Boxed source error from the NATS client (async-nats errors are generic over their kinds).
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
    /// A NATS / JetStream operation failed (connection, timeout, server error).
    #[error("NATS {op} failed")]
    Nats {
        /// Which operation, e.g. `kv put`, `create consumer`.
        op: &'static str,
        /// The client error.
        #[source]
        source: BoxError,
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
        source: fpaas_bus::BusError,
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

    /// An [`Error::Nats`] from any client error.
    pub fn nats(op: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Nats {
            op,
            source: source.into(),
        }
    }
}
