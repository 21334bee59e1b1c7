//! Repository export (`testdata/corpus/repo.car`): the signed commit and a full MST walk.

use crate::common;

use cid::Cid;
use fpaas_proto::car::verify_block;
use fpaas_proto::mst::{MstError, read_commit, walk};
use fpaas_proto::syntax::{Nsid, RecordKey};
use fpaas_proto::{Car, cbor_to_json};

fn expected() -> (String, String, String) {
    let text =
        std::fs::read_to_string(common::testdata("corpus/car_expected_commit.txt")).expect("read");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    (field("DID:"), field("Data CID:"), field("Revision:"))
}

fn repo() -> Car {
    Car::parse(&std::fs::read(common::testdata("corpus/repo.car")).expect("read repo.car"))
        .expect("parse repo.car")
}

#[test]
fn commit_and_walk_match_expectations() {
    let car = repo();
    let root = *car.roots.first().expect("one root");
    let commit = read_commit(&car, &root).expect("commit");
    let (did, data, rev) = expected();
    assert_eq!(commit.did.as_str(), did);
    assert_eq!(commit.data.to_string(), data);
    assert_eq!(commit.rev, rev);
    assert_eq!(commit.version, 3);
    assert_eq!(commit.prev, None);

    let entries = walk(&car, &commit.data).expect("walk");
    assert!(!entries.is_empty());
    assert!(
        entries.windows(2).all(|w| w[0].0 < w[1].0),
        "keys strictly ascending"
    );
    for (key, cid) in &entries {
        let (collection, rkey) = key.split_once('/').expect("collection/rkey");
        Nsid::parse(collection).unwrap_or_else(|e| panic!("{key}: {e}"));
        RecordKey::parse(rkey).unwrap_or_else(|e| panic!("{key}: {e}"));
        let block = car
            .get(cid)
            .unwrap_or_else(|| panic!("{key}: record block missing"));
        assert!(verify_block(cid, block), "{key}: record hash");
        let record = cbor_to_json(block).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(record["$type"].as_str(), Some(collection), "{key}");
    }
}

#[test]
fn tampered_or_missing_nodes_are_errors() {
    let car = repo();
    let commit = read_commit(&car, &car.roots[0]).expect("commit");
    // A root that is not in the CAR.
    let absent = fpaas_proto::cid_for_cbor(b"\xa0");
    assert!(matches!(
        walk(&car, &absent),
        Err(MstError::MissingBlock(_))
    ));
    // Walking from a record (not an MST node) fails to decode as a node.
    let (_, record) = walk(&car, &commit.data)
        .expect("walk")
        .into_iter()
        .next()
        .expect("entry");
    assert!(matches!(walk(&car, &record), Err(MstError::Decode { .. })));
    // The commit block is not a tree node either.
    assert!(walk(&car, &car.roots[0]).is_err());
}

#[test]
fn walk_survives_damaged_car() {
    let bytes = std::fs::read(common::testdata("corpus/repo.car")).expect("read");
    let car = repo();
    let commit = read_commit(&car, &car.roots[0]).expect("commit");
    let clean = walk(&car, &commit.data).expect("walk");
    let step = (bytes.len() / 200).max(1);
    let mut errors = 0;
    for pos in (0..bytes.len()).step_by(step) {
        let mut d = bytes.clone();
        d[pos] ^= 0x10;
        let Ok(car) = Car::parse(&d) else { continue };
        let root: Cid = match car.roots.first() {
            Some(r) => *r,
            None => continue,
        };
        match read_commit(&car, &root).and_then(|c| walk(&car, &c.data)) {
            // A flip inside a record block is invisible to the walk, which never reads records.
            Ok(entries) => assert_eq!(entries.len(), clean.len()),
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0);
}
