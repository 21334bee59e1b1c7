//! [`Index`]: which subscriptions an event matches, found without looking at the others. Subscriptions are
//! indexed by exact collection, by collection prefix (looked up at each `.` boundary of the event's
//! collection) and by DID; an event's candidates are the subscriptions its collection and its DID both admit,
//! and only those are checked for kind, operation and predicate. The cost of a match grows with the number of
//! candidates, not with the number of subscriptions.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use fpaas_event::{Event, Kind, Operation};

use crate::spec::{CollectionPattern, Compiled, FilterError, FilterSpec};

/// What the index needs of an event (all of it readable without parsing the payload: kind, operation and
/// collection from the subject, the DID from the `Fpaas-Did` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventKey<'a> {
    /// The event kind.
    pub kind: Kind,
    /// The operation of a commit event.
    pub operation: Option<Operation>,
    /// The collection of a commit event.
    pub collection: Option<&'a str>,
    /// The repository DID.
    pub did: &'a str,
}

impl<'a> EventKey<'a> {
    /// The key of `event`.
    pub fn of(event: &'a Event) -> Self {
        Self {
            kind: event.kind,
            operation: event.commit.as_ref().map(|c| c.operation),
            collection: event.commit.as_ref().map(|c| c.collection.as_str()),
            did: &event.did,
        }
    }
}

/// Subscriptions (by id) and their filters, indexed for matching.
#[derive(Debug)]
pub struct Index<Id> {
    filters: HashMap<Id, Compiled>,
    exact: HashMap<String, HashSet<Id>>,
    prefix: HashMap<String, HashSet<Id>>,
    any_collection: HashSet<Id>,
    by_did: HashMap<String, HashSet<Id>>,
    any_did: HashSet<Id>,
}

impl<Id> Default for Index<Id> {
    fn default() -> Self {
        Self {
            filters: HashMap::new(),
            exact: HashMap::new(),
            prefix: HashMap::new(),
            any_collection: HashSet::new(),
            by_did: HashMap::new(),
            any_did: HashSet::new(),
        }
    }
}

impl<Id: Clone + Eq + Hash + Ord> Index<Id> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Adds (or replaces) subscription `id` with `spec`.
    ///
    /// # Errors
    /// The spec's [`FilterError`]; the index is then unchanged.
    pub fn insert(&mut self, id: Id, spec: &FilterSpec) -> Result<(), FilterError> {
        let compiled = spec.compile()?;
        self.remove(&id);
        if compiled.collections.is_empty() {
            self.any_collection.insert(id.clone());
        }
        for c in &compiled.collections {
            let (map, key) = match c {
                CollectionPattern::Exact(k) => (&mut self.exact, k),
                CollectionPattern::Prefix(k) => (&mut self.prefix, k),
            };
            map.entry(key.clone()).or_default().insert(id.clone());
        }
        if compiled.spec.dids.is_empty() {
            self.any_did.insert(id.clone());
        }
        for d in &compiled.spec.dids {
            self.by_did.entry(d.clone()).or_default().insert(id.clone());
        }
        self.filters.insert(id, compiled);
        Ok(())
    }

    /// Removes subscription `id`; `true` if it was there.
    pub fn remove(&mut self, id: &Id) -> bool {
        let Some(old) = self.filters.remove(id) else {
            return false;
        };
        let drop_from = |map: &mut HashMap<String, HashSet<Id>>, key: &str| {
            if let Some(set) = map.get_mut(key) {
                set.remove(id);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        };
        for c in &old.collections {
            match c {
                CollectionPattern::Exact(k) => drop_from(&mut self.exact, k),
                CollectionPattern::Prefix(k) => drop_from(&mut self.prefix, k),
            }
        }
        for d in &old.spec.dids {
            drop_from(&mut self.by_did, d);
        }
        self.any_collection.remove(id);
        self.any_did.remove(id);
        true
    }

    /// The subscriptions whose collection and DID filters admit the event and whose kinds and operations
    /// include it (predicates not evaluated), sorted.
    pub fn candidates(&self, key: &EventKey<'_>) -> Vec<Id> {
        // Collection dimension: events without a collection are not excluded by collection filters.
        let mut by_collection: Option<HashSet<&Id>> = None;
        if let Some(collection) = key.collection {
            let mut set: HashSet<&Id> = self.any_collection.iter().collect();
            if let Some(ids) = self.exact.get(collection) {
                set.extend(ids);
            }
            for (i, _) in collection.match_indices('.') {
                if let Some(ids) = self.prefix.get(&collection[..i]) {
                    set.extend(ids);
                }
            }
            by_collection = Some(set);
        }
        let mut by_did: HashSet<&Id> = self.any_did.iter().collect();
        if let Some(ids) = self.by_did.get(key.did) {
            by_did.extend(ids);
        }
        let admitted: Vec<&Id> = match &by_collection {
            Some(c) if c.len() <= by_did.len() => c
                .iter()
                .filter(|id| by_did.contains(*id))
                .copied()
                .collect(),
            Some(c) => by_did
                .iter()
                .filter(|id| c.contains(*id))
                .copied()
                .collect(),
            None => by_did.into_iter().collect(),
        };
        let mut out: Vec<Id> = admitted
            .into_iter()
            .filter(|id| {
                let spec = &self.filters[*id].spec;
                (spec.kinds.is_empty() || spec.kinds.contains(&key.kind))
                    && (spec.operations.is_empty()
                        || key
                            .operation
                            .is_some_and(|op| spec.operations.contains(&op))
                        || key.kind != Kind::Commit)
            })
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// The subscriptions the event matches: [`Index::candidates`] whose predicate (if any) is truthy on the
    /// event's JSON, sorted.
    pub fn matches(&self, key: &EventKey<'_>, json: &serde_json::Value) -> Vec<Id> {
        self.candidates(key)
            .into_iter()
            .filter(|id| {
                self.filters[id]
                    .predicate
                    .as_ref()
                    .is_none_or(|p| p.matches(json))
            })
            .collect()
    }
}
