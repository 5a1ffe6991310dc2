//! Step 5 of the pipeline, mask: which masking rules apply to a session, compiled once and
//! shared. Protocol adapters apply them to every channel that carries data to the client;
//! column rules need the target's catalog, which the adapter resolves (see
//! [`SessionMasking::column_rules`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gatehouse_mask::{Masker, Strategy, TokenKey, ValueRule};

use crate::config::{MaskTarget, MaskingConfig, MaskingRule};
use crate::identity::Identity;

/// The configured rules and the compiled maskers of the rule subsets sessions use.
pub struct Masking {
    rules: Vec<MaskingRule>,
    key: TokenKey,
    compiled: Mutex<HashMap<Vec<usize>, Arc<Masker>>>,
}

/// The rules that apply to one session.
pub struct SessionMasking {
    /// Value detectors, run on every text value sent to the client.
    pub values: Arc<Masker>,
    /// Column and column-pattern rules; the adapter maps them to result columns.
    pub column_rules: Vec<ColumnRule>,
    pub key: TokenKey,
}

/// A column rule as it applies to a session.
#[derive(Debug, Clone)]
pub struct ColumnRule {
    pub name: String,
    pub target: MaskTarget,
    pub strategy: Strategy,
}

impl Masking {
    pub fn new(config: &MaskingConfig, key: TokenKey) -> Masking {
        Masking {
            rules: config.rules.clone(),
            key,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// `true` when no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules for `identity` on `connection`, or `None` when none applies.
    pub fn for_session(
        &self,
        identity: &Identity,
        connection: &str,
    ) -> Option<Arc<SessionMasking>> {
        let applying: Vec<usize> = (0..self.rules.len())
            .filter(|i| self.rules[*i].applies(identity, connection))
            .collect();
        if applying.is_empty() {
            return None;
        }
        let value_rules: Vec<usize> = applying
            .iter()
            .copied()
            .filter(|i| matches!(self.rules[*i].target, MaskTarget::Detector(_)))
            .collect();
        let values = {
            let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .entry(value_rules.clone())
                .or_insert_with(|| {
                    let rules = value_rules
                        .iter()
                        .filter_map(|i| match &self.rules[*i].target {
                            MaskTarget::Detector(d) => Some(ValueRule {
                                name: self.rules[*i].name.clone(),
                                detector: *d,
                                strategy: self.rules[*i].strategy.clone(),
                            }),
                            _ => None,
                        })
                        .collect();
                    Arc::new(Masker::new(rules, self.key.clone()))
                })
                .clone()
        };
        let column_rules = applying
            .iter()
            .filter(|i| !matches!(self.rules[**i].target, MaskTarget::Detector(_)))
            .map(|i| ColumnRule {
                name: self.rules[*i].name.clone(),
                target: self.rules[*i].target.clone(),
                strategy: self.rules[*i].strategy.clone(),
            })
            .collect();
        Some(Arc::new(SessionMasking {
            values,
            column_rules,
            key: self.key.clone(),
        }))
    }
}

/// Whether `name` matches a glob of `*` wildcards (case-insensitive; `name` in lower case).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn globs() {
        assert!(glob_matches("*password*", "user_password_hash"));
        assert!(glob_matches("ssn", "ssn"));
        assert!(!glob_matches("ssn", "ssn2"));
        assert!(glob_matches("api_*", "api_key"));
        assert!(!glob_matches("api_*", "my_api_key"));
        assert!(glob_matches("*_token", "refresh_token"));
        assert!(glob_matches("*", "anything"));
    }
}
