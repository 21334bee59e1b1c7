//! ATProto functions for subscription expressions, beside JMESPath's built-in ones (documented in
//! `docs/filters.md`):
//!
//! | function | gives |
//! |---|---|
//! | `at_uri_did(uri)`, `at_uri_collection(uri)`, `at_uri_rkey(uri)` | the parts of an `at://` URI (null if it is not one) |
//! | `text_length(text)` | length in Unicode characters (Bluesky's limits count graphemes; emoji sequences count more here) |
//! | `facet_mentions(record)`, `facet_links(record)`, `facet_tags(record)` | the DIDs mentioned, the URIs linked, the hashtags of a post's facets |
//! | `spam_score(record)` | 0.0–1.0, a simple heuristic: many facets, many links, shouting, long character runs |

use std::sync::{Arc, OnceLock};

use jmespath::functions::{ArgumentType, CustomFunction, Signature};
use jmespath::{Rcvar, Runtime, Variable};
use serde_json::Value;

/// The runtime every expression is compiled against: JMESPath's functions plus the ones above.
pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let mut rt = Runtime::new();
        rt.register_builtin_functions();
        let uri_part = |part: fn(&str) -> Option<&str>| {
            Box::new(CustomFunction::new(
                Signature::new(vec![ArgumentType::Any], None),
                Box::new(move |args: &[Rcvar], _: &mut jmespath::Context<'_>| {
                    let s = args[0].as_string().and_then(|s| part(s)).map(str::to_owned);
                    Ok(Arc::new(s.map_or(Variable::Null, Variable::String)))
                }),
            ))
        };
        rt.register_function("at_uri_did", uri_part(|u| at_uri(u).map(|p| p.0)));
        rt.register_function(
            "at_uri_collection",
            uri_part(|u| at_uri(u).and_then(|p| p.1)),
        );
        rt.register_function("at_uri_rkey", uri_part(|u| at_uri(u).and_then(|p| p.2)));
        rt.register_function(
            "text_length",
            Box::new(CustomFunction::new(
                Signature::new(vec![ArgumentType::String], None),
                Box::new(|args: &[Rcvar], _: &mut jmespath::Context<'_>| {
                    let n = args[0].as_string().map_or(0, |s| s.chars().count());
                    Ok(Arc::new(Variable::Number(serde_json::Number::from(
                        n as u64,
                    ))))
                }),
            )),
        );
        let facets = |kind: &'static str, field: &'static str| {
            Box::new(CustomFunction::new(
                Signature::new(vec![ArgumentType::Any], None),
                Box::new(move |args: &[Rcvar], _: &mut jmespath::Context<'_>| {
                    let record = serde_json::to_value(&*args[0]).unwrap_or(Value::Null);
                    let items = facet_features(&record, kind, field)
                        .into_iter()
                        .map(|s| Arc::new(Variable::String(s)))
                        .collect();
                    Ok(Arc::new(Variable::Array(items)))
                }),
            ))
        };
        rt.register_function(
            "facet_mentions",
            facets("app.bsky.richtext.facet#mention", "did"),
        );
        rt.register_function("facet_links", facets("app.bsky.richtext.facet#link", "uri"));
        rt.register_function("facet_tags", facets("app.bsky.richtext.facet#tag", "tag"));
        rt.register_function(
            "spam_score",
            Box::new(CustomFunction::new(
                Signature::new(vec![ArgumentType::Any], None),
                Box::new(|args: &[Rcvar], _: &mut jmespath::Context<'_>| {
                    let record = serde_json::to_value(&*args[0]).unwrap_or(Value::Null);
                    let score = serde_json::Number::from_f64(spam_score(&record))
                        .map_or(Variable::Null, Variable::Number);
                    Ok(Arc::new(score))
                }),
            )),
        );
        rt
    })
}

/// `at://did/collection/rkey` → (did, collection, rkey).
fn at_uri(uri: &str) -> Option<(&str, Option<&str>, Option<&str>)> {
    let rest = uri.strip_prefix("at://")?;
    let mut parts = rest.splitn(3, '/');
    let did = parts.next().filter(|d| d.starts_with("did:"))?;
    Some((
        did,
        parts.next().filter(|s| !s.is_empty()),
        parts.next().filter(|s| !s.is_empty()),
    ))
}

/// The `field` of every facet feature of type `kind` in `record.facets`.
fn facet_features(record: &Value, kind: &str, field: &str) -> Vec<String> {
    record
        .get("facets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("features").and_then(Value::as_array))
        .flatten()
        .filter(|feat| feat.get("$type").and_then(Value::as_str) == Some(kind))
        .filter_map(|feat| feat.get(field).and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// A simple spam heuristic in 0.0–1.0: each signal adds to the score.
fn spam_score(record: &Value) -> f64 {
    let text = record.get("text").and_then(Value::as_str).unwrap_or("");
    let facets = record
        .get("facets")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let links = facet_features(record, "app.bsky.richtext.facet#link", "uri").len();
    let tags = facet_features(record, "app.bsky.richtext.facet#tag", "tag").len();
    let letters: Vec<char> = text.chars().filter(|c| c.is_alphabetic()).collect();
    let upper = letters.iter().filter(|c| c.is_uppercase()).count();
    let mut longest_run = 0usize;
    let mut run = 0usize;
    let mut prev = None;
    for c in text.chars() {
        run = if Some(c) == prev { run + 1 } else { 1 };
        prev = Some(c);
        longest_run = longest_run.max(run);
    }
    let mut score = 0.0;
    if facets > 8 {
        score += 0.3;
    }
    if links >= 3 {
        score += 0.3;
    }
    if tags >= 6 {
        score += 0.2;
    }
    if letters.len() >= 20 && upper * 10 >= letters.len() * 8 {
        score += 0.2;
    }
    if longest_run >= 10 {
        score += 0.2;
    }
    f64::min(score, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Expr;
    use serde_json::json;

    fn eval(expr: &str, data: &Value) -> Value {
        Expr::compile(expr).unwrap().search(data).unwrap()
    }

    #[test]
    fn atproto_functions() {
        let like = json!({"subject": {"uri": "at://did:plc:abc/app.bsky.feed.post/3kxyz"}});
        assert_eq!(eval("at_uri_did(subject.uri)", &like), json!("did:plc:abc"));
        assert_eq!(
            eval("at_uri_collection(subject.uri)", &like),
            json!("app.bsky.feed.post")
        );
        assert_eq!(eval("at_uri_rkey(subject.uri)", &like), json!("3kxyz"));
        assert_eq!(eval("at_uri_did('https://x')", &like), Value::Null);
        let post = json!({"text": "héllo @bob #rust https://a.b", "facets": [
            {"features": [{"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:bob"}]},
            {"features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "rust"}]},
            {"features": [{"$type": "app.bsky.richtext.facet#link", "uri": "https://a.b"}]}]});
        assert_eq!(eval("text_length(text)", &post), json!(28));
        assert_eq!(eval("facet_mentions(@)", &post), json!(["did:plc:bob"]));
        assert_eq!(eval("facet_tags(@)", &post), json!(["rust"]));
        assert_eq!(eval("facet_links(@)", &post), json!(["https://a.b"]));
        assert_eq!(eval("spam_score(@)", &post), json!(0.0));
        let shouting = json!({"text": "BUY NOW BUY NOW BUY NOW BUY NOW!!!!!!!!!!!!"});
        assert!(eval("spam_score(@)", &shouting).as_f64().unwrap() >= 0.4);
        // The posts ingester of the seeds as one predicate: creates, 10-1,000 characters, chosen languages, no spam.
        let p = Expr::compile(
            "commit.operation == 'create' && text_length(commit.record.text) >= `10` \
             && text_length(commit.record.text) <= `1000` && contains(commit.record.langs, 'en') \
             && spam_score(commit.record) < `0.4`",
        )
        .unwrap();
        let ev = |text: &str, langs: Value| json!({"commit": {"operation": "create", "record": {"text": text, "langs": langs}}});
        assert!(p.matches(&ev("a perfectly normal post", json!(["en"]))));
        assert!(!p.matches(&ev("short", json!(["en"]))));
        assert!(!p.matches(&ev("a perfectly normal post", json!(["ja"]))));
        assert!(!p.matches(&ev("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", json!(["en"]))));
    }
}
