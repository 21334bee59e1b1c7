//! The index finds exactly the subscriptions a loop over every filter would: random subscriptions (collections
//! exact and by prefix, DIDs, kinds, operations, predicates) and random events, compared with a brute-force
//! oracle written from the spec's documented meaning; inserts, replacements and removals included.

use fpaas_event::{Kind, Operation};
use fpaas_filter::{CollectionPattern, EventKey, FilterSpec, Index};

const COLLECTIONS: [&str; 5] = [
    "app.bsky.feed.like",
    "app.bsky.feed.post",
    "app.bsky.graph.follow",
    "com.example.thing",
    "app.bsky.feedx.item",
];
const PATTERNS: [&str; 6] = [
    "app.bsky.feed.like",
    "app.bsky.feed.*",
    "app.bsky.*",
    "app.bsky.graph.follow",
    "com.example.*",
    "app.bsky.feedx.*",
];
const DIDS: [&str; 4] = ["did:plc:a", "did:plc:b", "did:plc:c", "did:web:d.example"];
const KINDS: [Kind; 4] = [Kind::Commit, Kind::Identity, Kind::Account, Kind::Sync];
const OPS: [Operation; 3] = [Operation::Create, Operation::Update, Operation::Delete];

/// A small deterministic generator (no dependency needed for this).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
    fn pick<T: Clone>(&mut self, items: &[T], max: usize) -> Vec<T> {
        let n = self.next(max + 1);
        (0..n)
            .map(|_| items[self.next(items.len())].clone())
            .collect()
    }
}

fn random_spec(r: &mut Lcg) -> FilterSpec {
    FilterSpec {
        kinds: r.pick(&KINDS, 2),
        operations: r.pick(&OPS, 2),
        collections: r
            .pick(&PATTERNS, 2)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        dids: r.pick(&DIDS, 2).into_iter().map(str::to_owned).collect(),
        predicate: match r.next(4) {
            0 => Some("did != 'did:plc:b'".to_owned()),
            1 => Some("commit.operation == 'create'".to_owned()),
            _ => None,
        },
    }
}

/// The documented meaning, one filter at a time.
fn oracle(spec: &FilterSpec, key: &EventKey<'_>, json: &serde_json::Value) -> bool {
    let collection_ok = match key.collection {
        None => true,
        Some(c) => {
            spec.collections.is_empty()
                || spec
                    .collections
                    .iter()
                    .any(|p| CollectionPattern::parse(p).unwrap().matches(c))
        }
    };
    let did_ok = spec.dids.is_empty() || spec.dids.iter().any(|d| d == key.did);
    let kind_ok = spec.kinds.is_empty() || spec.kinds.contains(&key.kind);
    let op_ok = spec.operations.is_empty()
        || key.kind != Kind::Commit
        || key.operation.is_some_and(|o| spec.operations.contains(&o));
    let pred_ok = spec.predicate.as_deref().is_none_or(|p| {
        let v = jmespath::compile(p).unwrap().search(json).unwrap();
        v.is_truthy()
    });
    collection_ok && did_ok && kind_ok && op_ok && pred_ok
}

#[test]
fn index_matches_exactly_what_a_loop_over_every_filter_matches() {
    let mut r = Lcg(42);
    let mut index: Index<u32> = Index::new();
    let mut specs: std::collections::BTreeMap<u32, FilterSpec> = Default::default();
    for id in 0..300u32 {
        let spec = random_spec(&mut r);
        if spec.operations.is_empty() || spec.kinds.is_empty() || spec.kinds.contains(&Kind::Commit)
        {
            index.insert(id, &spec).expect("valid");
            specs.insert(id, spec);
        } else {
            assert!(
                index.insert(id, &spec).is_err(),
                "operations without commits are refused"
            );
        }
    }
    // Replace some and remove some.
    for id in (0..300u32).step_by(7) {
        if specs.contains_key(&id) {
            let spec = FilterSpec {
                kinds: vec![],
                ..random_spec(&mut r)
            };
            index.insert(id, &spec).expect("replace");
            specs.insert(id, spec);
        }
    }
    for id in (0..300u32).step_by(11) {
        assert_eq!(index.remove(&id), specs.remove(&id).is_some());
    }
    assert_eq!(index.len(), specs.len());
    let mut checked = 0;
    for _ in 0..2_000 {
        let kind = KINDS[r.next(4)];
        let (operation, collection) = if kind == Kind::Commit {
            (
                Some(OPS[r.next(3)]),
                Some(COLLECTIONS[r.next(COLLECTIONS.len())]),
            )
        } else {
            (None, None)
        };
        let did = DIDS[r.next(DIDS.len())];
        let key = EventKey {
            kind,
            operation,
            collection,
            did,
        };
        let json = serde_json::json!({
            "did": did,
            "kind": format!("{kind:?}").to_lowercase(),
            "commit": operation.map(|o| serde_json::json!({"operation": o.as_str(), "collection": collection})),
        });
        let want: Vec<u32> = specs
            .iter()
            .filter(|(_, s)| oracle(s, &key, &json))
            .map(|(id, _)| *id)
            .collect();
        let got = index.matches(&key, &json);
        assert_eq!(got, want, "{key:?}");
        // One filter on its own (a worker's catch-up reader) says the same as the index.
        let candidates = index.candidates(&key);
        for (id, spec) in &specs {
            assert_eq!(
                spec.compile().unwrap().admits(&key),
                candidates.contains(id),
                "{id} {key:?}"
            );
        }
        checked += want.len();
    }
    assert!(checked > 1_000, "the random mix matched enough ({checked})");
}
