//! Untrusted JMESPath (a tenant's predicate or transform) never panics or overflows the stack: random token
//! sequences, mutations of valid expressions and deep nesting either compile or give a `Syntax` error, and
//! whatever compiles evaluates (or fails cleanly) on real events — including the ATProto functions called
//! with wrong types and arities.

use fpaas_filter::{Expr, ExprError};

const TOKENS: &[&str] = &[
    "did",
    "commit",
    ".",
    "record",
    "text",
    "[",
    "]",
    "[*]",
    "[?",
    "==",
    "!=",
    "<",
    ">=",
    "&&",
    "||",
    "!",
    "(",
    ")",
    "{",
    "}",
    ":",
    ",",
    "|",
    "@",
    "`10`",
    "`\"x\"`",
    "`[]`",
    "`{}`",
    "'en'",
    "\"q\"",
    "*",
    "[0]",
    "[-1]",
    "[1:3]",
    "[::2]",
    "&",
    "length(",
    "contains(",
    "text_length(",
    "spam_score(",
    "facet_tags(",
    "at_uri_did(",
    "at_uri_collection(",
    "at_uri_rkey(",
    "facet_mentions(",
    "facet_links(",
    "sort_by(",
    "max_by(",
    "join(",
    "to_number(",
    "abs(",
    "avg(",
    "merge(",
    "keys(",
    "not_null(",
    "starts_with(",
    "langs",
    "collection",
    "kind",
    "subject",
    "uri",
    " ",
    "`",
    "'",
    "\\",
    "\u{0}",
    "é",
    "🦋",
];

/// A small deterministic generator (xorshift), so the test needs no extra crate and every run is the same.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn events() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/corpus/events.ndjson"),
    )
    .expect("corpus events");
    text.lines()
        .take(40)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn exercise(text: &str, events: &[serde_json::Value], compiled: &mut usize) {
    match Expr::compile(text) {
        Ok(expr) => {
            *compiled += 1;
            for e in events {
                let _ = expr.search(e);
                let _ = expr.matches(e);
            }
        }
        Err(ExprError::Syntax { message, .. }) => assert!(!message.is_empty()),
        Err(ExprError::TooLong(n)) => assert!(n > fpaas_filter::expr::MAX_EXPRESSION_BYTES),
        Err(other) => panic!("compile gave {other:?}"),
    }
}

#[test]
fn random_and_mutated_expressions_never_panic() {
    let events = events();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut compiled = 0;
    for _ in 0..20_000 {
        let n = 1 + rng.below(12);
        let text: String = (0..n).map(|_| TOKENS[rng.below(TOKENS.len())]).collect();
        exercise(&text, &events, &mut compiled);
    }
    let valid = [
        "text_length(commit.record.text) >= `10` && contains(commit.record.langs || `[]`, 'en')",
        "{uri: join('', ['at://', did, '/', commit.collection, '/', commit.rkey]), tags: facet_tags(commit.record)}",
        "spam_score(commit.record) < `0.4`",
        "at_uri_did(commit.record.subject.uri) == did",
        "commit.record.facets[*].features[?\"$type\" == 'app.bsky.richtext.facet#tag'].tag",
    ];
    for base in valid {
        let bytes: Vec<char> = base.chars().collect();
        for _ in 0..2_000 {
            let mut m = bytes.clone();
            match rng.below(3) {
                0 if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m.remove(i);
                }
                1 => {
                    let i = rng.below(m.len() + 1);
                    let t = TOKENS[rng.below(TOKENS.len())];
                    for (k, c) in t.chars().enumerate() {
                        m.insert(i + k, c);
                    }
                }
                _ if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m.truncate(i);
                }
                _ => {}
            }
            exercise(&m.into_iter().collect::<String>(), &events, &mut compiled);
        }
    }
    // The generator reaches both sides: many inputs compile and run, many are refused.
    assert!(compiled > 1_000, "only {compiled} compiled");
}

#[test]
fn deep_nesting_and_long_inputs_are_refused_or_evaluated_without_overflowing_the_stack() {
    let events = events();
    let mut compiled = 0;
    for depth in [10, 100, 500, 1_000, 2_000] {
        for (open, close) in [
            ("(", ")"),
            ("[", "]"),
            ("{a:", "}"),
            ("!", ""),
            ("length(", ")"),
        ] {
            let text = format!("{}did{}", open.repeat(depth), close.repeat(depth));
            // Run on a thread with a small stack, as a worker's tokio thread would have.
            let events = events.clone();
            let ok = std::thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || {
                    let mut c = 0;
                    exercise(&text, &events, &mut c);
                    c
                })
                .unwrap()
                .join();
            compiled += ok.expect("no panic or overflow");
        }
    }
    assert!(compiled > 0);
    let long = "a.".repeat(5_000) + "b";
    assert!(matches!(Expr::compile(&long), Err(ExprError::TooLong(_))));
}
