//! [`FilterSpec`]: the filter part of a subscription as a tenant writes it (JSON), and its validation.
//! Every part is optional; an empty spec matches every event.

use fpaas_event::{Kind, Operation};
use fpaas_proto::syntax::{Did, Nsid};
use serde::{Deserialize, Serialize};

use crate::expr::{Expr, ExprError};

/// Most collection patterns in one filter (Jetstream's `wantedCollections` limit).
pub const MAX_COLLECTIONS: usize = 100;
/// Most DIDs in one filter (Jetstream's `wantedDids` limit).
pub const MAX_DIDS: usize = 10_000;

/// What a subscription wants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSpec {
    /// Event kinds (`commit`, `identity`, `account`, `sync`); empty = all.
    pub kinds: Vec<Kind>,
    /// Commit operations (`create`, `update`, `delete`); empty = all. Only commit events have one; other events
    /// are not excluded by it (like collections).
    pub operations: Vec<Operation>,
    /// Collections: NSIDs (`app.bsky.feed.like`) or prefixes (`app.bsky.feed.*`); empty = all. Events without
    /// a collection (identity, account, sync) are not excluded by it (as in Jetstream).
    pub collections: Vec<String>,
    /// Repository DIDs; empty = all.
    pub dids: Vec<String>,
    /// A JMESPath expression on the event JSON; the event matches when it is truthy (JMESPath truthiness:
    /// not `null`, `false`, `""`, `[]` or `{}`).
    pub predicate: Option<String>,
}

/// A collection pattern: one NSID, or every NSID under a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CollectionPattern {
    /// `app.bsky.feed.like`
    Exact(String),
    /// `app.bsky.feed.*`: the prefix `app.bsky.feed` (matches `app.bsky.feed.like`, not `app.bsky.feedx`).
    Prefix(String),
}

impl CollectionPattern {
    /// Parses `nsid` or `prefix.*` (at least two segments before `.*`).
    ///
    /// # Errors
    /// [`FilterError::Collection`] for anything else.
    pub fn parse(pattern: &str) -> Result<Self, FilterError> {
        let bad = || FilterError::Collection(pattern.to_owned());
        match pattern.strip_suffix(".*") {
            Some(prefix) => {
                let segments: Vec<&str> = prefix.split('.').collect();
                let ok = segments.len() >= 2
                    && segments.iter().all(|s| {
                        !s.is_empty()
                            && s.len() <= 63
                            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                ok.then(|| CollectionPattern::Prefix(prefix.to_owned()))
                    .ok_or_else(bad)
            }
            None => Nsid::parse(pattern)
                .map(|n| CollectionPattern::Exact(n.into_string()))
                .map_err(|_| bad()),
        }
    }

    /// Whether `collection` is matched.
    pub fn matches(&self, collection: &str) -> bool {
        match self {
            CollectionPattern::Exact(c) => c == collection,
            CollectionPattern::Prefix(p) => collection
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        }
    }
}

/// Why a filter cannot be used. Each variant names the offending input.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A collection that is neither an NSID nor `prefix.*`.
    #[error(
        "invalid collection pattern {0:?}: use an NSID (app.bsky.feed.like) or a prefix (app.bsky.feed.*)"
    )]
    Collection(String),
    /// More than [`MAX_COLLECTIONS`] collections.
    #[error("{0} collections; at most {MAX_COLLECTIONS}")]
    TooManyCollections(usize),
    /// A DID that is not valid DID syntax.
    #[error("invalid DID {0:?}")]
    Did(String),
    /// More than [`MAX_DIDS`] DIDs.
    #[error("{0} DIDs; at most {MAX_DIDS}")]
    TooManyDids(usize),
    /// Operations given for kinds that have none.
    #[error("operations only apply to commit events, but kinds excludes commit")]
    OperationsWithoutCommits,
    /// The predicate does not compile.
    #[error("predicate: {0}")]
    Predicate(#[source] ExprError),
}

/// A validated filter: parsed collection patterns, DIDs and the compiled predicate.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The spec it came from.
    pub spec: FilterSpec,
    /// Parsed collection patterns.
    pub collections: Vec<CollectionPattern>,
    /// The compiled predicate.
    pub predicate: Option<Expr>,
}

impl Compiled {
    /// Whether the collection, DID, kind and operation filters admit the event (the predicate is not
    /// evaluated): the same answer as [`crate::Index::candidates`] for this one filter, without an index.
    pub fn admits(&self, key: &crate::EventKey<'_>) -> bool {
        let spec = &self.spec;
        key.collection.is_none_or(|c| {
            self.collections.is_empty() || self.collections.iter().any(|p| p.matches(c))
        }) && (spec.dids.is_empty() || spec.dids.iter().any(|d| d == key.did))
            && (spec.kinds.is_empty() || spec.kinds.contains(&key.kind))
            && (spec.operations.is_empty()
                || key.kind != Kind::Commit
                || key
                    .operation
                    .is_some_and(|op| spec.operations.contains(&op)))
    }
}

impl FilterSpec {
    /// Checks every part and compiles the predicate.
    ///
    /// # Errors
    /// The first [`FilterError`] found.
    pub fn compile(&self) -> Result<Compiled, FilterError> {
        if self.collections.len() > MAX_COLLECTIONS {
            return Err(FilterError::TooManyCollections(self.collections.len()));
        }
        if self.dids.len() > MAX_DIDS {
            return Err(FilterError::TooManyDids(self.dids.len()));
        }
        let collections = self
            .collections
            .iter()
            .map(|c| CollectionPattern::parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(d) = self.dids.iter().find(|d| Did::parse(d).is_err()) {
            return Err(FilterError::Did(d.clone()));
        }
        if !self.operations.is_empty()
            && !self.kinds.is_empty()
            && !self.kinds.contains(&Kind::Commit)
        {
            return Err(FilterError::OperationsWithoutCommits);
        }
        let predicate = self
            .predicate
            .as_deref()
            .map(Expr::compile)
            .transpose()
            .map_err(FilterError::Predicate)?;
        Ok(Compiled {
            spec: self.clone(),
            collections,
            predicate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_patterns() {
        let p = CollectionPattern::parse("app.bsky.feed.*").unwrap();
        assert!(p.matches("app.bsky.feed.like"));
        assert!(p.matches("app.bsky.feed.post"));
        assert!(!p.matches("app.bsky.feedx.like"));
        assert!(!p.matches("app.bsky.feed"));
        let e = CollectionPattern::parse("app.bsky.feed.like").unwrap();
        assert!(e.matches("app.bsky.feed.like") && !e.matches("app.bsky.feed.likes"));
        for bad in [
            "*",
            "app.*",
            "app..feed.*",
            "not an nsid",
            "app.bsky.feed.*.*",
            "",
        ] {
            assert!(CollectionPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_mistake() {
        let spec = |f: fn(&mut FilterSpec)| {
            let mut s = FilterSpec::default();
            f(&mut s);
            s.compile().map(|_| ())
        };
        assert!(spec(|_| {}).is_ok());
        assert!(matches!(
            spec(|s| s.collections = vec!["app.bsky.feed.like".into(), "x y".into()]),
            Err(FilterError::Collection(c)) if c == "x y"
        ));
        assert!(matches!(
            spec(|s| s.dids = vec!["did:plc:abc".into(), "alice".into()]),
            Err(FilterError::Did(d)) if d == "alice"
        ));
        assert!(matches!(
            spec(|s| s.dids = vec!["did:plc:abc".into(); MAX_DIDS + 1]),
            Err(FilterError::TooManyDids(_))
        ));
        assert!(matches!(
            spec(|s| s.collections = vec!["app.bsky.feed.like".into(); MAX_COLLECTIONS + 1]),
            Err(FilterError::TooManyCollections(_))
        ));
        assert!(matches!(
            spec(|s| {
                s.kinds = vec![Kind::Identity];
                s.operations = vec![Operation::Create];
            }),
            Err(FilterError::OperationsWithoutCommits)
        ));
        assert!(matches!(
            spec(|s| s.predicate = Some("commit.record.[".into())),
            Err(FilterError::Predicate(_))
        ));
        assert!(serde_json::from_str::<FilterSpec>(r#"{"colections": []}"#).is_err());
        let parsed: FilterSpec = serde_json::from_str(
            r#"{"kinds": ["commit"], "operations": ["create"], "collections": ["app.bsky.feed.*"]}"#,
        )
        .unwrap();
        assert!(parsed.compile().is_ok());
    }
}
