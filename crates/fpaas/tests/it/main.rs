//! The integration tests of this crate, one module per area, linked into one test binary (a binary per
//! file linked the whole dependency graph once per file and cost minutes of CI).

mod cli_api;
mod cli_benches;
mod cli_dev;
mod cli_foundation;
mod cli_hostile;
mod cli_receive;
mod cli_record_kv;
mod cli_service;
mod cli_storage_estimate;
mod config_docs;
mod console;
mod examples;
mod metrics_docs;
mod nats_boundary;
mod ops_compose;
mod ops_k8s;
mod ops_prometheus;
mod shuffler_process;
mod subscribe;
mod subscriptions_e2e;
