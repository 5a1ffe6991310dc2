//! Secrets referenced by the config, never written in it.
//!
//! A [`SecretRef`] names where a secret lives (`env:NAME` or `file:/path`). It is resolved at
//! the moment of use into a [`Secret`], whose `Debug` and `Display` never show the value, so a
//! secret cannot reach a log line by accident.

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where a secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable of the gateway process.
    Env(String),
    /// A file (such as a mounted Kubernetes or Docker secret); one trailing newline is ignored.
    File(PathBuf),
}

/// A secret value. Deliberately has no `Display` and a redacting `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it (the upstream handshake).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret reference could not be parsed or resolved. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "a secret must be a reference, \"env:VARIABLE\" or \"file:/path\", never the value itself"
    )]
    NotAReference,
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {reason}")]
    FileUnreadable { path: PathBuf, reason: String },
}

impl FromStr for SecretRef {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(name) = s.strip_prefix("env:").filter(|n| !n.is_empty()) {
            Ok(SecretRef::Env(name.to_string()))
        } else if let Some(path) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Ok(SecretRef::File(PathBuf::from(path)))
        } else {
            Err(SecretError::NotAReference)
        }
    }
}

impl SecretRef {
    /// Makes a relative `file:` path relative to `base` (the config file's directory).
    pub fn resolve_relative(self, base: &Path) -> Self {
        match self {
            SecretRef::File(p) if p.is_relative() => SecretRef::File(base.join(p)),
            other => other,
        }
    }

    /// Reads the secret now.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            SecretRef::Env(name) => std::env::var(name)
                .map(Secret)
                .map_err(|_| SecretError::EnvMissing(name.clone())),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| {
                    let trimmed = s.strip_suffix('\n').unwrap_or(&s);
                    Secret(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
                })
                .map_err(|e| SecretError::FileUnreadable {
                    path: path.clone(),
                    reason: e.kind().to_string(),
                }),
        }
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_not_references() {
        assert!("hunter2".parse::<SecretRef>().is_err());
        assert!("env:".parse::<SecretRef>().is_err());
    }

    #[test]
    fn file_secrets_drop_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let r = "file:pw"
            .parse::<SecretRef>()
            .unwrap()
            .resolve_relative(dir.path());
        assert_eq!(r.resolve().unwrap().expose(), "s3cret");
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("s3cret");
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn a_missing_variable_is_named() {
        let err = SecretRef::Env("GATEHOUSE_TEST_UNSET_VAR".into())
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("GATEHOUSE_TEST_UNSET_VAR"));
    }
}
