//! `import-car` and `put-record` against a real nats-server: the shared repository export lands in the KV as
//! exactly the records its MST holds (for the commit in `car_expected_commit.txt`), re-importing writes
//! nothing, pruning removes what the export does not hold, and a mock record is readable like any other.

use std::collections::BTreeMap;

use fpaas_proto::{Car, data, mst};
use fpaas_recordkv::import::{import_car, put_record};
use fpaas_recordkv::key::did_pattern;
use fpaas_recordkv::store::{BucketOptions, EntryState, Kv};
use fpaas_recordkv::{Outcome, RecordKey, RecordValue};
use fpaas_testkit::{NatsServer, workspace_root};

fn expected_commit() -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(workspace_root().join("testdata/corpus/car_expected_commit.txt"))
            .expect("car_expected_commit.txt");
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

async fn bucket(server: &NatsServer) -> Kv {
    let client = async_nats::connect(server.url()).await.expect("connect");
    Kv::open_or_create(
        &client,
        &BucketOptions {
            bucket: "record".into(),
            description: String::new(),
            replicas: 1,
            delete_marker_ttl: None,
        },
    )
    .await
    .expect("bucket")
}

async fn values_of(kv: &Kv, did: &str) -> BTreeMap<String, RecordValue> {
    kv.snapshot(&did_pattern(did).unwrap(), false)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.state {
            EntryState::Value(v) => Some((e.key, serde_json::from_slice(&v).unwrap())),
            EntryState::Deleted { .. } => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_car_loads_exactly_the_records_of_the_mst() {
    let server = NatsServer::new();
    let kv = bucket(&server).await;
    let bytes = std::fs::read(workspace_root().join("testdata/corpus/repo.car")).expect("repo.car");
    let expected = expected_commit();
    let did = &expected["DID"];

    // What the MST holds, read independently of the import.
    let car = Car::parse(&bytes).unwrap();
    let commit = mst::read_commit(&car, &car.roots[0]).unwrap();
    assert_eq!(commit.did.as_str(), did);
    assert_eq!(commit.rev, expected["Revision"]);
    assert_eq!(commit.data.to_string(), expected["Data CID"]);
    let mst_records: BTreeMap<String, String> = mst::walk(&car, &commit.data)
        .unwrap()
        .into_iter()
        .map(|(path, cid)| {
            let (collection, rkey) = path.split_once('/').unwrap();
            (
                RecordKey::new(collection, did, rkey).encode().unwrap(),
                cid.to_string(),
            )
        })
        .collect();
    assert!(mst_records.len() > 3, "the corpus repo has records");

    let report = import_car(&kv, bytes.clone().into(), false, None, 16)
        .await
        .unwrap();
    assert_eq!(report.did, *did);
    assert_eq!(report.rev, expected["Revision"]);
    assert_eq!(report.records, mst_records.len() as u64);
    assert_eq!(
        report.outcomes.get("written").copied(),
        Some(mst_records.len() as u64)
    );
    assert_eq!(report.skipped, 0);

    let stored = values_of(&kv, did).await;
    let stored_cids: BTreeMap<String, String> = stored
        .iter()
        .map(|(k, v)| (k.clone(), v.cid.clone()))
        .collect();
    assert_eq!(
        stored_cids, mst_records,
        "the KV holds exactly the MST's records"
    );
    for (key, value) in &stored {
        assert_eq!(value.rev, expected["Revision"]);
        assert_eq!(&RecordKey::decode(key).unwrap().at_uri(), &value.uri);
        // The stored JSON is the record: it encodes back to the block the MST points at.
        let cbor = data::json_to_cbor(&value.record).unwrap();
        assert_eq!(data::cid_for_cbor(&cbor).to_string(), value.cid, "{key}");
    }

    // Re-importing the same export writes nothing.
    let again = import_car(&kv, bytes.clone().into(), false, None, 16)
        .await
        .unwrap();
    assert_eq!(
        again.outcomes.get("duplicate").copied(),
        Some(mst_records.len() as u64)
    );
    assert_eq!(
        kv.usage().await.unwrap().0,
        mst_records.len() as u64,
        "no new messages"
    );

    // Prune: an older record the export does not hold gets a marker; a newer one is kept.
    let older = format!("at://{did}/app.bsky.feed.like/oldmock");
    let newer = format!("at://{did}/app.bsky.feed.like/newmock");
    let like = serde_json::json!({"$type": "app.bsky.feed.like", "createdAt": "2025-01-01T00:00:00Z",
        "subject": {"uri": "at://did:plc:x/app.bsky.feed.post/1", "cid": "bafyreidigqr65jj2zsmitco3fcuag6pi7std6quxa2bcp2xrpin44ikzsy"}});
    put_record(&kv, &older, like.clone(), Some("2222222222222".into()))
        .await
        .unwrap();
    put_record(&kv, &newer, like.clone(), None).await.unwrap();
    let pruned = import_car(&kv, bytes.into(), true, None, 16).await.unwrap();
    assert_eq!(pruned.pruned, 1);
    let after = values_of(&kv, did).await;
    assert_eq!(after.len(), mst_records.len() + 1);
    assert!(after.contains_key(&RecordKey::from_at_uri(&newer).unwrap().encode().unwrap()));
    assert!(!after.contains_key(&RecordKey::from_at_uri(&older).unwrap().encode().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_record_writes_a_mock_record_like_the_firehose_would() {
    let server = NatsServer::new();
    let kv = bucket(&server).await;
    let uri = "at://did:plc:mock/app.bsky.feed.post/3kmock";
    let post = serde_json::json!({"$type": "app.bsky.feed.post", "text": "hello", "createdAt": "2025-01-01T00:00:00Z"});
    let (value, outcome) = put_record(&kv, uri, post.clone(), None).await.unwrap();
    assert_eq!(outcome, Outcome::Written);
    let key = RecordKey::from_at_uri(uri).unwrap().encode().unwrap();
    assert_eq!(key, "app_bsky_feed_post.did=3Aplc=3Amock.3kmock");
    let stored: RecordValue =
        serde_json::from_slice(&kv.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored, value);
    assert_eq!(stored.record, post);
    assert!(stored.cid.starts_with("bafyrei"), "{}", stored.cid);
    // An older revision does not overwrite it; bad input is an error, not a panic.
    let (_, outcome) = put_record(
        &kv,
        uri,
        serde_json::json!({"text": "old"}),
        Some("2222222222222".into()),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Stale);
    assert!(
        put_record(
            &kv,
            "at://handle.test/app.bsky.feed.post/1",
            post.clone(),
            None
        )
        .await
        .is_err()
    );
    assert!(
        put_record(
            &kv,
            uri,
            serde_json::json!({"x": {"$link": "not a cid"}}),
            None
        )
        .await
        .is_err()
    );
}
