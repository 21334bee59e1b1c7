//! JMESPath expressions of subscriptions (a predicate that keeps an event, a transform that reshapes it),
//! compiled once when a subscription is created and evaluated on each event's JSON. A bad expression is a typed
//! error naming the expression and where it failed; evaluating never panics.

use std::sync::Arc;

/// Longest expression accepted, in bytes: expressions are compiled per subscription and kept in memory.
pub const MAX_EXPRESSION_BYTES: usize = 4_096;

/// Deepest nesting of brackets, parentheses, braces and `!` accepted: the parser and the evaluator recurse
/// per level, and a worker's threads have 2 MiB stacks (measured: 1,000 levels overflow them).
pub const MAX_NESTING: usize = 32;
/// Most operators (`.`, `|`, `[`, `(`, `{`, `!`, `&`, `,`, comparisons) in one expression: the syntax tree, and
/// the evaluator's recursion, grow with them.
pub const MAX_OPERATORS: usize = 400;

/// Refuses shapes that would make the parser or evaluator recurse too deep (string literals skipped):
/// `Err((byte offset, message))`.
fn check_shape(text: &str) -> Result<(), (usize, String)> {
    let mut depth = 0usize;
    let mut nots = 0usize;
    let mut operators = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                operators += 1;
            }
            ')' | ']' | '}' => {
                depth = depth.saturating_sub(1);
                nots = 0;
            }
            '!' => {
                nots += 1;
                operators += 1;
            }
            '.' | '|' | '&' | ',' | '<' | '>' | '=' => operators += 1,
            _ => {}
        }
        if c != '!' && !c.is_whitespace() && !matches!(c, '(' | '[' | '{') {
            nots = 0;
        }
        if depth + nots > MAX_NESTING {
            return Err((i, format!("nested deeper than {MAX_NESTING} levels")));
        }
        if operators > MAX_OPERATORS {
            return Err((i, format!("more than {MAX_OPERATORS} operators")));
        }
    }
    Ok(())
}

/// A compiled JMESPath expression. Cheap to clone (shared).
#[derive(Clone)]
pub struct Expr {
    text: Arc<str>,
    compiled: Arc<jmespath::Expression<'static>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.text).finish()
    }
}

/// Why an expression cannot be compiled or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ExprError {
    /// Longer than [`MAX_EXPRESSION_BYTES`].
    #[error("expression of {0} bytes; at most {MAX_EXPRESSION_BYTES}")]
    TooLong(usize),
    /// Not valid JMESPath.
    #[error("invalid JMESPath {expression:?}: {message}")]
    Syntax {
        /// The expression.
        expression: String,
        /// What the parser said (with the offset).
        message: String,
    },
    /// Evaluation failed (e.g. a function given an argument of the wrong type).
    #[error("evaluating {expression:?}: {message}")]
    Runtime {
        /// The expression.
        expression: String,
        /// What went wrong.
        message: String,
    },
}

/// A document parsed once for evaluation by many expressions (an event tested against every subscription
/// predicate that concerns it): [`Expr::matches`] on a `serde_json::Value` converts the whole document on every
/// call, [`Expr::matches_data`] does not.
#[derive(Clone, Debug)]
pub struct Data(jmespath::Rcvar);

impl Data {
    /// Parses JSON bytes.
    ///
    /// # Errors
    /// When the bytes are not JSON.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let v: jmespath::Variable = serde_json::from_slice(bytes)?;
        Ok(Self(Arc::new(v)))
    }

    /// Whether it is JSON `null`.
    pub fn is_null(&self) -> bool {
        self.0.is_null()
    }

    /// The number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        self.0.as_number()
    }

    /// Compact JSON text (object keys in the document's order).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&*self.0).unwrap_or_default()
    }
}

impl Expr {
    /// Compiles `text`.
    ///
    /// # Errors
    /// [`ExprError::TooLong`] or [`ExprError::Syntax`].
    pub fn compile(text: &str) -> Result<Self, ExprError> {
        if text.len() > MAX_EXPRESSION_BYTES {
            return Err(ExprError::TooLong(text.len()));
        }
        check_shape(text).map_err(|(at, message)| ExprError::Syntax {
            expression: text.to_owned(),
            message: format!("{message} (at byte {at})"),
        })?;
        let compiled =
            crate::functions::runtime()
                .compile(text)
                .map_err(|e| ExprError::Syntax {
                    expression: text.to_owned(),
                    message: e.to_string(),
                })?;
        Ok(Self {
            text: Arc::from(text),
            compiled: Arc::new(compiled),
        })
    }

    /// The expression's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Evaluates the expression on `data`.
    ///
    /// # Errors
    /// [`ExprError::Runtime`].
    pub fn search(&self, data: &serde_json::Value) -> Result<serde_json::Value, ExprError> {
        let result = self
            .compiled
            .search(data)
            .map_err(|e| self.runtime(e.to_string()))?;
        serde_json::to_value(&*result).map_err(|e| self.runtime(e.to_string()))
    }

    /// Whether the expression is truthy on `data` (JMESPath truthiness); an evaluation error is `false`.
    pub fn matches(&self, data: &serde_json::Value) -> bool {
        self.compiled.search(data).is_ok_and(|v| v.is_truthy())
    }

    /// [`Expr::matches`] on a document parsed once ([`Data`]).
    pub fn matches_data(&self, data: &Data) -> bool {
        self.eval(data).is_ok_and(|v| v.is_truthy())
    }

    /// Evaluates on the parsed document itself (`Expression::search` would copy it: its argument is
    /// serialized into a new document on every call without the crate's nightly-only specialization).
    fn eval(&self, data: &Data) -> jmespath::SearchResult {
        let mut ctx = jmespath::Context::new(&self.text, crate::functions::runtime());
        jmespath::interpret(&data.0, self.compiled.as_ast(), &mut ctx)
    }

    /// Evaluates on a parsed document, giving a parsed result (to evaluate further expressions on it).
    ///
    /// # Errors
    /// [`ExprError::Runtime`].
    pub fn eval_data(&self, data: &Data) -> Result<Data, ExprError> {
        self.eval(data)
            .map(Data)
            .map_err(|e| self.runtime(e.to_string()))
    }

    /// [`Expr::search`] on a document parsed once ([`Data`]).
    ///
    /// # Errors
    /// [`ExprError::Runtime`].
    pub fn search_data(&self, data: &Data) -> Result<serde_json::Value, ExprError> {
        let result = self.eval(data).map_err(|e| self.runtime(e.to_string()))?;
        serde_json::to_value(&*result).map_err(|e| self.runtime(e.to_string()))
    }

    fn runtime(&self, message: String) -> ExprError {
        ExprError::Runtime {
            expression: self.text.to_string(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn predicates_and_transforms_on_an_event() {
        let ev = json!({"did": "did:plc:a", "kind": "commit", "commit": {"operation": "create",
            "collection": "app.bsky.feed.post", "record": {"text": "hello world", "langs": ["en", "pt"]}}});
        let p =
            Expr::compile("commit.operation == 'create' && contains(commit.record.langs, 'pt')")
                .unwrap();
        assert!(p.matches(&ev));
        let q = Expr::compile("length(commit.record.text) > `20`").unwrap();
        assert!(!q.matches(&ev));
        let t = Expr::compile("{did: did, text: commit.record.text}").unwrap();
        assert_eq!(
            t.search(&ev).unwrap(),
            json!({"did": "did:plc:a", "text": "hello world"})
        );
        // A runtime type error is an error for a transform and a non-match for a predicate.
        let bad = Expr::compile("length(`1`)").unwrap();
        assert!(matches!(bad.search(&ev), Err(ExprError::Runtime { .. })));
        assert!(!bad.matches(&ev));
        assert!(matches!(
            Expr::compile("a.["),
            Err(ExprError::Syntax { .. })
        ));
        assert!(matches!(
            Expr::compile(&"a".repeat(MAX_EXPRESSION_BYTES + 1)),
            Err(ExprError::TooLong(_))
        ));
    }

    #[test]
    fn expressions_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Expr>();
    }
}
