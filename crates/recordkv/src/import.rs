//! `fpaas put-record` and `fpaas import-car`: writing records straight into the record KV.
