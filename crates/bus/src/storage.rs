//! The storage model of the firehose stream: the disk its retention needs, per node and for the cluster,
//! with replication and compression ([`estimate`], pure arithmetic), and the measured defaults of what a
//! running shuffler's metrics cannot tell (per-message overhead, S2 ratio; measured with `fpaas bench
//! storage`, see `docs/storage.md`). `fpaas storage-estimate` feeds it from flags or from a shuffler's
//! metrics and prints the result.
//!
//! Every message is stored as a record of `payload + overhead` bytes (subject, `Nats-Msg-Id` and the DID /
//! seq / time headers, record header, checksum). JetStream counts these uncompressed "logical" bytes against
//! the stream's `max_bytes` (measured: `state.bytes` is identical with and without S2), while the disk holds
//! them divided by the compression ratio, once per replica.

/// Stored bytes per message beyond the JSON payload (subject, headers, record header, checksum), measured by
/// `fpaas bench storage` on the corpus (docs/storage.md).
pub const MEASURED_OVERHEAD_BYTES: f64 = 293.0;
/// Uncompressed / S2 bytes of the stream's message blocks, measured by `fpaas bench storage` (docs/storage.md).
pub const MEASURED_S2_RATIO: f64 = 2.79;
/// Mean JSON payload of the corpus's normalized events, bytes (`fpaas bench storage`).
pub const CORPUS_MEAN_PAYLOAD_BYTES: f64 = 604.0;
/// Average firehose rate in 2026 (docs/measurements.md), events/s.
pub const TYPICAL_EVENTS_PER_S: f64 = 350.0;

/// What the estimate is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// Messages per second.
    pub events_per_s: f64,
    /// Mean JSON payload, bytes.
    pub mean_message_bytes: f64,
    /// Stored bytes per message beyond the payload.
    pub overhead_bytes: f64,
    /// Uncompressed / stored bytes (≥ 1 in practice).
    pub compression_ratio: f64,
    /// Retention, hours.
    pub retention_hours: f64,
    /// Stream replicas.
    pub replicas: u32,
    /// Nodes holding the replicas.
    pub nodes: u32,
    /// The stream's max_bytes (logical), if limited.
    pub max_bytes: Option<u64>,
}

/// The storage the inputs need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// JSON payload bytes per day (what the shuffler publishes, before any overhead).
    pub raw_bytes_per_day: f64,
    /// Logical bytes (payload + overhead) held for the retention: what counts against max_bytes.
    pub logical_bytes_retained: f64,
    /// Disk bytes of one replica after compression.
    pub stored_bytes_per_replica: f64,
    /// Disk bytes per node.
    pub stored_bytes_per_node: f64,
    /// Disk bytes over all replicas.
    pub cluster_total_bytes: f64,
    /// max_bytes / logical bytes retained (> 1: the retention fits; < 1: max_bytes cuts it short).
    pub max_bytes_headroom: Option<f64>,
    /// Hours of data max_bytes holds at this rate.
    pub retention_hours_at_max_bytes: Option<f64>,
}

/// The pure storage calculation.
pub fn estimate(i: &Inputs) -> Estimate {
    let record = i.mean_message_bytes + i.overhead_bytes;
    let logical_per_s = i.events_per_s * record;
    let logical = logical_per_s * i.retention_hours * 3600.0;
    let per_replica = logical / i.compression_ratio.max(f64::MIN_POSITIVE);
    let total = per_replica * f64::from(i.replicas);
    let nodes = f64::from(i.nodes.max(1));
    Estimate {
        raw_bytes_per_day: i.events_per_s * i.mean_message_bytes * 86_400.0,
        logical_bytes_retained: logical,
        stored_bytes_per_replica: per_replica,
        stored_bytes_per_node: total / nodes,
        cluster_total_bytes: total,
        max_bytes_headroom: i
            .max_bytes
            .filter(|_| logical > 0.0)
            .map(|m| m as f64 / logical),
        retention_hours_at_max_bytes: i
            .max_bytes
            .filter(|_| logical_per_s > 0.0)
            .map(|m| m as f64 / logical_per_s / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            events_per_s: 350.0,
            mean_message_bytes: 600.0,
            overhead_bytes: 300.0,
            compression_ratio: 3.0,
            retention_hours: 24.0,
            replicas: 1,
            nodes: 1,
            max_bytes: Some(32 * 1024 * 1024 * 1024),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn single_replica_worked_example() {
        let e = estimate(&inputs());
        // 350/s × 86,400 s × 600 B.
        assert!(close(e.raw_bytes_per_day, 18_144_000_000.0));
        // 350 × 86,400 × 900 B = 27.216 GB logical, / 3 on disk.
        assert!(close(e.logical_bytes_retained, 27_216_000_000.0));
        assert!(close(e.stored_bytes_per_replica, 9_072_000_000.0));
        assert!(close(e.stored_bytes_per_node, 9_072_000_000.0));
        assert!(close(e.cluster_total_bytes, 9_072_000_000.0));
        let headroom = e.max_bytes_headroom.expect("limited");
        assert!(close(headroom, 34_359_738_368.0 / 27_216_000_000.0));
        let hours = e.retention_hours_at_max_bytes.expect("limited");
        assert!(close(hours, 24.0 * headroom));
    }

    #[test]
    fn replicas_multiply_the_cluster_not_the_node() {
        let one = estimate(&inputs());
        let three = estimate(&Inputs {
            replicas: 3,
            nodes: 3,
            ..inputs()
        });
        assert!(close(
            three.stored_bytes_per_node,
            one.stored_bytes_per_node
        ));
        assert!(close(
            three.cluster_total_bytes,
            3.0 * one.cluster_total_bytes
        ));
        // max_bytes is per stream (logical), unaffected by replication.
        assert_eq!(three.max_bytes_headroom, one.max_bytes_headroom);
        // Three replicas packed on one node.
        let packed = estimate(&Inputs {
            replicas: 3,
            nodes: 1,
            ..inputs()
        });
        assert!(close(
            packed.stored_bytes_per_node,
            3.0 * one.stored_bytes_per_node
        ));
    }

    #[test]
    fn scales_linearly_and_handles_edges() {
        let base = estimate(&inputs());
        let double = estimate(&Inputs {
            retention_hours: 48.0,
            ..inputs()
        });
        assert!(close(
            double.stored_bytes_per_node,
            2.0 * base.stored_bytes_per_node
        ));
        let uncompressed = estimate(&Inputs {
            compression_ratio: 1.0,
            ..inputs()
        });
        assert!(close(
            uncompressed.stored_bytes_per_node,
            base.logical_bytes_retained
        ));
        let idle = estimate(&Inputs {
            events_per_s: 0.0,
            ..inputs()
        });
        assert_eq!(idle.cluster_total_bytes, 0.0);
        assert_eq!(idle.max_bytes_headroom, None);
        assert_eq!(idle.retention_hours_at_max_bytes, None);
        let unlimited = estimate(&Inputs {
            max_bytes: None,
            ..inputs()
        });
        assert_eq!(unlimited.max_bytes_headroom, None);
    }
}
