//! Cancel keys. Clients get a random key from the gateway, never the backend's PID and key; the
//! registry maps one to the other so a CancelRequest reaches the right backend and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::upstream::CancelTarget;

/// The cancel keys of live sessions. Touched at session start, end and cancel, never per message.
#[derive(Default, Clone)]
pub struct CancelRegistry {
    inner: Arc<Mutex<HashMap<i32, Registered>>>,
}

/// How a CancelRequest reaches a session whose statement is held for approval (it is not on
/// the server, so only the gateway can cancel it).
#[derive(Default)]
pub struct Interrupt {
    notify: tokio::sync::Notify,
    holding: std::sync::atomic::AtomicBool,
}

impl Interrupt {
    /// Marks whether the session is holding a statement now.
    pub fn set_holding(&self, holding: bool) {
        self.holding
            .store(holding, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends a hold in progress. `false` when nothing is held: the cancel is for the server.
    pub fn cancel_hold(&self) -> bool {
        if self.holding.load(std::sync::atomic::Ordering::SeqCst) {
            self.notify.notify_waiters();
            true
        } else {
            false
        }
    }

    /// Resolves when a cancel ends the hold.
    pub async fn cancelled(&self) {
        self.notify.notified().await
    }
}

/// A client-facing key, the backend it cancels, and the session's interrupt (which ends a
/// wait for approval: the statement is not on the server yet, so only the gateway can cancel).
type Registered = (Vec<u8>, CancelTarget, Arc<Interrupt>);

/// Removes its session's key from the registry when the session ends.
pub struct CancelKey {
    registry: CancelRegistry,
    pub pid: i32,
    pub key: [u8; 4],
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.inner.lock() {
            map.remove(&self.pid);
        }
    }
}

impl CancelRegistry {
    /// Issues a fresh client-facing key for `target`.
    pub fn register(&self, target: CancelTarget, interrupt: Arc<Interrupt>) -> CancelKey {
        let mut rng = rand::rng();
        let key: [u8; 4] = rng.random();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let pid = loop {
            // Positive, like a real PID, so clients that print it are not confused.
            let pid = rng.random_range(1..i32::MAX);
            if !map.contains_key(&pid) {
                break pid;
            }
        };
        map.insert(pid, (key.to_vec(), target, interrupt));
        CancelKey {
            registry: self.clone(),
            pid,
            key,
        }
    }

    /// The backend to cancel, and the session's interrupt, for a client's (pid, key), if the
    /// key matches exactly.
    pub fn lookup(&self, pid: i32, key: &[u8]) -> Option<(CancelTarget, Arc<Interrupt>)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (expected, target, interrupt) = map.get(&pid)?;
        constant_time_eq(expected, key).then(|| (target.clone(), interrupt.clone()))
    }

    /// No session holds a key (for tests).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.inner.lock().map(|m| m.is_empty()).unwrap_or(true)
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_core::config::{ConnectionConfig, ConnectionKind, UpstreamTls};

    fn target() -> CancelTarget {
        CancelTarget {
            connection: Arc::new(ConnectionConfig {
                name: "c".into(),
                kind: ConnectionKind::Postgres,
                host: "localhost".into(),
                port: 1,
                database: "d".into(),
                user: "u".into(),
                password: None,
                tls: UpstreamTls::Disable,
                ca_file: None,
                tags: Default::default(),
            }),
            pid: 4242,
            key: vec![9, 9, 9, 9],
        }
    }

    #[test]
    fn only_the_exact_key_finds_the_backend_and_drop_forgets_it() {
        let registry = CancelRegistry::default();
        let key = registry.register(target(), Default::default());
        assert_ne!(
            key.pid, 4242,
            "the backend pid is never reused as the client's"
        );
        assert_eq!(registry.lookup(key.pid, &key.key).unwrap().0.pid, 4242);
        let mut wrong = key.key;
        wrong[3] ^= 1;
        assert!(registry.lookup(key.pid, &wrong).is_none());
        assert!(registry.lookup(key.pid, &key.key[..3]).is_none());
        let pid = key.pid;
        let k = key.key;
        drop(key);
        assert!(registry.lookup(pid, &k).is_none());
        assert!(registry.is_empty());
    }
}
