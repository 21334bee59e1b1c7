//! Operations surface shared by every process: the Prometheus recorder ([`install_metrics`]), the
//! component health registry ([`Health`]) and the HTTP endpoints serving both ([`router`],
//! [`serve`]): `GET /metrics`, `/health`, `/ready`, `/health/detailed`; and reading that text format back
//! ([`prom`]: the workspace's one Prometheus text parser).

mod health;
mod http;
mod metrics_setup;
pub mod prom;

pub use health::{ComponentReport, Health, Status};
pub use http::{OpsError, router, serve};
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use metrics_setup::{BYTES_BUCKETS, SECONDS_BUCKETS, install_metrics};
