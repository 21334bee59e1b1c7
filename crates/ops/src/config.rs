//! How every long-running command gets its configuration, in one place: the config struct's `Default`, then
//! a file (`--config`: JSON, or TOML when the name ends in `.toml`), then one `FPAAS_<FIELD>` environment
//! variable per field (nested fields joined with `_`: `stream.max_age_secs` is `FPAAS_STREAM_MAX_AGE_SECS`),
//! then the command's flags (applied by the caller). [`markdown`] writes the reference of a config struct —
//! every option with its environment variable, default and description — from the struct's doc comments and
//! its `Default`, so defaults are written once; `docs/config.md` is generated from it and a test keeps it
//! current.

use std::path::Path;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Prefix of every environment variable.
pub const ENV_PREFIX: &str = "FPAAS_";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file, or the configuration with the environment applied, does not fit the struct.
    #[error("{what}: {message}")]
    Invalid {
        /// Where the bad value came from (a file, an environment variable).
        what: String,
        /// What is wrong.
        message: String,
    },
}

/// Defaults → the file at `path` (JSON, or TOML by extension) → `FPAAS_*` environment variables.
///
/// # Errors
/// An unreadable file, or a file or variable whose value does not fit `T` (unknown fields are rejected by
/// `T`'s `deny_unknown_fields`).
pub fn load<T>(path: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let cfg = match path {
        None => T::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let invalid = |message: String| ConfigError::Invalid {
                what: path.display().to_string(),
                message,
            };
            if path.extension().is_some_and(|e| e == "toml") {
                toml::from_str(&text).map_err(|e| invalid(e.to_string()))?
            } else {
                serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?
            }
        }
    };
    apply_env(cfg, |name| std::env::var(name).ok())
}

/// Applies `FPAAS_<FIELD>` variables (looked up with `env`) to every field of `cfg`, nested ones included. The
/// value of a text field is taken as it is; any other value is read as JSON when it parses (numbers, booleans,
/// arrays, objects), else as text; a list also as comma-separated items; an empty variable leaves an unset
/// optional field unset.
///
/// # Errors
/// A variable whose value does not fit its field.
pub fn apply_env<T>(cfg: T, env: impl Fn(&str) -> Option<String>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let mut value = serde_json::to_value(&cfg).map_err(|e| ConfigError::Invalid {
        what: "configuration".into(),
        message: e.to_string(),
    })?;
    let mut changed = Vec::new();
    overlay(&mut value, ENV_PREFIX, &env, &mut changed);
    if changed.is_empty() {
        return Ok(cfg);
    }
    serde_json::from_value(value).map_err(|e| ConfigError::Invalid {
        what: format!("environment ({})", changed.join(", ")),
        message: e.to_string(),
    })
}

fn overlay(
    value: &mut Value,
    prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
    changed: &mut Vec<String>,
) {
    let Value::Object(fields) = value else {
        return;
    };
    for (name, field) in fields.iter_mut() {
        let var = format!("{prefix}{}", name.to_ascii_uppercase());
        if let Value::Object(_) = field {
            overlay(field, &format!("{var}_"), env, changed);
            continue;
        }
        let Some(raw) = env(&var) else {
            continue;
        };
        *field = parse_env_value(field, &raw);
        changed.push(var);
    }
}

/// The JSON value of an environment variable for a field whose current value is `current`.
fn parse_env_value(current: &Value, raw: &str) -> Value {
    match current {
        Value::String(_) => Value::String(raw.to_owned()),
        Value::Null if raw.is_empty() => Value::Null,
        Value::Array(_) if !raw.trim_start().starts_with('[') => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned())))
                .collect(),
        ),
        _ => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())),
    }
}

/// One option of a configuration: its dotted path, environment variable, default (JSON) and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionDoc {
    /// `stream.max_age_secs`
    pub path: String,
    /// `FPAAS_STREAM_MAX_AGE_SECS`
    pub env: String,
    /// The default as JSON (`null` when unset).
    pub default: String,
    /// The field's doc comment, on one line.
    pub description: String,
}

/// Every option of `T` (alphabetical within each struct), from its doc comments (via `schemars`) and its
/// `Default`.
pub fn options<T: JsonSchema + Serialize + Default>() -> Vec<OptionDoc> {
    let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let defaults = serde_json::to_value(T::default()).unwrap_or(Value::Null);
    let mut out = Vec::new();
    collect(&schema, &defaults, "", ENV_PREFIX, &defs, &mut out);
    out
}

/// The definition a property points at (`$ref`, possibly inside `allOf` / `anyOf` for optional fields).
fn resolve<'a>(prop: &'a Value, defs: &'a Map<String, Value>) -> Option<&'a Value> {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        return defs.get(r.trim_start_matches("#/$defs/"));
    }
    ["allOf", "anyOf", "oneOf"].iter().find_map(|k| {
        prop.get(*k)?
            .as_array()?
            .iter()
            .find_map(|p| resolve(p, defs))
    })
}

fn collect(
    schema: &Value,
    defaults: &Value,
    path: &str,
    env: &str,
    defs: &Map<String, Value>,
    out: &mut Vec<OptionDoc>,
) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, prop) in props {
        let default = defaults.get(name).cloned().unwrap_or(Value::Null);
        let p = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        let e = format!("{env}{}", name.to_ascii_uppercase());
        let target = resolve(prop, defs);
        if default.is_object()
            && let Some(def) = target.filter(|d| d.get("properties").is_some())
        {
            collect(def, &default, &p, &format!("{e}_"), defs, out);
            continue;
        }
        let description = prop
            .get("description")
            .or_else(|| target.and_then(|t| t.get("description")))
            .and_then(Value::as_str)
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.push(OptionDoc {
            path: p,
            env: e,
            default: default.to_string(),
            description,
        });
    }
}

/// A Markdown section documenting every option of `T`: a `## title`, the `intro` paragraph, and a table of
/// option, environment variable, default and description.
pub fn markdown<T: JsonSchema + Serialize + Default>(title: &str, intro: &str) -> String {
    let mut s = format!(
        "## {title}\n\n{intro}\n\n| option | environment | default | description |\n|---|---|---|---|\n"
    );
    for o in options::<T>() {
        let default = if o.default == "null" {
            "unset".to_owned()
        } else {
            format!("`{}`", o.default)
        };
        s.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            o.path,
            o.env,
            default,
            o.description.replace('|', "\\|")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;

    /// Inner settings.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        /// Seconds to keep.
        max_age_secs: u64,
        /// A name.
        name: String,
    }

    impl Default for Inner {
        fn default() -> Self {
            Self {
                max_age_secs: 60,
                name: "x".into(),
            }
        }
    }

    /// Outer settings.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    struct Outer {
        /// The URL.
        url: String,
        /// How many.
        count: usize,
        /// Optional start.
        start: Option<i64>,
        /// Optional address.
        listen: Option<String>,
        /// Things.
        items: Vec<String>,
        /// Nested.
        inner: Inner,
    }

    impl Default for Outer {
        fn default() -> Self {
            Self {
                url: "nats://a".into(),
                count: 3,
                start: None,
                listen: Some("127.0.0.1:1".into()),
                items: vec![],
                inner: Inner::default(),
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn every_field_has_an_environment_variable() {
        let cfg = apply_env(
            Outer::default(),
            env(&[
                ("FPAAS_URL", "nats://b:4222"),
                ("FPAAS_COUNT", "9"),
                ("FPAAS_START", "123"),
                ("FPAAS_LISTEN", ""),
                ("FPAAS_ITEMS", "a, b"),
                ("FPAAS_INNER_MAX_AGE_SECS", "5"),
                ("FPAAS_INNER_NAME", "42"),
            ]),
        )
        .expect("env");
        assert_eq!(
            cfg,
            Outer {
                url: "nats://b:4222".into(),
                count: 9,
                start: Some(123),
                listen: Some(String::new()),
                items: vec!["a".into(), "b".into()],
                inner: Inner {
                    max_age_secs: 5,
                    name: "42".into()
                },
            }
        );
        let err = apply_env(Outer::default(), env(&[("FPAAS_COUNT", "many")])).unwrap_err();
        assert!(err.to_string().contains("FPAAS_COUNT"), "{err}");
        assert_eq!(
            apply_env(Outer::default(), env(&[])).unwrap(),
            Outer::default()
        );
    }

    #[test]
    fn files_are_json_or_toml_and_unknown_fields_are_rejected() {
        let dir = std::env::temp_dir().join(format!("fpaas-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("c.json");
        std::fs::write(&json, r#"{"count": 7, "inner": {"name": "j"}}"#).unwrap();
        let toml_file = dir.join("c.toml");
        std::fs::write(&toml_file, "count = 8\n[inner]\nmax_age_secs = 1\n").unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "cont = 8\n").unwrap();
        let a: Outer = load(Some(&json)).unwrap();
        assert_eq!(
            (a.count, a.inner.name.as_str(), a.inner.max_age_secs),
            (7, "j", 60)
        );
        let b: Outer = load(Some(&toml_file)).unwrap();
        assert_eq!((b.count, b.inner.max_age_secs), (8, 1));
        assert!(load::<Outer>(Some(&bad)).is_err());
        assert!(load::<Outer>(Some(&dir.join("missing.json"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn options_list_paths_variables_defaults_and_docs() {
        let o = options::<Outer>();
        let find = |p: &str| {
            o.iter()
                .find(|x| x.path == p)
                .unwrap_or_else(|| panic!("{p}: {o:?}"))
        };
        assert_eq!(find("count").env, "FPAAS_COUNT");
        assert_eq!(find("count").default, "3");
        assert_eq!(find("count").description, "How many.");
        assert_eq!(find("start").default, "null");
        assert_eq!(find("inner.max_age_secs").env, "FPAAS_INNER_MAX_AGE_SECS");
        assert_eq!(find("inner.max_age_secs").default, "60");
        assert_eq!(find("inner.max_age_secs").description, "Seconds to keep.");
        assert_eq!(o.len(), 7);
        let md = markdown::<Outer>("outer", "Intro.");
        assert!(
            md.contains("| `inner.name` | `FPAAS_INNER_NAME` | `\"x\"` | A name. |"),
            "{md}"
        );
        assert!(
            md.contains("| `start` | `FPAAS_START` | unset | Optional start. |"),
            "{md}"
        );
    }
}
