//! The integration tests of this crate, one module per area, linked into one test binary (a binary per
//! file linked the whole dependency graph once per file and cost minutes of CI).

mod cbor_json;
mod common;
mod corpus;
mod interop_data_model;
mod interop_syntax;
mod mst;
mod robustness;
