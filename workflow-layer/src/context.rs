//! [`Context`]: the data a workflow's tasks share, by key.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A context operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// `insert` of a key that is already there.
    #[error("context key `{0}` already exists (use update or insert_or_update)")]
    KeyExists(String),
    /// `update` of a key that is not there.
    #[error("context key `{0}` does not exist (use insert or insert_or_update)")]
    KeyNotFound(String),
    /// `from_json` of something that is not a JSON object.
    #[error("a context is a JSON object: {0}")]
    NotAnObject(String),
    /// A value could not be converted to or from JSON.
    #[error("context key `{key}`: {message}")]
    Json {
        /// The key whose value failed.
        key: String,
        /// What serde said.
        message: String,
    },
}

/// The data a workflow's tasks share: values by key, kept in key order (so iteration, JSON
/// and merges are deterministic). Workflows use `Context<serde_json::Value>`, the default;
/// `Context::new()` makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct Context<V = Value> {
    values: BTreeMap<String, V>,
}

impl<V> Default for Context<V> {
    fn default() -> Self {
        Self {
            values: BTreeMap::new(),
        }
    }
}

impl Context<Value> {
    /// An empty JSON context (for other value types, `Context::<V>::default()`).
    pub fn new() -> Self {
        Self::default()
    }
}

impl<V> Context<V> {
    /// Adds `key`; an error if it is already there.
    pub fn insert(&mut self, key: impl Into<String>, value: V) -> Result<(), ContextError> {
        let key = key.into();
        if self.values.contains_key(&key) {
            return Err(ContextError::KeyExists(key));
        }
        self.values.insert(key, value);
        Ok(())
    }

    /// Replaces `key`; an error if it is not there.
    pub fn update(&mut self, key: impl Into<String>, value: V) -> Result<(), ContextError> {
        let key = key.into();
        match self.values.get_mut(&key) {
            Some(slot) => {
                *slot = value;
                Ok(())
            }
            None => Err(ContextError::KeyNotFound(key)),
        }
    }

    /// Sets `key` whether or not it is there.
    pub fn insert_or_update(&mut self, key: impl Into<String>, value: V) {
        self.values.insert(key.into(), value);
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.values.get(key)
    }

    /// Removes and returns `key`.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.values.remove(key)
    }

    /// Keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.values.keys().map(String::as_str)
    }

    /// Keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> + '_ {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl<V: Clone> Context<V> {
    /// Copies every key of `other` into this context; where both have a key, `other`'s value
    /// wins. Merging a task's dependencies in their declaration order is how a task's input
    /// is made (later dependency wins).
    pub fn merge(&mut self, other: &Context<V>) {
        for (key, value) in &other.values {
            self.values.insert(key.clone(), value.clone());
        }
    }
}

impl<V: Serialize> Context<V> {
    /// The context as one JSON object.
    pub fn to_json(&self) -> Result<Value, ContextError> {
        let mut object = serde_json::Map::new();
        for (key, value) in &self.values {
            let json = serde_json::to_value(value).map_err(|e| ContextError::Json {
                key: key.clone(),
                message: e.to_string(),
            })?;
            object.insert(key.clone(), json);
        }
        Ok(Value::Object(object))
    }
}

impl<V: DeserializeOwned> Context<V> {
    /// A context from a JSON object (each value read as `V`).
    pub fn from_json(value: Value) -> Result<Self, ContextError> {
        let Value::Object(object) = value else {
            return Err(ContextError::NotAnObject(value.to_string()));
        };
        let mut values = BTreeMap::new();
        for (key, json) in object {
            let value = serde_json::from_value(json).map_err(|e| ContextError::Json {
                key: key.clone(),
                message: e.to_string(),
            })?;
            values.insert(key, value);
        }
        Ok(Self { values })
    }
}

impl<V> FromIterator<(String, V)> for Context<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        Self {
            values: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn context_api_follows_the_spec() {
        let mut ctx = Context::new();
        ctx.insert("a", json!(1)).expect("new key");
        assert_eq!(
            ctx.insert("a", json!(2)),
            Err(ContextError::KeyExists("a".into()))
        );
        assert_eq!(
            ctx.update("b", json!(2)),
            Err(ContextError::KeyNotFound("b".into()))
        );
        ctx.update("a", json!(3)).expect("existing key");
        ctx.insert_or_update("b", json!("x"));
        assert_eq!(ctx.keys().collect::<Vec<_>>(), ["a", "b"]);
        let round = Context::from_json(ctx.to_json().expect("json")).expect("object");
        assert_eq!(round, ctx);
        assert_eq!(ctx.remove("a"), Some(json!(3)));
        assert!(ctx.get("a").is_none());
        assert!(matches!(
            Context::<Value>::from_json(json!([1])),
            Err(ContextError::NotAnObject(_))
        ));
    }

    #[test]
    fn merge_lets_the_later_context_win() {
        let mut base: Context = [("a".to_owned(), json!(1)), ("b".to_owned(), json!(1))]
            .into_iter()
            .collect();
        let later: Context = [("b".to_owned(), json!(2)), ("c".to_owned(), json!(2))]
            .into_iter()
            .collect();
        base.merge(&later);
        assert_eq!(
            base.to_json().expect("json"),
            json!({"a": 1, "b": 2, "c": 2})
        );
    }

    #[test]
    fn typed_contexts_convert_through_json() {
        let mut ctx = Context::<u32>::default();
        ctx.insert("n", 7).expect("new key");
        assert_eq!(ctx.to_json().expect("json"), json!({"n": 7}));
        let err = Context::<u32>::from_json(json!({"n": "seven"})).expect_err("not a u32");
        assert!(
            matches!(err, ContextError::Json { ref key, .. } if key == "n"),
            "{err}"
        );
    }
}
