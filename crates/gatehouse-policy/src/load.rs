//! Loading and validating policy files.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};

use crate::{DEFAULT_POLICY, Policies, SCHEMA};

/// Where a policy set came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// No policy configured: the built-in administrators-only policy.
    Default,
    Files(Vec<PathBuf>),
}

/// Why policies could not be loaded. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid policy file pattern \"{pattern}\": {message}")]
    Pattern { pattern: String, message: String },
    #[error("policy file pattern \"{0}\" matches no file")]
    NoMatch(String),
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: policy templates are not supported")]
    Template { path: PathBuf },
    #[error("two policies are named \"{0}\"; policy ids must be unique across files")]
    DuplicateId(String),
    #[error("the policies do not match the Gatehouse schema:\n{0}")]
    Invalid(String),
    #[error("{path}: policy \"{policy}\": {message}")]
    Annotation {
        path: PathBuf,
        policy: String,
        message: String,
    },
}

/// Checks the review annotations a policy carries, so a typo cannot silently turn a
/// two-approver rule into a one-approver rule or an unbounded wait.
fn check_annotations(policy: &cedar_policy::Policy) -> Result<(), String> {
    if let Some(n) = policy.annotation("approvals") {
        match n.trim().parse::<u32>() {
            Ok(1..=10) => {}
            _ => return Err(format!("@approvals(\"{n}\") must be a number from 1 to 10")),
        }
    }
    if let Some(t) = policy.annotation("timeout") {
        match humantime::parse_duration(t.trim()) {
            Ok(d)
                if d >= std::time::Duration::from_secs(1)
                    && d <= std::time::Duration::from_secs(7 * 86400) => {}
            _ => {
                return Err(format!(
                    "@timeout(\"{t}\") must be a duration from 1s to 7d, such as \"10m\""
                ));
            }
        }
    }
    if let Some(groups) = policy.annotation("approvers")
        && groups.split(',').all(|g| g.trim().is_empty())
    {
        return Err("@approvers names no group".into());
    }
    Ok(())
}

/// The shipped schema, parsed.
pub fn schema() -> Arc<Schema> {
    let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA)
        .unwrap_or_else(|e| unreachable!("the shipped schema is valid: {e}"));
    Arc::new(schema)
}

/// Expands `patterns` (relative to `base`), then parses and validates every file. With no
/// pattern, returns the built-in administrators-only policy.
pub fn load(patterns: &[String], base: &Path) -> Result<Policies, LoadError> {
    let schema = schema();
    if patterns.is_empty() {
        let set = PolicySet::from_str(DEFAULT_POLICY).map_err(|e| LoadError::Parse {
            path: "<built-in>".into(),
            message: e.to_string(),
        })?;
        return Ok(Policies::new(set, schema, PolicySource::Default));
    }
    let mut files = Vec::new();
    for pattern in patterns {
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            base.join(pattern)
        };
        let text = full.to_string_lossy().into_owned();
        let paths = glob::glob(&text).map_err(|e| LoadError::Pattern {
            pattern: pattern.clone(),
            message: e.to_string(),
        })?;
        let mut matched: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
        if matched.is_empty() {
            return Err(LoadError::NoMatch(pattern.clone()));
        }
        matched.sort();
        files.extend(matched);
    }
    files.dedup();

    let mut combined = PolicySet::new();
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        let set = PolicySet::from_str(&text).map_err(|e| LoadError::Parse {
            path: path.clone(),
            message: format!("{e}: {}", diagnostics(&e)),
        })?;
        if set.templates().next().is_some() {
            return Err(LoadError::Template { path: path.clone() });
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut policies: Vec<_> = set.policies().cloned().collect();
        // Cedar numbers policies in file order as policy0, policy1, ...
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(0)
        });
        for (i, policy) in policies.into_iter().enumerate() {
            let name = policy
                .annotation("id")
                .map(str::to_string)
                .unwrap_or_else(|| format!("{stem}#{i}"));
            check_annotations(&policy).map_err(|message| LoadError::Annotation {
                path: path.clone(),
                policy: name.clone(),
                message,
            })?;
            let renamed = policy.new_id(PolicyId::new(&name));
            combined
                .add(renamed)
                .map_err(|_| LoadError::DuplicateId(name))?;
        }
    }
    let result = Validator::new((*schema).clone()).validate(&combined, ValidationMode::Strict);
    if !result.validation_passed() {
        let messages: Vec<String> = result
            .validation_errors()
            .map(|e| format!("  - {e}"))
            .collect();
        return Err(LoadError::Invalid(messages.join("\n")));
    }
    Ok(Policies::new(combined, schema, PolicySource::Files(files)))
}

/// Cedar's parse errors carry their details as diagnostics; fold them into one line.
fn diagnostics(e: &cedar_policy::ParseErrors) -> String {
    e.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}
