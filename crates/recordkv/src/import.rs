//! Writing records straight into the record KV: `fpaas put-record` (one mock record, the
//! local-development contract) and `fpaas import-car` (every record of a `getRepo` CAR, found by
//! walking the repository's Merkle Search Tree from the signed commit).
//!
//! Both go through [`crate::apply`], so the revision rules hold: an import of an older export never
//! overwrites newer firehose data, and re-importing the same export writes nothing
//! (`duplicate`). With `prune`, records of that DID that the export does not hold (and that are older
//! than its revision) get delete markers, so after the import the KV holds exactly the MST's records:
//! the answer to a `#sync` event.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use fpaas_proto::car::Car;
use fpaas_proto::{data, mst};

use crate::apply::{Change, Outcome, apply_change};
use crate::error::Error;
use crate::key::{RecordKey, did_pattern};
use crate::keyed::run_keyed;
use crate::store::{EntryState, Kv};
use crate::value::{RecordValue, tid_now};

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The repository DID (from the signed commit).
    pub did: String,
    /// The commit revision.
    pub rev: String,
    /// Records found in the MST.
    pub records: u64,
    /// Outcomes of writing them (`written`, `duplicate`, `stale`, …).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Records of the DID not in the export that got delete markers (with `prune`).
    pub pruned: u64,
    /// MST entries that could not be imported (missing block, bad record, bad key).
    pub skipped: u64,
}

/// Writes one record: `uri` is `at://<did>/<collection>/<rkey>`, `record` its JSON. The CID is
/// computed from the record's DAG-CBOR; `rev` defaults to a TID of now (so it wins over anything
/// older).
///
/// # Errors
/// [`Error::InvalidInput`] for a bad URI or a record that is not ATProto JSON, [`Error::Bus`] on a
/// server failure.
pub async fn put_record(
    kv: &Kv,
    uri: &str,
    record: serde_json::Value,
    rev: Option<String>,
) -> Result<(RecordValue, Outcome), Error> {
    let key = RecordKey::from_at_uri(uri)?;
    let cbor = data::json_to_cbor(&record)
        .map_err(|e| Error::invalid("record (ATProto JSON)", &e.to_string()))?;
    let rev = rev.unwrap_or_else(tid_now);
    let value = RecordValue {
        uri: key.at_uri(),
        did: key.did.clone(),
        collection: key.collection.clone(),
        rkey: key.rkey.clone(),
        cid: data::cid_for_cbor(&cbor).to_string(),
        rev: rev.clone(),
        record,
        seq: 0,
        time_us: 0,
    };
    let json = serde_json::to_vec(&value).unwrap_or_default();
    let change = Change::Put {
        rev,
        value: Bytes::from(json),
        create: false,
    };
    let outcome = apply_change(kv, &key.encode()?, &change).await?;
    Ok((value, outcome))
}

/// Loads every record of a repository export into the KV (see the module docs for `prune`).
/// `keep` filters collections (`None` = all).
///
/// # Errors
/// [`Error::Car`] when the CAR, its commit or its MST cannot be read, [`Error::Bus`] on a server
/// failure.
pub async fn import_car(
    kv: &Kv,
    car_bytes: Bytes,
    prune: bool,
    keep: Option<&dyn Fn(&str) -> bool>,
    concurrency: usize,
) -> Result<ImportReport, Error> {
    let car = Car::parse_bytes(car_bytes).map_err(|e| Error::Car(e.to_string()))?;
    let root = car
        .roots
        .first()
        .copied()
        .ok_or_else(|| Error::Car("the CAR names no root (the signed commit)".into()))?;
    let commit = mst::read_commit(&car, &root).map_err(|e| Error::Car(e.to_string()))?;
    let did = commit.did.to_string();
    let rev = commit.rev.to_string();
    let entries = mst::walk(&car, &commit.data).map_err(|e| Error::Car(e.to_string()))?;
    let mut report = ImportReport {
        did: did.clone(),
        rev: rev.clone(),
        ..Default::default()
    };
    let mut work = Vec::with_capacity(entries.len());
    let mut wanted = HashSet::with_capacity(entries.len());
    for (path, cid) in entries {
        let Some((collection, rkey)) = path.split_once('/') else {
            report.skipped += 1;
            continue;
        };
        if keep.is_some_and(|keep| !keep(collection)) {
            continue;
        }
        report.records += 1;
        let key = RecordKey::new(collection, &did, rkey);
        let (Ok(encoded), Some(block)) = (key.encode(), car.get(&cid)) else {
            report.skipped += 1;
            continue;
        };
        let Ok(record) = data::cbor_to_json(block) else {
            report.skipped += 1;
            continue;
        };
        let value = RecordValue {
            uri: key.at_uri(),
            did: did.clone(),
            collection: collection.to_string(),
            rkey: rkey.to_string(),
            cid: cid.to_string(),
            rev: rev.clone(),
            record,
            seq: 0,
            time_us: 0,
        };
        let json = serde_json::to_vec(&value).unwrap_or_default();
        wanted.insert(encoded.clone());
        work.push((
            encoded,
            Change::Put {
                rev: rev.clone(),
                value: Bytes::from(json),
                create: false,
            },
        ));
    }
    let outcomes = run_keyed(work, concurrency, |key, change| async move {
        apply_change(kv, &key, &change).await
    })
    .await?;
    for outcome in outcomes {
        *report.outcomes.entry(outcome.as_str()).or_default() += 1;
    }
    if prune {
        let stale: Vec<(String, Change)> = kv
            .snapshot(&did_pattern(&did)?, true)
            .await?
            .into_iter()
            .filter(|e| matches!(e.state, EntryState::Value(_)) && !wanted.contains(&e.key))
            .filter(|e| {
                let collection = RecordKey::decode(&e.key).map(|k| k.collection);
                collection.is_ok_and(|c| keep.is_none_or(|keep| keep(&c)))
            })
            .map(|e| (e.key, Change::Delete { rev: rev.clone() }))
            .collect();
        let pruned = run_keyed(stale, concurrency, |key, change| async move {
            apply_change(kv, &key, &change).await
        })
        .await?;
        report.pruned = pruned.iter().filter(|o| **o == Outcome::Deleted).count() as u64;
    }
    Ok(report)
}
