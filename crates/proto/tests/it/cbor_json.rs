//! The strict, bounded DAG-CBOR → JSON converter: every rejection has its own label, the output is what
//! `serde_json` makes of the same data model value, and hostile inputs cost at most the output budget.

use std::collections::BTreeMap;

use fpaas_proto::cbor_json::{
    JsonLimits, MAX_RECORD_DEPTH, RecordErrorKind as K, record_to_json_string,
};
use ipld_core::ipld::Ipld;
use rand::{Rng, SeedableRng};

use fpaas_sim::encode::cbor_head as head;

fn text(s: &str) -> Vec<u8> {
    let mut v = head(3, s.len() as u64);
    v.extend_from_slice(s.as_bytes());
    v
}

/// A map from already-encoded (key, value) pairs, in the order given.
fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut v = head(5, entries.len() as u64);
    for (k, val) in entries {
        v.extend(text(k));
        v.extend_from_slice(val);
    }
    v
}

fn convert(cbor: &[u8]) -> Result<String, K> {
    record_to_json_string(cbor, JsonLimits::default()).map_err(|e| e.kind)
}

fn reject(cbor: &[u8]) -> K {
    convert(cbor).expect_err("must be rejected")
}

#[test]
fn each_strictness_rule_has_its_own_label() {
    let one = head(0, 1);
    // Top level must be a map.
    assert_eq!(reject(&head(0, 5)), K::NotAnObject);
    assert_eq!(reject(&text("x")), K::NotAnObject);
    // Floats: half, single and double precision.
    for f in [
        vec![0xf9, 0x3c, 0x00],
        vec![0xfa, 0, 0, 0, 0],
        vec![0xfb, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        assert_eq!(reject(&map(&[("a", f)])), K::Float);
    }
    // Integers beyond i64 either way; the extremes of i64 pass.
    assert_eq!(
        reject(&map(&[("a", head(0, i64::MAX as u64 + 1))])),
        K::IntegerRange
    );
    assert_eq!(
        reject(&map(&[("a", head(1, i64::MAX as u64 + 1))])),
        K::IntegerRange
    );
    assert_eq!(
        convert(&map(&[
            ("a", head(0, i64::MAX as u64)),
            ("b", head(1, i64::MAX as u64))
        ]))
        .unwrap(),
        format!("{{\"a\":{},\"b\":{}}}", i64::MAX, i64::MIN)
    );
    // Reserved keys of plain maps.
    assert_eq!(reject(&map(&[("$link", text("bafy"))])), K::ReservedKey);
    assert_eq!(
        reject(&map(&[("a", map(&[("$bytes", text("AA"))]))])),
        K::ReservedKey
    );
    // Tags other than 42, and bad links.
    let mut tag1 = head(6, 1);
    tag1.extend(head(0, 0));
    assert_eq!(reject(&map(&[("a", tag1)])), K::UnknownTag);
    let mut not_bytes = head(6, 42);
    not_bytes.extend(text("x"));
    assert_eq!(reject(&map(&[("a", not_bytes)])), K::BadLink);
    // A link without the 0x00 multibase prefix.
    let cid = fpaas_proto::data::cid_for_cbor(b"x").to_bytes();
    let mut no_prefix = head(6, 42);
    no_prefix.extend(head(2, cid.len() as u64));
    no_prefix.extend_from_slice(&cid);
    assert_eq!(reject(&map(&[("a", no_prefix)])), K::BadLink);
    // An identity-hash CID.
    let ident = cid::Cid::new_v1(
        0x71,
        multihash::Multihash::<64>::wrap(0x00, b"abc").unwrap(),
    )
    .to_bytes();
    let mut ident_link = head(6, 42);
    ident_link.extend(head(2, ident.len() as u64 + 1));
    ident_link.push(0);
    ident_link.extend_from_slice(&ident);
    assert_eq!(reject(&map(&[("a", ident_link)])), K::BadLink);
    // Non-shortest integer and length encodings.
    assert_eq!(reject(&map(&[("a", vec![0x18, 0x05])])), K::NonCanonical);
    assert_eq!(
        reject(&map(&[("a", vec![0x19, 0x00, 0x05])])),
        K::NonCanonical
    );
    assert_eq!(reject(&[0xb8, 0x01, 0x61, b'a', 0x01]), K::NonCanonical);
    // Keys out of canonical (length-first) order, and duplicates.
    assert_eq!(
        reject(&map(&[("bb", one.clone()), ("a", one.clone())])),
        K::NonCanonical
    );
    assert_eq!(
        reject(&map(&[("b", one.clone()), ("a", one.clone())])),
        K::NonCanonical
    );
    assert_eq!(
        reject(&map(&[("a", one.clone()), ("a", one.clone())])),
        K::DuplicateKey
    );
    // Non-string keys.
    assert_eq!(reject(&[0xa1, 0x01, 0x01]), K::NonStringKey);
    // Indefinite lengths (map, array, string) and a stray break.
    assert_eq!(reject(&[0xbf, 0x61, b'a', 0x01, 0xff]), K::IndefiniteLength);
    assert_eq!(
        reject(&map(&[("a", vec![0x9f, 0xff])])),
        K::IndefiniteLength
    );
    assert_eq!(
        reject(&map(&[("a", vec![0x7f, 0xff])])),
        K::IndefiniteLength
    );
    assert_eq!(reject(&map(&[("a", vec![0xff])])), K::IndefiniteLength);
    // Invalid UTF-8 in a value and in a key.
    assert_eq!(
        reject(&map(&[("a", vec![0x62, 0xc3, 0x28])])),
        K::InvalidUtf8
    );
    assert_eq!(reject(&[0xa1, 0x61, 0xff, 0x01]), K::InvalidUtf8);
    // undefined, simple values, reserved additional info.
    assert_eq!(reject(&map(&[("a", vec![0xf7])])), K::BadSimpleValue);
    assert_eq!(reject(&map(&[("a", vec![0xf0])])), K::BadSimpleValue);
    assert_eq!(reject(&map(&[("a", vec![0xf8, 0x20])])), K::BadSimpleValue);
    assert_eq!(reject(&map(&[("a", vec![0x1c])])), K::BadSimpleValue);
    // Truncation, absurd counts, trailing bytes.
    assert_eq!(reject(&[0xa2, 0x61, b'a', 0x01]), K::Truncated);
    assert_eq!(
        reject(&map(&[(
            "a",
            vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        )])),
        K::Truncated
    );
    assert_eq!(
        reject(&map(&[("a", vec![0x5a, 0xff, 0xff, 0xff, 0xff])])),
        K::Truncated
    );
    let mut trailing = map(&[("a", one)]);
    trailing.push(0x00);
    assert_eq!(reject(&trailing), K::TrailingBytes);
    assert_eq!(reject(&[]), K::Truncated);
}

#[test]
fn depth_is_limited_so_events_stay_parseable() {
    fn nested(levels: usize) -> Vec<u8> {
        let mut v = head(0, 1);
        for _ in 0..levels {
            let mut m = vec![0xa1, 0x61, b'a'];
            m.extend(v);
            v = m;
        }
        v
    }
    let json = convert(&nested(MAX_RECORD_DEPTH)).expect("at the limit");
    assert_eq!(reject(&nested(MAX_RECORD_DEPTH + 1)), K::TooDeep);
    // A bytes object at the deepest level counts as a level of its own.
    let mut deep_bytes = vec![0x40];
    for _ in 0..MAX_RECORD_DEPTH {
        let mut m = vec![0xa1, 0x61, b'a'];
        m.extend(deep_bytes);
        deep_bytes = m;
    }
    assert_eq!(reject(&deep_bytes), K::TooDeep);
    // The deepest record, wrapped in an event and a delivery batch, still parses with serde_json's default
    // recursion limit (finding: records 126–127 maps deep broke every serde_json reader).
    let wrapped = format!("{{\"events\":[{{\"commit\":{{\"record\":{json}}}}}]}}");
    serde_json::from_str::<serde_json::Value>(&wrapped).expect("parseable");
}

#[test]
fn output_budget_bounds_amplifying_records() {
    // A record of a million empty byte strings: 1 byte of CBOR each, 13 bytes of JSON each.
    let n = 999_990u64;
    let mut arr = head(4, n);
    arr.extend(std::iter::repeat_n(0x40u8, n as usize));
    let record = map(&[("a", arr)]);
    assert!(record.len() <= 1_000_000);
    let limits = JsonLimits {
        max_json_bytes: 1 << 20,
    };
    let mut out = Vec::new();
    let err =
        fpaas_proto::cbor_json::record_to_json(&record, limits, &mut out).expect_err("over budget");
    assert_eq!(err.kind, K::JsonTooLarge);
    assert!(out.is_empty(), "output is rolled back on error");
    // It stopped at the budget: the offset reached is about budget / 13 bytes of input.
    assert!(err.offset < 100_000, "stopped early, at {}", err.offset);
    // A million zeros (2 bytes of JSON each) likewise.
    let mut zeros = head(4, n);
    zeros.extend(std::iter::repeat_n(0x00u8, n as usize));
    assert_eq!(reject(&map(&[("a", zeros)])), K::JsonTooLarge);
    // A small budget applies to strings too.
    let small = JsonLimits { max_json_bytes: 10 };
    let long = map(&[("a", text("0123456789"))]);
    assert_eq!(
        record_to_json_string(&long, small).unwrap_err().kind,
        K::JsonTooLarge
    );
}

/// A random data-model value (maps get random keys; the encoder sorts them canonically).
fn random_ipld(rng: &mut impl Rng, depth: usize) -> Ipld {
    let choice = if depth > 4 {
        rng.random_range(0..6)
    } else {
        rng.random_range(0..8)
    };
    match choice {
        0 => Ipld::Null,
        1 => Ipld::Bool(rng.random()),
        2 => Ipld::Integer(i128::from(rng.random::<i64>() >> rng.random_range(0..63))),
        3 => {
            let len = rng.random_range(0..12);
            Ipld::String(
                (0..len)
                    .map(|_| {
                        ["a", "é", "\"", "\\", "\n", "\u{1}", "😀", "z", "\u{7f}"]
                            [rng.random_range(0..9)]
                    })
                    .collect(),
            )
        }
        4 => Ipld::Bytes((0..rng.random_range(0..10)).map(|_| rng.random()).collect()),
        5 => Ipld::Link(fpaas_proto::data::cid_with_codec(
            if rng.random() { 0x71 } else { 0x55 },
            &rng.random::<[u8; 8]>(),
        )),
        6 => Ipld::List(
            (0..rng.random_range(0..5))
                .map(|_| random_ipld(rng, depth + 1))
                .collect(),
        ),
        _ => Ipld::Map(random_map(rng, depth + 1)),
    }
}

fn random_map(rng: &mut impl Rng, depth: usize) -> BTreeMap<String, Ipld> {
    let keys = [
        "a",
        "b",
        "aa",
        "ab",
        "B",
        "text",
        "zz",
        "é",
        "long_key_name",
        "c\"q",
    ];
    (0..rng.random_range(0..6))
        .map(|_| {
            (
                keys[rng.random_range(0..keys.len())].to_owned(),
                random_ipld(rng, depth),
            )
        })
        .collect()
}

/// The reference: the data model's JSON form built with serde_json's own map and string escaping.
fn reference_json(v: &Ipld) -> serde_json::Value {
    use base64::Engine as _;
    match v {
        Ipld::Null => serde_json::Value::Null,
        Ipld::Bool(b) => (*b).into(),
        Ipld::Integer(i) => i64::try_from(*i).expect("i64").into(),
        Ipld::Float(_) => unreachable!(),
        Ipld::String(s) => s.clone().into(),
        Ipld::Bytes(b) => {
            serde_json::json!({"$bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)})
        }
        Ipld::List(l) => l.iter().map(reference_json).collect(),
        Ipld::Map(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), reference_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Ipld::Link(c) => serde_json::json!({"$link": c.to_string()}),
    }
}

#[test]
fn output_is_byte_identical_to_serde_json_of_the_same_value() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for i in 0..3_000 {
        let value = Ipld::Map(random_map(&mut rng, 0));
        let cbor = serde_ipld_dagcbor::to_vec(&value).expect("encode");
        let ours = convert(&cbor).unwrap_or_else(|e| panic!("case {i}: {e:?} for {value:?}"));
        let reference = serde_json::to_string(&reference_json(&value)).expect("json");
        assert_eq!(ours, reference, "case {i}");
        // And the strict JSON → CBOR direction gives the same block back.
        let back = fpaas_proto::data::json_to_cbor(&serde_json::from_str(&ours).unwrap())
            .expect("to cbor");
        assert_eq!(back, cbor, "case {i}: round trip");
    }
}

#[test]
fn truncations_and_bit_flips_of_valid_records_never_panic() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..300 {
        let cbor = serde_ipld_dagcbor::to_vec(&Ipld::Map(random_map(&mut rng, 0))).expect("encode");
        for cut in 0..cbor.len() {
            let _ = convert(&cbor[..cut]);
        }
        for _ in 0..20 {
            let mut flipped = cbor.clone();
            let i = rng.random_range(0..flipped.len());
            flipped[i] ^= 1 << rng.random_range(0..8);
            if let Ok(json) = convert(&flipped) {
                serde_json::from_str::<serde_json::Value>(&json).expect("accepted output is JSON");
            }
        }
    }
}
