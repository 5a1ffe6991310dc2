//! One record and the chain. A record is one line of JSON: serde_json escapes newlines, NULs,
//! control characters and quotes, so no text inside a record can end it or forge another;
//! object keys are sorted, so the encoding is canonical and the hash is reproducible.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Something that happened, before it is sequenced and chained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened, such as `token.created`, `review.voted`, `session.opened`.
    pub kind: String,
    /// Who did it (a principal), when anyone did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The details; for statements, text is already size-capped by the caller.
    pub data: Value,
}

impl Event {
    pub fn new(kind: &str, actor: Option<&str>, data: Value) -> Event {
        Event {
            kind: kind.to_string(),
            actor: actor.map(str::to_string),
            data,
        }
    }
}

/// A sequenced, chained record as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Microseconds since the epoch.
    pub at: i64,
    #[serde(flatten)]
    pub event: Event,
    /// The hash of the record before (or [`GENESIS`]).
    pub prev: String,
    /// SHA-256 over `prev` and the canonical encoding of everything else.
    pub hash: String,
}

/// The part of a record its hash covers.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at: i64,
    #[serde(flatten)]
    event: &'a Event,
    prev: &'a str,
}

impl Record {
    /// Chains `event` after the record with hash `prev`.
    pub fn chain(seq: u64, at: i64, event: Event, prev: &str) -> Record {
        let hash = hash_of(seq, at, &event, prev);
        Record {
            seq,
            at,
            event,
            prev: prev.to_string(),
            hash,
        }
    }

    /// The hash this record should carry.
    pub fn expected_hash(&self) -> String {
        hash_of(self.seq, self.at, &self.event, &self.prev)
    }

    /// One line of the log, without the newline.
    pub fn to_line(&self) -> String {
        // Serializing plain data cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn hash_of(seq: u64, at: i64, event: &Event, prev: &str) -> String {
    let canonical = serde_json::to_vec(&Hashed {
        seq,
        at,
        event,
        prev,
    })
    .unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

/// Text as it may be recorded: at most `max` bytes; longer text is cut and carries the
/// SHA-256 and length of the whole, so the record stays bounded and still identifies it.
pub fn bounded_text(text: &str, max: usize) -> Value {
    if text.len() <= max {
        return Value::String(text.to_string());
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({
        "prefix": &text[..cut],
        "bytes": text.len(),
        "sha256": hex::encode(Sha256::digest(text.as_bytes())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_stays_inside_its_record() {
        let text = "drop table x;\n{\"seq\":99,\"kind\":\"forged\"}\0\u{1b}[2J";
        let r = Record::chain(
            1,
            5,
            Event::new("statement", None, Value::String(text.into())),
            GENESIS,
        );
        let line = r.to_line();
        assert!(!line.contains('\n') && !line.contains('\0') && !line.contains('\u{1b}'));
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.expected_hash(), r.hash);
    }

    #[test]
    fn long_text_is_cut_with_its_hash() {
        let v = bounded_text(&"é".repeat(100), 11);
        assert_eq!(v["bytes"], 200);
        assert_eq!(v["prefix"].as_str().unwrap().len(), 10);
        assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    }
}
