//! The JMESPath compliance suite (`testdata/jmespath-compliance`) through `fpaas_filter::Expr`: every case
//! with a `result` gives that result, every case with an `error` fails to compile or to evaluate. The known
//! deviations of the engine are listed and checked to still deviate (so that a fixed one is noticed).

use fpaas_filter::Expr;
use serde_json::Value;

/// Cases the engine (the `jmespath` crate) gets wrong: `avg([])` gives 0 instead of null.
const KNOWN_DEVIATIONS: &[&str] = &["avg(empty_list)"];

/// JSON equality where numbers compare by value (JMESPath numbers are doubles: `abs(`-24`)` is `24.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn compliance_suite() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/jmespath-compliance");
    let (mut passed, mut deviations) = (0, Vec::new());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("compliance suite")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("benchmarks.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 14, "{files:?}");
    for file in files {
        let groups: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for group in groups {
            let given = &group["given"];
            let data = fpaas_filter::Data::from_json_bytes(&serde_json::to_vec(given).unwrap())
                .expect("given parses");
            for case in group["cases"].as_array().unwrap() {
                let expression = case["expression"].as_str().unwrap();
                // The parsed-once path (what workers use) answers exactly as the plain one.
                if let Ok(e) = Expr::compile(expression) {
                    match (e.search(given), e.search_data(&data)) {
                        (Ok(a), Ok(b)) => assert!(same(&a, &b), "{expression}: {a} vs {b}"),
                        (Err(_), Err(_)) => {}
                        (a, b) => panic!("{expression}: {a:?} vs {b:?}"),
                    }
                    assert_eq!(e.matches(given), e.matches_data(&data), "{expression}");
                }
                let ok = match (case.get("result"), case.get("error")) {
                    (Some(want), _) => Expr::compile(expression)
                        .and_then(|e| e.search(given))
                        .is_ok_and(|got| same(&got, want)),
                    (None, Some(_)) => Expr::compile(expression)
                        .and_then(|e| e.search(given))
                        .is_err(),
                    _ => continue,
                };
                if ok {
                    passed += 1;
                } else {
                    deviations.push(expression.to_owned());
                }
            }
        }
    }
    eprintln!("jmespath compliance: {passed} cases passed, deviations {deviations:?}");
    assert_eq!(
        deviations, KNOWN_DEVIATIONS,
        "deviations from the compliance suite"
    );
    assert!(passed > 800, "{passed} cases passed");
}
