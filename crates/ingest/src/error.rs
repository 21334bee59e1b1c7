//! The errors of the shuffler crate. Almost every failure the shuffler meets at run time (relay gone, NATS
//! down, a publish timing out) is retried inside the run loop and only counted and logged; what reaches the
//! caller as an [`IngestError`] is what retrying cannot fix: invalid configuration, or a stream configuration
//! the server refuses.

use fpaas_bus::BusError;

/// Why the shuffler stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A configuration field is invalid.
    #[error("invalid shuffler config: {0}")]
    Config(String),
    /// NATS refused something retrying cannot fix (a bad URL, an invalid stream/KV configuration).
    #[error("nats: {what}")]
    Bus {
        /// What the shuffler was doing.
        what: &'static str,
        /// The bus error.
        #[source]
        source: BusError,
    },
    /// Another live process holds this instance name (or took it over while this one was cut off).
    #[error(
        "instance name {instance:?} is in use: {detail}. Two shufflers must not share an --instance name; \
         stop the other one or pick another name (a crashed holder's lease expires after lease_ttl_ms)"
    )]
    Lease {
        /// The contested instance name.
        instance: String,
        /// Who holds it and how that was found out.
        detail: String,
    },
    /// A cursor bucket operation failed (retried by the run loop; surfaced by the cursor helpers).
    #[error("cursor store: {what}")]
    Cursor {
        /// What failed.
        what: String,
        /// The bus error.
        #[source]
        source: BusError,
    },
}
