//! A session's memory of the decisions it has made.
//!
//! A Cedar decision is a pure function of its request: the session's entities (fixed for the
//! session), the action, and the context (the statement's command, relations and functions,
//! the grants in force, the client address, the protocol, the hour and the weekday). Building
//! the context and evaluating it cost about a quarter of the gateway's CPU per statement
//! (docs/BENCHMARKS.md), and agents send the same few statement shapes again and again with
//! other literals (`... WHERE id = 1`, `... WHERE id = 2` classify alike). So a session keeps
//! the evaluation of each context it has seen, keyed by every input that goes into the context;
//! a change in any of them (a grant given or expired, the hour turning) is a different key.
//! The memo lives in the session's [`crate::SessionCache`], which is rebuilt when policies are
//! reloaded, so a reload forgets it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::Evaluation;

/// Distinct contexts a session remembers; past this the memo starts again (an agent with
/// more distinct statement shapes than this gains little from remembering them). Bounded so
/// that a session's memory stays small (see the idle-sessions benchmark).
const CAPACITY: usize = 64;

/// Every input of one decision besides the session's entities, borrowed.
#[derive(Hash)]
pub(crate) struct DecisionInput<'a> {
    pub action: &'a str,
    pub command: &'a str,
    pub relations: &'a [String],
    pub functions: &'a [String],
    pub grants: &'a [String],
    pub client_ip: IpAddr,
    pub protocol: &'a str,
    pub hour_utc: i64,
    pub weekday_utc: i64,
}

/// The same inputs, owned, kept to confirm a hash match.
struct StoredInput {
    action: String,
    command: String,
    relations: Vec<String>,
    functions: Vec<String>,
    grants: Vec<String>,
    client_ip: IpAddr,
    protocol: String,
    hour_utc: i64,
    weekday_utc: i64,
}

impl StoredInput {
    fn of(input: &DecisionInput<'_>) -> Self {
        StoredInput {
            action: input.action.to_string(),
            command: input.command.to_string(),
            relations: input.relations.to_vec(),
            functions: input.functions.to_vec(),
            grants: input.grants.to_vec(),
            client_ip: input.client_ip,
            protocol: input.protocol.to_string(),
            hour_utc: input.hour_utc,
            weekday_utc: input.weekday_utc,
        }
    }

    fn matches(&self, input: &DecisionInput<'_>) -> bool {
        self.action == input.action
            && self.command == input.command
            && self.relations == input.relations
            && self.functions == input.functions
            && self.grants == input.grants
            && self.client_ip == input.client_ip
            && self.protocol == input.protocol
            && self.hour_utc == input.hour_utc
            && self.weekday_utc == input.weekday_utc
    }
}

/// Evaluations by the hash of their inputs, each with the inputs to confirm the match.
#[derive(Default)]
pub(crate) struct DecisionMemo {
    seen: Mutex<HashMap<u64, (StoredInput, Evaluation)>>,
}

impl DecisionMemo {
    /// The evaluation made before for exactly these inputs.
    pub fn get(&self, input: &DecisionInput<'_>) -> Option<Evaluation> {
        let seen = self.seen.lock().ok()?;
        let (stored, evaluation) = seen.get(&hash_of(input))?;
        stored.matches(input).then(|| evaluation.clone())
    }

    pub fn put(&self, input: &DecisionInput<'_>, evaluation: &Evaluation) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= CAPACITY {
            seen.clear();
        }
        seen.insert(hash_of(input), (StoredInput::of(input), evaluation.clone()));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }
}

fn hash_of(input: &DecisionInput<'_>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_core::pipeline::Verdict;

    fn input<'a>(command: &'a str, relations: &'a [String], hour: i64) -> DecisionInput<'a> {
        DecisionInput {
            action: "read",
            command,
            relations,
            functions: &[],
            grants: &[],
            client_ip: [127, 0, 0, 1].into(),
            protocol: "postgres",
            hour_utc: hour,
            weekday_utc: 3,
        }
    }

    fn allowed_by(policy: &str) -> Evaluation {
        Evaluation {
            verdict: Verdict::Allow,
            action: "read".into(),
            policies: vec![policy.into()],
        }
    }

    #[test]
    fn remembers_by_every_input_and_stays_bounded() {
        let memo = DecisionMemo::default();
        let t = vec!["public.t".to_string()];
        let u = vec!["public.u".to_string()];
        assert_eq!(memo.get(&input("SELECT", &t, 9)), None);
        memo.put(&input("SELECT", &t, 9), &allowed_by("a"));
        assert_eq!(memo.get(&input("SELECT", &t, 9)), Some(allowed_by("a")));
        // Another relation, command or hour is another request.
        assert_eq!(memo.get(&input("SELECT", &u, 9)), None);
        assert_eq!(memo.get(&input("DELETE", &t, 9)), None);
        assert_eq!(memo.get(&input("SELECT", &t, 10)), None);

        let names: Vec<Vec<String>> = (0..CAPACITY * 2)
            .map(|i| vec![format!("public.t{i}")])
            .collect();
        for n in &names {
            memo.put(&input("SELECT", n, 9), &allowed_by("a"));
            assert!(memo.len() <= CAPACITY);
        }
    }
}
