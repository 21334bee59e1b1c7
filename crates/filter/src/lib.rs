//! A subscription's filter, pure and without I/O: what a tenant asks for and how one event is matched
//! against many subscriptions at once (the measurements in `docs/measurements.md`, "Fan-out in our own
//! process": match in our own code through an index, never with one server-side consumer per subscription).
//!
//! - [`spec`]: the [`FilterSpec`] (kinds, operations, collections exact or `prefix.*`, DIDs, a JMESPath predicate)
//!   and its validation, with one typed error per mistake.
//! - [`expr`]: the JMESPath expressions (predicates and transforms) compiled once and evaluated on the event JSON.
//! - [`functions`]: the ATProto functions of expressions (AT-URI parts, facet mentions / links / tags, text
//!   length, a spam score).
//! - [`index`]: the [`Index`], which finds the subscriptions an event may match by collection, NSID prefix and
//!   DID without looking at the others, then checks kinds, operations and predicates.

pub mod expr;
pub mod functions;
pub mod index;
pub mod spec;

pub use expr::{Data, Expr, ExprError};
pub use index::{EventKey, Index};
pub use spec::{CollectionPattern, FilterError, FilterSpec, MAX_COLLECTIONS, MAX_DIDS};
