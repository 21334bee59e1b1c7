//! [`Index`]: which subscriptions an event matches, found without looking at the others. Subscriptions are
//! indexed by exact collection, by collection prefix (looked up at each `.` boundary of the event's
//! collection) and by DID; an event's candidates are the subscriptions its collection and its DID both admit,
//! and only those are checked for kind, operation and predicate. The cost of a match grows with the number of
//! candidates, not with the number of subscriptions.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

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
///
/// Layout: a subscription with DIDs is found only through its DIDs (`by_did`; its collection patterns are then
/// checked on the few found); one without DIDs through its collections (`exact_any_did`, `prefix_any_did`), or
/// is in `firehose` when it names neither. No set is built per event, so an event costs the subscriptions it
/// can concern, not the number of subscriptions without a DID list (a first version unioned such sets and
/// spent most of a worker's time hashing them at 10,000 subscriptions).
#[derive(Debug)]
pub struct Index<Id> {
    filters: HashMap<Id, Arc<Compiled>>,
    /// Subscriptions with DIDs, by DID (a list: most DIDs are named by one subscription, and a one-element
    /// list costs a fraction of a set).
    by_did: HashMap<String, Vec<Id>>,
    /// Subscriptions without DIDs, by exact collection.
    exact_any_did: HashMap<String, HashSet<Id>>,
    /// Subscriptions without DIDs, by collection prefix (`app.bsky.feed` for `app.bsky.feed.*`).
    prefix_any_did: HashMap<String, HashSet<Id>>,
    /// Subscriptions with neither DIDs nor collections.
    firehose: HashSet<Id>,
    /// Every subscription without DIDs (events without a collection: identity, account, sync).
    any_did: HashSet<Id>,
}

impl<Id> Default for Index<Id> {
    fn default() -> Self {
        Self {
            filters: HashMap::new(),
            by_did: HashMap::new(),
            exact_any_did: HashMap::new(),
            prefix_any_did: HashMap::new(),
            firehose: HashSet::new(),
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
        self.insert_compiled(id, Arc::new(spec.compile()?));
        Ok(())
    }

    /// Adds (or replaces) subscription `id` with a filter compiled before (shared, not copied).
    pub fn insert_compiled(&mut self, id: Id, compiled: Arc<Compiled>) {
        self.remove(&id);
        if compiled.spec.dids.is_empty() {
            self.any_did.insert(id.clone());
            if compiled.collections.is_empty() {
                self.firehose.insert(id.clone());
            }
            for c in &compiled.collections {
                let (map, key) = match c {
                    CollectionPattern::Exact(k) => (&mut self.exact_any_did, k),
                    CollectionPattern::Prefix(k) => (&mut self.prefix_any_did, k),
                };
                map.entry(key.clone()).or_default().insert(id.clone());
            }
        }
        for d in &compiled.spec.dids {
            self.by_did.entry(d.clone()).or_default().push(id.clone());
        }
        self.filters.insert(id, compiled);
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
        if old.spec.dids.is_empty() {
            for c in &old.collections {
                match c {
                    CollectionPattern::Exact(k) => drop_from(&mut self.exact_any_did, k),
                    CollectionPattern::Prefix(k) => drop_from(&mut self.prefix_any_did, k),
                }
            }
        }
        for d in &old.spec.dids {
            if let Some(ids) = self.by_did.get_mut(d.as_str()) {
                ids.retain(|x| x != id);
                if ids.is_empty() {
                    self.by_did.remove(d.as_str());
                }
            }
        }
        self.firehose.remove(id);
        self.any_did.remove(id);
        true
    }

    /// The subscriptions whose collection and DID filters admit the event and whose kinds and operations
    /// include it (predicates not evaluated), sorted.
    pub fn candidates(&self, key: &EventKey<'_>) -> Vec<Id> {
        // Events without a collection are not excluded by collection filters.
        let mut admitted: Vec<&Id> = Vec::new();
        if let Some(ids) = self.by_did.get(key.did) {
            admitted.extend(ids.iter().filter(|id| {
                let patterns = &self.filters[*id].collections;
                key.collection
                    .is_none_or(|c| patterns.is_empty() || patterns.iter().any(|p| p.matches(c)))
            }));
        }
        match key.collection {
            Some(collection) => {
                if let Some(ids) = self.exact_any_did.get(collection) {
                    admitted.extend(ids);
                }
                for (i, _) in collection.match_indices('.') {
                    if let Some(ids) = self.prefix_any_did.get(&collection[..i]) {
                        admitted.extend(ids);
                    }
                }
                admitted.extend(&self.firehose);
            }
            None => admitted.extend(&self.any_did),
        }
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
        // A subscription without DIDs is found once per pattern that admits the collection.
        out.sort();
        out.dedup();
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
