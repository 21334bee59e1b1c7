//! The integration tests of this crate, one module per area, linked into one test binary (a binary per
//! file linked the whole dependency graph once per file and cost minutes of CI).

mod cluster;
mod common;
mod decode_offload;
mod faults;
mod ha;
mod nats_outage;
mod relay_backoff;
mod relay_control;
mod shuffler;
