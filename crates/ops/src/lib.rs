//! Operations surface shared by every process: the Prometheus recorder ([`install_metrics`]), the
//! component health registry ([`Health`]) and the HTTP endpoints serving both ([`router`],
//! [`serve`]): `GET /metrics`, `/health`, `/ready`, `/health/detailed`; reading that text format back ([`prom`]:
//! the workspace's one Prometheus text parser); and [`config`], how every long-running command reads its
//! configuration (defaults → file → `FPAAS_*` environment → flags) and how its reference in `docs/config.md` is
//! generated; [`extra`]: metric families rendered at scrape time by their owner (one series per subscription).

pub mod config;
pub mod extra;
mod health;
mod http;
mod metrics_setup;
pub mod prom;

pub use health::{ComponentReport, Health, Status};
pub use http::{OpsError, router, serve};
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use metrics_setup::{BYTES_BUCKETS, SECONDS_BUCKETS, install_metrics};
