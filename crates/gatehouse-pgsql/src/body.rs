//! Read access to a node's fields, shared by both tree walkers.

use serde_json::Value;

/// The fields of one parse-tree node that classification reads.
pub(crate) trait Body {
    fn str_field(&self, name: &str) -> Option<&str>;
    fn bool_field(&self, name: &str) -> Option<bool>;
    fn int_field(&self, name: &str) -> Option<i64>;
    /// `true` when the list field `name` has at least one item.
    fn has_items(&self, name: &str) -> bool;
}

impl Body for Value {
    fn str_field(&self, name: &str) -> Option<&str> {
        self[name].as_str()
    }

    fn bool_field(&self, name: &str) -> Option<bool> {
        self[name].as_bool()
    }

    fn int_field(&self, name: &str) -> Option<i64> {
        self[name].as_i64()
    }

    fn has_items(&self, name: &str) -> bool {
        self[name].as_array().is_some_and(|a| !a.is_empty())
    }
}
