//! ATProto syntax interop vectors: every non-comment, non-blank line of each `*_valid.txt` must
//! parse and every such line of each `*_invalid.txt` must be rejected. Lines are used verbatim
//! (leading/trailing whitespace is part of several invalid cases).

use crate::common;

use fpaas_proto::syntax::{
    AtUri, Did, Handle, Nsid, RecordKey, Tid, is_datetime, is_valid_cid_string,
};

fn lines(name: &str) -> Vec<String> {
    let path = common::testdata(&format!("interop/syntax/{name}"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let out: Vec<String> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(!out.is_empty(), "{name} has no vectors");
    out
}

fn check(kind: &str, accepts: impl Fn(&str) -> bool) {
    for line in lines(&format!("{kind}_syntax_valid.txt")) {
        assert!(accepts(&line), "{kind}: valid vector rejected: {line:?}");
    }
    for line in lines(&format!("{kind}_syntax_invalid.txt")) {
        assert!(!accepts(&line), "{kind}: invalid vector accepted: {line:?}");
    }
}

#[test]
fn did() {
    check("did", |s| Did::parse(s).is_ok());
}

#[test]
fn nsid() {
    check("nsid", |s| Nsid::parse(s).is_ok());
}

#[test]
fn record_key() {
    check("recordkey", |s| RecordKey::parse(s).is_ok());
}

#[test]
fn tid() {
    check("tid", |s| Tid::parse(s).is_ok());
}

#[test]
fn handle() {
    check("handle", |s| Handle::parse(s).is_ok());
}

#[test]
fn at_uri() {
    check("aturi", |s| AtUri::parse(s).is_ok());
}

#[test]
fn cid() {
    check("cid", is_valid_cid_string);
}

#[test]
fn datetime() {
    check("datetime", is_datetime);
}
