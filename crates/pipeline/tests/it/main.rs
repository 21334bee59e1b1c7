//! The integration tests of this crate, one module per area, linked into one test binary (a binary per
//! file linked the whole dependency graph once per file and cost minutes of CI).

mod cluster;
mod worker;
